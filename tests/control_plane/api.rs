//! The control plane's REST API against a real control plane (real SQLite file, real HTTP on
//! loopback): Konnect's shapes, Kong's entity behaviour and errors, versions produced only by
//! accepted changes, durability across a restart, and the OpenAPI document kept true.

use std::time::SystemTime;

use serde_json::{json, Value};
use wasmgate_tests::client::{self, Connection, Protocol, Request, RequestBody};
use wasmgate_tests::control_plane::{Provisioned, TestControlPlane, TOKEN};
use wasmgate_tests::windows::{check_fixed_window, epoch_seconds, Decision};
use wasmgate_tests::EchoUpstream;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

async fn control_plane(cp: &TestControlPlane, name: &str, cluster_type: &str) -> String {
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(
                &json!({ "name": name, "cluster_type": cluster_type, "labels": {"team": "edge"} }),
            ),
        )
        .await;
    created["id"].as_str().expect("id").to_owned()
}

async fn expected_hash(cp: &TestControlPlane, id: &str) -> (String, u64) {
    let body = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/expected-config-hash"),
            None,
        )
        .await;
    (
        body["expected_hash"].as_str().expect("hash").to_owned(),
        body["config_version"].as_u64().expect("version"),
    )
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    for token in [None, Some("kpat_wrong")] {
        let response = cp.call_raw("GET", "/v2/control-planes", None, token).await;
        assert_eq!(response.status, 401, "{}", response.text());
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        let body = response.json().expect("json");
        assert_eq!(body["title"], "Unauthorized");
    }
    // Even the document and unknown paths: nothing is answered without the token.
    let response = cp.call_raw("GET", "/v2/openapi.json", None, None).await;
    assert_eq!(response.status, 401);
    let response = cp
        .call_raw("GET", "/v2/control-planes", None, Some(TOKEN))
        .await;
    assert_eq!(response.status, 200);
}

#[test]
fn a_token_is_made_on_first_start_and_kept() {
    let dir = dir();
    let options = |token: Option<String>| control_plane::Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cluster_listen: "127.0.0.1:0".parse().expect("addr"),
        xds_listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        token,
        ..control_plane::Options::default()
    };
    let first = control_plane::ControlPlane::start(options(None)).expect("start");
    let token = first
        .generated_token()
        .expect("a token on first start")
        .to_owned();
    assert!(token.starts_with("kpat_") && token.len() > 30, "{token}");
    first.shutdown();
    let second = control_plane::ControlPlane::start(options(None)).expect("restart");
    assert!(second.generated_token().is_none(), "shown once only");
    let sha = control_plane::hub::sha256_hex(token.as_bytes());
    assert_eq!(
        second.state().token_sha256,
        sha,
        "the first token still works"
    );
}

