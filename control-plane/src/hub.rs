//! Config versions and who waits for them. Every accepted change to a control plane's
//! entities produces a new [`ConfigVersion`] (already validated and stored); the hub holds
//! the latest one per control plane and wakes every data plane stream subscribed to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// One control plane's whole configuration at one version, as the data planes receive it.
#[derive(Debug)]
pub struct ConfigVersion {
    pub control_plane_id: String,
    /// Starts at 1 when the control plane is created; +1 per accepted change.
    pub version: u64,
    /// SHA-256 (hex) of `text`: what a gateway reports once it runs this version.
    pub hash: String,
    /// The Kong declarative document (`_format_version: "3.0"`, JSON) gateways load.
    pub text: String,
    /// The same document, validated: what the Envoy translation reads.
    pub config: model::Config,
    pub created_at: i64,
}

impl ConfigVersion {
    /// Builds a version from declarative JSON text, validating it with the model (the same
    /// code the gateway runs).
    pub fn new(
        control_plane_id: &str,
        version: u64,
        text: String,
        created_at: i64,
    ) -> Result<ConfigVersion, model::ConfigError> {
        let document: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| model::ConfigError::single("declarative", e.to_string()))?;
        let config = model::declarative::from_value(&document)?;
        Ok(ConfigVersion {
            control_plane_id: control_plane_id.to_owned(),
            version,
            hash: sha256_hex(text.as_bytes()),
            text,
            config,
            created_at,
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

type Channel = watch::Sender<Option<Arc<ConfigVersion>>>;

/// The latest version of every control plane, with a watch channel per control plane.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Hub {
    fn channel<T>(&self, control_plane_id: &str, f: impl FnOnce(&Channel) -> T) -> T {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = channels
            .entry(control_plane_id.to_owned())
            .or_insert_with(|| watch::channel(None).0);
        f(channel)
    }

    /// Makes `version` the one every subscriber converges to; an older version than the
    /// current one is ignored (two API calls may commit and publish in either order).
    pub fn publish(&self, version: Arc<ConfigVersion>) {
        self.channel(&version.control_plane_id.clone(), |channel| {
            channel.send_if_modified(|current| {
                if current
                    .as_ref()
                    .is_some_and(|c| c.version >= version.version)
                {
                    return false;
                }
                *current = Some(version);
                true
            });
        });
    }

    /// Follows a control plane's versions; `None` until it has one (or after it is deleted).
    pub fn subscribe(&self, control_plane_id: &str) -> watch::Receiver<Option<Arc<ConfigVersion>>> {
        self.channel(control_plane_id, |channel| channel.subscribe())
    }

    pub fn current(&self, control_plane_id: &str) -> Option<Arc<ConfigVersion>> {
        self.channel(control_plane_id, |channel| channel.borrow().clone())
    }

    /// A deleted control plane: its subscribers see `None` and drop their data planes.
    pub fn remove(&self, control_plane_id: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.remove(control_plane_id) {
            channel.send_replace(None);
        }
    }
}
