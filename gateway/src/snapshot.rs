//! One immutable, validated configuration with everything derived from it that requests use:
//! the router and the compiled, validated plugins. A reload builds a new snapshot off to the
//! side and swaps it in whole: in-flight requests finish on the snapshot they started with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kit::schema::FieldError;
use model::{Config, ConfigError, Router};
use sha2::{Digest, Sha256};

use crate::filters::{ConfigFilters, Runtime};
use crate::proxy::upstream::Target;
use crate::tls::ConfigCertificates;

static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// Each service's upstream, by the service's index in `config`.
    pub targets: Vec<Target>,
    pub filters: ConfigFilters,
    /// The configuration's `certificates`, loaded for the TLS listener.
    pub certificates: Arc<ConfigCertificates>,
    /// SHA-256 of the declarative text, hex (what data planes report to a control plane).
    pub hash: String,
    /// The declarative text it was built from.
    pub source: String,
    /// Unique per snapshot: workers start new plugin instances when it changes.
    pub generation: u64,
    /// Where wasmgate's plugin modules were loaded from (a control plane's version has a
    /// folder of its own).
    pub modules_dir: PathBuf,
}

impl Snapshot {
    /// Parses and validates declarative text (YAML or JSON), then compiles and validates its
    /// plugins in the runtime, taking those that did not change from the snapshot it replaces.
    pub fn build(
        text: &str,
        runtime: &Runtime,
        modules_dir: &Path,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        // On any error, the file is read again with each plugin's config checked by its
        // module: its errors are then reported with the rest, each where the file has the
        // plugin (`services.echo.plugins.rate-limiting.config.second`).
        let check = |name: &str, config: &serde_json::Value| {
            runtime.check_plugin(modules_dir, name, config)
        };
        let checked = || model::parse_declarative_checked(text, &check).err();
        let config = match model::parse_declarative(text) {
            Ok(config) => config,
            Err(e) => return Err(checked().unwrap_or(e)),
        };
        crate::ratelimit::check_config(text, &config, &check)?;
        // Loaded whether or not this gateway listens for TLS: a configuration is valid or not
        // the same on every data plane (and for `gateway validate`).
        let certificates = Arc::new(ConfigCertificates::load(
            &config.certificates,
            previous.map(|p| (p.config.certificates.as_slice(), &*p.certificates)),
        )?);
        let filters = match runtime.build(&config, modules_dir, previous.map(|s| &s.filters)) {
            Ok(filters) => filters,
            Err(built) => {
                let mut fields = checked().map(|e| e.fields).unwrap_or_default();
                // What only the whole configuration shows (a filter chain's module, a config
                // with its routes) is added.
                let said = |f: &FieldError| {
                    fields
                        .iter()
                        .any(|c| c.message == f.message && c.path.ends_with(&f.path))
                };
                let more: Vec<FieldError> = built.fields.into_iter().filter(|f| !said(f)).collect();
                fields.extend(more);
                return Err(ConfigError { fields });
            }
        };
        let router = Router::new(&config);
        let targets = (0..config.services.len())
            .map(|index| Target::new(&config, index))
            .collect();
        let hash = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Snapshot {
            config,
            router,
            targets,
            filters,
            certificates,
            hash,
            source: text.to_owned(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            modules_dir: modules_dir.to_owned(),
        })
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