#[tokio::test]
async fn control_planes_have_konnect_shapes_and_errors() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({
                "name": "serverless-gateway-control-plane",
                "description": "A test control plane for Serverless Gateways.",
                "cluster_type": "CLUSTER_TYPE_SERVERLESS_V1",
            })),
        )
        .await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        created["config"]["cluster_type"],
        "CLUSTER_TYPE_SERVERLESS_V1"
    );
    assert_eq!(created["config"]["auth_type"], "pinned_client_certs");
    let endpoint = created["config"]["control_plane_endpoint"]
        .as_str()
        .expect("endpoint");
    assert_eq!(
        endpoint,
        format!("wss://{}/v1/outlet", cp.endpoints().cluster)
    );
    assert!(created["config"]["cluster_ca_cert"]
        .as_str()
        .is_some_and(|p| p.starts_with("-----BEGIN CERTIFICATE-----")));
    assert!(created["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.len() == 20));

    let missing = cp
        .expect(400, "POST", "/v2/control-planes", Some(&json!({})))
        .await;
    assert_eq!(missing["invalid_parameters"][0]["field"], "name");
    let pki = cp
        .expect(
            400,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "x", "auth_type": "pki_client_certs" })),
        )
        .await;
    assert_eq!(pki["invalid_parameters"][0]["field"], "auth_type");
    assert!(pki["invalid_parameters"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("not supported")));
    let bad_type = cp
        .expect(
            400,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "x", "cluster_type": "K8S" })),
        )
        .await;
    assert_eq!(bad_type["invalid_parameters"][0]["field"], "cluster_type");
    cp.expect(
        409,
        "POST",
        "/v2/control-planes",
        Some(&json!({ "name": "serverless-gateway-control-plane" })),
    )
    .await;

    control_plane(&cp, "second", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let page = cp
        .expect(
            200,
            "GET",
            "/v2/control-planes?page[size]=1&page[number]=2",
            None,
        )
        .await;
    assert_eq!(page["meta"]["page"]["total"], 2);
    assert_eq!(page["data"][0]["name"], "second");
    let filtered = cp
        .expect(
            200,
            "GET",
            "/v2/control-planes?filter[name][eq]=second",
            None,
        )
        .await;
    assert_eq!(filtered["data"].as_array().map(Vec::len), Some(1));

    let patched = cp
        .expect(
            200,
            "PATCH",
            &format!("/v2/control-planes/{id}"),
            Some(&json!({ "description": "changed", "labels": {"env": "dev"} })),
        )
        .await;
    assert_eq!(patched["description"], "changed");
    assert_eq!(patched["labels"]["env"], "dev");
    cp.expect(204, "DELETE", &format!("/v2/control-planes/{id}"), None)
        .await;
    let gone = cp
        .expect(404, "GET", &format!("/v2/control-planes/{id}"), None)
        .await;
    assert_eq!(gone["status"], 404);
    // Konnect's BaseError requires `instance` (a trace id) and names the `type`.
    assert_eq!(gone["type"], "https://httpstatuses.com/404");
    assert!(
        gone["instance"]
            .as_str()
            .and_then(|i| i.strip_prefix("kong:trace:"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        "{gone}"
    );
    assert_eq!(missing["type"], "https://httpstatuses.com/400");
    assert!(missing["instance"].is_string(), "{missing}");
}

/// Review D19, control planes as Konnect's spec has them: `description` is required and not
/// nullable (empty when none was given, null refused), unknown properties are refused naming
/// the field, an update cannot change `cloud_gateway` or the type, label keys and values
/// follow Konnect's rules, and the `proxy_urls` a user gives are checked and returned.
/// Before: description null, `body` named as the unknown field, cloud_gateway patched,
/// `kong-x` labels kept, proxy_urls stored unchecked and never returned.
#[tokio::test]
async fn control_planes_follow_konnects_spec() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let refused = async |method: &str, path: &str, body: Value| -> Vec<(String, String)> {
        let problem = cp.expect(400, method, path, Some(&body)).await;
        problem["invalid_parameters"]
            .as_array()
            .expect("invalid_parameters")
            .iter()
            .map(|p| {
                (
                    p["field"].as_str().unwrap_or_default().to_owned(),
                    p["rule"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let pair = |f: &str, r: &str| (f.to_owned(), r.to_owned());
    let planes = "/v2/control-planes";
    assert_eq!(
        refused("POST", planes, json!({ "name": "a", "description": null })).await,
        [pair("description", "type")]
    );
    assert_eq!(
        refused("POST", planes, json!({ "name": "a", "colour": "red" })).await,
        [pair("colour", "unknown_property")]
    );
    assert_eq!(
        refused(
            "POST",
            planes,
            json!({ "name": "a", "labels": { "kong-x": "1" } })
        )
        .await,
        [pair("labels.kong-x", "is_label")]
    );
    assert_eq!(
        refused(
            "POST",
            planes,
            json!({ "name": "a", "proxy_urls": [{ "host": "h", "port": "443" }] })
        )
        .await,
        [
            pair("proxy_urls[0].port", "is_integer"),
            pair("proxy_urls[0].protocol", "required"),
        ]
    );
    let urls = json!([{ "host": "api.example.com", "port": 443, "protocol": "https" }]);
    let created = cp
        .expect(
            201,
            "POST",
            planes,
            Some(&json!({ "name": "a", "proxy_urls": urls, "cloud_gateway": false })),
        )
        .await;
    assert_eq!(created["description"], "");
    assert_eq!(created["config"]["proxy_urls"], urls);
    let id = created["id"].as_str().expect("id");
    let plane = format!("{planes}/{id}");
    for (field, value) in [
        ("cloud_gateway", json!(true)),
        ("cluster_type", json!("CLUSTER_TYPE_SERVERLESS")),
    ] {
        assert_eq!(
            refused("PATCH", &plane, json!({ field: value })).await,
            [pair(field, "unknown_property")]
        );
    }
    assert_eq!(
        refused("PATCH", &plane, json!({ "description": null })).await,
        [pair("description", "type")]
    );
    let read = cp.expect(200, "GET", &plane, None).await;
    assert_eq!(read["config"]["cloud_gateway"], false);
    assert_eq!(read["config"]["proxy_urls"], urls);
    let patched = cp
        .expect(
            200,
            "PATCH",
            &plane,
            Some(&json!({ "description": "d", "proxy_urls": [] })),
        )
        .await;
    assert_eq!(patched["description"], "d");
    assert_eq!(patched["config"]["proxy_urls"], json!([]));
}

/// Review D19, cloud gateway configurations as Konnect's CreateConfigurationRequest has
/// them: `control_plane_geo` required, `provider` one of aws|azure|gcp, unknown properties
/// refused at both levels, `environment` (which wasmgate's gateways cannot honour) refused;
/// a refusal provisions nothing. The seed's serverless.v0 call, verbatim, answers Konnect's
/// shape: `dataplane_group_config` as asked (no provider made up), each group with its own
/// timestamps and a state in Konnect's enum. Before: geo `us` and provider `aws` made up,
/// unknown properties and environment accepted and ignored, no dataplane_group_config nor
/// group timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_gateway_configurations_follow_konnects_spec() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "v0", "CLUSTER_TYPE_SERVERLESS").await;
    let configurations = "/v3/cloud-gateways/configurations";
    let seed = json!({
        "control_plane_id": id,
        "control_plane_geo": "us",
        "dataplane_groups": [{ "region": "na" }],
        "kind": "serverless.v0",
    });
    let refused = async |change: &dyn Fn(&mut Value)| -> Vec<Value> {
        let mut body = seed.clone();
        change(&mut body);
        let problem = cp.expect(400, "PUT", configurations, Some(&body)).await;
        problem["invalid_parameters"]
            .as_array()
            .expect("invalid_parameters")
            .clone()
    };
    let missing_geo = refused(&|b| {
        b.as_object_mut().map(|o| o.remove("control_plane_geo"));
    })
    .await;
    assert_eq!(
        missing_geo,
        [
            json!({ "field": "control_plane_geo", "rule": "required", "reason": "is a required field" })
        ]
    );
    let provider = refused(&|b| b["dataplane_groups"][0]["provider"] = json!("ibm")).await;
    assert_eq!(
        provider,
        [
            json!({ "field": "dataplane_groups[0].provider", "rule": "enum",
                 "reason": "must be one of: aws, azure, gcp", "choices": ["aws", "azure", "gcp"] })
        ]
    );
    let unknown = refused(&|b| {
        b["colour"] = json!("red");
        b["dataplane_groups"][0]["size"] = json!(2);
    })
    .await;
    assert_eq!(
        unknown
            .iter()
            .map(|p| (p["field"].clone(), p["rule"].clone()))
            .collect::<Vec<_>>(),
        [
            (json!("colour"), json!("unknown_property")),
            (json!("dataplane_groups[0].size"), json!("unknown_property")),
        ]
    );
    let environment = refused(&|b| {
        b["dataplane_groups"][0]["environment"] =
            json!([{ "name": "KONG_LOG_LEVEL", "value": "debug" }]);
    })
    .await;
    assert_eq!(
        environment[0]["field"],
        "dataplane_groups[0].environment[0].name"
    );
    assert!(
        environment[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("take no Kong environment variables")),
        "{environment:?}"
    );
    let none = cp.expect(200, "GET", configurations, None).await;
    assert_eq!(none["data"], json!([]), "a refusal provisions nothing");

    let configuration = cp.expect(201, "PUT", configurations, Some(&seed)).await;
    assert_eq!(
        configuration["dataplane_group_config"],
        json!([{ "region": "na" }])
    );
    let group = &configuration["dataplane_groups"][0];
    assert_eq!(group["region"], "na");
    assert_eq!(group.get("provider"), None, "{group}");
    assert_eq!(group.get("proxy_port"), None, "{group}");
    for field in ["created_at", "updated_at"] {
        assert!(
            group[field]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 20),
            "{field}: {group}"
        );
    }
    assert!(
        ["created", "initializing", "ready"].contains(&group["state"].as_str().unwrap_or("")),
        "{group}"
    );
    assert_eq!(configuration.get("version"), None);
    // The same PUT again keeps the group, its gateway and its timestamps.
    let again = cp.expect(200, "PUT", configurations, Some(&seed)).await;
    let kept = &again["dataplane_groups"][0];
    assert_eq!(
        (&kept["id"], &kept["created_at"], &kept["proxy_url"]),
        (&group["id"], &group["created_at"], &group["proxy_url"])
    );
}

#[tokio::test]
async fn entities_behave_like_kong_and_only_accepted_changes_make_versions() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "cp", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    let (_, first_version) = expected_hash(&cp, &id).await;
    assert_eq!(
        first_version, 1,
        "a new control plane has an empty first version"
    );

    let service = cp
        .expect(
            201,
            "POST",
            &format!("{base}/services"),
            Some(&json!({ "name": "echo", "url": "https://Example.COM/api" })),
        )
        .await;
    assert_eq!(service["protocol"], "https");
    assert_eq!(service["host"], "example.com");
    assert_eq!(service["port"], 443);
    assert_eq!(service["path"], "/api");
    assert_eq!(service["retries"], 5);
    assert!(service.get("url").is_none());
    let service_id = service["id"].as_str().expect("id").to_owned();

    let route = cp
        .expect(
            201,
            "POST",
            &format!("{base}/services/{service_id}/routes"),
            Some(&json!({ "name": "r", "paths": ["/"] })),
        )
        .await;
    assert_eq!(route["service"]["id"], service_id.as_str());
    assert_eq!(route["strip_path"], true);
    assert_eq!(route["protocols"], json!(["http", "https"]));
    let route_id = route["id"].as_str().expect("id").to_owned();

    let plugin = cp
        .expect(
            201,
            "POST",
            &format!("{base}/services/echo/plugins"),
            Some(&json!({ "name": "rate-limiting", "config": { "second": 5, "policy": "local" } })),
        )
        .await;
    assert_eq!(plugin["service"]["id"], service_id.as_str());
    assert_eq!(plugin["enabled"], true);
    assert_eq!(
        plugin["protocols"],
        json!(["grpc", "grpcs", "http", "https"])
    );
    let plugin_id = plugin["id"].as_str().expect("id").to_owned();
    let (hash, version) = expected_hash(&cp, &id).await;
    assert_eq!(version, 4, "three accepted changes");

    // Rejected changes: Kong's errors, and nothing new is pushed.
    let invalid = cp
        .expect(
            400,
            "POST",
            &format!("{base}/plugins"),
            Some(&json!({ "name": "request-size-limiting", "config": { "allowed_payload_size": "ten", "size_unit": "gigabytes" } })),
        )
        .await;
    assert_eq!(invalid["code"], 2);
    assert_eq!(invalid["name"], "schema violation");
    assert_eq!(
        invalid["fields"]["config"]["allowed_payload_size"],
        "expected an integer"
    );
    assert!(invalid["fields"]["config"]["size_unit"]
        .as_str()
        .is_some_and(|m| m.starts_with("expected one of")));
    assert!(invalid["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("2 schema violations (config.")));
    let unknown = cp
        .expect(
            400,
            "POST",
            &format!("{base}/plugins"),
            Some(&json!({ "name": "key-auth" })),
        )
        .await;
    assert_eq!(
        unknown["fields"]["name"],
        "plugin 'key-auth' not enabled; add it to the 'plugins' configuration property"
    );
    let duplicate = cp
        .expect(
            409,
            "POST",
            &format!("{base}/services"),
            Some(&json!({ "name": "echo", "host": "other" })),
        )
        .await;
    assert_eq!(duplicate["code"], 5);
    assert_eq!(
        duplicate["message"],
        "UNIQUE violation detected on '{name=\"echo\"}'"
    );
    let same_scope = cp
        .expect(
            409,
            "POST",
            &format!("{base}/plugins"),
            Some(&json!({ "name": "rate-limiting", "service": { "id": service_id }, "config": { "minute": 1 } })),
        )
        .await;
    assert!(same_scope["message"]
        .as_str()
        .is_some_and(|m| m.contains("name=\"rate-limiting\"")));
    let dangling = cp
        .expect(
            400,
            "POST",
            &format!("{base}/routes"),
            Some(&json!({ "paths": ["/x"], "service": { "id": "0b9b6b53-0000-4000-8000-000000000000" } })),
        )
        .await;
    assert_eq!(dangling["code"], 4);
    assert!(dangling["fields"]["service"]
        .as_str()
        .is_some_and(|m| m.contains("does not reference an existing 'services' entity")));
    let no_match = cp
        .expect(
            400,
            "POST",
            &format!("{base}/routes"),
            Some(&json!({ "name": "bare" })),
        )
        .await;
    assert!(no_match["fields"]["@entity"]
        .as_str()
        .is_some_and(|m| m.starts_with("must set one of")));
    let referenced = cp
        .expect(
            400,
            "DELETE",
            &format!("{base}/services/{service_id}"),
            None,
        )
        .await;
    assert_eq!(referenced["fields"]["@referenced_by"], "routes");
    cp.expect(404, "GET", &format!("{base}/services/nope"), None)
        .await;
    cp.expect(
        404,
        "PATCH",
        &format!("{base}/plugins/{}", "0b9b6b53-0000-4000-8000-000000000000"),
        Some(&json!({ "enabled": false })),
    )
    .await;
    assert_eq!(
        expected_hash(&cp, &id).await,
        (hash.clone(), version),
        "rejections push nothing"
    );

    // PATCH merges a plugin's config key by key.
    let patched = cp
        .expect(
            200,
            "PATCH",
            &format!("{base}/plugins/{plugin_id}"),
            Some(&json!({ "config": { "second": 7 } })),
        )
        .await;
    assert_eq!(patched["config"]["second"], 7);
    assert_eq!(patched["config"]["policy"], "local");
    let (new_hash, new_version) = expected_hash(&cp, &id).await;
    assert_eq!(new_version, version + 1);
    assert_ne!(new_hash, hash);

    // The pushed document is the export, and carries the change.
    let export = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/declarative-config"),
            None,
        )
        .await;
    assert_eq!(export["services"][0]["plugins"][0]["config"]["second"], 7);
    let current = cp
        .control_plane()
        .state()
        .hub
        .current(&id)
        .expect("version");
    assert_eq!(
        serde_json::from_str::<Value>(&current.text).expect("json"),
        export
    );

    // PUT upserts by name; deleting a route takes its plugins along.
    cp.expect(
        200,
        "PUT",
        &format!("{base}/services/second"),
        Some(&json!({ "host": "second.internal", "tags": ["a", "b"] })),
    )
    .await;
    cp.expect(201, "POST", &format!("{base}/routes/{route_id}/plugins"), Some(&json!({ "name": "request-transformer", "config": { "add": { "headers": ["x-a:1"] } } }))).await;
    let route_plugins = cp
        .expect(
            200,
            "GET",
            &format!("{base}/routes/{route_id}/plugins"),
            None,
        )
        .await;
    assert_eq!(route_plugins["data"].as_array().map(Vec::len), Some(1));
    cp.expect(204, "DELETE", &format!("{base}/routes/{route_id}"), None)
        .await;
    let plugins = cp
        .expect(200, "GET", &format!("{base}/plugins"), None)
        .await;
    assert_eq!(
        plugins["data"].as_array().map(Vec::len),
        Some(1),
        "{plugins}"
    );

    // Pagination and tags.
    let first = cp
        .expect(200, "GET", &format!("{base}/services?size=1"), None)
        .await;
    assert_eq!(first["data"][0]["name"], "echo");
    let offset = first["offset"].as_str().expect("an offset");
    let second = cp
        .expect(
            200,
            "GET",
            &format!("{base}/services?size=1&offset={offset}"),
            None,
        )
        .await;
    assert_eq!(second["data"][0]["name"], "second");
    assert!(second["offset"].is_null());
    let tagged = cp
        .expect(200, "GET", &format!("{base}/services?tags=a,b"), None)
        .await;
    assert_eq!(tagged["data"].as_array().map(Vec::len), Some(1));
    let either = cp
        .expect(200, "GET", &format!("{base}/services?tags=b/zzz"), None)
        .await;
    assert_eq!(either["data"].as_array().map(Vec::len), Some(1));
    let neither = cp
        .expect(200, "GET", &format!("{base}/services?tags=a,zzz"), None)
        .await;
    assert_eq!(neither["data"].as_array().map(Vec::len), Some(0));
}

/// Requests spread over `paths` through `proxy` from 6 connections for 3.5 s, each decision
/// with the bounds the client saw it in (`windows`), all under one key: the gateway's.
async fn burst(proxy: std::net::SocketAddr, paths: &[&'static str]) -> Vec<Decision> {
    let mut clients = Vec::new();
    for client in 0..6 {
        let paths = paths.to_vec();
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(proxy, Protocol::Http1)
                .await
                .expect("connect");
            let mut decisions = Vec::new();
            let until = std::time::Instant::now() + std::time::Duration::from_millis(3500);
            let mut next = client;
            while std::time::Instant::now() < until {
                let path = paths[next % paths.len()];
                next += 1;
                let sent = epoch_seconds(SystemTime::now());
                let response = connection.send(&Request::get(path)).await.expect(path);
                let answered = epoch_seconds(SystemTime::now());
                assert!(
                    response.status == 200 || response.status == 429,
                    "{path}: {} {}",
                    response.status,
                    response.text()
                );
                decisions.push(Decision {
                    key: "gateway".into(),
                    sent,
                    answered,
                    admitted: response.status == 200,
                });
            }
            decisions
        }));
    }
    let mut decisions = Vec::new();
    for client in clients {
        decisions.extend(client.await.expect("client"));
    }
    decisions
}

/// The serverless limits, 100 requests a second, as the provisioned gateway enforces them:
/// one budget for the whole gateway (not per service, review D20), never more in a second,
/// exactly 100 in a second that refused one.
async fn assert_100_a_second_for_the_gateway(proxy: std::net::SocketAddr, paths: &[&'static str]) {
    // The burst starts in a second of its own: a request the test made just before (a probe,
    // an upload) counts in the second it fell in, and one the burst did not record would
    // leave a refusing second one admission short of 100.
    let now = epoch_seconds(SystemTime::now());
    tokio::time::sleep(std::time::Duration::from_secs_f64(now.ceil() - now + 0.005)).await;
    let decisions = burst(proxy, paths).await;
    let check = check_fixed_window(&decisions, 100);
    assert!(check.failures.is_empty(), "{:?}", check.failures);
    assert!(
        check.exact_seconds >= 1,
        "no second spent the gateway's budget: {:?}",
        check.admitted
    );
}

/// 10 MB and 10 MB + 1 byte through `proxy` on `path`: 200, then the platform's 413 (Kong's
/// request-size-limiting answer).
async fn assert_10_mb_for(proxy: std::net::SocketAddr, path: &str) {
    let body = |len: u64| RequestBody::Filler {
        len,
        with_length: true,
    };
    let at_limit = client::send(proxy, Protocol::Http1, &Request::post(path, body(10 << 20)))
        .await
        .expect("10 MB");
    assert_eq!(at_limit.status, 200, "{path}: {}", at_limit.text());
    let over = Request::post(path, body((10 << 20) + 1));
    let refused = client::send(proxy, Protocol::Http1, &over)
        .await
        .expect("10 MB + 1");
    assert_eq!(refused.status, 413, "{path}: {}", refused.text());
    assert_eq!(
        refused.json(),
        Some(refused.kong_error_json("Request size limit exceeded")),
        "{path}"
    );
}

/// Issue #15 item 1 and review D1, D20 through a provisioned gateway: a serverless control
/// plane's limits (10 MB per request, 100 requests a second per gateway) are the platform's,
/// apart from the user's plugins. Users may add their own `request-size-limiting` and
/// `rate-limiting` on any scope, by import, POST, PATCH or PUT; what is stricter applies,
/// and nothing lifts the platform's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverless_limits_hold_whatever_the_user_configures() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let Provisioned {
        control_plane_id: id,
        proxy,
        ..
    } = cp.provision_serverless("tenant").await;
    let base = format!("/v2/control-planes/{id}/core-entities");

    // An import whose route lifts the size limit to 1000 MB and whose service and global
    // rate limits allow 100000 a second, over three services.
    let imported = json!({
        "_format_version": "3.0",
        "services": [
            { "name": "a", "url": format!("http://{}", echo.addr()),
              "routes": [{ "name": "a", "paths": ["/a"], "plugins": [
                  { "name": "request-size-limiting",
                    "config": { "allowed_payload_size": 1000, "size_unit": "megabytes" } }] }] },
            { "name": "b", "url": format!("http://{}", echo.addr()),
              "routes": [{ "name": "b", "paths": ["/b"] }],
              "plugins": [{ "name": "rate-limiting",
                            "config": { "second": 100000, "limit_by": "service" } }] },
            { "name": "c", "url": format!("http://{}", echo.addr()),
              "routes": [{ "name": "c", "paths": ["/c"] }] },
        ],
        "plugins": [{ "name": "rate-limiting", "config": { "second": 100000 } }],
    });
    cp.expect(
        201,
        "POST",
        &format!("/v2/control-planes/{id}/declarative-config"),
        Some(&imported),
    )
    .await;
    wasmgate_tests::until(
        "the provisioned gateway serving the import",
        std::time::Duration::from_secs(90),
        async || {
            let response = client::send(proxy, Protocol::Http1, &Request::get("/c"))
                .await
                .map_err(|e| e.to_string())?;
            match response.header("x-ratelimit-limit-second") {
                Some("100000") => Ok(()),
                _ => Err(format!("{} {:?}", response.status, response.headers)),
            }
        },
    )
    .await;
    assert_100_a_second_for_the_gateway(proxy, &["/a", "/b", "/c"]).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_10_mb_for(proxy, "/a").await;

    // The entities API: a stricter limit of the user's own (5 a minute on one route), a
    // global one raised by PATCH, a service's size limit lifted by PUT.
    let strict = cp
        .expect(
            201,
            "POST",
            &format!("{base}/routes/c/plugins"),
            Some(&json!({ "name": "rate-limiting", "config": { "minute": 5 } })),
        )
        .await;
    assert!(strict["route"]["id"].is_string(), "{strict}");
    let plugins = cp
        .expect(200, "GET", &format!("{base}/plugins"), None)
        .await;
    let global = plugins["data"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|p| {
                p["name"] == "rate-limiting" && p["service"].is_null() && p["route"].is_null()
            })
        })
        .and_then(|p| p["id"].as_str())
        .expect("the imported global rate-limiting")
        .to_owned();
    cp.expect(
        200,
        "PATCH",
        &format!("{base}/plugins/{global}"),
        Some(&json!({ "config": { "second": 1000000 } })),
    )
    .await;
    cp.expect(
        200,
        "PUT",
        &format!("{base}/plugins/lift"),
        Some(&json!({
            "name": "request-size-limiting",
            "service": { "name": "b" },
            "config": { "allowed_payload_size": 1000, "size_unit": "megabytes" },
        })),
    )
    .await;
    // The route's own limit answers with its own 429 and headers after 5 in a minute
    // (a minute that turns meanwhile starts the count again).
    let mut remaining = Vec::new();
    let refused = wasmgate_tests::until(
        "the route's own 5 a minute",
        std::time::Duration::from_secs(150),
        async || {
            let response = client::send(proxy, Protocol::Http1, &Request::get("/c"))
                .await
                .map_err(|e| e.to_string())?;
            let left = response
                .header("x-ratelimit-remaining-minute")
                .map(str::to_owned);
            match (response.status, left) {
                (200, Some(left)) => {
                    if remaining.last().is_some_and(|last: &String| *last < left) {
                        remaining.clear();
                    }
                    remaining.push(left);
                    Err(format!("{remaining:?}"))
                }
                (429, _) if !remaining.is_empty() => Ok(response),
                (status, _) => Err(format!("{status} {:?}", response.headers)),
            }
        },
    )
    .await;
    assert_eq!(
        remaining.last().map(String::as_str),
        Some("0"),
        "{remaining:?}"
    );
    assert_eq!(
        refused.json(),
        Some(refused.kong_error_json("API rate limit exceeded"))
    );
    assert_eq!(refused.header("x-ratelimit-limit-minute"), Some("5"));
    assert_eq!(refused.header("x-ratelimit-remaining-minute"), Some("0"));
    // Neither the PATCH nor the PUT lifted anything.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_10_mb_for(proxy, "/b").await;
    assert_100_a_second_for_the_gateway(proxy, &["/a", "/b"]).await;
}

