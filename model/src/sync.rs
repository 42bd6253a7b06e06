//! The frames of wasmgate's sync protocol between the control plane and `gateway` data planes
//! (docs/SYNC.md): JSON text frames on a WebSocket at `/v1/outlet`, shaped after Kong's hybrid
//! mode. Both ends use these types.

use serde::{Deserialize, Serialize};

/// The WebSocket path data planes connect to (Kong's).
pub const PATH: &str = "/v1/outlet";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
}

/// A module a data plane already has.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleInfo {
    pub file: String,
    pub sha256: String,
}

/// A module a data plane lacks, inline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleData {
    pub plugin: String,
    pub file: String,
    pub sha256: String,
    /// The module's bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// What a data plane sends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Inbound {
    /// The first frame of every connection.
    BasicInfo {
        node_id: String,
        hostname: String,
        version: String,
        /// Needed only when the certificate is pinned for several control planes.
        #[serde(default)]
        control_plane_id: Option<String>,
        #[serde(default)]
        plugins: Vec<PluginInfo>,
        #[serde(default)]
        modules: Vec<ModuleInfo>,
        /// What it runs now (from its cache, or from before a reconnect).
        #[serde(default)]
        config_hash: Option<String>,
    },
    Applied {
        config_version: u64,
        config_hash: String,
    },
    Error {
        config_version: u64,
        config_hash: String,
        message: String,
    },
    Ping {
        #[serde(default)]
        config_hash: Option<String>,
    },
}

/// What the control plane sends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outbound {
    Reconfigure {
        config_version: u64,
        config_hash: String,
        /// Kong declarative JSON text; its SHA-256 is `config_hash`.
        config: String,
        modules: Vec<ModuleData>,
    },
    Pong,
}

/// The longest node id a data plane may give itself.
pub const MAX_NODE_ID: usize = 128;
/// The longest hostname: a DNS name's longest text form.
pub const MAX_HOSTNAME: usize = 253;
/// The longest version text, and the longest control plane id, plugin name or module file.
pub const MAX_VERSION: usize = 64;
/// The longest config hash a data plane may report (a SHA-256 is 64 hex digits).
pub const MAX_HASH: usize = 128;
/// The most plugins or modules one `basic_info` may list.
pub const MAX_LISTED: usize = 64;
/// The longest refusal message kept of a data plane.
pub const MAX_ERROR_MESSAGE: usize = 2048;

/// Checks what a data plane says of itself before it is kept and listed: at most `max` bytes
/// of printable ASCII, so that no data plane can grow the control plane's memory or store at
/// will, or put control bytes in front of an operator. The error names `field`.
pub fn check_reported(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        ));
    }
    match value.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
        Some(b) => Err(format!(
            "{field} has the byte 0x{b:02x}; only printable ASCII is accepted"
        )),
        None => Ok(()),
    }
}

impl Inbound {
    /// A data plane's text frame, read and checked: every field it reports is bounded (see
    /// the limits above), so what the control plane keeps of a data plane is bounded whatever
    /// it sends. A refusal's message is cut to [`MAX_ERROR_MESSAGE`] on a character boundary
    /// rather than refused: it is the data plane's own explanation.
    pub fn from_frame(text: &str) -> Result<Inbound, String> {
        serde_json::from_str::<Inbound>(text)
            .map_err(|e| format!("unreadable frame: {e}"))?
            .checked()
    }

