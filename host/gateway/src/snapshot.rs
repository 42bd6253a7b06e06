//! One immutable, validated configuration with everything derived from it that requests use.
//! A reload builds a new snapshot off to the side and swaps it in whole: in-flight requests
//! finish on the snapshot they started with.

use model::{Config, ConfigError, Router};
use sha2::{Digest, Sha256};

pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// SHA-256 of the declarative text, hex (what data planes report to a control plane).
    pub hash: String,
    /// The declarative text it was built from.
    pub source: String,
}

impl Snapshot {
    /// Parses and validates declarative text (YAML or JSON).
    pub fn from_declarative(text: &str) -> Result<Snapshot, ConfigError> {
        let config = model::parse_declarative(text)?;
        Ok(Snapshot::new(config, text))
    }

    pub fn new(config: Config, source: &str) -> Snapshot {
        let router = Router::new(&config);
        let hash = Sha256::digest(source.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Snapshot {
            config,
            router,
            hash,
            source: source.to_owned(),
        }
    }

    /// A configuration with nothing in it: every request gets Kong's 404.
    pub fn empty() -> Snapshot {
        Snapshot::new(Config::default(), "")
    }
}

/// Kong's DB-less error body for an invalid declarative configuration.
pub fn declarative_error_body(error: &ConfigError) -> serde_json::Value {
    serde_json::json!({
        "code": 14,
        "name": "invalid declarative configuration",
        "message": format!("declarative config is invalid: {error}"),
        "fields": error.to_kong_fields(),
    })
}
