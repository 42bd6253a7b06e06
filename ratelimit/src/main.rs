//! `wasmgate-ratelimit`: the rate-limit service for one Redis, over gRPC (h2c), for Envoys
//! running the `rate-limiting` module with `policy: redis` (`gateway` runs it in-process).
//!
//! ```text
//! wasmgate-ratelimit --listen 127.0.0.1:8081 --redis-host 127.0.0.1 [--redis-port 6379]
//!     [--redis-database 0] [--redis-username U] [--redis-password-env VAR] [--redis-timeout 2000]
//!     [--redis-ssl [--redis-ssl-verify [--redis-ca-file CA.pem]] [--redis-server-name NAME]]
//! ```
//!
//! The flags are the plugin's `redis` fields: the cluster name the module calls depends on
//! them (the binary prints it), so give the same host, port, database, username and TLS
//! settings as the plugin's config.

use std::net::SocketAddr;

use ratelimit::{RedisStore, RedisTarget, Service};
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

const USAGE: &str =
    "usage: wasmgate-ratelimit --listen ADDR --redis-host HOST [--redis-port 6379] \
[--redis-database 0] [--redis-username USER] [--redis-password-env VAR] [--redis-timeout MS] \
[--redis-ssl [--redis-ssl-verify [--redis-ca-file CA.pem]] [--redis-server-name NAME]]";

fn parse(args: &[String]) -> Result<(SocketAddr, RedisTarget), String> {
    let mut listen = None;
    let mut target = RedisTarget::new("", ratelimit::target::DEFAULT_PORT);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag}: a value is missing\n{USAGE}"))
        };
        let number = |flag: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--redis-host" => target.host = value()?,
            "--redis-port" => {
                target.port = u16::try_from(number(flag, value()?)?)
                    .map_err(|_| "--redis-port: 0 to 65535".to_owned())?
            }
            "--redis-database" => {
                target.database = i64::try_from(number(flag, value()?)?)
                    .map_err(|_| "--redis-database: too large".to_owned())?
            }
            "--redis-username" => target.username = Some(value()?),
            "--redis-password-env" => {
                let name = value()?;
                target.password =
                    Some(std::env::var(&name).map_err(|_| {
                        format!("--redis-password-env: the environment has no {name}")
                    })?);
            }
            "--redis-timeout" => {
                target.timeout_ms = u32::try_from(number(flag, value()?)?)
                    .map_err(|_| "--redis-timeout: too large".to_owned())?
            }
            "--redis-ssl" => target.ssl = true,
            "--redis-ssl-verify" => target.ssl_verify = true,
            "--redis-server-name" => target.server_name = Some(value()?),
            "--redis-ca-file" => {
                let path = value()?;
                target.ca_pem =
                    Some(std::fs::read(&path).map_err(|e| format!("--redis-ca-file {path}: {e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    if target.host.is_empty() {
        return Err(format!("--redis-host is required\n{USAGE}"));
    }
    Ok((listen, target))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, target) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let cluster = target.cluster_name();
    let store = match RedisStore::new(target) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("wasmgate-ratelimit: {e}");
            std::process::exit(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wasmgate-ratelimit: listening on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // One line tests and scripts wait for: the address (port 0 picks one) and the cluster
    // name the module calls for this Redis.
    println!("wasmgate-ratelimit listening on {local} for cluster {cluster}");
    let incoming = match tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
    {
        Ok(incoming) => incoming,
        Err(e) => {
            eprintln!("wasmgate-ratelimit: {e}");
            std::process::exit(1);
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Service::new(store)))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    if let Err(e) = served {
        eprintln!("wasmgate-ratelimit: {e}");
        std::process::exit(1);
    }
}
