//! `request_size_limiting::Config::parse` on any bytes: total; an accepted config is within
//! Kong's schema and its computed limit is exact; a refused one names fields under
//! `config`; and an accepted config, written back as JSON, parses to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use request_size_limiting::{Config, SizeUnit};

fn unit_name(unit: SizeUnit) -> &'static str {
    match unit {
        SizeUnit::Bytes => "bytes",
        SizeUnit::Kilobytes => "kilobytes",
        SizeUnit::Megabytes => "megabytes",
    }
}

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            let limit = config
                .allowed_payload_size
                .checked_mul(config.size_unit.bytes())
                .expect("an accepted size fits its unit");
            assert_eq!(config.limit(), limit);
            // Written back with every field explicit, it reads the same.
            let json = serde_json::json!({
                "allowed_payload_size": config.allowed_payload_size,
                "size_unit": unit_name(config.size_unit),
                "require_content_length": config.require_content_length,
            });
            let again = Config::parse(json.to_string().as_bytes()).expect("round trip");
            assert_eq!(again, config);
            assert_eq!(
                again,
                Config::new(
                    config.allowed_payload_size,
                    config.size_unit,
                    config.require_content_length
                )
            );
        }
        Err(error) => {
            assert!(!error.fields.is_empty(), "an error names a field");
            for field in &error.fields {
                assert!(field.path.starts_with("config"), "{}", field.path);
                assert!(!field.message.is_empty());
            }
            let _ = error.to_kong_fields();
            assert!(!error.to_string().is_empty());
        }
    }
});
