//! 10,000 idle connections against a real `gateway` process on loopback: the gateway keeps
//! serving other clients while they are open, and closes them at its client header timeout
//! (no request ever came on them), not before. A binary of its own: it holds 10,000
//! descriptors on each side and must not share the process, or the CPU, with other tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use wasmgate_tests::client::{send, Protocol, Request};
use wasmgate_tests::EchoUpstream;

const IDLE: usize = 10_000;
/// The gateway's `--client-header-timeout` here, in seconds.
const HEADER_TIMEOUT: u64 = 10;

/// The `gateway` binary beside this test's folder (`target/debug/deps/..`).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let debug = exe.parent().and_then(Path::parent).expect("target folder");
    let binary = debug.join("gateway");
    assert!(
        binary.is_file(),
        "{} is missing: build it (`cargo build -p gateway --bin gateway`)",
        binary.display()
    );
    binary
}

/// This process's soft limit on open files (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Stops the gateway process when the test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gateway run` on a kernel-chosen port and reads the port back from its startup line.
fn start_gateway(config: &Path) -> (Running, SocketAddr) {
    let mut child = Command::new(gateway_binary())
        .args(["run", "--no-access-log", "--workers", "2"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--client-header-timeout", &HEADER_TIMEOUT.to_string()])
        .args(["--worker-connections", "16384"])
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gateway");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    let mut lines = BufReader::new(stderr).lines();
    const PREFIX: &str = "wasmgate: gateway on http://";
    let addr = loop {
        let line = lines
            .next()
            .expect("the gateway exited before its startup line")
            .expect("stderr");
        if let Some(rest) = line.strip_prefix(PREFIX) {
            break rest
                .split([' ', ','])
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .expect("the listen address");
        }
    };
    // The rest of stderr is drained so the gateway never blocks writing to it.
    std::thread::spawn(move || for _ in lines {});
    (running, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_the_gateway_serving_others_and_close_at_the_header_timeout(
) {
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit > (IDLE + 1000) as u64,
        "this test holds {IDLE} sockets: raise the open files limit (ulimit -n, now {limit})"
    );
    let echo = EchoUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kong.yaml");
    std::fs::write(
        &config,
        format!(
            "_format_version: \"3.0\"\nservices: [{{name: echo, url: \"http://{}\", \
             routes: [{{name: all, paths: [/]}}]}}]\n",
            echo.addr()
        ),
    )
    .unwrap();
    let (_gateway, addr) = start_gateway(&config);

    // 10,000 clients that connect and send nothing, 200 connecting at a time.
    let mut idle = Vec::with_capacity(IDLE);
    while idle.len() < IDLE {
        let batch: Vec<_> = (0..200.min(IDLE - idle.len()))
            .map(|_| {
                tokio::spawn(async move {
                    let stream = tokio::net::TcpStream::connect(addr).await;
                    (Instant::now(), stream)
                })
            })
            .collect();
        for connecting in batch {
            let (at, stream) = connecting.await.unwrap();
            let stream = stream.unwrap_or_else(|e| panic!("connection {}: {e}", idle.len()));
            idle.push((at, stream));
        }
    }
    let first_connected = idle[0].0;

    // Another client is served while they are all open.
    let response = send(addr, Protocol::Http1, &Request::get("/fresh"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        first_connected.elapsed() < Duration::from_secs(HEADER_TIMEOUT),
        "the test was too slow to check the gateway while every connection was open"
    );

    // Each idle connection is closed by the gateway, none before the header timeout.
    let closing: Vec<_> = idle
        .into_iter()
        .map(|(connected, mut stream)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let read = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf));
                match read.await {
                    Ok(Ok(0) | Err(_)) => Ok(connected.elapsed()),
                    Ok(Ok(n)) => Err(format!("{n} bytes on an idle connection")),
                    Err(_) => Err("still open after 120 s".to_owned()),
                }
            })
        })
        .collect();
    let mut earliest = Duration::MAX;
    for (i, closed) in closing.into_iter().enumerate() {
        let after = closed
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        earliest = earliest.min(after);
    }
    assert!(
        earliest >= Duration::from_secs(HEADER_TIMEOUT) - Duration::from_millis(100),
        "an idle connection was closed {earliest:?} after it connected"
    );

    // And the gateway serves on, with its slots back.
    let response = send(addr, Protocol::Http1, &Request::get("/after"))
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}
