//! Reloading the declarative file: on SIGHUP and when the file changes (polled once a second:
//! no inotify dependency, and it also sees edits through symlink swaps). A file that does not
//! validate is refused with its errors logged; the running configuration keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::server::Shared;

/// Reloads from `path`; logs the outcome.
pub fn reload(shared: &Shared, path: &PathBuf, why: &str) {
    match std::fs::read_to_string(path) {
        Err(e) => eprintln!(
            "wasmgate: reload ({why}): {}: {e}; keeping the running configuration",
            path.display()
        ),
        Ok(text) => {
            if text == shared.snapshot.load().source {
                return;
            }
            match shared.apply(&text) {
                Ok(hash) => eprintln!("wasmgate: reloaded {} ({why}), config hash {hash}", path.display()),
                Err(e) => eprintln!(
                    "wasmgate: reload ({why}): {} is invalid, keeping the running configuration: {e}",
                    path.display()
                ),
            }
        }
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `path` on a thread of its own until `shared` is the last reference.
pub fn watch(shared: Arc<Shared>, path: PathBuf) {
    let shown = path.display().to_string();
    std::thread::Builder::new()
        .name("wasmgate-watch".into())
        .spawn(move || {
            let mut last = stamp(&path);
            while Arc::strong_count(&shared) > 1 {
                std::thread::sleep(Duration::from_secs(1));
                let now = stamp(&path);
                if now != last {
                    last = now;
                    reload(&shared, &path, "file changed");
                }
            }
        })
        .map(drop)
        .unwrap_or_else(|e| eprintln!("wasmgate: cannot watch {shown}: {e}"));
}
