//! Konnect's cloud gateways, on one machine: for each data plane group of a
//! `PUT /v3/cloud-gateways/configurations`, the control plane runs a local `gateway`
//! process connected back to it (its own client certificate, pinned for that control plane),
//! restarts it if it dies, and stops it when the configuration is removed or the control
//! plane stops. Ports are chosen once and stored, so a proxy URL survives restarts.
//!
//! A tenant's service can point at any port on loopback and be reached through the tenant's
//! own proxy, so a provisioned gateway has no admin port there: its admin API is a UNIX
//! socket in its private folder, for the operator, and read-only, as the gateway follows its
//! control plane. The control plane reads nothing from it: health comes from the process
//! and from the gateway's pings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Options, State};

/// One data plane process to keep running.
#[derive(Clone, Debug)]
pub struct DataPlaneSpec {
    pub control_plane_id: String,
    /// The data plane group's id, also the gateway's node id.
    pub group_id: String,
    pub proxy: SocketAddr,
    /// Certificate, key, CA and config cache live here.
    pub dir: PathBuf,
}

/// What the supervisor knows about a running data plane.
#[derive(Clone, Debug, Default)]
struct Health {
    running: bool,
    restarts: u32,
    last_exit: Option<String>,
}

struct Supervised {
    spec: DataPlaneSpec,
    health: Arc<Mutex<Health>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Provisioner {
    gateway_bin: PathBuf,
    /// The gateway's `--upstream-deny`: `private` unless the platform allows it.
    upstream_deny: Option<&'static str>,
    running: Mutex<HashMap<String, Vec<Supervised>>>,
}

/// `--gateway-bin`, else `gateway` beside this binary (or beside its folder, as for test
/// binaries under `deps/`).
fn find_gateway(options: &Options) -> PathBuf {
    if let Some(bin) = &options.gateway_bin {
        return bin.clone();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for candidate in [dir.join("gateway"), dir.join("../gateway")] {
        if candidate.is_file() {
            return candidate;
        }
    }
    dir.join("gateway")
}

impl Provisioner {
    pub fn new(options: &Options) -> Provisioner {
        Provisioner {
            gateway_bin: find_gateway(options),
            upstream_deny: (!options.allow_private_upstreams).then_some("private"),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The proxy URLs of a control plane's provisioned data planes.
    pub fn proxy_urls(&self, control_plane_id: &str) -> Vec<Value> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(control_plane_id)
            .map(|planes| {
                planes
                    .iter()
                    .map(|p| {
                        json!({
                            "host": p.spec.proxy.ip().to_string(),
                            "port": p.spec.proxy.port(),
                            "protocol": "http",
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `running`, `restarting` (between a crash and its restart) per group, with restarts.
    pub fn health(
        &self,
        control_plane_id: &str,
        group_id: &str,
    ) -> Option<(bool, u32, Option<String>)> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let plane = running
            .get(control_plane_id)?
            .iter()
            .find(|p| p.spec.group_id == group_id)?;
        let health = plane
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some((health.running, health.restarts, health.last_exit))
    }

    /// Runs exactly `specs` for the control plane: stops what is no longer wanted, starts
    /// what is new, leaves the rest running.
    pub async fn apply(
        &self,
        state: &Arc<State>,
        control_plane_id: &str,
        specs: Vec<DataPlaneSpec>,
    ) {
        let stale: Vec<Supervised> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let planes = running.entry(control_plane_id.to_owned()).or_default();
            let (keep, stale): (Vec<_>, Vec<_>) = planes.drain(..).partition(|p| {
                specs
                    .iter()
                    .any(|s| s.group_id == p.spec.group_id && s.proxy == p.spec.proxy)
            });
            *planes = keep;
            for spec in specs {
                if !planes.iter().any(|p| p.spec.group_id == spec.group_id) {
                    planes.push(self.start(state, spec));
                }
            }
            stale
        };
        stop(stale).await;
    }

    fn start(&self, state: &Arc<State>, spec: DataPlaneSpec) -> Supervised {
        let health = Arc::new(Mutex::new(Health::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(
            self.gateway_bin.clone(),
            self.upstream_deny,
            state.endpoints.cluster,
            spec.clone(),
            Arc::clone(&health),
            stopped,
        ));
        Supervised {
            spec,
            health,
            stop,
            task,
        }
    }

    pub async fn remove_control_plane(&self, control_plane_id: &str) {
        let planes = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.remove(control_plane_id).unwrap_or_default()
        };
        stop(planes).await;
    }

    pub async fn stop_all(&self) {
        let planes: Vec<Supervised> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().flat_map(|(_, p)| p).collect()
        };
        stop(planes).await;
    }
}

async fn stop(planes: Vec<Supervised>) {
    for plane in &planes {
        let _ = plane.stop.send(true);
    }
    for plane in planes {
        let _ = plane.task.await;
    }
}

/// Keeps one `gateway` running until told to stop; restarts it with a growing pause (up to
/// 5 s) when it exits on its own.
async fn supervise(
    gateway: PathBuf,
    upstream_deny: Option<&'static str>,
    cluster: SocketAddr,
    spec: DataPlaneSpec,
    health: Arc<Mutex<Health>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pause = Duration::from_millis(200);
    // Folders made before they were private (the credentials are written into them).
    if let Err(e) = make_private(&spec.dir) {
        log::warn!("data plane {}: {e}", spec.group_id);
    }
    let admin = admin_socket(&spec.dir).map_or_else(
        || {
            log::warn!(
                "data plane {}: {} is too long for a UNIX socket's path; its admin API is off",
                spec.group_id,
                spec.dir.join(ADMIN_SOCKET).display()
            );
            "off".to_owned()
        },
        |socket| format!("unix:{}", socket.display()),
    );
    loop {
        let mut command = tokio::process::Command::new(&gateway);
        command
            .arg("run")
            .arg("--listen")
            .arg(spec.proxy.to_string())
            .arg("--admin-listen")
            .arg(&admin)
            .args(upstream_deny.map(|deny| format!("--upstream-deny={deny}")))
            .arg("--no-access-log")
            .arg("--control-plane")
            .arg(cluster.to_string())
            .arg("--control-plane-id")
            .arg(&spec.control_plane_id)
            .arg("--node-id")
            .arg(&spec.group_id)
            .arg("--cluster-cert")
            .arg(spec.dir.join("cluster.crt"))
            .arg("--cluster-cert-key")
            .arg(spec.dir.join("cluster.key"))
            .arg("--cluster-ca-cert")
            .arg(spec.dir.join("cluster-ca.crt"))
            .arg("--cluster-cache-dir")
            .arg(spec.dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let message = format!("starting {}: {e}", gateway.display());
                log::error!("data plane {}: {message}", spec.group_id);
                record_exit(&health, message);
                if wait_or_stop(&mut stop, pause).await {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        health.lock().unwrap_or_else(|e| e.into_inner()).running = true;
        log::info!(
            "data plane {} of control plane {} proxying on http://{}",
            spec.group_id,
            spec.control_plane_id,
            spec.proxy
        );
        tokio::select! {
            status = child.wait() => {
                let message = match status {
                    Ok(status) => format!("gateway exited: {status}"),
                    Err(e) => format!("waiting for gateway: {e}"),
                };
                log::warn!("data plane {}: {message}; restarting", spec.group_id);
                record_exit(&health, message);
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                health.lock().unwrap_or_else(|e| e.into_inner()).running = false;
                return;
            }
        }
        if wait_or_stop(&mut stop, pause).await {
            return;
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn record_exit(health: &Mutex<Health>, message: String) {
    let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
    health.running = false;
    health.restarts += 1;
    health.last_exit = Some(message);
}

/// Waits `pause`; true when told to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => true,
    }
}

/// A free port on loopback for a new data plane (kept for its lifetime in the stored
/// configuration).
pub fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.local_addr()
}

/// The admin API's socket in a data plane's folder.
const ADMIN_SOCKET: &str = "admin.sock";

/// The longest path a UNIX socket address holds on Linux (`sun_path`, less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The admin socket of the data plane in `dir`; none when its path is too long to bind (the
/// gateway would fail to start, again and again).
fn admin_socket(dir: &Path) -> Option<PathBuf> {
    let socket = dir.join(ADMIN_SOCKET);
    (socket.as_os_str().len() <= MAX_SOCKET_PATH).then_some(socket)
}

/// Only the control plane's user may enter a data plane's folder: it holds the gateway's
/// private key and admin socket.
fn make_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("making {} private: {e}", dir.display()))
}

/// Writes a data plane's certificate, key and the control plane's CA into its folder.
pub fn write_credentials(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("cache")).map_err(|e| format!("{}: {e}", dir.display()))?;
    make_private(dir)?;
    for (file, contents) in [
        ("cluster.crt", cert_pem),
        ("cluster.key", key_pem),
        ("cluster-ca.crt", ca_pem),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Restarts the data planes of every stored cloud gateway configuration (after a control
/// plane restart).
pub async fn restore(state: Arc<State>) {
    let store = Arc::clone(&state.store);
    let stored = tokio::task::spawn_blocking(move || crate::api::cloud_gateway_specs(&store)).await;
    match stored {
        Ok(Ok(all)) => {
            for (control_plane_id, specs) in all {
                state
                    .provisioner
                    .apply(&state, &control_plane_id, specs)
                    .await;
            }
        }
        Ok(Err(e)) => log::error!("restoring cloud gateways: {e}"),
        Err(e) => log::error!("restoring cloud gateways: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_socket_is_in_the_data_planes_folder_if_its_path_fits() {
        assert_eq!(
            admin_socket(Path::new("/var/lib/cp/cloud-gateways/g1")),
            Some(PathBuf::from("/var/lib/cp/cloud-gateways/g1/admin.sock"))
        );
        let longest = format!("/{}", "d".repeat(MAX_SOCKET_PATH - "/admin.sock".len() - 1));
        assert!(admin_socket(Path::new(&longest)).is_some());
        assert_eq!(admin_socket(Path::new(&format!("{longest}d"))), None);
    }
}
