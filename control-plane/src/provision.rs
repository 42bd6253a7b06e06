//! Konnect's cloud gateways, on one machine: for each data plane group of a
//! `PUT /v3/cloud-gateways/configurations`, the control plane runs a local `gateway`
//! process connected back to it (its own client certificate, pinned for that control plane)
//! and restarts it if it dies. Ports are chosen once and stored, so a proxy URL survives
//! restarts.
//!
//! A data plane outlives the control plane's process, as Konnect's do: each gateway runs in a
//! process group of its own, is never killed when the control plane stops or crashes, and
//! keeps serving its configuration (and reconnects) meanwhile. Its pidfile in its group's
//! folder (pid and the process's start time, so that a reused pid is not taken for it) lets
//! the next control plane adopt it rather than start a second one; an adopted gateway is
//! watched through `/proc`, a child by waiting for it. Removing a configuration drains its
//! gateways (SIGTERM, then SIGKILL if the drain outlasts the gateway's own timeout) and
//! removes their folders; a folder whose configuration is gone, left by a crash, goes at the
//! next start.
//!
//! A tenant's service can point at any port on loopback and be reached through the tenant's
//! own proxy, so a provisioned gateway has no admin port there: its admin API is a UNIX
//! socket in its private folder, for the operator, and read-only, as the gateway follows its
//! control plane. The control plane reads nothing from it: health comes from the process
//! and from the gateway's pings.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Options, State};

/// One data plane process to keep running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneSpec {
    pub control_plane_id: String,
    /// The data plane group's id (a replica's own id), also the gateway's node id.
    pub group_id: String,
    pub proxy: SocketAddr,
    /// The TLS listener (`gateway run --tls-listen`), serving the control plane's custom
    /// domains' certificates by SNI; `None` only for a gateway stored before gateways had
    /// one, until the control plane's start gives it one (`api::assign_tls_ports`).
    pub tls: Option<SocketAddr>,
    /// Config cache, pidfile, log and platform plugins live here.
    pub dir: PathBuf,
    /// The group's folder, where its certificate, key and the CA are: `dir` for a group's
    /// first gateway; its other replicas present the same pinned certificate.
    pub credentials: PathBuf,
    /// The Redis the group's replicas share their rate limit in; `None` for a group of one
    /// gateway, which counts locally.
    pub shared: Option<crate::config::SharedBudget>,
}

impl DataPlaneSpec {
    /// A group's second or later gateway, whose credentials are its group's.
    fn is_replica(&self) -> bool {
        self.credentials != self.dir
    }
}

/// What the supervisor knows about a running data plane.
#[derive(Clone, Debug, Default)]
struct Health {
    running: bool,
    restarts: u32,
    last_exit: Option<String>,
}

/// What a supervisor does with its gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Run,
    /// The control plane stops: the gateway keeps serving, for the next one to adopt.
    Detach,
    /// Its configuration is gone: drain the gateway, then remove its folder.
    Remove,
}

struct Supervised {
    spec: DataPlaneSpec,
    health: Arc<Mutex<Health>>,
    order: watch::Sender<Order>,
    task: JoinHandle<()>,
}

/// The folder of the data dir where provisioned gateways keep compiled modules.
const MODULE_CACHE: &str = "gateway-module-cache";

/// How a gateway is started.
#[derive(Clone, Debug)]
struct Launch {
    gateway: PathBuf,
    /// The gateway's `--upstream-deny`: `private` unless the platform allows it.
    upstream_deny: Option<&'static str>,
    cluster: SocketAddr,
    /// The modules this control plane hands out: the platform plugins' too.
    modules_dir: PathBuf,
    /// Their compiled form, shared by every gateway of this data dir, so that a gateway
    /// (re)started compiles none that another compiled before.
    module_cache_dir: PathBuf,
}

pub struct Provisioner {
    gateway_bin: PathBuf,
    upstream_deny: Option<&'static str>,
    running: Mutex<HashMap<String, Vec<Supervised>>>,
    /// One reconciliation at a time, each from the committed configurations: concurrent
    /// writes end with what the last commit says, whatever order their requests finish in.
    reconciling: tokio::sync::Mutex<()>,
}

