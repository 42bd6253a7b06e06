//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on a [`RedisStore`], with
//! Kong's semantics.
//!
//! Each descriptor is one period of one identifier: its entries (with the request's domain)
//! name the counter, its `limit` override gives the limit (`requests_per_unit`) and the period
//! (`unit`). Two entries of wasmgate's own refine it and are not part of the counter's name:
//! `wasmgate.limit` (the exact limit, when Kong's is fractional) and `wasmgate.window:
//! sliding`. A descriptor without a limit is answered `OK` and counts nothing.
//!
//! The request is admitted only if no descriptor's limit is reached, and then every
//! descriptor's counter is incremented by `hits_addend` (0 counts as 1), all in one atomic
//! step. Each status has `code` (`OVER_LIMIT` when that period's limit is reached),
//! `current_limit`, `duration_until_reset` (to the end of the calendar window) and
//! `limit_remaining`: for a fixed window, the ceiling of the limit less the window's count
//! after this request; for a sliding one, the floor of the limit less the weighted usage after
//! it, which is Kong's `X-RateLimit-Remaining-<period>`. The module prints Kong's headers from
//! these.

use std::sync::Arc;

use prost::Message;
use xds_api::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use xds_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use xds_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use xds_api::pb::google::protobuf::Duration as PbDuration;

use crate::calendar;
use crate::store::{Check, Outcome, RedisStore};

/// The entry carrying the exact limit.
pub const LIMIT_ENTRY: &str = "wasmgate.limit";
/// The entry saying the window slides (`sliding`).
pub const WINDOW_ENTRY: &str = "wasmgate.window";

/// gRPC status codes.
pub const INVALID_ARGUMENT: u32 = 3;
pub const UNIMPLEMENTED: u32 = 12;
pub const UNAVAILABLE: u32 = 14;

/// The service over one Redis.
#[derive(Clone, Debug)]
pub struct Service {
    store: Arc<RedisStore>,
}

/// A call's failure: a gRPC status code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u32,
    pub message: String,
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A descriptor's counter name: the domain and every entry but wasmgate's own, each
/// length-prefixed.
fn scope(domain: &str, descriptor: &RateLimitDescriptor) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |part: &str| {
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.push(b'=');
        out.extend_from_slice(part.as_bytes());
    };
    push(domain);
    for entry in &descriptor.entries {
        if entry.key != LIMIT_ENTRY && entry.key != WINDOW_ENTRY {
            push(&entry.key);
            push(&entry.value);
        }
    }
    out
}

/// The check of one descriptor; `Ok(None)` for a descriptor without a limit.
fn check_of(domain: &str, descriptor: &RateLimitDescriptor) -> Result<Option<Check>, Failure> {
    let Some(limit) = &descriptor.limit else {
        return Ok(None);
    };
    let invalid = |message: String| Failure {
        code: INVALID_ARGUMENT,
        message,
    };
    let unit = calendar::from_proto(limit.unit)
        .ok_or_else(|| invalid(format!("limit.unit {} is not a period", limit.unit)))?;
    let mut exact = f64::from(limit.requests_per_unit);
    let mut sliding = false;
    for entry in &descriptor.entries {
        if entry.key == LIMIT_ENTRY {
            exact = entry
                .value
                .parse::<f64>()
                .ok()
                .filter(|l| l.is_finite() && *l > 0.0)
                .ok_or_else(|| {
                    invalid(format!("{LIMIT_ENTRY}: {:?} is not a limit", entry.value))
                })?;
        } else if entry.key == WINDOW_ENTRY {
            sliding = match entry.value.as_str() {
                "sliding" => true,
                "fixed" => false,
                other => return Err(invalid(format!("{WINDOW_ENTRY}: {other:?}"))),
            };
        }
    }
    Ok(Some(Check {
        scope: scope(domain, descriptor),
        unit,
        limit: exact,
        sliding,
    }))
}

/// The response for an outcome (see the module docs for `limit_remaining`).
fn response(
    request: &RateLimitRequest,
    checks: &[Option<Check>],
    outcome: &Outcome,
    hits: u32,
) -> RateLimitResponse {
    let mut periods = outcome.periods.iter();
    let statuses = request
        .descriptors
        .iter()
        .zip(checks)
        .map(|(descriptor, check)| {
            let (Some(check), Some(limit), Some(period)) = (
                check,
                descriptor.limit.as_ref(),
                check.as_ref().and(periods.next()),
            ) else {
                return DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                };
            };
            let counted = if outcome.admitted { u64::from(hits) } else { 0 };
            let count = period.current.saturating_add(counted);
            let remaining = if check.sliding {
                let usage = count as f64 + period.previous as f64 * period.weight;
                (check.limit - usage).max(0.0).floor()
            } else {
                (check.limit.ceil() - count as f64).max(0.0)
            };
            DescriptorStatus {
                code: if period.over {
                    Code::OverLimit
                } else {
                    Code::Ok
                } as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: limit.requests_per_unit,
                    unit: limit.unit,
                }),
                limit_remaining: remaining.min(f64::from(u32::MAX)) as u32,
                duration_until_reset: Some(PbDuration {
                    seconds: period.until_reset_ms.div_euclid(1000),
                    nanos: (period.until_reset_ms.rem_euclid(1000) * 1_000_000) as i32,
                }),
                quota: None,
            }
        })
        .collect();
    RateLimitResponse {
        overall_code: if outcome.admitted {
            Code::Ok
        } else {
            Code::OverLimit
        } as i32,
        statuses,
        ..Default::default()
    }
}

impl Service {
    pub fn new(store: Arc<RedisStore>) -> Service {
        Service { store }
    }

    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// Decides one request at `now_ms`.
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
        now_ms: i64,
    ) -> Result<RateLimitResponse, Failure> {
        let checks = request
            .descriptors
            .iter()
            .map(|d| check_of(&request.domain, d))
            .collect::<Result<Vec<_>, _>>()?;
        let hits = request.hits_addend.max(1);
        let counted: Vec<Check> = checks.iter().flatten().cloned().collect();
        let outcome = if counted.is_empty() {
            Outcome {
                admitted: true,
                periods: Vec::new(),
            }
        } else {
            self.store
                .check(&counted, hits, now_ms)
                .await
                .map_err(|e| Failure {
                    code: UNAVAILABLE,
                    message: e.to_string(),
                })?
        };
        Ok(response(request, &checks, &outcome, hits))
    }

    /// Decides one request now, on Redis's clock ([`RedisStore::now_ms`]).
    pub async fn decide_now(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Failure> {
        let now = self.store.now_ms().await.map_err(|e| Failure {
            code: UNAVAILABLE,
            message: e.to_string(),
        })?;
        self.decide(request, now).await
    }

    /// [`Service::decide_now`] on an encoded request, answering an encoded response: what a
    /// data plane running the service in-process does with a module's `grpc_call`.
    pub async fn call(&self, message: &[u8]) -> Result<Vec<u8>, Failure> {
        let request = RateLimitRequest::decode(message).map_err(|e| Failure {
            code: INVALID_ARGUMENT,
            message: format!("RateLimitRequest: {e}"),
        })?;
        let response = self.decide_now(&request).await?;
        Ok(response.encode_to_vec())
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        match self.decide_now(request.get_ref()).await {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(Failure { code, message }) => Err(tonic::Status::new(
                tonic::Code::from_i32(code as i32),
                message,
            )),
        }
    }
}
