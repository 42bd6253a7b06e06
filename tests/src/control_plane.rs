//! A real control plane for tests: in-process, on loopback ports, with its data directory
//! in a temporary folder, and a client for its API. [`TestControlPlane::spawn`] runs the
//! `control-plane` binary instead, for a test that kills it with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_plane::{ControlPlane, Endpoints, Options};
use serde_json::{json, Value};

use crate::client::{self, Protocol, Request, RequestBody, Response};

pub const TOKEN: &str = "kpat_test-token";

pub struct TestControlPlane {
    control_plane: Option<ControlPlane>,
    /// The `control-plane serve` process, when it runs as one ([`TestControlPlane::spawn`]).
    process: Option<Child>,
    /// Restarts make a process again rather than an in-process control plane.
    separate: bool,
    data_dir: PathBuf,
    endpoints: Endpoints,
}

/// The `control-plane` binary beside the test binary's folder (`target/debug/deps/..`).
pub fn control_plane_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("control-plane"))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p control-plane --bins`",
        bin.display()
    );
    bin
}

/// Runs `control-plane serve` on `data_dir` with the in-process control plane's options, on
/// `endpoints` or on ports the kernel picks (read back from its start-up line).
fn spawn_process(data_dir: &Path, endpoints: Option<Endpoints>) -> (Child, Endpoints) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut child = Command::new(control_plane_binary())
        .arg("serve")
        .args(["--listen", &endpoints.map_or(any, |e| e.api).to_string()])
        .args([
            "--cluster-listen",
            &endpoints.map_or(any, |e| e.cluster).to_string(),
        ])
        .args([
            "--xds-listen",
            &endpoints.map_or(any, |e| e.xds).to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--token", TOKEN, "--ping-interval", "10"])
        .arg("--modules-dir")
        .arg(crate::paths::wasm_dir())
        .arg("--allow-private-upstreams")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (lines, started) = std::sync::mpsc::channel();
    // Reads on to the end: a full pipe would block the control plane.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = started.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the control plane process printed no start-up line within 60 s");
        };
        // "control plane: API http://A · gateway data planes B · Envoy xDS C"
        if !line.starts_with("control plane: API ") {
            continue;
        }
        let addrs: Vec<SocketAddr> = line
            .split(" · ")
            .filter_map(|part| {
                let addr = part.rsplit(' ').next()?;
                addr.trim_start_matches("http://").parse().ok()
            })
            .collect();
        let [api, cluster, xds] = addrs[..] else {
            panic!("unexpected start-up line: {line}");
        };
        return (child, Endpoints { api, cluster, xds });
    }
}

/// Every process whose command line mentions `dir`: the gateways provisioned in it.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
                .then_some(pid)
        })
        .filter(|pid| *pid != std::process::id())
        .collect()
}

/// Sends `signal` (`-TERM`, `-KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn options(data_dir: &Path, endpoints: Option<Endpoints>) -> Options {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Options {
        listen: endpoints.map_or(any, |e| e.api),
        cluster_listen: endpoints.map_or(any, |e| e.cluster),
        xds_listen: endpoints.map_or(any, |e| e.xds),
        data_dir: data_dir.to_path_buf(),
        token: Some(TOKEN.to_owned()),
        // Generous: a data plane compiling modules in a debug build can be busy for seconds.
        ping_interval: std::time::Duration::from_secs(10),
        modules_dir: crate::paths::wasm_dir(),
        // The tests' backends are echo upstreams on loopback.
        allow_private_upstreams: true,
        ..Options::default()
    }
}

/// What [`TestControlPlane::provision_serverless`] made.
pub struct Provisioned {
    pub control_plane_id: String,
    pub group_id: String,
    pub proxy: SocketAddr,
    /// Its TLS listener (custom domains' certificates, by SNI).
    pub tls: SocketAddr,
}

impl TestControlPlane {
    /// Starts on free ports with `data_dir` (created if missing).
    pub fn start(data_dir: &Path) -> TestControlPlane {
        TestControlPlane::start_with(options(data_dir, None))
    }