/// Review D21, Konnect's rule: "Control planes that use Serverless Gateways can't mix types
/// of data planes." A serverless control plane takes no certificate a user pins and makes no
/// Envoy bootstrap (Konnect's 400 problem), while its provisioned gateway, pinned by the
/// control plane itself, connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverless_control_planes_take_no_self_managed_data_planes() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let Provisioned {
        control_plane_id: id,
        group_id,
        ..
    } = cp.provision_serverless("tenant").await;
    let (pem, _) = control_plane::pki::client_certificate("dp").expect("cert");
    for (path, body) in [
        ("dp-client-certificates", json!({ "cert": pem })),
        ("envoy-bootstrap", json!({ "listen": "127.0.0.1:10000" })),
    ] {
        let refused = cp
            .expect_response(
                400,
                "POST",
                &format!("/v2/control-planes/{id}/{path}"),
                Some(&body),
            )
            .await;
        let detail = "Control planes that use Serverless Gateways can't mix types of data \
                      planes: this serverless control plane's data planes are its cloud \
                      gateways (/v3/cloud-gateways/configurations), not self-managed gateways \
                      or Envoys";
        if path == "dp-client-certificates" {
            // Konnect's DP certificate endpoints answer their legacy shape.
            assert_eq!(
                refused.header("content-type"),
                Some("application/json; charset=utf-8")
            );
            assert_eq!(
                refused.json().unwrap_or_default(),
                json!({ "message": detail })
            );
            continue;
        }
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        let problem = refused.json().unwrap_or_default();
        assert_eq!(
            (&problem["status"], &problem["title"]),
            (&json!(400), &json!("Bad Request")),
            "{path}: {problem}"
        );
        assert_eq!(problem["detail"], detail, "{path}");
    }
    let pinned = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/dp-client-certificates"),
            None,
        )
        .await;
    assert_eq!(
        pinned["page"]["total"], 1,
        "the provisioner's only: {pinned}"
    );
    let nodes = format!("/v2/control-planes/{id}/nodes");
    wasmgate_tests::until(
        "the provisioned gateway's node",
        std::time::Duration::from_secs(90),
        async || {
            let list = cp.expect(200, "GET", &nodes, None).await;
            match list["items"][0]["id"].as_str() {
                Some(node) if node == group_id && list["items"][0]["config_hash"].is_string() => {
                    Ok(())
                }
                _ => Err(list.to_string()),
            }
        },
    )
    .await;
}

