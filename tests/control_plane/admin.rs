//! The admin API of the gateways the control plane provisions (review findings A.3 (c) and
//! D11): a tenant's routes can reach any TCP port on loopback, so a provisioned gateway has
//! no admin port there. Its admin API is a UNIX socket in its own private folder, for the
//! operator, and read-only, as the control plane alone configures it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::control_plane::{Provisioned, TestControlPlane};
use wasmgate_tests::process::listening_tcp_ports;

/// The process whose command line has `--node-id <node_id>`.
fn gateway_pid(node_id: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .any(|pair| pair[0] == b"--node-id" && pair[1] == node_id.as_bytes())
            .then_some(pid)
    })
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
    stream.write_all(head.as_bytes()).await.expect("request");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

/// A provisioned gateway listens on its proxy ports only (plain and TLS); its admin API is
/// `<data dir>/cloud-gateways/<group>/admin.sock` (mode 0600, in a folder only the control
/// plane's user may enter, beside the gateway's private key), answers `/status`, and refuses
/// `POST /config`. (Before, each one had an admin API on a loopback port, writable, which a
/// tenant's service `http://127.0.0.1:<port>` reached through the tenant's own proxy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_gateways_have_no_admin_port_but_a_private_read_only_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = TestControlPlane::start(dir.path());
    let Provisioned {
        group_id: group,
        proxy,
        tls,
        ..
    } = cp.provision_serverless("tenant").await;
    let folder = dir.path().join("cloud-gateways").join(&group);
    let socket = folder.join("admin.sock");
    let status = wasmgate_tests::until(
        "the provisioned gateway's admin socket answering",
        Duration::from_secs(90),
        async || {
            if !socket.exists() {
                return Err(format!("no {}", socket.display()));
            }
            match unix_request(&socket, "GET", "/status", "").await {
                (200, body) => serde_json::from_str::<serde_json::Value>(&body)
                    .map_err(|e| format!("{e}: {body}")),
                (status, body) => Err(format!("{status}: {body}")),
            }
        },
    )
    .await;
    assert_eq!(
        status["control_plane"]["node_id"],
        group.as_str(),
        "{status}"
    );
    let pid = gateway_pid(&group).expect("the provisioned gateway's process");
    wasmgate_tests::until(
        "the gateway listening on its proxy ports only (plain and TLS)",
        Duration::from_secs(30),
        async || {
            let mut expected = [proxy.port(), tls.port()];
            expected.sort_unstable();
            match listening_tcp_ports(pid) {
                ports if ports == expected => Ok(()),
                ports => Err(format!("listening on {ports:?}, proxy {proxy}, TLS {tls}")),
            }
        },
    )
    .await;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&folder), 0o700);
    let (status, body) = unix_request(
        &socket,
        "POST",
        "/config",
        "_format_version: \"3.0\"\nservices: [{name: s, url: \"http://127.0.0.1:9\"}]\n",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("control plane"), "{body}");
}
