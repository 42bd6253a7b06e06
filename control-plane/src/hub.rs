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
        let config = model::declarative::from_value_checked(&document, &schemas::check)?;
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

    /// The current version; asking about an unknown id leaves nothing behind.
    pub fn current(&self, control_plane_id: &str) -> Option<Arc<ConfigVersion>> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let current = channels.get(control_plane_id)?.borrow().clone();
        current
    }

    /// A deleted control plane: its subscribers see `None` and drop their data planes.
    pub fn remove(&self, control_plane_id: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.remove(control_plane_id) {
            channel.send_replace(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(control_plane_id: &str, version: u64, spaces: usize) -> Arc<ConfigVersion> {
        let text = format!("{{\"_format_version\": \"3.0\"}}{}", " ".repeat(spaces));
        Arc::new(ConfigVersion::new(control_plane_id, version, text, 7).expect("valid"))
    }

    #[test]
    fn a_version_is_hashed_and_validated_from_its_text() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let v = version("cp", 3, 0);
        assert_eq!(
            (v.control_plane_id.as_str(), v.version, v.created_at),
            ("cp", 3, 7)
        );
        assert_eq!(v.hash, sha256_hex(v.text.as_bytes()));
        assert_ne!(
            v.hash,
            version("cp", 3, 1).hash,
            "the text's hash, byte for byte"
        );

        let broken = ConfigVersion::new("cp", 1, "{\"_format".into(), 0).expect_err("JSON");
        assert!(broken.to_string().contains("declarative"), "{broken}");
        let invalid = ConfigVersion::new(
            "cp",
            1,
            r#"{"_format_version": "3.0", "services": [{"name": "s", "host": "h", "port": 70000}]}"#
                .into(),
            0,
        )
        .expect_err("an invalid port");
        assert!(invalid.to_string().contains("port"), "{invalid}");
    }

    #[test]
    fn subscribers_see_each_newer_version_and_never_an_older_one() {
        let hub = Hub::default();
        let mut early = hub.subscribe("cp");
        assert!(
            early.borrow_and_update().is_none(),
            "nothing before the first version"
        );
        assert!(hub.current("cp").is_none());

        hub.publish(version("cp", 2, 0));
        assert!(early.has_changed().expect("open"));
        assert_eq!(
            early.borrow_and_update().as_ref().map(|v| v.version),
            Some(2)
        );
        let mut late = hub.subscribe("cp");
        assert_eq!(
            late.borrow_and_update().as_ref().map(|v| v.version),
            Some(2),
            "a new subscriber starts from the current version"
        );

        // Committed in one order, published in the other: the older one is dropped.
        hub.publish(version("cp", 1, 1));
        hub.publish(version("cp", 2, 2));
        assert!(
            !early.has_changed().expect("open"),
            "no wake-up for an old version"
        );
        assert_eq!(hub.current("cp").map(|v| v.version), Some(2));
        assert_eq!(
            hub.current("cp").map(|v| v.hash.clone()),
            Some(version("cp", 2, 0).hash.clone()),
            "the first version 2 stays"
        );

        hub.publish(version("cp", 5, 0));
        assert!(early.has_changed().expect("open") && late.has_changed().expect("open"));
        assert_eq!(hub.current("cp").map(|v| v.version), Some(5));

        // Other control planes are apart.
        let other = hub.subscribe("other");
        hub.publish(version("other", 1, 0));
        assert!(other.has_changed().expect("open"));
        assert_eq!(hub.current("cp").map(|v| v.version), Some(5));
        assert_eq!(hub.current("other").map(|v| v.version), Some(1));
    }

    #[test]
    fn a_version_published_before_anyone_subscribes_is_kept() {
        let hub = Hub::default();
        hub.publish(version("cp", 1, 0));
        assert_eq!(hub.current("cp").map(|v| v.version), Some(1));
        assert_eq!(
            hub.subscribe("cp").borrow().as_ref().map(|v| v.version),
            Some(1)
        );
    }

    #[tokio::test]
    async fn removing_a_control_plane_tells_its_subscribers_and_starts_over() {
        let hub = Hub::default();
        hub.publish(version("cp", 3, 0));
        hub.publish(version("other", 1, 0));
        let mut before = hub.subscribe("cp");
        before.borrow_and_update();
        hub.remove("cp");
        before.changed().await.expect("told once");
        assert!(before.borrow_and_update().is_none(), "None: deleted");
        assert!(before.changed().await.is_err(), "then closed");
        assert!(hub.current("cp").is_none());
        assert_eq!(hub.current("other").map(|v| v.version), Some(1));
        hub.remove("never-there");
        assert!(hub.current("never-there").is_none());
        assert_eq!(
            hub.channels.lock().expect("channels").len(),
            1,
            "asking about ids leaves no channel behind"
        );

        // The same id again (a restored backup): its versions start over at 1.
        let after = hub.subscribe("cp");
        hub.publish(version("cp", 1, 0));
        assert!(after.has_changed().expect("open"));
        assert_eq!(hub.current("cp").map(|v| v.version), Some(1));
    }
}
