//! The example bootstraps in `envoy/` start in a real Envoy and do what their comments say.

use serde_json::Value;
use wasmgate_tests::{paths, EchoUpstream, Envoy, Protocol, Request, RequestBody};

/// Reads an example, points its listeners at free loopback ports, its clusters at `upstream`
/// and its modules at the freshly built ones.
fn load_example(name: &str, upstream: std::net::SocketAddr) -> Value {
    let path = paths::workspace_root().join("envoy").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut bootstrap: Value = serde_yaml_ng::from_str(&text).unwrap();
    rewrite(&mut bootstrap, upstream);
    bootstrap
}

fn rewrite(value: &mut Value, upstream: std::net::SocketAddr) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(file)) = map.get("filename") {
                let module = std::path::Path::new(file)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap();
                let built = paths::wasm_dir().join(module);
                map.insert(
                    "filename".into(),
                    Value::String(built.to_string_lossy().into()),
                );
            }
            if let Some(port) = map.get("port_value").and_then(Value::as_u64) {
                // The example's backend is :8080; everything else listens.
                let new = if port == 8080 { upstream.port() } else { 0 };
                map.insert("port_value".into(), new.into());
            }
            for v in map.values_mut() {
                rewrite(v, upstream);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, upstream)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limiting_example_enforces_10_mb() {
    let echo = EchoUpstream::start().await.unwrap();
    let envoy = Envoy::start_bootstrap(&load_example("request-size-limiting.yaml", echo.addr()), 2)
        .await
        .unwrap();
    let addr = envoy.listener("gateway");
    let ok = Request::post(
        "/",
        RequestBody::Filler {
            len: 10 << 20,
            with_length: true,
        },
    );
    let response = wasmgate_tests::client::send(addr, Protocol::Http1, &ok)
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let over = Request::post(
        "/",
        RequestBody::Filler {
            len: (10 << 20) + 1,
            with_length: true,
        },
    );
    let response = wasmgate_tests::client::send(addr, Protocol::Http2, &over)
        .await
        .unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
}
