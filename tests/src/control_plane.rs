//! A real control plane for tests: in-process, on loopback ports, with its data directory
//! in a temporary folder, and a client for its API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use control_plane::{ControlPlane, Endpoints, Options};
use serde_json::{json, Value};

use crate::client::{self, Protocol, Request, RequestBody, Response};

pub const TOKEN: &str = "kpat_test-token";

pub struct TestControlPlane {
    control_plane: Option<ControlPlane>,
    data_dir: PathBuf,
    endpoints: Endpoints,
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
}

impl TestControlPlane {
    /// Starts on free ports with `data_dir` (created if missing).
    pub fn start(data_dir: &Path) -> TestControlPlane {
        TestControlPlane::start_with(options(data_dir, None))
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
            data_dir,
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    pub fn control_plane(&self) -> &ControlPlane {
        self.control_plane
            .as_ref()
            .unwrap_or_else(|| panic!("the control plane is stopped"))
    }

    /// Stops it (data planes see it go away).
    pub fn stop(&mut self) {
        if let Some(cp) = self.control_plane.take() {
            cp.shutdown();
        }
    }

    /// Starts it again on the same data directory and ports.
    pub fn start_again(&mut self) {
        self.stop();
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
        let mut request = Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.map_or(RequestBody::Empty, |b| RequestBody::Bytes(b.into_bytes())),
        };
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        client::send(self.endpoints.api, Protocol::Http1, &request)
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
                    "dataplane_groups": [{ "region": "us", "provider": "aws" }],
                    "kind": "serverless.v0",
                })),
            )
            .await;
        let group = &configuration["dataplane_groups"][0];
        Provisioned {
            control_plane_id,
            group_id: group["id"].as_str().expect("group id").to_owned(),
            proxy: group["proxy_url"]
                .as_str()
                .expect("proxy_url")
                .trim_start_matches("http://")
                .parse()
                .expect("proxy address"),
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

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
