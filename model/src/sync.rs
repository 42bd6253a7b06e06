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