/// The first pause before starting a gateway that exited again, doubled at each exit in a
/// row up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// A gateway that ran this long was healthy: its exit starts the pauses over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often an adopted gateway (not this process's child, so nothing to wait for) is
/// looked up in `/proc`.
const POLL: Duration = Duration::from_millis(250);
/// SIGTERM to SIGKILL: the gateway's own drain timeout (30 s) and a margin to exit.
const DRAIN: Duration = Duration::from_secs(35);
/// A gateway's log is started over (the previous one kept as `gateway.log.1`) past this.
const MAX_LOG: u64 = 8 << 20;

const PIDFILE: &str = "gateway.pid";
const LOG: &str = "gateway.log";

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
            reconciling: tokio::sync::Mutex::new(()),
        }
    }

    /// The proxy URLs of a control plane's provisioned data planes: each one's plain
    /// listener, then its TLS one.
    pub fn proxy_urls(&self, control_plane_id: &str) -> Vec<Value> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(control_plane_id)
            .map(|planes| {
                planes
                    .iter()
                    .flat_map(|p| {
                        let url = |addr: SocketAddr, protocol: &str| {
                            json!({
                                "host": addr.ip().to_string(),
                                "port": addr.port(),
                                "protocol": protocol,
                            })
                        };
                        std::iter::once(url(p.spec.proxy, "http"))
                            .chain(p.spec.tls.map(|tls| url(tls, "https")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The plain proxy addresses of a control plane's provisioned data planes.
    pub fn proxies(&self, control_plane_id: &str) -> Vec<SocketAddr> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(control_plane_id)
            .map(|planes| planes.iter().map(|p| p.spec.proxy).collect())
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

    /// Supervises exactly `specs` for the control plane: starts (or adopts) what is new,
    /// leaves the rest running, and returns what is no longer wanted, for the caller to
    /// remove outside its turn.
    async fn apply(
        &self,
        state: &Arc<State>,
        control_plane_id: &str,
        specs: Vec<DataPlaneSpec>,
    ) -> Vec<Supervised> {
        let (stale, changed, new) = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let planes = running.entry(control_plane_id.to_owned()).or_default();
            let (keep, stale): (Vec<_>, Vec<_>) = planes
                .drain(..)
                .partition(|p| specs.iter().any(|s| s.group_id == p.spec.group_id));
            // A group whose budget changed (its replicas went from one to several, or back,
            // or the Redis moved) keeps its folder and credentials; its gateway is started
            // again with the new platform plugins by the next supervisor, which finds them
            // stale.
            let (keep, changed): (Vec<_>, Vec<_>) =
                keep.into_iter().partition(|p| specs.contains(&p.spec));
            *planes = keep;
            let new: Vec<DataPlaneSpec> = specs
                .into_iter()
                .filter(|s| !planes.iter().any(|p| p.spec.group_id == s.group_id))
                .collect();
            if planes.is_empty() && new.is_empty() {
                running.remove(control_plane_id);
            }
            (stale, changed, new)
        };
        for plane in &changed {
            let _ = plane.order.send(Order::Detach);
        }
        for plane in changed {
            let _ = plane.task.await;
        }
        let launch = Launch {
            gateway: self.gateway_bin.clone(),
            upstream_deny: self.upstream_deny,
            cluster: state.endpoints.cluster,
            modules_dir: state.options.modules_dir.clone(),
            module_cache_dir: state.options.data_dir.join(MODULE_CACHE),
        };
        for spec in new {
            let prepared = {
                let (state, spec) = (Arc::clone(state), spec.clone());
                tokio::task::spawn_blocking(move || prepare(&state, &spec)).await
            };
            match prepared {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("data plane {}: {e}", spec.group_id),
                Err(e) => log::error!("data plane {}: {e}", spec.group_id),
            }
            let plane = start(launch.clone(), spec);
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running
                .entry(control_plane_id.to_owned())
                .or_default()
                .push(plane);
        }
        stale
    }

    /// Stops supervising every data plane and leaves each gateway running, for the next
    /// control plane to adopt.
    pub async fn detach_all(&self) {
        let planes: Vec<Supervised> = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().flat_map(|(_, p)| p).collect()
        };
        for plane in &planes {
            let _ = plane.order.send(Order::Detach);
        }
        for plane in planes {
            let _ = plane.task.await;
        }
    }
}

fn start(launch: Launch, spec: DataPlaneSpec) -> Supervised {
    let health = Arc::new(Mutex::new(Health::default()));
    let (order, orders) = watch::channel(Order::Run);
    let task = tokio::spawn(supervise(launch, spec.clone(), Arc::clone(&health), orders));
    Supervised {
        spec,
        health,
        order,
        task,
    }
}

/// Drains and removes data planes no longer wanted.
async fn remove(planes: Vec<Supervised>) {
    for plane in &planes {
        let _ = plane.order.send(Order::Remove);
    }
    for plane in planes {
        let _ = plane.task.await;
    }
}

/// Makes what runs for `control_plane_id` what its committed cloud gateway configuration
/// says: starts or adopts the groups it has, drains and removes the ones it no longer has
/// (all of them when it, or its control plane, is gone), and the folders of groups a later
/// commit replaced before they ever ran.
pub async fn reconcile(state: &Arc<State>, control_plane_id: &str) {
    let turn = state.provisioner.reconciling.lock().await;
    let specs = match stored_specs(state, Some(control_plane_id.to_owned())).await {
        Ok(all) => all.into_iter().flat_map(|(_, specs)| specs).collect(),
        Err(e) => {
            // What runs stays as it is: a read that failed says nothing of what to stop.
            log::error!("cloud gateways of control plane {control_plane_id}: {e}");
            return;
        }
    };
    let stale = state
        .provisioner
        .apply(state, control_plane_id, specs)
        .await;
    drop(turn);
    remove(stale).await;
    sweep(state).await;
}

/// At start: adopts or starts the data planes of every stored configuration, and drains and
/// removes what a crash left of removed ones.
pub async fn restore(state: Arc<State>) {
    let turn = state.provisioner.reconciling.lock().await;
    let all = match stored_specs(&state, None).await {
        Ok(all) => all,
        Err(e) => {
            log::error!("restoring cloud gateways: {e}");
            return;
        }
    };
    for (control_plane_id, specs) in all {
        let stale = state
            .provisioner
            .apply(&state, &control_plane_id, specs)
            .await;
        remove(stale).await;
    }
    drop(turn);
    sweep(&state).await;
}

/// Drains and removes every group folder no stored configuration has: left by a crash, by a
/// transaction that failed after writing it, or by a group a later commit replaced before it
/// ran.
async fn sweep(state: &Arc<State>) {
    // Listed before the configurations are read: a folder a PUT writes before its commit is
    // in the store by the time the store answers (the PUT holds it meanwhile), or is
    // abandoned; one written after this listing is not in it.
    let on_disk = group_folders(&state.options.data_dir);
    if on_disk.is_empty() {
        return;
    }
    let wanted: HashSet<PathBuf> = match stored_specs(state, None).await {
        Ok(all) => all
            .iter()
            .flat_map(|(_, specs)| specs.iter().map(|s| s.dir.clone()))
            .collect(),
        Err(e) => {
            log::error!("cloud gateways: {e}");
            return;
        }
    };
    let leftovers = on_disk.into_iter().filter(|dir| !wanted.contains(dir));
    let removals: Vec<_> = leftovers
        .map(|dir| tokio::spawn(remove_leftover(dir)))
        .collect();
    for removal in removals {
        let _ = removal.await;
    }
}

/// The data plane groups' folders in a data directory.
fn group_folders(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("cloud-gateways"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Drains every data plane provisioned in `data_dir`, as `control-plane stop-data-planes`
/// (a host taken out of service, or the end of a local session), and returns how many ran.
/// Their folders and configurations stay: the next control plane on `data_dir` starts them
/// again. A control plane running on `data_dir` would start them again at once.
pub async fn stop_data_planes(data_dir: &Path) -> usize {
    let drains: Vec<_> = group_folders(data_dir)
        .iter()
        .filter_map(|dir| Gateway::adopt(dir))
        .map(|gateway| tokio::spawn(gateway.drain()))
        .collect();
    let stopped = drains.len();
    for drain in drains {
        let _ = drain.await;
    }
    stopped
}

async fn stored_specs(
    state: &Arc<State>,
    control_plane_id: Option<String>,
) -> Result<Vec<(String, Vec<DataPlaneSpec>)>, String> {
    let store = Arc::clone(&state.store);
    let redis = state.options.redis.clone();
    tokio::task::spawn_blocking(move || {
        crate::api::cloud_gateway_specs(&store, control_plane_id.as_deref(), redis.as_ref())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A group folder whose configuration is gone: its gateway, if one still runs, is drained,
/// and the folder removed.
async fn remove_leftover(dir: PathBuf) {
    if let Some(gateway) = Gateway::adopt(&dir) {
        log::info!(
            "{}: its configuration is gone; draining its gateway (pid {})",
            dir.display(),
            gateway.pid
        );
        gateway.drain().await;
    }
    remove_folder(&dir);
}

fn remove_folder(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => log::info!("removed {}", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::error!("removing {}: {e}", dir.display()),
    }
}

/// Before a group's gateway starts: its folders private, its credentials there and the CA
/// current. Credentials a crash lost (the store has the group, the folder not its key) are
/// issued again, and the new certificate pinned in place of the old.
fn prepare(state: &State, spec: &DataPlaneSpec) -> Result<(), String> {
    make_folders(&spec.dir)?;
    if spec.is_replica() {
        // Its credentials are its group's, kept by the group's first gateway.
        return Ok(());
    }
    let present = |file: &str| {
        std::fs::metadata(spec.dir.join(file)).is_ok_and(|m| m.is_file() && m.len() > 0)
    };
    if !(present("cluster.crt") && present("cluster.key")) {
        log::warn!(
            "data plane {}: its certificate or key is missing; issuing and pinning a new one",
            spec.group_id
        );
        return crate::api::reissue_credentials(&state.store, &state.identity.ca_pem, spec);
    }
    let ca = spec.dir.join("cluster-ca.crt");
    if std::fs::read_to_string(&ca).ok().as_deref() != Some(state.identity.ca_pem.as_str()) {
        write_private(&spec.dir, "cluster-ca.crt", &state.identity.ca_pem)?;
        sync_folder(&spec.dir)?;
    }
    // Files written before they were private.
    for file in ["cluster.crt", "cluster.key", "cluster-ca.crt", LOG] {
        let path = spec.dir.join(file);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("making {} private: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Keeps one `gateway` running for `spec` until told otherwise: adopts the one its pidfile
/// names, else starts one; starts it again, after a growing pause (up to 5 s, started over
/// after a healthy run), when it exits on its own.
async fn supervise(
    launch: Launch,
    spec: DataPlaneSpec,
    health: Arc<Mutex<Health>>,
    mut orders: watch::Receiver<Order>,
) {
    let mut pause = FIRST_PAUSE;
    loop {
        let gateway = match Gateway::adopt(&spec.dir) {
            // Its group's port is not the one it was started on (a store restored from a
            // backup, say): its proxy URL would not reach it.
            Some(gateway) if !runs_with(gateway.pid, spec.proxy.to_string()) => {
                log::warn!(
                    "data plane {}: its running gateway (pid {}) does not listen on {}; draining it",
                    spec.group_id,
                    gateway.pid,
                    spec.proxy
                );
                gateway.drain().await;
                launch.spawn(&spec)
            }
            // Started before its group had a TLS listener (or on another port): the custom
            // domains' certificates would have nowhere to be served.
            Some(gateway)
                if spec
                    .tls
                    .is_some_and(|tls| !runs_with(gateway.pid, tls.to_string())) =>
            {
                log::info!(
                    "data plane {}: its running gateway (pid {}) has no TLS listener on {}; \
                     starting it again",
                    spec.group_id,
                    gateway.pid,
                    spec.tls.map(|tls| tls.to_string()).unwrap_or_default()
                );
                gateway.drain().await;
                launch.spawn(&spec)
            }
            // Started without the platform's plugins (by a control plane from before them):
            // it would serve the tenant's configuration without the serverless limits.
            Some(gateway)
                if !runs_with(
                    gateway.pid,
                    spec.dir.join(crate::config::PLATFORM_PLUGINS_FILE),
                ) =>
            {
                log::warn!(
                    "data plane {}: its running gateway (pid {}) runs without the platform \
                     plugins; draining it",
                    spec.group_id,
                    gateway.pid
                );
                gateway.drain().await;
                launch.spawn(&spec)
            }
            // Started with other platform plugins: a group whose replicas went from one to
            // several (or back) counts in Redis (or locally) from now on.
            Some(gateway) if !platform_plugins_are(&spec) => {
                log::info!(
                    "data plane {}: its running gateway (pid {}) runs other platform plugins \
                     (its group's rate limit is {} now); starting it again",
                    spec.group_id,
                    gateway.pid,
                    if spec.shared.is_some() {
                        "shared in Redis"
                    } else {
                        "local"
                    }
                );
                gateway.drain().await;
                launch.spawn(&spec)
            }
            Some(gateway) => {
                log::info!(
                    "data plane {} of control plane {}: adopted its running gateway (pid {}) on http://{}",
                    spec.group_id,
                    spec.control_plane_id,
                    gateway.pid,
                    spec.proxy
                );
                Ok(gateway)
            }
            None => launch.spawn(&spec),
        };
        let started = Instant::now();
        let outcome = match gateway {
            Ok(mut gateway) => {
                health.lock().unwrap_or_else(|e| e.into_inner()).running = true;
                let outcome = tokio::select! {
                    exit = gateway.exited() => Err(exit),
                    order = next_order(&mut orders) => Ok(order),
                };
                match outcome {
                    Ok(order) => {
                        finish(order, Some(gateway), &spec).await;
                        health.lock().unwrap_or_else(|e| e.into_inner()).running = false;
                        return;
                    }
                    Err(exit) => format!("{exit}{}", last_words(&spec.dir)),
                }
            }
            Err(e) => e,
        };
        log::warn!("data plane {}: {outcome}; restarting", spec.group_id);
        record_exit(&health, outcome);
        let wait = restart_pause(pause, started.elapsed());
        pause = (wait * 2).min(MAX_PAUSE);
        let order = tokio::select! {
            _ = tokio::time::sleep(wait) => continue,
            order = next_order(&mut orders) => order,
        };
        finish(order, None, &spec).await;
        return;
    }
}

/// Whether the platform plugins file in the data plane's folder, the one its gateway read at
/// its start, is what the spec asks for.
fn platform_plugins_are(spec: &DataPlaneSpec) -> bool {
    std::fs::read_to_string(spec.dir.join(crate::config::PLATFORM_PLUGINS_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|file| file == crate::config::platform_plugins(spec.shared.as_ref()))
}

/// The pause before starting a gateway that ran for `ran` again: `pause` (the one after the
/// previous exit, doubled), or the first one after a healthy run.
fn restart_pause(pause: Duration, ran: Duration) -> Duration {
    if ran >= HEALTHY_RUN {
        FIRST_PAUSE
    } else {
        pause
    }
}

/// Waits for an order other than running; a provisioner gone counts as detaching.
async fn next_order(orders: &mut watch::Receiver<Order>) -> Order {
    match orders.wait_for(|order| *order != Order::Run).await {
        Ok(order) => *order,
        Err(_) => Order::Detach,
    }
}

async fn finish(order: Order, gateway: Option<Gateway>, spec: &DataPlaneSpec) {
    if order != Order::Remove {
        return;
    }
    if let Some(gateway) = gateway {
        log::info!(
            "data plane {}: its configuration is gone; draining its gateway (pid {})",
            spec.group_id,
            gateway.pid
        );
        gateway.drain().await;
    }
    remove_folder(&spec.dir);
}

fn record_exit(health: &Mutex<Health>, message: String) {
    let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
    health.running = false;
    health.restarts += 1;
    health.last_exit = Some(message);
}

impl Launch {
    fn spawn(&self, spec: &DataPlaneSpec) -> Result<Gateway, String> {
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
        // The serverless limits, the platform's layer of plugins: this control plane's, never
        // the tenant's configuration's; a data plane never starts without them.
        let platform = spec.dir.join(crate::config::PLATFORM_PLUGINS_FILE);
        crate::config::write_platform_plugins(&platform, spec.shared.as_ref())?;
        let log = open_log(&spec.dir)?;
        let mut command = tokio::process::Command::new(&self.gateway);
        command
            .arg("run")
            .arg("--listen")
            .arg(spec.proxy.to_string())
            .arg("--admin-listen")
            .arg(&admin)
            .args(
                spec.tls
                    .iter()
                    .flat_map(|tls| ["--tls-listen".to_owned(), tls.to_string()]),
            )
            .args(
                self.upstream_deny
                    .map(|deny| format!("--upstream-deny={deny}")),
            )
            .arg("--no-access-log")
            .arg("--platform-plugins")
            .arg(&platform)
            .arg("--modules-dir")
            .arg(&self.modules_dir)
            .arg("--module-cache-dir")
            .arg(&self.module_cache_dir)
            .arg("--control-plane")
            .arg(self.cluster.to_string())
            .arg("--control-plane-id")
            .arg(&spec.control_plane_id)
            .arg("--node-id")
            .arg(&spec.group_id)
            .arg("--cluster-cert")
            .arg(spec.credentials.join("cluster.crt"))
            .arg("--cluster-cert-key")
            .arg(spec.credentials.join("cluster.key"))
            .arg("--cluster-ca-cert")
            .arg(spec.credentials.join("cluster-ca.crt"))
            .arg("--cluster-cache-dir")
            .arg(spec.dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A group of its own: a terminal's Ctrl-C, or a signal to the control plane's
            // group, is not for the data planes. Not killed on drop: they outlive us.
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.gateway.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the gateway exited as it started".to_owned())?;
        // Read at once: the child is not reaped before we wait for it, so the pid is its.
        let start_time = start_time(pid).unwrap_or_default();
        if let Err(e) = write_pidfile(&spec.dir, pid, start_time) {
            log::error!("data plane {}: {e}", spec.group_id);
        }
        log::info!(
            "data plane {} of control plane {} proxying on http://{} (pid {pid})",
            spec.group_id,
            spec.control_plane_id,
            spec.proxy
        );
        Ok(Gateway {
            pid,
            start_time,
            child: Some(child),
        })
    }
}

/// A gateway process: this control plane's child, or one adopted from an earlier one.
struct Gateway {
    pid: u32,
    /// When it started (`/proc/<pid>/stat`), in clock ticks after boot: with the pid, who it is.
    start_time: u64,
    child: Option<tokio::process::Child>,
}

impl Gateway {
    /// The gateway of the group in `dir` that is running: the one its pidfile names if that
    /// process is still the one it was, else one whose command line names the group's cache
    /// (a crash between its start and its pidfile).
    fn adopt(dir: &Path) -> Option<Gateway> {
        let cache = dir.join("cache");
        let named = read_pidfile(dir)
            .filter(|(pid, start)| start_time(*pid) == Some(*start) && runs_with(*pid, &cache));
        let (pid, start_time) = match named {
            Some(found) => found,
            None => {
                let found = std::fs::read_dir("/proc")
                    .ok()?
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| runs_with(*pid, &cache))
                    .find_map(|pid| Some((pid, start_time(pid)?)))?;
                if let Err(e) = write_pidfile(dir, found.0, found.1) {
                    log::error!("{e}");
                }
                found
            }
        };
        Some(Gateway {
            pid,
            start_time,
            child: None,
        })
    }

    fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// Once the process is gone: how it ended.
    async fn exited(&mut self) -> String {
        if let Some(child) = &mut self.child {
            return match child.wait().await {
                Ok(status) => format!("gateway exited: {status}"),
                Err(e) => format!("waiting for gateway: {e}"),
            };
        }
        while self.alive() {
            tokio::time::sleep(POLL).await;
        }
        // A gateway adopted by an earlier control plane of this same process (a restart in
        // place) is still our child: reap it rather than leave a zombie.
        // SAFETY: waitpid with WNOHANG on one pid only reaps that pid if it is our exited
        // child; otherwise it fails with ECHILD and changes nothing.
        unsafe {
            libc::waitpid(self.pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG);
        }
        format!("gateway (pid {}, adopted) exited", self.pid)
    }

    fn signal(&self, signal: libc::c_int) {
        // Checked right before: a pid the gateway no longer has may be someone else's.
        if self.alive() {
            // SAFETY: kill(2) has no memory effects; the pid is the gateway's (checked above).
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, which makes the gateway stop accepting and finish what is in flight; SIGKILL
    /// if it has not exited after its drain timeout.
    async fn drain(mut self) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(DRAIN, self.exited()).await.is_err() {
            log::warn!(
                "gateway {}: still running {DRAIN:?} after SIGTERM; killing it",
                self.pid
            );
            self.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.exited()).await;
        }
    }
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/<pid>/stat`); `None`
/// when it is gone, or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` was started with `arg` (a group's own cache folder, its address).
fn runs_with(pid: u32, arg: impl AsRef<std::ffi::OsStr>) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let arg = arg.as_ref().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|a| a == arg)
}

fn read_pidfile(dir: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(dir.join(PIDFILE)).ok()?;
    let mut fields = text.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// `<pid> <start time>`, replaced whole (a reader never sees half of it).
fn write_pidfile(dir: &Path, pid: u32, start_time: u64) -> Result<(), String> {
    write_private(dir, PIDFILE, &format!("{pid} {start_time}\n"))
}

/// The gateway's standard error, appended to `gateway.log` in its folder (0600: it may name
/// the tenant's services), started over past [`MAX_LOG`].
fn open_log(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join(LOG);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG) {
        let _ = std::fs::rename(&path, dir.join(format!("{LOG}.1")));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// The last line the gateway logged, to say why it exited (`: <line>`), or nothing.
fn last_words(dir: &Path) -> String {
    let Ok(mut log) = std::fs::File::open(dir.join(LOG)) else {
        return String::new();
    };
    let len = log.metadata().map(|m| m.len()).unwrap_or_default();
    let mut tail = Vec::new();
    if log
        .seek(std::io::SeekFrom::Start(len.saturating_sub(1024)))
        .is_err()
        || log.read_to_end(&mut tail).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
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

/// A data plane's folder and its cache, made (or made again) 0700: only the control plane's
/// user may enter them, as they hold the gateway's private key, admin socket and cached
/// configuration (the tenant's secrets).
fn make_folders(dir: &Path) -> Result<(), String> {
    for folder in [dir.to_path_buf(), dir.join("cache")] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&folder)
            .and_then(|()| {
                std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| format!("making {} private: {e}", folder.display()))?;
    }
    Ok(())
}

/// Writes `dir/file` (0600) whole or not at all: a temporary file, synced, renamed over it.
fn write_private(dir: &Path, file: &str, contents: &str) -> Result<(), String> {
    let path = dir.join(file);
    let temporary = dir.join(format!(".{file}.tmp"));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| f.write_all(contents.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Makes the renames in `dir` durable.
fn sync_folder(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// Writes a data plane's certificate, key and the control plane's CA into its folder,
/// durably: called before the transaction that stores them commits, so that a crash never
/// leaves the store with a group whose key is not on disk.
pub fn write_credentials(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(), String> {
    make_folders(dir)?;
    for (file, contents) in [
        ("cluster.crt", cert_pem),
        ("cluster.key", key_pem),
        ("cluster-ca.crt", ca_pem),
    ] {
        write_private(dir, file, contents)?;
    }
    sync_folder(dir)?;
    if let Some(parent) = dir.parent() {
        sync_folder(parent)?;
    }
    Ok(())
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

    /// Review finding D24: a gateway that crashes again and again waits longer each time,
    /// but one that crashes after a healthy run starts again at once (before, the pause only
    /// grew, for the life of the control plane).
    #[test]
    fn the_restart_pause_starts_over_after_a_healthy_run() {
        let long = Duration::from_secs(4);
        assert_eq!(restart_pause(long, Duration::from_secs(1)), long);
        assert_eq!(restart_pause(long, HEALTHY_RUN), FIRST_PAUSE);
    }

    /// A process is told from another that got its pid by its start time; a zombie is gone.
    #[test]
    fn a_process_is_known_by_its_pid_and_start_time() {
        let me = std::process::id();
        let started = start_time(me).expect("this process's start time");
        assert_eq!(start_time(me), Some(started));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawning true");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Exited, not reaped yet: a zombie, no longer running.
        while start_time(pid).is_some() {
            assert!(Instant::now() < deadline, "true still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.wait().expect("reaped").success());
    }

    #[test]
    fn pidfiles_are_private_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_pidfile(dir.path(), 42, 1234).expect("pidfile");
        assert_eq!(read_pidfile(dir.path()), Some((42, 1234)));
        let mode = std::fs::metadata(dir.path().join(PIDFILE))
            .expect("pidfile")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
