//! The admin API of a gateway put on the internet (issue #14 item 4; review findings A.3 and
//! D11): a token when one is configured (`--admin-token-file`, `WASMGATE_ADMIN_TOKEN`),
//! browsers refused whatever the token, `POST /config` only with a JSON or YAML body and never
//! while a control plane is followed, `GET /config` with vault references but never a secret's
//! value, and the listener on a UNIX socket or nowhere. In-process gateways for what the
//! defaults do, real `gateway` processes for what the command line sets.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::client::send;
use wasmgate_tests::process::listening_tcp_ports;
use wasmgate_tests::{paths, EchoUpstream, Protocol, Request, RequestBody, Response};

const TOKEN: &str = "admin-test-token-0123456789";

fn config(upstream: SocketAddr, route: &str) -> String {
    format!(
        "_format_version: \"3.0\"\nservices: [{{name: s, url: \"http://{upstream}\", routes: [{{name: r, paths: [{route}]}}]}}]\n"
    )
}

/// `POST /config` with `text` as a client that names its body's type sends it.
fn post_config(text: &str, content_type: Option<&str>) -> Request {
    let request = Request::post("/config", RequestBody::Bytes(text.as_bytes().to_vec()));
    match content_type {
        Some(content_type) => request.header("content-type", content_type),
        None => request,
    }
}

/// What curl or Prometheus send to the admin API on `admin`: its own address as `Host`.
fn to(admin: SocketAddr, request: Request) -> Request {
    request.header("host", &admin.to_string())
}

async fn status_of(admin: SocketAddr, request: Request) -> Response {
    send(admin, Protocol::Http1, &request)
        .await
        .unwrap_or_else(|e| panic!("{admin}: {e}"))
}

/// Review A.3 (a): a web page the operator visits can neither replace the configuration (a
/// CORS "simple request" needs no preflight) nor read it (DNS rebinding makes the page
/// same-origin with the admin API). Any request a browser marks as coming from a page, by
/// `Origin` or by `Sec-Fetch-Site` other than `none` (an address the user typed), is refused.
/// (Before, all of them were answered: the POST replaced the configuration.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_requests_are_refused() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = wasmgate_tests::gateway::start(&config(echo.addr(), "/api"));
    let admin = gateway.admin_addr().unwrap();
    let before = gateway.shared().snapshot.load().hash.clone();
    let page_says = [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "same-origin"),
    ];
    for (name, value) in page_says {
        let post = to(
            admin,
            post_config(&config(echo.addr(), "/moved"), Some("text/plain")),
        )
        .header(name, value);
        let response = status_of(admin, post).await;
        assert_eq!(response.status, 403, "POST with {name}: {value}");
        let message = response.json().unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("browser"), "{message}");
        let get = to(admin, Request::get("/config")).header(name, value);
        let response = status_of(admin, get).await;
        assert_eq!(response.status, 403, "GET with {name}: {value}");
        assert!(!response.text().contains("services"), "{}", response.text());
    }
    assert_eq!(gateway.shared().snapshot.load().hash, before);
    // The operator typing the address in the browser's bar.
    let typed = to(admin, Request::get("/status")).header("sec-fetch-site", "none");
    assert_eq!(status_of(admin, typed).await.status, 200);
}

/// Review A.3 (a), browsers that send no `Sec-Fetch-Site`: after DNS rebinding the page's
/// requests name the attacker's host in `Host`. Without a token the admin API answers only
/// requests for `localhost` or a loopback address. (Before, `Host: evil.example` was served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = wasmgate_tests::gateway::start(&config(echo.addr(), "/api"));
    let admin = gateway.admin_addr().unwrap();
    let port = admin.port();
    for host in [format!("evil.example:{port}"), "evil.example".into()] {
        let request = Request::get("/config").header("host", &host);
        let response = status_of(admin, request).await;
        assert_eq!(response.status, 403, "Host: {host}");
        assert!(response.text().contains("loopback"), "{}", response.text());
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".into(),
    ] {
        let request = Request::get("/status").header("host", &host);
        assert_eq!(status_of(admin, request).await.status, 200, "Host: {host}");
    }
}

