//! Which client certificates are pinned for which control plane, kept in memory, and the live
//! data plane sessions that rely on each pin.
//!
//! The TLS verifier of both data plane endpoints runs inside every handshake, on the async
//! workers: it reads this snapshot, never SQLite (a reconnect storm would otherwise queue
//! every handshake behind the store's lock and its fsyncs). The store replaces the snapshot
//! after each commit that changed a pin, before the commit's caller sees it, and a session whose
//! certificate is no longer pinned for its control plane is told at once: Konnect's "removing
//! a pinned dataplane certificate would invalidate any dataplanes currently connected to this
//! control plane using this certificate".

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

/// Connections of one data plane listener still in their TLS handshake, at most: each may
/// take 10 s before anything is known of its peer, and a flood of them must not take every
/// file descriptor from the data planes that are trusted. A connection beyond it is closed at
/// once.
pub const MAX_HANDSHAKES: usize = 1024;

/// Certificate fingerprint (SHA-256, hex) → the control planes it is pinned for.
pub type Pins = HashMap<String, BTreeSet<String>>;

#[derive(Default)]
pub struct Trust {
    pins: RwLock<Arc<Pins>>,
    /// Lock order: `sessions`, then `pins`. A session is registered and a snapshot replaced
    /// under `sessions`, so a session never joins after the revocation of its pin has been
    /// handed out.
    sessions: Arc<Mutex<HashMap<u64, Session>>>,
    serial: AtomicU64,
}

struct Session {
    control_plane_id: String,
    fingerprint: String,
    revoked: Arc<Notify>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trust")
    }
}

impl Trust {
    /// The control planes `fingerprint` is pinned for, in order.
    pub fn control_planes(&self, fingerprint: &str) -> Vec<String> {
        let pins = Arc::clone(&self.pins.read().unwrap_or_else(|e| e.into_inner()));
        pins.get(fingerprint)
            .map(|planes| planes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces the snapshot and revokes the sessions whose pin is gone.
    pub fn replace(&self, pins: Pins) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for session in sessions.values() {
            let still = pins
                .get(&session.fingerprint)
                .is_some_and(|planes| planes.contains(&session.control_plane_id));
            if !still {
                // A stored permit: the session sees it even if it is not waiting right now.
                session.revoked.notify_one();
            }
        }
        *self.pins.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pins);
    }

    /// Registers a session of `control_plane_id` authenticated by `fingerprint`; `None` when
    /// that pin is already gone (it was revoked after the handshake).
    pub fn hold(&self, control_plane_id: &str, fingerprint: &str) -> Option<Hold> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let pinned = self
            .pins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(fingerprint)
            .is_some_and(|planes| planes.contains(control_plane_id));
        if !pinned {
            return None;
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Notify::new());
        sessions.insert(
            serial,
            Session {
                control_plane_id: control_plane_id.to_owned(),
                fingerprint: fingerprint.to_owned(),
                revoked: Arc::clone(&revoked),
            },
        );
        Some(Hold {
            serial,
            revoked,
            sessions: Arc::clone(&self.sessions),
        })
    }

    /// Live sessions, for tests and metrics.
    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// A live session's claim on its pin; dropping it ends the claim.
pub struct Hold {
    serial: u64,
    revoked: Arc<Notify>,
    sessions: Arc<Mutex<HashMap<u64, Session>>>,
}

impl Hold {
    /// Resolves once the certificate is unpinned for the session's control plane.
    pub async fn revoked(&self) {
        self.revoked.notified().await;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.serial);
    }
}

/// What a listener with a handshake limit of `limit` must do: with `limit` silent peers
/// holding every place, the next connection is closed at once while they keep waiting.
#[cfg(test)]
pub(crate) async fn assert_the_handshake_limit_holds(addr: std::net::SocketAddr, limit: usize) {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let mut silent = Vec::new();
    for _ in 0..limit {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut byte = [0u8; 1];
    let mut beyond = TcpStream::connect(addr).await.expect("connect");
    let closed = tokio::time::timeout(Duration::from_secs(5), beyond.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the one beyond the limit is closed at once: {closed:?}"
    );
    for peer in &mut silent {
        let waiting = tokio::time::timeout(Duration::from_millis(300), peer.read(&mut byte)).await;
        assert!(waiting.is_err(), "still in its handshake: {waiting:?}");
    }
    // A handshake that ends frees its place.
    drop(silent.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = TcpStream::connect(addr).await.expect("connect");
    let waiting = tokio::time::timeout(Duration::from_millis(300), next.read(&mut byte)).await;
    assert!(waiting.is_err(), "admitted: {waiting:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pins(entries: &[(&str, &str)]) -> Pins {
        let mut pins = Pins::new();
        for (fingerprint, cp) in entries {
            pins.entry((*fingerprint).to_owned())
                .or_default()
                .insert((*cp).to_owned());
        }
        pins
    }

    async fn is_revoked(hold: &Hold) -> bool {
        tokio::time::timeout(Duration::from_millis(50), hold.revoked())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn unpinning_revokes_exactly_the_sessions_of_that_pin() {
        let trust = Trust::default();
        trust.replace(pins(&[("f1", "a"), ("f1", "b"), ("f2", "a")]));
        assert_eq!(trust.control_planes("f1"), ["a", "b"]);
        let f1_a = trust.hold("a", "f1").expect("pinned");
        let f1_b = trust.hold("b", "f1").expect("pinned");
        let f2_a = trust.hold("a", "f2").expect("pinned");
        assert_eq!(trust.sessions(), 3);

        // f1 unpinned for a only, before anyone waits: the permit is kept.
        trust.replace(pins(&[("f1", "b"), ("f2", "a")]));
        assert!(is_revoked(&f1_a).await, "f1 on a is revoked");
        assert!(!is_revoked(&f1_b).await, "f1 on b stays");
        assert!(!is_revoked(&f2_a).await, "f2 stays");
        assert_eq!(trust.control_planes("f1"), ["b"]);

        drop(f1_a);
        assert_eq!(trust.sessions(), 2, "a dropped hold leaves the registry");
        // A session that completed its handshake before the unpin cannot join after it.
        assert!(trust.hold("a", "f1").is_none());
        assert!(trust.hold("c", "f2").is_none(), "never pinned there");
    }
}