    /// Starts with these certificate settings for custom domains (`--acme-directory`...).
    pub fn start_with_certificates(
        data_dir: &Path,
        certificates: control_plane::acme::Settings,
    ) -> TestControlPlane {
        TestControlPlane::start_with(Options {
            certificates,
            ..options(data_dir, None)
        })
    }

    /// Starts with `--redis`: serverless groups may run several replicas, which share their
    /// rate limit in `redis`.
    pub fn start_with_redis(
        data_dir: &Path,
        redis: control_plane::config::Redis,
    ) -> TestControlPlane {
        TestControlPlane::start_with(Options {
            redis: Some(redis),
            ..options(data_dir, None)
        })
    }

    /// Starts as a platform does by default: provisioned data planes may not reach loopback,
    /// private or link-local upstreams.
    pub fn start_denying_private_upstreams(data_dir: &Path) -> TestControlPlane {
        TestControlPlane::start_with(Options {
            allow_private_upstreams: false,
            ..options(data_dir, None)
        })
    }

    fn start_with(options: Options) -> TestControlPlane {
        let data_dir = options.data_dir.clone();
        let control_plane = ControlPlane::start(options)
            .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        TestControlPlane {
            endpoints: control_plane.endpoints(),
            control_plane: Some(control_plane),
            process: None,
            separate: false,
            data_dir,
        }
    }

    /// Starts the `control-plane` binary as a process of its own (built by `cargo build -p
    /// control-plane --bins`), with the options of [`start`](Self::start), so that a test
    /// can kill it as a crash would ([`kill`](Self::kill)).
    pub fn spawn(data_dir: &Path) -> TestControlPlane {
        let (process, endpoints) = spawn_process(data_dir, None);
        TestControlPlane {
            control_plane: None,
            process: Some(process),
            separate: true,
            data_dir: data_dir.to_path_buf(),
            endpoints,
        }
    }

    /// SIGKILLs the control plane process, as a crash, an OOM kill or `kill -9` would.
    pub fn kill(&mut self) {
        let mut process = self
            .process
            .take()
            .unwrap_or_else(|| panic!("no control plane process to kill"));
        let _ = process.kill();
        let _ = process.wait();
    }

