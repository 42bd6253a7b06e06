//! `cargo xtask run`, the README's first command, as a user runs it: the real `xtask` binary
//! starts the seed's gateway (or Envoy) on the port it is given, prints how to use it, serves
//! the seed's policies, and stops everything it started on SIGTERM.
//!
//! The data planes are the ones this test run already built (`gateway` beside the `xtask`
//! binary, the modules of `WASMGATE_WASM_DIR`, Envoy from `WASMGATE_ENVOY`): `cargo xtask test`
//! provides all three, and a cargo build inside a test would wait on the test's own lock.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wasmgate_tests::client::send;
use wasmgate_tests::seed::assert_secret_injected_and_rate_limited;
use wasmgate_tests::{Protocol, Request, RequestBody};

const TOKEN: &str = "xtask-run-test-token";

/// A port whose next one was free too a moment ago (`run` puts its admin API on port + 1).
fn two_free_ports() -> u16 {
    loop {
        let port = wasmgate_tests::free_port().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn gateway_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_xtask")).with_file_name("gateway");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build -p gateway`; `cargo xtask test` does)",
        binary.display()
    );
    binary
}

/// `xtask run`, killed with what it started if the test fails before stopping it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SIGTERM makes it stop its data plane; SIGKILL would orphan it.
            // SAFETY: kill(2) on a child this test owns and has not waited for.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// Starts `cargo xtask run` with `args`; returns it once it has printed its banner, with the
/// banner.
fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("run")
        .args(args)
        .env("BACKEND_TOKEN", TOKEN)
        .env("WASMGATE_GATEWAY", gateway_binary())
        .env("WASMGATE_WASM_DIR", wasmgate_tests::paths::wasm_dir())
        .env("WASMGATE_ENVOY", wasmgate_tests::paths::envoy_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, banner) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The reader stops at the banner and closes the pipe, as a user's `| head` would: the
    // gateway's access log then writes to a closed stdout, which must not cost it a worker.
    let mut text = String::new();
    // A bound against a hang (a debug gateway compiles the modules first), not a speed claim.
    while let Ok(line) = banner.recv_timeout(Duration::from_secs(120)) {
        text.push_str(&line);
        text.push('\n');
        if line.contains("Ctrl-C stops everything") {
            return (Running(Some(child)), text);
        }
    }
    drop(Running(Some(child)));
    panic!("no banner from `xtask run {}`: {text}", args.join(" "));
}

/// SIGTERM, as Ctrl-C's sibling: `run` must stop what it started and exit 0.
fn stop(mut running: Running, listen: SocketAddr) {
    let mut child = running.0.take().unwrap();
    // SAFETY: kill(2) on a child this test owns and has not waited for.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "xtask run exited with {status}");
    // The data plane it started is gone with it.
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "something still listens on {listen} after xtask run stopped"
    );
}

async fn the_seed_holds(listen: SocketAddr) {
    assert_secret_injected_and_rate_limited(listen, Protocol::Http1, TOKEN).await;

    let upload = Request::post(
        "/upload",
        RequestBody::Filler {
            len: 11_000_000,
            with_length: true,
        },
    );
    let refused = send(listen, Protocol::Http1, &upload).await.unwrap();
    assert_eq!(refused.status, 413, "{}", refused.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_seed_on_the_port_it_is_given_and_stops_on_sigterm() {
    let port = two_free_ports();
    let (child, banner) = start(&["--port", &port.to_string()]);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        banner.contains(&format!("wasmgate gateway on http://{listen}")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("BACKEND_TOKEN={TOKEN}")),
        "{banner}"
    );
    the_seed_holds(listen).await;
    // The admin API is on the next port.
    let admin: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let status = send(
        admin,
        Protocol::Http1,
        &Request::get("/status").header("host", &admin.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(status.status, 200, "{}", status.text());
    the_examples_show_what_they_claim(&banner);
    stop(child, listen);
}

/// The banner's `try:` lines, each as a command and what its comment claims it shows.
fn examples(banner: &str) -> Vec<(String, String)> {
    banner
        .lines()
        .skip_while(|line| line.trim() != "try:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            let (command, claim) = line.split_once(" # ").unwrap_or((line, ""));
            (command.trim().to_owned(), claim.trim().to_owned())
        })
        .collect()
}

/// Runs each example as a user pastes it (`sh -c`, the system's curl) and checks what it
/// prints against its comment.
fn the_examples_show_what_they_claim(banner: &str) {
    let examples = examples(banner);
    assert_eq!(examples.len(), 4, "{banner}");
    for (command, claim) in examples {
        let out = Command::new("sh").args(["-c", &command]).output().unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        let printed = String::from_utf8_lossy(&out.stdout);
        let shown = match claim.as_str() {
            "the backend sees Authorization: Bearer <token>" => {
                printed.contains(&format!("Bearer {TOKEN}"))
            }
            "...and never the client's" => {
                printed.contains(&format!("Bearer {TOKEN}")) && !printed.contains("Bearer mine")
            }
            "413" => printed.trim() == "413",
            // `uniq -c` lines: a count, then the status.
            "429s past 100/s" => printed
                .lines()
                .any(|line| line.split_whitespace().nth(1) == Some("429")),
            other => panic!("an example this test does not know: {other:?} ({command})"),
        };
        assert!(
            shown,
            "`{command}` printed {printed:?}, not what it claims: {claim}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_envoy_serves_the_same_seed_in_envoy() {
    let port = two_free_ports();
    let (child, banner) = start(&["--port", &port.to_string(), "--envoy"]);
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(
        banner.contains(&format!("Envoy 1.40 (V8) on http://{listen}")),
        "{banner}"
    );
    the_seed_holds(listen).await;
    stop(child, listen);
}