/// Review A.3 (c) on one gateway: a route whose service is the admin port (by mistake, or a
/// configuration author's SSRF) would open the admin API to every client of the proxy, with
/// a loopback `Host` the proxy writes itself. Without a token, a request a proxy relayed (it
/// carries `X-Forwarded-For`, which the gateway always sets upstream) is refused. (Before,
/// a client of the proxy read the configuration and replaced it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_requests_relayed_by_a_proxy_are_refused() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = wasmgate_tests::gateway::start(&config(echo.addr(), "/api"));
    let admin = gateway.admin_addr().unwrap();
    let through_the_proxy = format!(
        "_format_version: \"3.0\"\nservices:\n  \
         - {{name: admin, url: \"http://{admin}\", routes: [{{name: a, paths: [/admin]}}]}}\n"
    );
    let hash = gateway.shared().apply(&through_the_proxy).unwrap();
    let read = send(
        gateway.addr(),
        Protocol::Http1,
        &Request::get("/admin/config"),
    )
    .await
    .unwrap();
    assert_eq!(read.status, 403, "{}", read.text());
    assert!(read.text().contains("relayed"), "{}", read.text());
    let replace = post_config(&config(echo.addr(), "/moved"), Some("application/yaml"));
    let replace = Request {
        path: "/admin/config".into(),
        ..replace
    };
    let replaced = send(gateway.addr(), Protocol::Http1, &replace)
        .await
        .unwrap();
    assert_eq!(replaced.status, 403, "{}", replaced.text());
    assert_eq!(gateway.shared().snapshot.load().hash, hash);
    for relayed in ["x-forwarded-for", "x-real-ip", "forwarded", "via"] {
        let request = to(admin, Request::get("/status")).header(relayed, "203.0.113.9");
        assert_eq!(status_of(admin, request).await.status, 403, "{relayed}");
    }
}

/// Review A.3: `POST /config` takes only a body that says it is JSON or YAML, which no HTML
/// form and no CORS "simple request" can send. (Before, any type replaced the configuration.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_config_needs_a_json_or_yaml_content_type() {
    let echo = EchoUpstream::start().await.unwrap();
    let gateway = wasmgate_tests::gateway::start(&config(echo.addr(), "/api"));
    let admin = gateway.admin_addr().unwrap();
    let before = gateway.shared().snapshot.load().hash.clone();
    for refused in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let post = to(admin, post_config(&config(echo.addr(), "/moved"), refused));
        let response = status_of(admin, post).await;
        assert_eq!(response.status, 415, "Content-Type {refused:?}");
        let message = response.json().unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("application/yaml"), "{message}");
    }
    assert_eq!(gateway.shared().snapshot.load().hash, before);
    for (accepted, route) in [
        ("application/yaml", "/yaml"),
        ("application/x-yaml", "/x-yaml"),
        ("text/yaml", "/text-yaml"),
        ("application/json", "/json"),
        ("Application/JSON; charset=utf-8", "/json-utf8"),
    ] {
        let post = to(
            admin,
            post_config(&config(echo.addr(), route), Some(accepted)),
        );
        let response = status_of(admin, post).await;
        assert_eq!(response.status, 201, "{accepted}: {}", response.text());
        let routed = send(gateway.addr(), Protocol::Http1, &Request::get(route))
            .await
            .unwrap();
        assert_eq!(routed.status, 200, "{accepted}");
    }
}

/// The `gateway` binary beside this test's folder (`target/debug/deps/..`).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(Path::parent).unwrap().join("gateway");
    assert!(
        binary.is_file(),
        "{} is missing: build it (`cargo build -p gateway --bin gateway`)",
        binary.display()
    );
    binary
}

/// A `gateway run` process, its stderr kept, killed when dropped.
struct GatewayProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    proxy: SocketAddr,
    /// What the startup line says of the admin API: `http://ADDR`, `unix:PATH` or `off`.
    admin: String,
}

