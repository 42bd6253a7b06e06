//! wasmgate's rate-limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService` on
//! Redis, with Kong's `rate-limiting` semantics. It is what the `rate-limiting` module's
//! `policy: redis` calls: proxy-wasm has no sockets, so the module asks this service over
//! gRPC (`proxy_grpc_call`) and the service counts in Redis.
//!
//! # Design
//!
//! - **Who counts**: one atomic Lua script per request ([`store`]): it reads every period's
//!   counter, decides by Kong's rule (`limit - usage <= 0` stops), and only then increments
//!   them all. No read-then-write across clients, so N gateways and M Envoys sharing a Redis
//!   never admit more than the limit in a window.
//! - **Windows**: Kong's calendar-aligned windows ([`calendar`]) on Redis's clock (each
//!   store moves its host's clock by Redis's `TIME`, read every [`store::RESYNC`]), one
//!   Redis key per identifier, period and window start (as Kong's keys), expiring after the
//!   window (after the next one for a sliding window, whose usage weighs the previous
//!   window's count).
//! - **Protocol** ([`service`]): the module sends one descriptor per configured period, with
//!   the identifier as an entry and the limit as the descriptor's `limit` override; the
//!   answer's per-descriptor `limit_remaining` and `duration_until_reset` give the same
//!   headers as `policy: local`.
//! - **Which Redis**: the module calls the cluster [`target::RedisTarget::cluster_name`] names
//!   (`wasmgate_ratelimit_<hash of host, port, database, user, TLS settings>`). `gateway` runs
//!   one service per distinct Redis of its configuration in-process ([`Services`]), answering
//!   calls to those names without any network hop; for Envoy, `gateway envoy-bootstrap
//!   --ratelimit-address` adds those clusters, pointing at the `wasmgate-ratelimit` binary.
//! - **Faults**: every Redis call is bounded by the plugin's `redis.timeout`; a failure drops
//!   the connection and the next request reconnects, so a restarted Redis is used again
//!   without restarting anything. The module follows Kong's `fault_tolerant` on any failed
//!   call (its own deadline is the same timeout).

pub mod calendar;
pub mod service;
pub mod store;
pub mod target;
pub mod testing;

use std::collections::HashMap;
use std::sync::Mutex;

pub use service::{Failure, Service};
pub use store::RedisStore;
pub use target::RedisTarget;

/// The services of one data plane, one per distinct Redis, on a runtime thread of their own
/// (a Redis connection's driver must not depend on a worker that may be busy running wasm).
pub struct Services {
    runtime: tokio::runtime::Handle,
    /// The configuration generation the map was made for, and the map by cluster name.
    by_cluster: Mutex<(u64, HashMap<String, Service>)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// Starts the runtime thread; no Redis is connected before a call needs it.
    pub fn start() -> std::io::Result<Services> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ratelimit".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Services {
            runtime: handle,
            by_cluster: Mutex::new((u64::MAX, HashMap::new())),
            _stop: stop,
        })
    }

    /// The service a module's call to `cluster` reaches under configuration `generation`,
    /// whose Redis targets `targets` gives (asked only when the generation changed). A service
    /// whose target is unchanged keeps its connection across generations. `None`: no such
    /// cluster.
    pub fn find(
        &self,
        generation: u64,
        cluster: &str,
        targets: impl FnOnce() -> Vec<RedisTarget>,
    ) -> Option<Service> {
        let mut held = self.by_cluster.lock().unwrap_or_else(|e| e.into_inner());
        if held.0 != generation {
            let old = std::mem::take(&mut held.1);
            let mut next = HashMap::new();
            for target in targets() {
                let name = target.cluster_name();
                let service = match old.get(&name) {
                    Some(s) if s.store().target() == &target => s.clone(),
                    _ => match RedisStore::new(target) {
                        Ok(store) => Service::new(store),
                        Err(e) => {
                            log::error!("rate-limit service for {name}: {e}");
                            continue;
                        }
                    },
                };
                next.insert(name, service);
            }
            *held = (generation, next);
        }
        held.1.get(cluster).cloned()
    }

    /// Answers an encoded `RateLimitRequest` on the services' runtime.
    pub async fn call(&self, service: Service, message: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let task = self
            .runtime
            .spawn(async move { service.call(&message).await });
        task.await.unwrap_or_else(|e| {
            Err(Failure {
                code: service::UNAVAILABLE,
                message: format!("rate-limit service task: {e}"),
            })
        })
    }
}