    /// The frame with every field within its bounds, or why not.
    pub fn checked(mut self) -> Result<Inbound, String> {
        match &mut self {
            Inbound::BasicInfo {
                node_id,
                hostname,
                version,
                control_plane_id,
                plugins,
                modules,
                config_hash,
            } => {
                if node_id.is_empty() {
                    return Err("basic_info without a node_id".into());
                }
                check_reported("basic_info.node_id", node_id, MAX_NODE_ID)?;
                check_reported("basic_info.hostname", hostname, MAX_HOSTNAME)?;
                check_reported("basic_info.version", version, MAX_VERSION)?;
                if let Some(id) = control_plane_id {
                    check_reported("basic_info.control_plane_id", id, MAX_VERSION)?;
                }
                if let Some(hash) = config_hash {
                    check_reported("basic_info.config_hash", hash, MAX_HASH)?;
                }
                if plugins.len() > MAX_LISTED || modules.len() > MAX_LISTED {
                    return Err(format!(
                        "basic_info lists {} plugins and {} modules; at most {MAX_LISTED} each",
                        plugins.len(),
                        modules.len()
                    ));
                }
                for plugin in plugins.iter() {
                    check_reported("basic_info.plugins.name", &plugin.name, MAX_VERSION)?;
                    check_reported("basic_info.plugins.version", &plugin.version, MAX_VERSION)?;
                }
                for module in modules.iter() {
                    check_reported("basic_info.modules.file", &module.file, MAX_VERSION)?;
                    check_reported("basic_info.modules.sha256", &module.sha256, MAX_HASH)?;
                }
            }
            Inbound::Applied { config_hash, .. } => {
                check_reported("applied.config_hash", config_hash, MAX_HASH)?;
            }
            Inbound::Error {
                config_hash,
                message,
                ..
            } => {
                check_reported("error.config_hash", config_hash, MAX_HASH)?;
                let mut end = message.len().min(MAX_ERROR_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Inbound::Ping { config_hash } => {
                if let Some(hash) = config_hash {
                    check_reported("ping.config_hash", hash, MAX_HASH)?;
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(frame: serde_json::Value) -> Result<Inbound, String> {
        Inbound::from_frame(&frame.to_string())
    }

    #[test]
    fn what_a_data_plane_reports_is_bounded_printable_ascii() {
        let at_most = "a".repeat(MAX_HOSTNAME);
        assert_eq!(check_reported("hostname", &at_most, MAX_HOSTNAME), Ok(()));
        assert_eq!(check_reported("v", " ~", MAX_VERSION), Ok(()));
        assert_eq!(
            check_reported("hostname", &format!("{at_most}a"), MAX_HOSTNAME),
            Err("hostname is 254 bytes long; at most 253 are accepted".into())
        );
        for (value, byte) in [
            ("a\u{1b}[2J", "0x1b"),
            ("tab\t", "0x09"),
            ("é", "0xc3"),
            ("\u{7f}", "0x7f"),
        ] {
            let refused = check_reported("node_id", value, MAX_NODE_ID).unwrap_err();
            assert_eq!(
                refused,
                format!("node_id has the byte {byte}; only printable ASCII is accepted")
            );
        }
    }

    #[test]
    fn every_field_of_every_frame_is_bounded() {
        let hello = |extra: serde_json::Value| {
            let mut frame = json!({
                "type": "basic_info", "node_id": "n", "hostname": "h", "version": "1",
            });
            if let (Some(frame), Some(extra)) = (frame.as_object_mut(), extra.as_object()) {
                frame.extend(extra.clone());
            }
            read(frame)
        };
        assert!(hello(json!({})).is_ok());
        let long_hash = "f".repeat(MAX_HASH + 1);
        for (extra, refusal) in [
            (json!({ "node_id": "" }), "basic_info without a node_id"),
            (
                json!({ "control_plane_id": "\n" }),
                "basic_info.control_plane_id has",
            ),
            (
                json!({ "config_hash": long_hash }),
                "basic_info.config_hash is 129",
            ),
            (
                json!({ "modules": vec![json!({ "file": "m.wasm", "sha256": "s" }); MAX_LISTED + 1] }),
                "basic_info lists 0 plugins and 65 modules",
            ),
            (
                json!({ "plugins": [{ "name": "p\u{0}", "version": "1" }] }),
                "basic_info.plugins.name has",
            ),
            (
                json!({ "modules": [{ "file": "m.wasm", "sha256": long_hash }] }),
                "basic_info.modules.sha256 is",
            ),
        ] {
            let refused = hello(extra.clone()).expect_err("refused");
            assert!(refused.starts_with(refusal), "{extra}: {refused}");
        }
        for (frame, refusal) in [
            (
                json!({ "type": "applied", "config_version": 1, "config_hash": long_hash }),
                "applied.config_hash",
            ),
            (
                json!({ "type": "error", "config_version": 1, "config_hash": "\u{7f}", "message": "m" }),
                "error.config_hash",
            ),
            (
                json!({ "type": "ping", "config_hash": long_hash }),
                "ping.config_hash",
            ),
            (json!({ "type": "pong" }), "unreadable frame: "),
        ] {
            let refused = read(frame.clone()).expect_err("refused");
            assert!(refused.starts_with(refusal), "{frame}: {refused}");
        }
        let message = format!("a{}", "é".repeat(MAX_ERROR_MESSAGE));
        let Ok(Inbound::Error { message: kept, .. }) = read(json!({
            "type": "error", "config_version": 1, "config_hash": "h", "message": message,
        })) else {
            panic!("an error frame with a long message is read");
        };
        assert_eq!(kept.len(), MAX_ERROR_MESSAGE - 1);
        assert!(message.starts_with(&kept));
    }
}