/// The command line of the provisioned gateway of group `node_id`, with its pid.
fn provisioned_gateway(node_id: &str) -> Option<(u32, Vec<String>)> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.windows(2)
            .any(|pair| pair[0] == "--node-id" && pair[1] == node_id)
            .then_some((pid, args))
    })
}

/// A gateway that a control plane from before the platform layer started (no
/// `--platform-plugins`) and that outlived it is not adopted as it is by this one: it would
/// serve the user's configuration without the serverless limits (10 MB + 1 byte answered
/// 200). It is drained and started again with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_running_without_the_platform_layer_is_started_again_with_it() {
    let echo = EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let mut cp = TestControlPlane::start(dir.path());
    let Provisioned {
        control_plane_id: id,
        group_id,
        proxy,
        ..
    } = cp.provision_serverless("tenant").await;
    cp.route_all_paths_to(&id, "echo", "all", echo.addr()).await;
    let over = Request::post(
        "/",
        RequestBody::Filler {
            len: (10 << 20) + 1,
            with_length: true,
        },
    );
    let status_of_over = async || {
        client::send(proxy, Protocol::Http1, &over)
            .await
            .map(|r| r.status)
            .map_err(|e| e.to_string())
    };
    wasmgate_tests::until(
        "the limit",
        std::time::Duration::from_secs(90),
        async || match status_of_over().await? {
            413 => Ok(()),
            status => Err(status.to_string()),
        },
    )
    .await;

    // As an older control plane left it: the same gateway without the platform's flag,
    // running on when the control plane stops.
    cp.stop();
    let (pid, args) = provisioned_gateway(&group_id).expect("the provisioned gateway");
    let at = args
        .iter()
        .position(|a| a == "--platform-plugins")
        .expect("started with its platform plugins");
    let older: Vec<String> = args[1..at].iter().chain(&args[at + 2..]).cloned().collect();
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    wasmgate_tests::until(
        "the gateway gone",
        std::time::Duration::from_secs(40),
        async || match provisioned_gateway(&group_id) {
            None => Ok(()),
            Some((pid, _)) => Err(format!("pid {pid}")),
        },
    )
    .await;
    let mut old = std::process::Command::new(&args[0])
        .args(&older)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the older gateway");
    wasmgate_tests::until(
        "the older gateway proxying without the limit",
        std::time::Duration::from_secs(90),
        async || match status_of_over().await? {
            200 => Ok(()),
            status => Err(status.to_string()),
        },
    )
    .await;

    cp.start_again();
    let limited = wasmgate_tests::until(
        "the gateway started again with the limit",
        std::time::Duration::from_secs(90),
        async || match status_of_over().await {
            Ok(413) => Ok(provisioned_gateway(&group_id)),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (_, args) = limited.expect("a provisioned gateway");
    assert!(args.iter().any(|a| a == "--platform-plugins"), "{args:?}");
    // The older one was drained (SIGTERM): reaped here; killed if it was not.
    let _ = old.kill();
    let _ = old.wait();
}

#[tokio::test]
async fn declarative_import_and_export_round_trip() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "source", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let yaml = r#"
_format_version: "3.0"
services:
  - name: backend
    url: http://127.0.0.1:9/base
    routes:
      - name: api
        paths: [/api]
        plugins:
          - name: request-size-limiting
            config: { allowed_payload_size: 1, size_unit: kilobytes }
    plugins:
      - name: request-transformer
        config: { add: { headers: ["x-from:cp"] } }
plugins:
  - name: rate-limiting
    config: { second: 50, policy: local }
"#;
    let response = cp
        .call_raw(
            "POST",
            &format!("/v2/control-planes/{id}/declarative-config"),
            Some(yaml.to_owned()),
            Some(TOKEN),
        )
        .await;
    assert_eq!(response.status, 201, "{}", response.text());
    let imported = response.json().expect("json");
    let services = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/core-entities/services"),
            None,
        )
        .await;
    assert_eq!(services["data"][0]["host"], "127.0.0.1");
    let plugins = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/core-entities/plugins"),
            None,
        )
        .await;
    assert_eq!(plugins["data"].as_array().map(Vec::len), Some(3));

    // What one control plane exports, another imports to the very same configuration.
    let export = cp
        .expect(
            200,
            "GET",
            &format!("/v2/control-planes/{id}/declarative-config"),
            None,
        )
        .await;
    let other = control_plane(&cp, "copy", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let copied = cp
        .expect(
            201,
            "POST",
            &format!("/v2/control-planes/{other}/declarative-config"),
            Some(&export),
        )
        .await;
    assert_eq!(copied["config_hash"], imported["config_hash"]);
    // The same document as YAML (`?format=yaml`), for a file-based gateway.
    let yaml = cp
        .call_raw(
            "GET",
            &format!("/v2/control-planes/{id}/declarative-config?format=yaml"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(yaml.status, 200, "{}", yaml.text());
    assert_eq!(yaml.header("content-type"), Some("application/yaml"));
    let parsed: Value = serde_yaml_ng::from_slice(&yaml.body).expect("YAML");
    assert_eq!(parsed, export);

    let invalid = cp
        .expect(
            400,
            "POST",
            &format!("/v2/control-planes/{id}/declarative-config"),
            Some(&json!({ "_format_version": "3.0", "services": [{ "name": "s", "host": "h", "port": 70000 }] })),
        )
        .await;
    assert_eq!(invalid["code"], 14);
    assert_eq!(
        invalid["fields"]["services"]["s"]["port"],
        "value should be between 0 and 65535"
    );
    assert_eq!(
        expected_hash(&cp, &id).await.0,
        imported["config_hash"].as_str().expect("hash")
    );
}

#[tokio::test]
async fn certificates_are_pinned_per_control_plane() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "cp", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let path = format!("/v2/control-planes/{id}/dp-client-certificates");
    // Konnect's DP certificate errors are its legacy {"message"}, as application/json.
    let bad = cp
        .expect_response(
            400,
            "POST",
            &path,
            Some(&json!({ "cert": "not a certificate" })),
        )
        .await;
    assert_eq!(
        bad.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let bad = bad.json().expect("json");
    assert!(
        bad["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("cert: ")),
        "{bad}"
    );
    assert_eq!(bad.as_object().map(|o| o.len()), Some(1), "{bad}");
    let (pem, _) = control_plane::pki::client_certificate("dp-1").expect("cert");
    let created = cp
        .expect(
            201,
            "POST",
            &path,
            Some(&json!({ "cert": pem, "title": "edge" })),
        )
        .await;
    assert_eq!(created["item"]["title"], "edge");
    let cert_id = created["item"]["id"].as_str().expect("id");
    // The same certificate again: refused, naming the pin it has.
    let twice = cp
        .expect(400, "POST", &path, Some(&json!({ "cert": pem })))
        .await;
    assert_eq!(
        twice,
        json!({ "message": format!(
            "this certificate is already pinned for this control plane (id {cert_id})"
        ) })
    );
    let der = control_plane::pki::parse_certificate(&pem).expect("der");
    let store = &cp.control_plane().state().store;
    let fingerprint = control_plane::pki::fingerprint(&der);
    assert_eq!(store.pinned_control_planes(&fingerprint), vec![id.clone()]);
    let list = cp.expect(200, "GET", &path, None).await;
    assert_eq!(list["page"]["total"], 1);
    assert_eq!(list["items"][0]["title"], "edge");
    cp.expect(204, "DELETE", &format!("{path}/{cert_id}"), None)
        .await;
    assert!(store.pinned_control_planes(&fingerprint).is_empty());
    let gone = cp
        .expect(404, "DELETE", &format!("{path}/{cert_id}"), None)
        .await;
    assert_eq!(gone, json!({ "message": "certificate not found" }));
    let no_plane = cp
        .expect(
            404,
            "GET",
            "/v2/control-planes/0b9b6b53-0000-4000-8000-000000000000/dp-client-certificates",
            None,
        )
        .await;
    assert_eq!(no_plane, json!({ "message": "control plane not found" }));
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_across_a_restart() {
    let dir = dir();
    let mut cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "durable", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    cp.add_service(&id, &json!({ "name": "s", "host": "h" }))
        .await;
    cp.expect(
        201,
        "POST",
        &format!("{base}/services/s/plugins"),
        Some(
            &json!({ "name": "request-transformer", "config": { "add": { "headers": ["a:b"] } } }),
        ),
    )
    .await;
    let before = expected_hash(&cp, &id).await;
    cp.start_again();
    assert_eq!(expected_hash(&cp, &id).await, before);
    let plugins = cp
        .expect(200, "GET", &format!("{base}/plugins"), None)
        .await;
    assert_eq!(
        plugins["data"][0]["config"]["add"]["headers"],
        json!(["a:b"])
    );
    let current = cp
        .control_plane()
        .state()
        .hub
        .current(&id)
        .expect("restored version");
    assert_eq!(current.hash, before.0);
}

#[tokio::test]
async fn the_openapi_document_is_true() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let document = cp.expect(200, "GET", "/v2/openapi.json", None).await;
    assert_eq!(document["openapi"], "3.1.0");
    let mut contract = Contract::new(&cp, document.clone());
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{kind}", "services")
            .replace("{nested}", "plugins")
            .replace("{control_plane_id}", "0b9b6b53-0000-4000-8000-000000000000")
            .replace("{id}", "x")
            .replace("{certificate_id}", "x")
            .replace("{node_id}", "x")
            .replace("{configuration_id}", "x");
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(operation) = item.get(method) else {
                continue;
            };
            operations += 1;
            let response = cp
                .call_raw(
                    &method.to_uppercase(),
                    &concrete,
                    Some("{}".into()),
                    Some(TOKEN),
                )
                .await;
            assert_ne!(
                response.status, 405,
                "{method} {path} is documented but not routed"
            );
            assert!(
                !response.text().contains("no API route"),
                "{method} {path} is documented but not routed"
            );
            let documented: Vec<&String> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .collect();
            assert!(
                documented
                    .iter()
                    .any(|code| code.as_str() == response.status.to_string()),
                "{method} {path} answered {} which is not documented ({documented:?}): {}",
                response.status,
                response.text()
            );
            // And the error is the documented media type and shape.
            contract.check(method, &concrete, &response);
        }
    }
    assert!(operations >= 29, "{operations}");
    let unknown = cp
        .call_raw("GET", "/v2/nothing-here", None, Some(TOKEN))
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("no API route"));
}