impl GatewayProcess {
    fn start(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut command = Command::new(gateway_binary());
        command
            .args(["run", "--workers", "1", "--no-access-log", "--modules-dir"])
            .arg(paths::wasm_dir())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("WASMGATE_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut process = GatewayProcess {
            child,
            stderr,
            proxy: ([127, 0, 0, 1], 0).into(),
            admin: String::new(),
        };
        let started = std::time::Instant::now();
        loop {
            let line = process.stderr().into_iter().find_map(|line| {
                line.strip_prefix("wasmgate: gateway on http://")
                    .map(str::to_owned)
            });
            if let Some(rest) = line {
                process.proxy = rest.split(' ').next().unwrap().parse().unwrap();
                let admin = rest.split("(admin ").nth(1).unwrap();
                process.admin = admin.split(')').next().unwrap().to_owned();
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("gateway exited ({status}): {:?}", process.stderr());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no startup line: {:?}",
                process.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status and stderr of a `gateway run` expected to refuse to start.
    fn refused(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let output = Command::new(gateway_binary())
            .args(["run", "--workers", "1", "--no-access-log"])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("WASMGATE_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn admin_addr(&self) -> SocketAddr {
        let addr = self.admin.strip_prefix("http://");
        addr.and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("admin {}", self.admin))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn bearer(request: Request, token: &str) -> Request {
    request.header("authorization", &format!("Bearer {token}"))
}

/// Every endpoint, and a path that is none, refuses a request without the right token with
/// Kong's 401 (Kong Enterprise RBAC's message and a `WWW-Authenticate` challenge).
async fn assert_guarded(admin: SocketAddr, upstream: SocketAddr) {
    let requests = [
        Request::get("/status"),
        Request::get("/metrics"),
        Request::get("/config"),
        Request::get("/nowhere"),
        post_config(&config(upstream, "/moved"), Some("application/yaml")),
    ];
    let presented: [(&str, String); 5] = [
        ("x-none", String::new()),
        ("authorization", "Bearer not-the-token".into()),
        ("authorization", format!("Basic {TOKEN}")),
        ("authorization", format!("Bearer {TOKEN}x")),
        ("kong-admin-token", TOKEN[..TOKEN.len() - 1].into()),
    ];
    for request in &requests {
        for (name, value) in &presented {
            let request = to(admin, request.clone()).header(name, value);
            let response = status_of(admin, request.clone()).await;
            assert_eq!(
                response.status, 401,
                "{} {} {name}",
                request.method, request.path
            );
            assert_eq!(
                response.json(),
                Some(serde_json::json!({
                    "message": "Invalid credentials. Token or User credentials required"
                }))
            );
            assert_eq!(
                response.header("www-authenticate"),
                Some("Bearer realm=\"wasmgate admin\"")
            );
        }
    }
    for request in [
        bearer(Request::get("/status"), TOKEN),
        to(admin, Request::get("/metrics")).header("kong-admin-token", TOKEN),
        // The scheme is case-insensitive (RFC 9110); with a token, any host name may be used.
        Request::get("/config")
            .header("host", "admin.gateway.example")
            .header("authorization", &format!("bearer {TOKEN}")),
    ] {
        let response = status_of(admin, request.clone()).await;
        assert_eq!(
            response.status,
            200,
            "{}: {}",
            request.path,
            response.text()
        );
    }
}

/// Review A.3 / D11: with `--admin-token-file`, nothing on the admin API answers without the
/// token, given as `Authorization: Bearer` or Kong's `Kong-Admin-Token`; the token read from
/// the file goes without its line end. (Before, the flag did not exist: the gateway refused to
/// start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_guards_every_endpoint() {
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kong.yaml", &config(echo.addr(), "/api"));
    let token = write(dir.path(), "admin-token", &format!("{TOKEN}\n"));
    let gateway = GatewayProcess::start(
        &[
            "--config",
            &file,
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &token,
        ],
        &[],
    );
    let admin = gateway.admin_addr();
    assert_guarded(admin, echo.addr()).await;
    let post = bearer(
        post_config(&config(echo.addr(), "/moved"), Some("application/yaml")),
        TOKEN,
    );
    assert_eq!(status_of(admin, post).await.status, 201);
    let moved = send(gateway.proxy, Protocol::Http1, &Request::get("/moved"))
        .await
        .unwrap();
    assert_eq!(moved.status, 200);
}

/// The token from `WASMGATE_ADMIN_TOKEN`, for a gateway whose secrets come from its
/// environment. (Before, the variable was ignored and every request answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_the_environment() {
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kong.yaml", &config(echo.addr(), "/api"));
    let gateway = GatewayProcess::start(
        &["--config", &file, "--admin-listen", "127.0.0.1:0"],
        &[("WASMGATE_ADMIN_TOKEN", TOKEN)],
    );
    assert_guarded(gateway.admin_addr(), echo.addr()).await;
}

/// Misconfigurations stop the gateway at start, naming what to fix: an empty token, a token
/// from both sources, a token file that is not there. (Before: unknown flag, or started.)
#[test]
fn a_bad_token_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kong.yaml", "_format_version: \"3.0\"\n");
    let empty = write(dir.path(), "empty", "\n");
    let token = write(dir.path(), "token", TOKEN);
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let admin = ["--admin-listen", "127.0.0.1:0", "--config", &file];
    for (args, env, says) in [
        (vec!["--admin-token-file", empty.as_str()], vec![], "empty"),
        (
            vec!["--admin-token-file", token.as_str()],
            vec![("WASMGATE_ADMIN_TOKEN", TOKEN)],
            "WASMGATE_ADMIN_TOKEN",
        ),
        (
            vec!["--admin-token-file", missing.as_str()],
            vec![],
            "missing",
        ),
        (
            vec![],
            vec![("WASMGATE_ADMIN_TOKEN", "two words")],
            "WASMGATE_ADMIN_TOKEN",
        ),
    ] {
        let args: Vec<&str> = admin.iter().copied().chain(args).collect();
        let stderr = GatewayProcess::refused(&args, &env).join("\n");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Issue #14 item 4: `GET /config` shows the configuration as written, a secret by its vault
/// reference; the value the data plane resolves (and the backend receives) appears nowhere on
/// the admin API, and nothing at all without the token. (Before: no token, the reference read
/// by anyone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_config_shows_vault_references_never_their_values() {
    const SECRET: &str = "s3cr3t-backend-value";
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}plugins:\n  - name: request-transformer\n    config: {{add: {{headers: [\"authorization:Bearer {{vault://env/BACKEND_TOKEN}}\"]}}}}\n",
        config(echo.addr(), "/api")
    );
    let file = write(dir.path(), "kong.yaml", &text);
    let token = write(dir.path(), "admin-token", TOKEN);
    let gateway = GatewayProcess::start(
        &[
            "--config",
            &file,
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &token,
            "--env-allow",
            "BACKEND_TOKEN",
        ],
        &[("BACKEND_TOKEN", SECRET)],
    );
    let proxied = send(gateway.proxy, Protocol::Http1, &Request::get("/api"))
        .await
        .unwrap();
    assert_eq!(
        proxied.echo_report().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let admin = gateway.admin_addr();
    let anonymous = status_of(admin, to(admin, Request::get("/config"))).await;
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.text().contains("vault"), "{}", anonymous.text());
    let shown = status_of(admin, bearer(Request::get("/config"), TOKEN)).await;
    assert_eq!(shown.status, 200);
    assert!(
        shown.text().contains("{vault://env/BACKEND_TOKEN}"),
        "{}",
        shown.text()
    );
    for path in ["/config", "/status", "/metrics"] {
        let response = status_of(admin, bearer(Request::get(path), TOKEN)).await;
        assert!(
            !response.text().contains(SECRET),
            "{path}: {}",
            response.text()
        );
    }
}

/// An HTTP/1.1 request over a UNIX socket, as `curl --unix-socket` sends it; the status code
/// and the body.
async fn unix_request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

/// Envoy's usual admin setup: `--admin-listen unix:PATH` serves the admin API on a UNIX
/// socket only its owner may connect to (mode 0600), and the gateway listens on no TCP port
/// but its proxy's. (Before, `unix:` was not an address: the gateway refused to start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_a_unix_socket() {
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kong.yaml", &config(echo.addr(), "/api"));
    let socket = dir.path().join("admin.sock");
    let listen = format!("unix:{}", socket.display());
    let gateway = GatewayProcess::start(&["--config", &file, "--admin-listen", &listen], &[]);
    assert_eq!(gateway.admin, listen);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let (status, body) = unix_request(&socket, "GET", "/status", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        unix_request(&socket, "POST", "/config", &config(echo.addr(), "/moved")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        listening_tcp_ports(gateway.child.id()),
        vec![gateway.proxy.port()]
    );
}

/// `--admin-listen off`: no admin API at all. (Before: not an address, refused.)
#[test]
fn admin_listen_off_listens_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "kong.yaml", "_format_version: \"3.0\"\n");
    let gateway = GatewayProcess::start(&["--config", &file, "--admin-listen", "off"], &[]);
    assert_eq!(gateway.admin, "off");
    assert_eq!(
        listening_tcp_ports(gateway.child.id()),
        vec![gateway.proxy.port()]
    );
}

/// Review A.3 (b) / D11: a gateway that follows a control plane (Kong hybrid mode) takes its
/// configuration from there only: `POST /config` is refused, with a message saying where to
/// change it, and reads still work. (Before, the POST replaced the configuration until the
/// control plane's next push.) The control plane here is a closed port: the gateway starts
/// empty and keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_control_plane_the_admin_api_is_read_only() {
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = control_plane::pki::client_certificate("dp").unwrap();
    let cert = write(dir.path(), "dp.crt", &cert);
    let key = write(dir.path(), "dp.key", &key);
    let cache = dir.path().join("cache").to_str().unwrap().to_owned();
    let nobody = wasmgate_tests::free_port().to_string();
    let gateway = GatewayProcess::start(
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--control-plane",
            &nobody,
            "--cluster-cert",
            &cert,
            "--cluster-cert-key",
            &key,
            "--cluster-ca-cert",
            &cert,
            "--cluster-cache-dir",
            &cache,
        ],
        &[],
    );
    let admin = gateway.admin_addr();
    let post = to(
        admin,
        post_config(&config(echo.addr(), "/api"), Some("application/yaml")),
    );
    let response = status_of(admin, post).await;
    assert_eq!(response.status, 405, "{}", response.text());
    assert_eq!(response.header("allow"), Some("GET"));
    let message = response.json().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("control plane"), "{message}");
    let routed = send(gateway.proxy, Protocol::Http1, &Request::get("/api"))
        .await
        .unwrap();
    assert_eq!(routed.status, 404, "the configuration did not change");
    for path in ["/status", "/config", "/metrics"] {
        let response = status_of(admin, to(admin, Request::get(path))).await;
        assert_eq!(response.status, 200, "{path}");
    }
}
