//! The plugin's configuration, with Kong's fields, defaults and messages.

use kit::schema::{self, ConfigError};

/// Units of `allowed_payload_size`; binary multiples as in Kong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    Bytes,
    Kilobytes,
    Megabytes,
}

impl SizeUnit {
    const CHOICES: [(&'static str, SizeUnit); 3] = [
        ("megabytes", SizeUnit::Megabytes),
        ("kilobytes", SizeUnit::Kilobytes),
        ("bytes", SizeUnit::Bytes),
    ];

    pub fn bytes(self) -> u64 {
        match self {
            SizeUnit::Bytes => 1,
            SizeUnit::Kilobytes => 1 << 10,
            SizeUnit::Megabytes => 1 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub allowed_payload_size: u64,
    pub size_unit: SizeUnit,
    pub require_content_length: bool,
    /// `allowed_payload_size` in bytes, computed once.
    limit: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config::new(128, SizeUnit::Megabytes, false)
    }
}

impl Config {
    pub fn new(
        allowed_payload_size: u64,
        size_unit: SizeUnit,
        require_content_length: bool,
    ) -> Self {
        Config {
            allowed_payload_size,
            size_unit,
            require_content_length,
            limit: allowed_payload_size.saturating_mul(size_unit.bytes()),
        }
    }

    /// The largest body, in bytes, that passes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Parses Kong's JSON `config` (empty input means every default).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let document = schema::parse_document(bytes)?;
        let config = schema::read_config(&document, |r| {
            let size = r.integer("allowed_payload_size").unwrap_or(128);
            let unit = r.one_of("size_unit", &SizeUnit::CHOICES, SizeUnit::Megabytes);
            let require_content_length = r.boolean("require_content_length", false);
            let size = match u64::try_from(size) {
                Ok(size) => size,
                Err(_) => {
                    r.error(
                        "allowed_payload_size",
                        "value must be greater than or equal to 0",
                    );
                    0
                }
            };
            if size.checked_mul(unit.bytes()).is_none() {
                r.error(
                    "allowed_payload_size",
                    "value is too large for the size_unit",
                );
            }
            Config::new(size, unit, require_content_length)
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kongs() {
        let config = Config::parse(b"").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.limit(), 128 * 1024 * 1024);
        assert!(!config.require_content_length);
        assert_eq!(Config::parse(b"{}").unwrap(), config);
    }

    #[test]
    fn units_are_binary() {
        let ten_mb = Config::parse(br#"{"allowed_payload_size": 10}"#).unwrap();
        assert_eq!(ten_mb.limit(), 10_485_760);
        let kb =
            Config::parse(br#"{"allowed_payload_size": 3, "size_unit": "kilobytes"}"#).unwrap();
        assert_eq!(kb.limit(), 3072);
        let b = Config::parse(br#"{"allowed_payload_size": 0, "size_unit": "bytes"}"#).unwrap();
        assert_eq!(b.limit(), 0);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"allowed_payload_size": "10"}"#,
                "config.allowed_payload_size: expected an integer",
            ),
            (
                br#"{"allowed_payload_size": 1.5}"#,
                "config.allowed_payload_size: expected an integer",
            ),
            (
                br#"{"allowed_payload_size": -1}"#,
                "config.allowed_payload_size: value must be greater than or equal to 0",
            ),
            (
                br#"{"size_unit": "gigabytes"}"#,
                "config.size_unit: expected one of: megabytes, kilobytes, bytes",
            ),
            (
                br#"{"require_content_length": "yes"}"#,
                "config.require_content_length: expected a boolean",
            ),
            (
                br#"{"allowed_payload": 10}"#,
                "config.allowed_payload: unknown field",
            ),
            (
                br#"{"allowed_payload_size": 9007199254740991}"#,
                "config.allowed_payload_size: value is too large for the size_unit",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(Config::parse(input).unwrap_err().to_string(), message);
        }
    }
}
