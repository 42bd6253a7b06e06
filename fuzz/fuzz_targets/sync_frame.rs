//! `model::sync::Inbound::from_frame`, the control plane's reading of whatever a data plane
//! sends on its WebSocket, with any text: it never panics; what it accepts is within every
//! bound (checked here independently of the code under test); and an accepted frame survives
//! a round trip through its JSON unchanged, so what the control plane keeps is what it read.
//! The same bytes read as the control plane's own frames (`Outbound`) never panic either.
//!
//! Input: the frame's text (invalid UTF-8 is not a WebSocket text frame: skipped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::sync::{
    Inbound, Outbound, MAX_ERROR_MESSAGE, MAX_HASH, MAX_HOSTNAME, MAX_LISTED, MAX_NODE_ID,
    MAX_VERSION,
};

fn bounded(value: &str, max: usize) -> bool {
    value.len() <= max && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = serde_json::from_str::<Outbound>(text);
    let Ok(frame) = Inbound::from_frame(text) else {
        return;
    };
    match &frame {
        Inbound::BasicInfo {
            node_id,
            hostname,
            version,
            control_plane_id,
            plugins,
            modules,
            config_hash,
        } => {
            assert!(!node_id.is_empty() && bounded(node_id, MAX_NODE_ID));
            assert!(bounded(hostname, MAX_HOSTNAME) && bounded(version, MAX_VERSION));
            assert!(control_plane_id.as_deref().is_none_or(|id| bounded(id, MAX_VERSION)));
            assert!(config_hash.as_deref().is_none_or(|h| bounded(h, MAX_HASH)));
            assert!(plugins.len() <= MAX_LISTED && modules.len() <= MAX_LISTED);
            for plugin in plugins {
                assert!(bounded(&plugin.name, MAX_VERSION) && bounded(&plugin.version, MAX_VERSION));
            }
            for module in modules {
                assert!(bounded(&module.file, MAX_VERSION) && bounded(&module.sha256, MAX_HASH));
            }
        }
        Inbound::Applied { config_hash, .. } => assert!(bounded(config_hash, MAX_HASH)),
        Inbound::Error {
            config_hash,
            message,
            ..
        } => {
            assert!(bounded(config_hash, MAX_HASH));
            assert!(message.len() <= MAX_ERROR_MESSAGE);
        }
        Inbound::Ping { config_hash } => {
            assert!(config_hash.as_deref().is_none_or(|h| bounded(h, MAX_HASH)));
        }
    }
    let again = serde_json::to_string(&frame).expect("a frame serializes");
    assert_eq!(Inbound::from_frame(&again).as_ref(), Ok(&frame), "{again}");
});