/// The OpenAPI document as a contract for success answers: each call names the operation it
/// exercises (found from the concrete path), must answer a status the document gives for it,
/// and its body must validate against that status's schema (JSON Schema 2020-12, as OpenAPI
/// 3.1 says, `$ref`s resolved in the document's components, formats checked).
struct Contract<'a> {
    cp: &'a TestControlPlane,
    document: Value,
    covered: std::collections::BTreeSet<(String, String, u16)>,
}

impl<'a> Contract<'a> {
    fn new(cp: &'a TestControlPlane, document: Value) -> Contract<'a> {
        Contract {
            cp,
            document,
            covered: Default::default(),
        }
    }

    /// The documented path template `concrete` (without its query) is an instance of: the
    /// one with the most literal segments among those that match.
    fn template_of(&self, concrete: &str) -> String {
        let concrete: Vec<&str> = concrete
            .split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .collect();
        let mut best: Option<(usize, String)> = None;
        for template in self.document["paths"].as_object().expect("paths").keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != concrete.len() {
                continue;
            }
            let mut literals = 0;
            let matches = parts.iter().zip(&concrete).all(|(t, c)| {
                if t.starts_with('{') {
                    !c.is_empty()
                } else {
                    literals += 1;
                    t == c
                }
            });
            if matches && best.as_ref().is_none_or(|(n, _)| literals > *n) {
                best = Some((literals, template.clone()));
            }
        }
        best.map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{} is not a documented path", concrete.join("/")))
    }