    /// The control plane process's pid, when it runs as one.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `control-plane stop-data-planes` on its data directory; what it prints.
    pub fn stop_data_planes(&self) -> String {
        let out = Command::new(control_plane_binary())
            .arg("stop-data-planes")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .unwrap_or_else(|e| panic!("control-plane stop-data-planes: {e}"));
        assert!(
            out.status.success(),
            "control-plane stop-data-planes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    pub fn control_plane(&self) -> &ControlPlane {
        self.control_plane
            .as_ref()
            .unwrap_or_else(|| panic!("the control plane is stopped"))
    }

    /// Stops it (data planes see it go away); a process gets SIGTERM, as from an init
    /// system, and is killed if it has not exited within 30 s.
    pub fn stop(&mut self) {
        if let Some(cp) = self.control_plane.take() {
            cp.shutdown();
        }
        if let Some(mut process) = self.process.take() {
            signal(process.id(), "-TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(process.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts it again on the same data directory and ports.
    pub fn start_again(&mut self) {
        self.stop();
        if self.separate {
            let (process, _) = spawn_process(&self.data_dir, Some(self.endpoints));
            self.process = Some(process);
            return;
        }
        let control_plane = ControlPlane::start(options(&self.data_dir, Some(self.endpoints)))
            .unwrap_or_else(|e| panic!("restarting the control plane: {e}"));
        self.control_plane = Some(control_plane);
    }

    /// Calls the API with the token.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.call_raw(method, path, body.map(Value::to_string), Some(TOKEN))
            .await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Response {
        request(self.endpoints.api, method, path, body, token)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Calls the API and insists on `status`; returns the JSON body.
    /// A serverless control plane named `name` with one provisioned data plane (a `gateway`
    /// process this control plane supervises): its id, the data plane group's id and the
    /// group's proxy address.
    pub async fn provision_serverless(&self, name: &str) -> Provisioned {
        let created = self
            .expect(
                201,
                "POST",
                "/v2/control-planes",
                Some(&json!({ "name": name, "cluster_type": "CLUSTER_TYPE_SERVERLESS" })),
            )
            .await;
        let control_plane_id = created["id"].as_str().expect("id").to_owned();
        let configuration = self
            .expect(
                201,
                "PUT",
                "/v3/cloud-gateways/configurations",
                Some(&json!({
                    "control_plane_id": control_plane_id,
                    "control_plane_geo": "us",
                    "dataplane_groups": [{ "region": "us", "provider": "aws" }],
                    "kind": "serverless.v0",
                })),
            )
            .await;
        let group = &configuration["dataplane_groups"][0];
        let address = |field: &str, scheme: &str| -> SocketAddr {
            group[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {group}"))
                .trim_start_matches(scheme)
                .parse()
                .unwrap_or_else(|e| panic!("{field}: {e}"))
        };
        Provisioned {
            control_plane_id,
            group_id: group["id"].as_str().expect("group id").to_owned(),
            proxy: address("proxy_url", "http://"),
            tls: address("https_proxy_url", "https://"),
        }
    }

    pub async fn expect(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let response = self.expect_response(status, method, path, body).await;
        response.json().unwrap_or(Value::Null)
    }

    /// [`expect`](Self::expect), for a caller that reads more of the answer than its JSON.
    pub async fn expect_response(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        let response = self.call(method, path, body).await;
        assert_eq!(
            response.status,
            status,
            "{method} {path} answered {}: {}",
            response.status,
            response.text()
        );
        response
    }

    /// Adds a service to control plane `id`; returns it as stored.
    pub async fn add_service(&self, id: &str, service: &Value) -> Value {
        let path = format!("/v2/control-planes/{id}/core-entities/services");
        self.expect(201, "POST", &path, Some(service)).await
    }

    /// Adds service `service` for `upstream` and its route `route` for every path to control
    /// plane `id`: all a data plane needs to proxy to `upstream`.
    pub async fn route_all_paths_to(
        &self,
        id: &str,
        service: &str,
        route: &str,
        upstream: SocketAddr,
    ) {
        let url = format!("http://{upstream}");
        self.add_service(id, &json!({ "name": service, "url": url }))
            .await;
        let routes = format!("/v2/control-planes/{id}/core-entities/services/{service}/routes");
        let route = json!({ "name": route, "paths": ["/"] });
        self.expect(201, "POST", &routes, Some(&route)).await;
    }

    /// Pins a data plane's client certificate to control plane `id`: with Konnect's
    /// `pinned_client_certs`, only pinned certificates may connect.
    pub async fn pin_certificate(&self, id: &str, cert_pem: &str) {
        let path = format!("/v2/control-planes/{id}/dp-client-certificates");
        let cert = json!({ "cert": cert_pem });
        self.expect(201, "POST", &path, Some(&cert)).await;
    }
}

/// Calls the API at `api` with the test token; an error rather than a panic when the
/// control plane does not answer (a test that kills it keeps calling).
pub async fn call_api(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Response, String> {
    request(api, method, path, body.map(Value::to_string), Some(TOKEN)).await
}

async fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    token: Option<&str>,
) -> Result<Response, String> {
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.map_or(RequestBody::Empty, |b| RequestBody::Bytes(b.into_bytes())),
    };
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    client::send(api, Protocol::Http1, &request).await
}

impl Drop for TestControlPlane {
    /// Stops the control plane and, as its data planes outlive it, the gateways it
    /// provisioned in its data directory (a test's temporary folder, about to go).
    fn drop(&mut self) {
        self.stop();
        for pid in processes_under(&self.data_dir) {
            signal(pid, "-KILL");
        }
    }
}
