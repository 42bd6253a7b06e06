//! The `gateway` binary: validate, envoy-bootstrap, and run with SIGHUP reloads and a SIGTERM
//! drain, as an operator would use them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `gateway validate --config <config>`.
fn validate(config: &std::path::Path) -> std::process::Output {
    Command::new(GATEWAY)
        .args(["validate", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn validate_reports_every_error_with_entity_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.yaml", "_format_version: \"3.0\"\nservices: [{name: a, url: \"http://127.0.0.1:1\", routes: [{name: r, paths: [/]}]}]\n");
    let out = validate(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (config hash "));

    let bad = write(
        &dir,
        "bad.yaml",
        "_format_version: \"3.0\"\nservices: [{name: a, host: a, port: -1}]\nplugins: [{name: request-size-limiting, config: {size_unit: tons}}]\n",
    );
    let out = validate(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("services.a.port: value should be between 0 and 65535"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugins.request-size-limiting.config.size_unit: expected one of: megabytes, kilobytes, bytes"),
        "{stderr}"
    );

    // Only plugins' errors, which the modules themselves find: each field where the file has
    // the plugin.
    let plugins_only = write(
        &dir,
        "plugins.yaml",
        "_format_version: \"3.0\"\nservices: [{name: a, url: \"http://127.0.0.1:1\", routes: [{name: r, paths: [/]}], plugins: [{name: rate-limiting, config: {second: 0, minute: x}}]}]\nplugins: [{name: request-size-limiting, config: {size_unit: tons}}]\n",
    );
    let out = validate(&plugins_only);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "services.a.plugins.rate-limiting.config.second: value must be greater than 0\n",
        "services.a.plugins.rate-limiting.config.minute: expected a number\n",
        "  plugins.request-size-limiting.config.size_unit: expected one of: megabytes, kilobytes, bytes\n",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in {stderr}");
    }
}

#[test]
fn envoy_bootstrap_writes_the_same_services_for_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "kong.yaml",
        "_format_version: \"3.0\"\nservices: [{name: api, url: \"http://127.0.0.1:9\", routes: [{name: r, paths: [/api]}], plugins: [{name: request-size-limiting, config: {allowed_payload_size: 10}}, {name: request-transformer, config: {add: {headers: [\"authorization:Bearer {vault://env/backend-token}\"]}}}]}]\n",
    );
    let out_file = dir.path().join("envoy.json");
    let out = Command::new(GATEWAY)
        .args(["envoy-bootstrap", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_file)
        .args(["--env-allow", "BACKEND_TOKEN"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bootstrap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let clusters = &bootstrap["static_resources"]["clusters"];
    assert_eq!(clusters[0]["name"], "service.api");
    let text = bootstrap.to_string();
    assert!(text.contains("request_size_limiting.wasm"), "{text}");
    assert!(text.contains("{\\\"allowed_payload_size\\\":10}"), "{text}");
    // Each module gets only the secrets its own config references. (The request-transformer
    // is one of the router's upstream filters.)
    let mut filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .clone();
    let upstream: Vec<serde_json::Value> = filters
        .iter()
        .filter_map(|f| f["typed_config"]["upstream_http_filters"].as_array())
        .flatten()
        .cloned()
        .collect();
    filters.extend(upstream);
    let env_keys = |plugin: &str| {
        filters
            .iter()
            .find(|f| f["typed_config"]["config"]["root_id"] == plugin)
            .map(|f| {
                f["typed_config"]["config"]["vm_config"]["environment_variables"]["host_env_keys"]
                    .clone()
            })
    };
    assert_eq!(
        env_keys("request-transformer"),
        Some(serde_json::json!(["BACKEND_TOKEN"])),
        "{text}"
    );
    assert_eq!(
        env_keys("request-size-limiting"),
        Some(serde_json::json!([])),
        "{text}"
    );
}

/// `--upstream-ca-file` is the CA a `tls_verify` service's certificate must chain to in the
/// bootstrap; without it, the system bundle. A service without `tls_verify` checks nothing.
#[test]
fn envoy_bootstrap_trusts_the_upstream_ca_file_for_tls_verify_services() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "kong.yaml",
        "_format_version: \"3.0\"\nservices: [{name: verified, url: \"https://api.test\", tls_verify: true}, {name: unverified, url: \"https://api.test\"}]\n",
    );
    let trusted = |extra: &[&str]| {
        let out = Command::new(GATEWAY)
            .args(["envoy-bootstrap", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let clusters = &bootstrap["static_resources"]["clusters"];
        let validation = |i: usize| {
            clusters[i]["transport_socket"]["typed_config"]["common_tls_context"]
                ["validation_context"]
                .clone()
        };
        assert_eq!(validation(1), serde_json::Value::Null, "{bootstrap}");
        validation(0)["trusted_ca"]["filename"].clone()
    };
    assert_eq!(
        trusted(&["--upstream-ca-file", "/etc/wasmgate/upstream-ca.pem"]),
        "/etc/wasmgate/upstream-ca.pem"
    );
    assert_eq!(trusted(&[]), "/etc/ssl/certs/ca-certificates.crt");
}

/// A one-line upstream: answers every request with `body`.
fn upstream(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    // Read one request head (no bodies in these tests).
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An upstream that answers each request with its own request head, and reports each head
/// on `heads`; a request to `/hold` is answered only once `release` is sent.
fn head_echo() -> (
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Sender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads_tx, heads) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let heads_tx = heads_tx.clone();
            let release_rx = Arc::clone(&release_rx);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let _ = heads_tx.send(head.clone());
                    if head.starts_with("GET /hold ") {
                        let _ = release_rx.lock().unwrap().recv();
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                        head.len()
                    );
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads, release)
}

/// Collects what a child process writes to a pipe, line by line, as it comes.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn contain(&self, text: &str) -> bool {
        self.all().iter().any(|l| l.contains(text))
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// `gateway run` with one worker and no access log on `file` (and `extra` flags), on ports
/// the kernel picks: the child, its stderr lines and the address it listens on.
fn run_one_worker(
    file: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> (std::process::Child, Lines, SocketAddr) {
    let mut child = Command::new(GATEWAY)
        .args(["run", "--workers", "1", "--no-access-log", "--config"])
        .arg(file)
        .args(["--listen", ANY_PORT, "--admin-listen", ANY_PORT])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Lines::collect(child.stderr.take().unwrap());
    let listen = listen_address(&stderr);
    (child, stderr, listen)
}

/// Asks the gateway to stop gracefully.
fn sigterm(child: &std::process::Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every address the gateway is told is `127.0.0.1:0`: the kernel picks free ports, and the
/// gateway's startup line on stderr says which ("wasmgate: gateway on http://<listen> (admin
/// http://<admin>), ..."). This reads the listen address back from it.
const ANY_PORT: &str = "127.0.0.1:0";

fn listen_address(stderr: &Lines) -> SocketAddr {
    const PREFIX: &str = "wasmgate: gateway on http://";
    let mut found = None;
    wait_for("the gateway's startup line", || {
        found = stderr.all().iter().find_map(|line| {
            let rest = line.strip_prefix(PREFIX)?;
            rest.split([' ', ',']).next()?.parse::<SocketAddr>().ok()
        });
        found.is_some()
    });
    let addr = found.unwrap();
    assert_ne!(addr.port(), 0, "{:?}", stderr.all());
    addr
}

fn config(route: &str, upstream: SocketAddr) -> String {
    format!("_format_version: \"3.0\"\nservices: [{{name: s, url: \"http://{upstream}\", routes: [{{name: r, paths: [{route}]}}]}}]\n")
}

#[test]
fn run_reloads_on_sighup_and_file_change_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let up = upstream("hello");
    let file = write(&dir, "kong.yaml", &config("/one", up));
    let mut child = Command::new(GATEWAY)
        .args(["run", "--workers", "2", "--no-access-log", "--config"])
        .arg(&file)
        .args(["--listen", ANY_PORT, "--admin-listen", ANY_PORT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout: ChildStdout = child.stdout.take().unwrap();
    let stdout = Lines::collect(stdout);
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let stderr = Lines::collect(stderr);
    let listen = listen_address(&stderr);
    wait_for("the gateway to listen", || {
        get(listen, "/one").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(get(listen, "/one").unwrap().1, "hello");

    // An invalid file is refused; the running configuration keeps serving.
    std::fs::write(
        &file,
        "_format_version: \"3.0\"\nservices: [{name: s, host: s, port: 0x}]\n",
    )
    .unwrap();
    Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait_for("the refusal to be logged", || {
        stderr.contain("is invalid, keeping the running configuration")
    });
    assert_eq!(get(listen, "/one").unwrap().0, 200);

    // A valid file is picked up by SIGHUP (or the watcher, whichever comes first).
    std::fs::write(&file, config("/two", up)).unwrap();
    Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait_for("the reload", || {
        get(listen, "/two").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(get(listen, "/one").unwrap().0, 404);

    // The file watcher alone.
    std::fs::write(&file, config("/three", up)).unwrap();
    wait_for("the watcher", || {
        get(listen, "/three").is_some_and(|(s, _)| s == 200)
    });

    sigterm(&child);
    assert!(exits_within_10_s(&mut child).success());
    assert!(
        stdout.all().is_empty(),
        "--no-access-log: {:?}",
        stdout.all()
    );
}

fn exits_within_10_s(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let (up, heads, release) = head_echo();
    let file = write(&dir, "kong.yaml", &config("/", up));
    let (mut child, stderr, listen) = run_one_worker(&file, &[]);
    wait_for("the gateway to listen", || {
        get(listen, "/ready").is_some_and(|(s, _)| s == 200)
    });
    heads.recv().unwrap();
    let in_flight = std::thread::spawn(move || get(listen, "/hold"));
    // The request is in flight once the upstream has its head.
    assert!(heads.recv().unwrap().starts_with("GET /hold "));
    sigterm(&child);
    wait_for("the drain to start", || {
        stderr.contain("draining in-flight requests")
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited while a request was in flight"
    );
    release.send(()).unwrap();
    let (status, _) = in_flight
        .join()
        .unwrap()
        .expect("the in-flight request's answer");
    assert_eq!(status, 200);
    assert!(exits_within_10_s(&mut child).success());
}

/// Secrets come only from variables named with `--env-allow`, and every request is logged as
/// one JSON line on stdout.
#[test]
fn secrets_come_only_from_env_allow_and_each_request_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _heads, _release) = head_echo();
    let file = write(
        &dir,
        "kong.yaml",
        &format!(
            "{}plugins: [{{name: request-transformer, config: {{replace: {{headers: [\"authorization:Bearer {{vault://env/CLI_BACKEND_TOKEN}}\"]}}, add: {{headers: [\"authorization:Bearer {{vault://env/CLI_BACKEND_TOKEN}}\"]}}}}}}]\n",
            config("/", up)
        ),
    );
    let run = |allow: bool| {
        let mut command = Command::new(GATEWAY);
        command
            .args(["run", "--workers", "1", "--config"])
            .arg(&file)
            .args(["--listen", ANY_PORT, "--admin-listen", ANY_PORT])
            .env("CLI_BACKEND_TOKEN", "from-the-environment")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if allow {
            command.args(["--env-allow", "CLI_BACKEND_TOKEN"]);
        }
        command
    };

    // Not named: the variable is there, but the configuration is refused.
    let refused = run(false).output().unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("CLI_BACKEND_TOKEN"), "{text}");
    assert!(
        !text.contains("from-the-environment"),
        "a secret was logged: {text}"
    );

    let mut child = run(true).spawn().unwrap();
    let stdout = Lines::collect(child.stdout.take().unwrap());
    let stderr = Lines::collect(child.stderr.take().unwrap());
    let listen = listen_address(&stderr);
    wait_for("the gateway to listen", || get(listen, "/ready").is_some());
    let (status, head) = get(listen, "/logged?x=1").unwrap();
    // The access log is written by its own thread, within milliseconds, not before the
    // answer: its line is awaited (not raced by the kill), as a reader tailing it would.
    wait_for("the access log line for /logged", || {
        stdout.contain("\"/logged")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer from-the-environment\r\n"),
        "{head}"
    );
    let lines = stdout.all();
    let entry = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["path"] == "/logged?x=1" || l["path"] == "/logged")
        .unwrap_or_else(|| panic!("no access log line for /logged: {lines:?}"));
    assert_eq!(entry["method"], "GET", "{entry}");
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["route"], "r", "{entry}");
    assert_eq!(entry["service"], "s", "{entry}");
    assert_eq!(entry["client"], "127.0.0.1", "{entry}");
    assert!(entry["latency_ms"].is_number(), "{entry}");
    assert!(
        lines.iter().all(|l| !l.contains("from-the-environment"))
            && stderr
                .all()
                .iter()
                .all(|l| !l.contains("from-the-environment")),
        "a secret was logged"
    );
}

/// CPU time a process has used so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports clock ticks of 1/100 s (USER_HZ).
    Duration::from_millis(ticks * 10)
}

/// Out of file descriptors, a worker stops accepting for a moment, as nginx does, instead of
/// retrying accept() in a busy loop; once descriptors are free again it serves.
#[test]
fn out_of_file_descriptors_the_gateway_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "kong.yaml", &config("/", upstream("hello")));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 128 && exec "$0" "$@""#)
        .arg(GATEWAY)
        .args(["run", "--workers", "1", "--no-access-log", "--config"])
        .arg(&file)
        .args(["--listen", ANY_PORT, "--admin-listen", ANY_PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Lines::collect(child.stderr.take().unwrap());
    let listen = listen_address(&stderr);
    wait_for("the gateway to listen", || {
        get(listen, "/").is_some_and(|(s, _)| s == 200)
    });
    // More idle connections than the gateway has descriptors left: the kernel completes
    // them into the listen backlog, and accept() fails with EMFILE.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    wait_for("accept() to run out of descriptors", || {
        stderr.contain("accepting again in 500ms")
    });
    let before = cpu_time(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(child.id()) - before;
    // A busy accept loop burns the whole 2 s.
    assert!(used < Duration::from_millis(500), "{used:?} of CPU in 2 s");
    drop(idle);
    wait_for("the gateway to serve again", || {
        get(listen, "/").is_some_and(|(s, _)| s == 200)
    });
    sigterm(&child);
    assert!(exits_within_10_s(&mut child).success());
}

/// Review findings D4/D14: a second gateway told to listen where one already does refuses to
/// start and names the address. (Before, both bound with `SO_REUSEPORT` and the kernel split
/// the connections between them: the second ran, serving its own configuration on the first
/// one's port.)
#[test]
fn run_refuses_a_port_another_process_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    let first_upstream = upstream("first");
    let file = write(&dir, "first.yaml", &config("/", first_upstream));
    let mut first = Command::new(GATEWAY)
        .args(["run", "--workers", "2", "--no-access-log", "--config"])
        .arg(&file)
        .args(["--listen", ANY_PORT, "--admin-listen", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first_stderr = Lines::collect(first.stderr.take().unwrap());
    let listen = listen_address(&first_stderr);
    wait_for("the first gateway to listen", || {
        get(listen, "/").is_some_and(|(s, _)| s == 200)
    });

    let file = write(&dir, "second.yaml", &config("/", upstream("second")));
    let mut second = Command::new(GATEWAY)
        .args([
            "run",
            "--no-access-log",
            "--admin-listen",
            "off",
            "--config",
        ])
        .arg(&file)
        .args(["--listen", &listen.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second_stderr = Lines::collect(second.stderr.take().unwrap());
    let status = exits_within_10_s_or_kill(&mut second);
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second gateway ran on {listen}: {:?}",
        second_stderr.all()
    );
    wait_for("the refusal", || {
        second_stderr.contain(&format!("{listen}: another process already listens there"))
    });
}

/// Like [`exits_within_10_s`], but a process still running at the deadline is killed (and
/// `None` returned) rather than left behind by a failed assertion.
fn exits_within_10_s_or_kill(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The compiled modules (`*.cwasm`) in a module cache folder.
fn cache_entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|listing| listing.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    found
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// `gateway run` on `file` with `cache` as its module cache, until its first proxied 200;
/// then SIGTERM. Returns what it wrote to stderr.
fn serve_once(file: &std::path::Path, cache: &std::path::Path) -> Vec<String> {
    let (mut child, stderr, listen) =
        run_one_worker(file, &["--module-cache-dir".as_ref(), cache.as_os_str()]);
    wait_for("a proxied answer", || {
        get(listen, "/").is_some_and(|(s, body)| s == 200 && body == "hello")
    });
    sigterm(&child);
    assert!(exits_within_10_s(&mut child).success());
    stderr.all()
}

/// Compiled modules are kept in --module-cache-dir: `gateway validate` writes the entry
/// (0600, in a folder of mode 0700), a `gateway run` after it loads it (the file is not
/// written again), and an entry planted under its name that fails its checks is not loaded:
/// the module is compiled again, the entry rewritten, and the gateway serves. Without the
/// flag the cache is `gateway-module-cache` in the working directory; --no-module-cache
/// keeps nothing.
#[test]
fn compiled_modules_are_kept_checked_and_loaded_by_the_next_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let up = upstream("hello");
    let file = write(
        &dir,
        "kong.yaml",
        &format!(
            "{}plugins: [{{name: request-size-limiting, config: {{allowed_payload_size: 10}}}}]\n",
            config("/", up)
        ),
    );
    let cache = dir.path().join("modules");
    let out = Command::new(GATEWAY)
        .args(["validate", "--config"])
        .arg(&file)
        .arg("--module-cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [entry] = &cache_entries(&cache)[..] else {
        panic!("{:?}", cache_entries(&cache));
    };
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode(&cache) & 0o777, 0o700);
    assert_eq!(mode(entry) & 0o777, 0o600);
    let written = std::fs::read(entry).unwrap();
    let compiled = inode(entry);

    serve_once(&file, &cache);
    assert_eq!(inode(entry), compiled, "the entry was written again");

    // The entry with one byte of its compiled code changed, mode and owner kept.
    let mut altered = written.clone();
    altered[written.len() / 2] ^= 0x01;
    std::fs::write(entry, &altered).unwrap();
    let stderr = serve_once(&file, &cache);
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("module cache: ") && l.contains("compiling the module again")),
        "{stderr:?}"
    );
    assert!(std::fs::read(entry).unwrap() == written, "not rewritten");

    // The default folder, and none.
    for (flags, kept) in [(&[][..], 1), (&["--no-module-cache"][..], 0)] {
        let cwd = tempfile::tempdir().unwrap();
        let out = Command::new(GATEWAY)
            .current_dir(cwd.path())
            .args(["validate", "--config"])
            .arg(&file)
            .args(flags)
            .output()
            .unwrap();
        assert!(out.status.success(), "{flags:?}");
        let default = cwd.path().join("gateway-module-cache");
        assert_eq!(cache_entries(&default).len(), kept, "{flags:?}");
        assert_eq!(default.exists(), kept > 0, "{flags:?}");
    }
}