    /// Calls the API, insists on `status`, and checks the answer against the document.
    async fn call(&mut self, status: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
        let response = self.cp.expect_response(status, method, path, body).await;
        self.check(method, path, &response)
    }

    /// Kong's read: `GET`, answered 200.
    async fn get(&mut self, path: &str) -> Value {
        self.call(200, "GET", path, None).await
    }

    /// Kong's create: `POST`, answered 201.
    async fn create(&mut self, path: &str, body: Value) -> Value {
        self.call(201, "POST", path, Some(&body)).await
    }

    /// Kong's upsert of what exists or is named: `PUT`, answered 200.
    async fn upsert(&mut self, path: &str, body: Value) -> Value {
        self.call(200, "PUT", path, Some(&body)).await
    }

    /// Kong's update: `PATCH`, answered 200.
    async fn update(&mut self, path: &str, body: Value) {
        self.call(200, "PATCH", path, Some(&body)).await;
    }

    /// Kong's delete: `DELETE`, answered 204.
    async fn delete(&mut self, path: &str) {
        self.call(204, "DELETE", path, None).await;
    }

    /// Checks an answer against the document: its status is documented for the operation,
    /// and its body is the documented media type and matches that schema.
    fn check(&mut self, method: &str, path: &str, response: &wasmgate_tests::Response) -> Value {
        let status = response.status;
        let template = self.template_of(path);
        let operation = &self.document["paths"][&template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {template}: {status} is not documented"
        );
        self.covered
            .insert((method.to_uppercase(), template.clone(), status));
        let Some(content) = documented.get("content") else {
            assert!(
                response.body.is_empty(),
                "{method} {template} {status} documents no body but answered {}",
                response.text()
            );
            return Value::Null;
        };
        // The documented media type the answer says it is, parsed as such.
        let media = response
            .header("content-type")
            .and_then(|t| t.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Some(schema) = content.get(&media).map(|c| &c["schema"]) else {
            panic!("{method} {template} {status} answered {media:?}, which is not documented")
        };
        let value: Value = match media.as_str() {
            "application/json" | "application/problem+json" => {
                serde_json::from_slice(&response.body).unwrap_or_else(|e| {
                    panic!("{method} {path}: not JSON ({e}): {}", response.text())
                })
            }
            "application/yaml" => serde_yaml_ng::from_slice(&response.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not YAML ({e}): {}", response.text())),
            other => panic!("{method} {template} {status}: {other} answers are not checked here"),
        };
        let mut root = schema.clone();
        root["components"] = self.document["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: invalid schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status} does not match its schema:\n{}\nbody: {value:#}",
            errors.join("\n")
        );
        value
    }

    /// Every success status of every documented operation, that no call exercised.
    fn uncovered(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for (template, item) in self.document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for status in responses.keys().filter(|s| s.starts_with('2')) {
                    let key = (
                        method.to_uppercase(),
                        template.clone(),
                        status.parse().expect("status"),
                    );
                    if !self.covered.contains(&key) {
                        missing.push(format!("{} {template} {status}", key.0));
                    }
                }
            }
        }
        missing
    }
}

/// Review item A11: every documented operation, called successfully on a populated control
/// plane (entities of every kind and nesting, a pinned certificate, a provisioned cloud
/// gateway whose real `gateway` connects as a node, an Envoy bootstrap, a declarative
/// import), answers a documented success status with a body its schema accepts; and no
/// operation is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_what_the_openapi_document_says() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let document = cp.expect(200, "GET", "/v2/openapi.json", None).await;
    let mut contract = Contract::new(&cp, document);
    contract.get("/v2/openapi.json").await;

    // Control planes.
    let control_planes = "/v2/control-planes";
    let created = contract
        .create(
            control_planes,
            json!({ "name": "cp", "description": "d", "labels": { "team": "edge" } }),
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let serverless = contract
        .create(
            control_planes,
            json!({ "name": "serverless", "cluster_type": "CLUSTER_TYPE_SERVERLESS_V1" }),
        )
        .await;
    let serverless_id = serverless["id"].as_str().expect("id").to_owned();
    let doomed = contract
        .create(control_planes, json!({ "name": "doomed" }))
        .await;
    let doomed_id = doomed["id"].as_str().expect("id");
    let listed = contract.get("/v2/control-planes?page[size]=2").await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed["meta"]["page"]["total"], 3);
    let control_plane = format!("/v2/control-planes/{id}");
    contract.get(&control_plane).await;
    contract
        .update(
            &control_plane,
            json!({ "description": "", "labels": { "env": "dev" } }),
        )
        .await;

    // Core entities: every kind created flat and nested, read, listed, replaced, patched.
    let base = format!("/v2/control-planes/{id}/core-entities");
    let (services, routes, plugins) = (
        format!("{base}/services"),
        format!("{base}/routes"),
        format!("{base}/plugins"),
    );
    let service = contract
        .create(
            &services,
            json!({ "name": "echo", "url": "http://127.0.0.1:9/api", "tags": ["t"] }),
        )
        .await;
    let service_id = service["id"].as_str().expect("id").to_owned();
    let spare = contract
        .create(
            &services,
            json!({ "name": "spare", "host": "spare.internal" }),
        )
        .await;
    let nested_route = contract
        .create(
            &format!("{services}/{service_id}/routes"),
            json!({ "name": "nested", "paths": ["/nested"] }),
        )
        .await;
    let route = contract
        .create(
            &routes,
            json!({ "name": "flat", "paths": ["/flat"], "service": { "id": service_id } }),
        )
        .await;
    let route_id = route["id"].as_str().expect("id").to_owned();
    let flat_route = format!("{routes}/{route_id}");
    let global = contract
        .create(
            &plugins,
            json!({ "name": "rate-limiting", "config": { "second": 50 } }),
        )
        .await;
    let service_plugin = contract
        .create(
            &format!("{services}/echo/plugins"),
            json!({ "name": "request-transformer", "config": { "add": { "headers": ["a:1"] } } }),
        )
        .await;
    contract
        .create(
            &format!("{flat_route}/plugins"),
            json!({ "name": "request-size-limiting", "config": { "allowed_payload_size": 1 } }),
        )
        .await;
    for kind in ["services", "routes", "plugins"] {
        let list = contract.get(&format!("{base}/{kind}?size=100")).await;
        assert!(!list["data"].as_array().expect("data").is_empty(), "{kind}");
    }
    for nested in [
        format!("services/{service_id}/routes"),
        format!("services/{service_id}/plugins"),
        format!("routes/{route_id}/plugins"),
    ] {
        let list = contract.get(&format!("{base}/{nested}")).await;
        assert!(
            !list["data"].as_array().expect("data").is_empty(),
            "{nested}"
        );
    }
    let global_id = global["id"].as_str().expect("id");
    let global_plugin = format!("{plugins}/{global_id}");
    let service_plugin_id = service_plugin["id"].as_str().expect("id");
    for one in [
        format!("services/{service_id}"),
        "services/echo".to_owned(),
        format!("routes/{route_id}"),
        format!("plugins/{global_id}"),
    ] {
        contract.get(&format!("{base}/{one}")).await;
    }
    contract
        .upsert(
            &format!("{services}/upserted"),
            json!({ "host": "upserted.internal" }),
        )
        .await;
    contract
        .upsert(
            &flat_route,
            json!({ "name": "flat", "paths": ["/flat2"], "service": { "id": service_id } }),
        )
        .await;
    contract
        .upsert(
            &global_plugin,
            json!({ "name": "rate-limiting", "config": { "minute": 500 } }),
        )
        .await;
    contract
        .update(&format!("{services}/{service_id}"), json!({ "retries": 2 }))
        .await;
    let nested_route_id = nested_route["id"].as_str().expect("id");
    contract
        .update(
            &format!("{routes}/{nested_route_id}"),
            json!({ "strip_path": false }),
        )
        .await;
    contract
        .update(
            &format!("{plugins}/{service_plugin_id}"),
            json!({ "enabled": false }),
        )
        .await;

    // The rest of a control plane: versions, declarative files, certificates, Envoy.
    let hash = contract
        .get(&format!("{control_plane}/expected-config-hash"))
        .await;
    let declarative = format!("{control_plane}/declarative-config");
    let export = contract.get(&declarative).await;
    let yaml = contract.get(&format!("{declarative}?format=yaml")).await;
    assert_eq!(yaml, export);
    let imported = contract
        .create(
            &format!("/v2/control-planes/{doomed_id}/declarative-config"),
            export,
        )
        .await;
    assert_eq!(imported["config_hash"], hash["expected_hash"]);
    let certificates = format!("{control_plane}/dp-client-certificates");
    let (pem, _) = control_plane::pki::client_certificate("dp").expect("cert");
    let pinned = contract.create(&certificates, json!({ "cert": pem })).await;
    let certificate_id = pinned["item"]["id"].as_str().expect("id").to_owned();
    contract.get(&certificates).await;
    let certificate = format!("{certificates}/{certificate_id}");
    contract.get(&certificate).await;
    let (rotated, _) = control_plane::pki::client_certificate("dp").expect("cert");
    contract
        .call(200, "PUT", &certificate, Some(&json!({ "cert": rotated })))
        .await;
    contract
        .create(
            &format!("{control_plane}/envoy-bootstrap"),
            json!({ "node_id": "envoy-1", "listen": "127.0.0.1:10000" }),
        )
        .await;

    // A cloud gateway: its real gateway process connects and shows up as a node.
    let configurations = "/v3/cloud-gateways/configurations";
    let configuration = json!({
        "control_plane_id": serverless_id,
        "control_plane_geo": "us",
        "dataplane_groups": [{ "region": "us", "provider": "aws" }],
        "kind": "serverless.v1",
    });
    // The first PUT creates it; the same PUT again replaces it.
    let provisioned = contract
        .call(201, "PUT", configurations, Some(&configuration))
        .await;
    let configuration_id = provisioned["id"].as_str().expect("id").to_owned();
    let replaced = contract.upsert(configurations, configuration).await;
    assert_eq!(replaced["id"], provisioned["id"]);
    contract.get(configurations).await;
    let provisioned = format!("{configurations}/{configuration_id}");
    contract.get(&provisioned).await;
    let nodes = format!("/v2/control-planes/{serverless_id}/nodes");
    wasmgate_tests::until(
        "the provisioned gateway's node",
        std::time::Duration::from_secs(90),
        async || {
            let list = cp.expect(200, "GET", &nodes, None).await;
            if list["items"][0]["config_hash"].is_string() {
                Ok(())
            } else {
                Err(list.to_string())
            }
        },
    )
    .await;
    let listed = contract.get(&nodes).await;
    let node_id = listed["items"][0]["id"].as_str().expect("id").to_owned();
    let node = format!("{nodes}/{node_id}");
    contract.get(&node).await;

    // Custom domains (the control plane's own CA issues at once).
    let domains = "/v2/cloud-gateways/custom-domains";
    let domain = contract
        .create(
            domains,
            json!({ "control_plane_id": serverless_id, "control_plane_geo": "us",
                    "domain": "api.example.test" }),
        )
        .await;
    let domain = format!("{domains}/{}", domain["id"].as_str().expect("id"));
    contract
        .get(&format!("{domains}?filter[state]=initializing"))
        .await;
    contract.get(&domain).await;
    contract.get(&format!("{domain}/online-status")).await;

    // Deletions, last.
    contract.delete(&domain).await;
    contract.delete(&provisioned).await;
    contract.delete(&node).await;
    contract.delete(&certificate).await;
    contract.delete(&global_plugin).await;
    contract.delete(&flat_route).await;
    let spare_id = spare["id"].as_str().expect("id");
    contract.delete(&format!("{services}/{spare_id}")).await;
    contract
        .delete(&format!("{control_planes}/{doomed_id}"))
        .await;

    let uncovered = contract.uncovered();
    assert!(
        uncovered.is_empty(),
        "documented but never exercised: {uncovered:#?}"
    );
}

