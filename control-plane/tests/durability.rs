//! "A 2xx means it is on disk": the real binary is killed with SIGKILL right after the API
//! answered, then started again on the same data directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_control-plane");
const TOKEN: &str = "durability-test-token";

/// Starts the control plane on `data_dir` with every listener on a port the kernel picks, and
/// returns it with its API address, read back from the line it prints once it listens
/// ("control plane: API http://<addr> · ...").
fn serve(data_dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(BINARY)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--cluster-listen", "127.0.0.1:0"])
        .args(["--xds-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--token")
        .arg(TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, from_child) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    // Reads stdout to its end, so that the control plane never writes to a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let api = loop {
        let line = from_child
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the control plane's startup line within 30 s");
        let api = line
            .strip_prefix("control plane: API http://")
            .and_then(|rest| rest.split(' ').next()?.parse::<SocketAddr>().ok());
        if let Some(api) = api {
            break api;
        }
    };
    assert_ne!(api.port(), 0);
    (child, api)
}

/// One request with the API token; the status and the body.
fn call(api: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(api).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

fn wait_until_serving(api: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(api, "GET", "/v2/control-planes", "").is_none() {
        assert!(Instant::now() < deadline, "the control plane did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_2xx_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, api) = serve(dir.path());
    wait_until_serving(api);
    let mut created = Vec::new();
    for n in 0..5 {
        let name = format!("durable-{n}");
        let (status, body) = call(
            api,
            "POST",
            "/v2/control-planes",
            &format!(r#"{{"name":"{name}","cluster_type":"CLUSTER_TYPE_CONTROL_PLANE"}}"#),
        )
        .expect("an answer");
        assert_eq!(status, 201, "{body}");
        created.push(name);
    }
    // No graceful shutdown: whatever was answered must already be on disk.
    first.kill().unwrap();
    first.wait().unwrap();

    // Started again on the same data directory (on a port of its own).
    let (mut second, api) = serve(dir.path());
    wait_until_serving(api);
    let (status, body) = call(api, "GET", "/v2/control-planes", "").expect("an answer");
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(status, 200, "{body}");
    for name in created {
        assert!(body.contains(&format!("\"{name}\"")), "{name} lost: {body}");
    }
}
