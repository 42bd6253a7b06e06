//! rate-limiting in a real Envoy, beyond the case file: accuracy under load across worker
//! threads (`--concurrency 2` and `4`), per-identifier budgets under load, second, minute and
//! sliding windows on the real clock, client IPs, and the per-request cost next to Envoy's
//! native `local_ratelimit`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use wasmgate_tests::client::{send, Connection};
use wasmgate_tests::echo::Arrival;
use wasmgate_tests::envoy::ListenerSpec;
use wasmgate_tests::{paths, EchoUpstream, Envoy, EnvoyConfig, Protocol, Request, WasmFilter};

fn rate_limiting(config: Value) -> Vec<WasmFilter> {
    vec![WasmFilter::plugin("rate-limiting", config)]
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sleeps until `offset` seconds after the start of the next second.
async fn align_to_second(offset: f64) {
    let now = now_secs_f64();
    let target = now.floor() + 1.0 + offset;
    tokio::time::sleep(Duration::from_secs_f64(target - now)).await;
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    limited: usize,
    other: Vec<String>,
}

/// `connections` kept connections, each sending requests back to back for `duration`;
/// `request(connection, n)` builds the n-th request of a connection.
async fn hammer(
    addr: SocketAddr,
    protocol: Protocol,
    connections: usize,
    duration: Duration,
    request: Arc<dyn Fn(usize, usize) -> Request + Send + Sync>,
) -> Load {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let request = Arc::clone(&request);
            tokio::spawn(async move {
                let mut load = Load::default();
                let mut connection = match Connection::open(addr, protocol).await {
                    Ok(connection) => connection,
                    Err(e) => {
                        load.other.push(e);
                        return load;
                    }
                };
                let mut n = 0;
                while Instant::now() < deadline {
                    match connection.send(&request(c, n)).await {
                        Ok(r) if r.status == 200 => load.ok += 1,
                        Ok(r) if r.status == 429 => load.limited += 1,
                        Ok(r) => load.other.push(format!("{} {}", r.status, r.text())),
                        Err(e) => load.other.push(e),
                    }
                    n += 1;
                }
                load
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.expect("load task");
        total.ok += load.ok;
        total.limited += load.limited;
        total.other.extend(load.other);
    }
    total
}

/// Requests that reached the upstream per aligned second (by arrival time) and per key.
fn per_second(
    arrivals: &[Arrival],
    key: impl Fn(&Arrival) -> String,
) -> BTreeMap<(String, u64), usize> {
    let mut counts = BTreeMap::new();
    for arrival in arrivals {
        *counts
            .entry((key(arrival), unix_secs(arrival.at)))
            .or_insert(0) += 1;
    }
    counts
}

/// Checks every aligned second of a load run: never above `limit` per key, and at least 90%
/// of it in every second that lies entirely inside the run.
fn check_accuracy(
    what: &str,
    counts: &BTreeMap<(String, u64), usize>,
    keys: &[String],
    limit: usize,
    first_full: u64,
    last_full: u64,
) -> Vec<String> {
    let mut failures = Vec::new();
    for ((key, second), n) in counts {
        if *n > limit {
            failures.push(format!(
                "{what}: {key} at second {second}: {n} admitted > {limit}"
            ));
        }
    }
    for key in keys {
        for second in first_full..=last_full {
            let n = counts.get(&(key.clone(), second)).copied().unwrap_or(0);
            if n * 10 < limit * 9 {
                failures.push(format!(
                    "{what}: {key} at second {second}: {n} admitted < 90% of {limit}"
                ));
            }
        }
    }
    failures
}

const RUN: Duration = Duration::from_millis(4_500);
const CONNECTIONS: usize = 16;

/// One run: `limit` per second for everyone (limit_by ip, all clients are 127.0.0.1), offered
/// far above it over 16 connections.
async fn accuracy_single_budget(concurrency: u32, protocol: Protocol) -> String {
    const LIMIT: usize = 100;
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .concurrency(concurrency)
        .listener(
            "limited",
            rate_limiting(json!({"second": LIMIT, "limit_by": "ip"})),
        );
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("limited");
    align_to_second(0.2).await;
    let started = now_secs_f64();
    let load = hammer(
        addr,
        protocol,
        CONNECTIONS,
        RUN,
        Arc::new(|_, _| Request::get("/load")),
    )
    .await;
    let ended = now_secs_f64();
    assert!(
        load.other.is_empty(),
        "unexpected answers: {:?}",
        &load.other[..load.other.len().min(5)]
    );
    let arrivals = echo.arrivals();
    assert_eq!(
        arrivals.len(),
        load.ok,
        "every 200 reached the upstream, nothing else did"
    );
    let counts = per_second(&arrivals, |_| "all".into());
    let (first_full, last_full) = (started.ceil() as u64, ended.floor() as u64 - 1);
    let failures = check_accuracy(
        &format!("--concurrency {concurrency} {protocol:?}"),
        &counts,
        &["all".into()],
        LIMIT,
        first_full,
        last_full,
    );
    assert!(failures.is_empty(), "{}\n{counts:?}", failures.join("\n"));
    assert!(
        load.limited >= 4 * load.ok,
        "the offered load must be far above the limit: {} admitted, {} limited",
        load.ok,
        load.limited
    );
    let per_second: Vec<usize> = counts.values().copied().collect();
    let line = format!(
        "| {concurrency} | {protocol:?} | {LIMIT}/s, one identifier | {:.0} req/s | {per_second:?} |",
        (load.ok + load.limited) as f64 / (ended - started),
    );
    println!("{line}");
    line
}

/// Several identifiers at once (limit_by header), each with its own budget.
async fn accuracy_per_identifier(concurrency: u32) -> String {
    const LIMIT: usize = 40;
    const KEYS: usize = 4;
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .concurrency(concurrency)
        .listener(
            "by-key",
            rate_limiting(
                json!({"second": LIMIT, "limit_by": "header", "header_name": "x-api-key"}),
            ),
        );
    let envoy = Envoy::start(&config).await.unwrap();
    let addr = envoy.listener("by-key");
    align_to_second(0.2).await;
    let started = now_secs_f64();
    let load = hammer(
        addr,
        Protocol::Http1,
        CONNECTIONS,
        RUN,
        Arc::new(|c, n| {
            Request::get("/load").header("x-api-key", &format!("key-{}", (c + n) % KEYS))
        }),
    )
    .await;
    let ended = now_secs_f64();
    assert!(
        load.other.is_empty(),
        "unexpected answers: {:?}",
        &load.other[..load.other.len().min(5)]
    );
    let arrivals = echo.arrivals();
    let counts = per_second(&arrivals, |a| {
        a.headers
            .iter()
            .find(|(k, _)| k == "x-api-key")
            .map_or_else(|| "none".into(), |(_, v)| v.clone())
    });
    let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
    let (first_full, last_full) = (started.ceil() as u64, ended.floor() as u64 - 1);
    let failures = check_accuracy(
        &format!("--concurrency {concurrency} limit_by header"),
        &counts,
        &keys,
        LIMIT,
        first_full,
        last_full,
    );
    assert!(failures.is_empty(), "{}\n{counts:?}", failures.join("\n"));
    assert!(load.limited >= 2 * load.ok, "{load:?}");
    let full: Vec<usize> = (first_full..=last_full)
        .flat_map(|s| keys.iter().map(move |k| (k.clone(), s)))
        .map(|k| counts.get(&k).copied().unwrap_or(0))
        .collect();
    let line = format!(
        "| {concurrency} | Http1 | {LIMIT}/s for each of {KEYS} `x-api-key` values | {:.0} req/s | {full:?} |",
        (load.ok + load.limited) as f64 / (ended - started),
    );
    println!("{line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_over_admits_across_two_workers() {
    accuracy_single_budget(2, Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_over_admits_across_four_workers() {
    accuracy_single_budget(4, Protocol::Http1).await;
    accuracy_single_budget(4, Protocol::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identifier_gets_its_own_budget_across_workers() {
    accuracy_per_identifier(2).await;
    accuracy_per_identifier(4).await;
}

/// One raw HTTP/1.1 GET from a chosen loopback source address; returns the status.
async fn get_from(source: &str, addr: SocketAddr) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_is_the_peer_and_service_is_the_cluster() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("ip", rate_limiting(json!({"hour": 1, "limit_by": "ip"})))
        .listener(
            "service",
            rate_limiting(json!({"hour": 1, "limit_by": "service"})),
        );
    let envoy = Envoy::start(&config).await.unwrap();
    let (ip, service) = (envoy.listener("ip"), envoy.listener("service"));
    // Per IP: 127.0.0.1 and 127.0.0.2 have a budget each (the port does not matter).
    assert_eq!(get_from("127.0.0.1", ip).await, 200);
    assert_eq!(get_from("127.0.0.2", ip).await, 200);
    assert_eq!(get_from("127.0.0.1", ip).await, 429);
    assert_eq!(get_from("127.0.0.2", ip).await, 429);
    // X-Forwarded-For cannot buy a new budget (use_remote_address: the TCP peer counts).
    let spoofed = Request::get("/").header("x-forwarded-for", "10.1.1.1");
    assert_eq!(
        send(ip, Protocol::Http1, &spoofed).await.unwrap().status,
        429
    );
    // Per service: both IPs share the cluster's budget.
    assert_eq!(get_from("127.0.0.1", service).await, 200);
    assert_eq!(get_from("127.0.0.2", service).await, 429, "{}", envoy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_window_refills_each_second_and_a_minute_window_does_not() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("second", rate_limiting(json!({"second": 3})))
        .listener("minute", rate_limiting(json!({"minute": 3})));
    let envoy = Envoy::start(&config).await.unwrap();
    // Stay clear of a minute boundary: the minute test spans two seconds.
    let into_minute = now_secs_f64() % 60.0;
    if into_minute > 50.0 {
        tokio::time::sleep(Duration::from_secs_f64(61.0 - into_minute)).await;
    }
    let mut second = Connection::open(envoy.listener("second"), Protocol::Http1)
        .await
        .unwrap();
    let mut minute = Connection::open(envoy.listener("minute"), Protocol::Http1)
        .await
        .unwrap();
    let get = Request::get("/");
    align_to_second(0.05).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(second.send(&get).await.unwrap().status);
    }
    for _ in 0..2 {
        statuses.push(minute.send(&get).await.unwrap().status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 200, 200]);
    align_to_second(0.05).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(second.send(&get).await.unwrap().status);
    }
    assert_eq!(statuses, [200, 200, 200, 429], "a new second, a new budget");
    let third = minute.send(&get).await.unwrap();
    assert_eq!(third.status, 200);
    assert_eq!(third.header("x-ratelimit-remaining-minute"), Some("0"));
    let blocked = minute.send(&get).await.unwrap();
    assert_eq!(blocked.status, 429, "the minute budget spans seconds");
    let into_minute = (now_secs_f64() % 60.0).floor() as i64;
    let retry: i64 = blocked.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (retry - (60 - into_minute)).abs() <= 1,
        "Retry-After {retry} at second {into_minute} of the minute"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_weighs_the_previous_second() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr()).listener(
        "sliding",
        rate_limiting(json!({"second": 10, "window_type": "sliding"})),
    );
    let envoy = Envoy::start(&config).await.unwrap();
    let mut connection = Connection::open(envoy.listener("sliding"), Protocol::Http1)
        .await
        .unwrap();
    let get = Request::get("/");
    let admitted = |statuses: Vec<u16>| statuses.iter().filter(|s| **s == 200).count();
    align_to_second(0.02).await;
    let mut first = Vec::new();
    for _ in 0..15 {
        first.push(connection.send(&get).await.unwrap().status);
    }
    assert_eq!(admitted(first), 10);
    // Halfway through the next second about half of the previous 10 still count.
    align_to_second(0.5).await;
    let mut second = Vec::new();
    for _ in 0..15 {
        second.push(connection.send(&get).await.unwrap().status);
    }
    let n = admitted(second);
    assert!(
        (4..=6).contains(&n),
        "{n} admitted half a second after a full window"
    );
}

/// CPU time Envoy's threads have used, in nanoseconds (sum of `/proc/<pid>/task/*/schedstat`).
fn envoy_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Envoy's native local rate limit: one token bucket shared by the workers, with
/// x-ratelimit headers.
fn local_ratelimit(per_second: u64) -> Value {
    json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native",
            "token_bucket": {
                "max_tokens": per_second,
                "tokens_per_fill": per_second,
                "fill_interval": "1s",
            },
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
        },
    })
}

/// Per-request cost in one Envoy (`--concurrency 1`): no filter, Envoy's native
/// `local_ratelimit`, and rate-limiting, each allowing everything (the full check-and-count
/// path with headers) and each rejecting everything, as Envoy CPU time per request over one
/// kept HTTP/1.1 connection; then the accuracy runs.
/// `cargo xtask test -p wasmgate-tests --test envoy_rate_limiting bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose"]
async fn bench_per_request_cost_next_to_local_ratelimit() {
    let echo = EchoUpstream::start().await.unwrap();
    let mut config = EnvoyConfig::new(echo.addr()).concurrency(1);
    let listeners: [(&str, Vec<WasmFilter>, Vec<Value>); 5] = [
        ("no filter", vec![], vec![]),
        (
            "local_ratelimit, allowing",
            vec![],
            vec![local_ratelimit(1_000_000_000)],
        ),
        (
            "rate-limiting, allowing",
            rate_limiting(json!({"second": 1_000_000_000, "limit_by": "ip"})),
            vec![],
        ),
        (
            "local_ratelimit, rejecting",
            vec![],
            vec![local_ratelimit(1)],
        ),
        (
            "rate-limiting, rejecting",
            rate_limiting(json!({"day": 1, "limit_by": "ip"})),
            vec![],
        ),
    ];
    for (i, (_, filters, native)) in listeners.iter().enumerate() {
        config.listeners.push(ListenerSpec {
            name: format!("l{i}"),
            filters: filters
                .iter()
                .map(|f| f.clone().vm_id(format!("rate-limiting-l{i}")))
                .collect(),
            native_filters: native.clone(),
        });
    }
    let envoy = Envoy::start(&config).await.unwrap();
    const ROUNDS: usize = 5;
    const N: usize = 5_000;
    let request = Request::get("/bench");
    let mut connections = Vec::new();
    for (i, (name, _, _)) in listeners.iter().enumerate() {
        let mut connection = Connection::open(envoy.listener(&format!("l{i}")), Protocol::Http1)
            .await
            .unwrap();
        for _ in 0..500 {
            connection.send(&request).await.unwrap();
        }
        let check = connection.send(&request).await.unwrap();
        let expected = if name.ends_with("rejecting") {
            429
        } else {
            200
        };
        assert_eq!(check.status, expected, "{name}: {}", check.text());
        connections.push(connection);
    }
    let mut cpu = vec![Vec::new(); listeners.len()];
    let mut p50 = vec![Vec::new(); listeners.len()];
    for _ in 0..ROUNDS {
        for (i, connection) in connections.iter_mut().enumerate() {
            let mut latencies = Vec::with_capacity(N);
            let before = envoy_cpu_ns(envoy.pid());
            for _ in 0..N {
                let t = Instant::now();
                connection.send(&request).await.unwrap();
                latencies.push(t.elapsed());
            }
            let used = envoy_cpu_ns(envoy.pid()) - before;
            latencies.sort();
            cpu[i].push(used as f64 / N as f64 / 1000.0);
            p50[i].push(latencies[N / 2].as_secs_f64() * 1e6);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base_cpu = median(&mut cpu[0].clone());
    println!("| listener | Envoy CPU per request (median of {ROUNDS} x {N}) | over no filter | client p50 latency |");
    println!("| --- | --- | --- | --- |");
    for (i, (name, _, _)) in listeners.iter().enumerate() {
        let c = median(&mut cpu[i]);
        println!(
            "| {name} | {c:.1} µs | {:+.1} µs | {:.0} µs |",
            c - base_cpu,
            median(&mut p50[i])
        );
    }
    let module = paths::plugin_module("rate-limiting");
    println!(
        "module: {} bytes",
        std::fs::metadata(module).map(|m| m.len()).unwrap_or(0)
    );
    drop(envoy);

    println!("\n| --concurrency | protocol | limit | offered | admitted per aligned second |");
    println!("| --- | --- | --- | --- | --- |");
    accuracy_single_budget(2, Protocol::Http1).await;
    accuracy_single_budget(4, Protocol::Http1).await;
    accuracy_single_budget(4, Protocol::Http2).await;
    accuracy_per_identifier(4).await;
    native_accuracy(4).await;
}

/// The same load through Envoy's native local_ratelimit at 100/s, for comparison.
async fn native_accuracy(concurrency: u32) {
    let echo = EchoUpstream::start().await.unwrap();
    let mut config = EnvoyConfig::new(echo.addr()).concurrency(concurrency);
    config.listeners.push(ListenerSpec {
        name: "native".into(),
        filters: vec![],
        native_filters: vec![local_ratelimit(100)],
    });
    let envoy = Envoy::start(&config).await.unwrap();
    align_to_second(0.2).await;
    let started = now_secs_f64();
    let load = hammer(
        envoy.listener("native"),
        Protocol::Http1,
        CONNECTIONS,
        RUN,
        Arc::new(|_, _| Request::get("/load")),
    )
    .await;
    let ended = now_secs_f64();
    let counts = per_second(&echo.arrivals(), |_| "all".into());
    let per_second: Vec<usize> = counts.values().copied().collect();
    println!(
        "| {concurrency} | Http1 | native local_ratelimit, 100/s token bucket | {:.0} req/s | {per_second:?} |",
        (load.ok + load.limited) as f64 / (ended - started)
    );
}