/// README "Cloud gateways": `kind` `serverless.v0` provisions a real gateway for a
/// `CLUSTER_TYPE_SERVERLESS` control plane (with the platform's limits), as
/// `serverless.v1` does for `_SERVERLESS_V1`; each kind is refused for any other cluster type,
/// other kinds are refused, and a refusal provisions nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_gateway_kinds_match_their_control_plane_type() {
    let echo = wasmgate_tests::EchoUpstream::start().await.expect("echo");
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let v0 = control_plane(&cp, "v0", "CLUSTER_TYPE_SERVERLESS").await;
    let v1 = control_plane(&cp, "v1", "CLUSTER_TYPE_SERVERLESS_V1").await;
    let plain = control_plane(&cp, "plain", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let put = |id: &str, kind: &str| {
        json!({
            "control_plane_id": id,
            "control_plane_geo": "us",
            "dataplane_groups": [{ "region": "us", "provider": "aws" }],
            "kind": kind,
        })
    };
    for (id, kind, needs, has) in [
        (
            &v1,
            "serverless.v0",
            "CLUSTER_TYPE_SERVERLESS",
            "CLUSTER_TYPE_SERVERLESS_V1",
        ),
        (
            &plain,
            "serverless.v0",
            "CLUSTER_TYPE_SERVERLESS",
            "CLUSTER_TYPE_CONTROL_PLANE",
        ),
        (
            &v0,
            "serverless.v1",
            "CLUSTER_TYPE_SERVERLESS_V1",
            "CLUSTER_TYPE_SERVERLESS",
        ),
        (
            &plain,
            "serverless.v1",
            "CLUSTER_TYPE_SERVERLESS_V1",
            "CLUSTER_TYPE_CONTROL_PLANE",
        ),
    ] {
        let refused = cp
            .expect(
                400,
                "PUT",
                "/v3/cloud-gateways/configurations",
                Some(&put(id, kind)),
            )
            .await;
        assert_eq!(
            refused["invalid_parameters"][0]["field"], "kind",
            "{refused}"
        );
        assert_eq!(
            refused["invalid_parameters"][0]["reason"],
            format!("{kind} needs a control plane of cluster_type {needs}; this one is {has}")
        );
    }
    for kind in ["dedicated.v0", "serverless.v2", ""] {
        let refused = cp
            .expect(
                400,
                "PUT",
                "/v3/cloud-gateways/configurations",
                Some(&put(&v0, kind)),
            )
            .await;
        assert_eq!(
            refused["invalid_parameters"][0]["field"], "kind",
            "{refused}"
        );
    }
    let none = cp
        .expect(200, "GET", "/v3/cloud-gateways/configurations", None)
        .await;
    assert_eq!(none["data"], json!([]), "a refusal provisions nothing");

    let configuration = cp
        .expect(
            201,
            "PUT",
            "/v3/cloud-gateways/configurations",
            Some(&put(&v0, "serverless.v0")),
        )
        .await;
    assert_eq!(configuration["kind"], "serverless.v0");
    assert_eq!(configuration["control_plane_id"], v0.as_str());
    cp.route_all_paths_to(&v0, "echo", "all", echo.addr()).await;
    let proxy: std::net::SocketAddr = configuration["dataplane_groups"][0]["proxy_url"]
        .as_str()
        .expect("proxy_url")
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    // The provisioned gateway proxies (it may still be starting up and compiling its
    // modules), with the platform's limits though the control plane has no plugin.
    wasmgate_tests::until(
        "the serverless.v0 gateway proxying",
        std::time::Duration::from_secs(90),
        async || {
            let response = client::send(proxy, Protocol::Http1, &Request::get("/"))
                .await
                .map_err(|e| e.to_string())?;
            match response.status {
                200 => Ok(()),
                status => Err(format!("{status}")),
            }
        },
    )
    .await;
    let over = Request::post(
        "/",
        RequestBody::Filler {
            len: (10 << 20) + 1,
            with_length: true,
        },
    );
    let refused = client::send(proxy, Protocol::Http1, &over)
        .await
        .expect("10 MB + 1");
    assert_eq!(refused.status, 413, "{}", refused.text());
    let id = configuration["id"].as_str().expect("id");
    wasmgate_tests::until(
        "the group ready",
        std::time::Duration::from_secs(30),
        async || {
            let state = cp
                .expect(
                    200,
                    "GET",
                    &format!("/v3/cloud-gateways/configurations/{id}"),
                    None,
                )
                .await;
            match state["dataplane_groups"][0]["state"].as_str() {
                Some("ready") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Konnect takes a path with a trailing slash as the path without it; the seed's own call is
/// `POST /v2/control-planes/` (before: 404 "no API route").
#[tokio::test]
async fn paths_with_a_trailing_slash_are_konnects_paths() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes/",
            Some(&json!({ "name": "seed", "cluster_type": "CLUSTER_TYPE_SERVERLESS" })),
        )
        .await;
    let id = created["id"].as_str().expect("id");
    let listed = cp.expect(200, "GET", "/v2/control-planes/", None).await;
    assert!(
        listed["data"]
            .as_array()
            .is_some_and(|planes| planes.iter().any(|p| p["id"] == id)),
        "{listed}"
    );
    cp.expect(200, "GET", &format!("/v2/control-planes/{id}/"), None)
        .await;
    // Only a trailing slash: other paths stay unknown.
    cp.expect(404, "GET", "/v2/control-planes//nothing", None)
        .await;
}

/// A request with its own Content-Type (and the token).
async fn send_as(
    cp: &TestControlPlane,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> wasmgate_tests::Response {
    let request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: vec![
            ("content-type".into(), content_type.into()),
            ("authorization".into(), format!("Bearer {TOKEN}")),
        ],
        body: RequestBody::Bytes(body.as_bytes().to_vec()),
    };
    client::send(cp.endpoints().api, Protocol::Http1, &request)
        .await
        .expect("request")
}

/// Review D23, core entities as Kong's Admin API answers: a 409 lists the colliding fields
/// (was `{}`), a refused delete names the referenced entity ("this 'services' entity"; was
/// "this entity"), `next` keeps `size` and `tags` (was dropped: the next page had 100
/// entities and no filter), an import refuses ids that are not UUIDs as POST does (was
/// accepted), form-encoded bodies are read as Kong reads them (was 400 "Cannot parse JSON
/// body") and another media type is 415 (was parsed as JSON).
#[tokio::test]
async fn core_entities_answer_like_kongs_admin_api() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let id = control_plane(&cp, "kong", "CLUSTER_TYPE_CONTROL_PLANE").await;
    let base = format!("/v2/control-planes/{id}/core-entities");
    let services = format!("{base}/services");
    cp.add_service(
        &id,
        &json!({ "name": "echo", "host": "echo.internal", "tags": ["t"] }),
    )
    .await;
    let taken = cp
        .expect(
            409,
            "POST",
            &services,
            Some(&json!({ "name": "echo", "host": "h" })),
        )
        .await;
    assert_eq!(
        taken,
        json!({
            "code": 5,
            "name": "unique constraint violation",
            "message": "UNIQUE violation detected on '{name=\"echo\"}'",
            "fields": { "name": "echo" },
        })
    );
    cp.expect(
        201,
        "POST",
        &format!("{services}/echo/routes"),
        Some(&json!({ "name": "r", "paths": ["/r"] })),
    )
    .await;
    let referenced = cp
        .expect(400, "DELETE", &format!("{services}/echo"), None)
        .await;
    assert_eq!(
        referenced["message"],
        "an existing 'routes' entity references this 'services' entity"
    );
    assert_eq!(referenced["fields"], json!({ "@referenced_by": "routes" }));

    // Pages: `next` keeps the filter and the size.
    for name in ["t2", "t3"] {
        cp.add_service(&id, &json!({ "name": name, "host": "h", "tags": ["t"] }))
            .await;
    }
    cp.add_service(&id, &json!({ "name": "untagged", "host": "h" }))
        .await;
    let first = cp
        .expect(200, "GET", &format!("{services}?size=1&tags=t"), None)
        .await;
    let next = first["next"].as_str().expect("next").to_owned();
    assert!(next.ends_with("&tags=t&size=1"), "{next}");
    let mut seen = vec![first["data"][0]["name"].clone()];
    let mut next = Some(next);
    while let Some(link) = next {
        let page = cp.expect(200, "GET", &link, None).await;
        assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");
        seen.push(page["data"][0]["name"].clone());
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, [json!("echo"), json!("t2"), json!("t3")]);

    // An import's ids are UUIDs, as POST's.
    let before = cp.expect(200, "GET", &services, None).await;
    let import = cp
        .expect(
            400,
            "POST",
            &format!("/v2/control-planes/{id}/declarative-config"),
            Some(&json!({ "_format_version": "3.0",
                "services": [{ "name": "x", "id": "not-a-uuid", "host": "h" }] })),
        )
        .await;
    assert_eq!(import["code"], 14, "{import}");
    assert!(
        import["message"]
            .as_str()
            .is_some_and(|m| m.contains("expected a valid UUID")),
        "{import}"
    );
    assert_eq!(cp.expect(200, "GET", &services, None).await, before);

    // Form bodies, as Kong's Admin API takes them (curl -d's default).
    let form = "application/x-www-form-urlencoded";
    let service = send_as(
        &cp,
        "POST",
        &services,
        form,
        "name=form&host=form.internal&port=8080&tags[]=a&tags[]=b",
    )
    .await;
    assert_eq!(service.status, 201, "{}", service.text());
    let service = service.json().expect("json");
    assert_eq!(
        (&service["port"], &service["tags"]),
        (&json!(8080), &json!(["a", "b"]))
    );
    let route = send_as(
        &cp,
        "POST",
        &format!("{base}/routes"),
        form,
        "name=form&paths=/form&service.name=form&strip_path=false",
    )
    .await;
    assert_eq!(route.status, 201, "{}", route.text());
    let route = route.json().expect("json");
    assert_eq!(
        (
            &route["paths"],
            &route["strip_path"],
            &route["service"]["id"]
        ),
        (&json!(["/form"]), &json!(false), &service["id"])
    );
    let plugin = send_as(
        &cp,
        "POST",
        &format!("{services}/form/plugins"),
        form,
        "name=rate-limiting&config.second=5",
    )
    .await;
    assert_eq!(plugin.status, 201, "{}", plugin.text());
    let plugin = plugin.json().expect("json");
    assert_eq!(plugin["config"]["second"], 5);
    let plugin_id = plugin["id"].as_str().expect("id");
    let patched = send_as(
        &cp,
        "PATCH",
        &format!("{base}/plugins/{plugin_id}"),
        form,
        "config.minute=60",
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let patched = patched.json().expect("json");
    assert_eq!(
        (&patched["config"]["second"], &patched["config"]["minute"]),
        (&json!(5), &json!(60))
    );
    let bad = send_as(&cp, "POST", &services, form, "name=bad&host=h&port=eighty").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        bad.json().expect("json")["fields"],
        json!({ "port": "expected an integer" })
    );
    let text = send_as(&cp, "POST", &services, "text/plain", "name=x").await;
    assert_eq!(text.status, 415, "{}", text.text());
    assert_eq!(
        text.json().expect("json"),
        json!({ "message": "Unsupported Content-Type 'text/plain': send application/json or application/x-www-form-urlencoded" })
    );
}

#[tokio::test]
async fn a_method_a_route_does_not_take_gets_kongs_405_and_a_pin_can_be_replaced() {
    let dir = dir();
    let cp = TestControlPlane::start(dir.path());
    let refused = cp
        .call("PATCH", "/v2/control-planes", Some(&json!({})))
        .await;
    assert_eq!(refused.status, 405, "{}", refused.text());
    assert_eq!(
        refused.json(),
        Some(json!({ "message": "Method not allowed" }))
    );

    let created = cp
        .expect(
            201,
            "POST",
            "/v2/control-planes",
            Some(&json!({ "name": "pins" })),
        )
        .await;
    let pins = format!(
        "/v2/control-planes/{}/dp-client-certificates",
        created["id"].as_str().expect("id")
    );
    let (first, _) = control_plane::pki::client_certificate("dp-1").expect("cert");
    let (second, _) = control_plane::pki::client_certificate("dp-2").expect("cert");
    let pinned = cp
        .expect(201, "POST", &pins, Some(&json!({ "cert": first })))
        .await;
    let pin = format!("{pins}/{}", pinned["item"]["id"].as_str().expect("id"));
    let replaced = cp
        .expect(
            200,
            "PUT",
            &pin,
            Some(&json!({ "cert": second, "title": "rotated" })),
        )
        .await;
    assert_eq!(replaced["item"]["cert"], json!(second));
    assert_eq!(replaced["item"]["title"], "rotated");
    let read = cp.expect(200, "GET", &pin, None).await;
    assert_eq!(read["item"]["cert"], json!(second));
}
