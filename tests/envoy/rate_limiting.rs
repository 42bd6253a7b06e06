//! rate-limiting in a real Envoy, beyond the case file: accuracy under load across worker
//! threads (`--concurrency 2` and `4`), per-identifier budgets under load, second, minute and
//! sliding windows on the real clock, client IPs, and the per-request cost next to Envoy's
//! native `local_ratelimit`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use wasmgate_tests::client::{send, Connection};
use wasmgate_tests::envoy::ListenerSpec;
use wasmgate_tests::process::cpu_ns;
use wasmgate_tests::windows::{check_fixed_window, epoch_seconds, Decision};
use wasmgate_tests::{paths, EchoUpstream, Envoy, EnvoyConfig, Protocol, Request, WasmFilter};

fn rate_limiting(config: Value) -> Vec<WasmFilter> {
    vec![WasmFilter::plugin("rate-limiting", config)]
}

/// What a load run saw: every decision with its bounds, and anything but 200 or 429.
#[derive(Debug, Default)]
struct Load {
    decisions: Vec<Decision>,
    other: Vec<String>,
}

impl Load {
    fn admitted(&self) -> usize {
        self.decisions.iter().filter(|d| d.admitted).count()
    }

    /// Requests a second the run offered, over its whole length.
    fn offered_per_second(&self) -> f64 {
        let first = self
            .decisions
            .iter()
            .map(|d| d.sent)
            .fold(f64::MAX, f64::min);
        let last = self
            .decisions
            .iter()
            .map(|d| d.answered)
            .fold(0.0, f64::max);
        self.decisions.len() as f64 / (last - first).max(f64::EPSILON)
    }
}

/// `connections` kept connections, each sending requests back to back for `duration`;
/// `request(connection, n)` builds the n-th request of a connection and names the key it
/// is counted by.
async fn hammer(
    addr: SocketAddr,
    protocol: Protocol,
    connections: usize,
    duration: Duration,
    request: Arc<dyn Fn(usize, usize) -> (String, Request) + Send + Sync>,
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
                    let (key, request) = request(c, n);
                    let sent = epoch_seconds(SystemTime::now());
                    let result = connection.send(&request).await;
                    let answered = epoch_seconds(SystemTime::now());
                    match result {
                        Ok(r) if r.status == 200 || r.status == 429 => {
                            load.decisions.push(Decision {
                                key,
                                sent,
                                answered,
                                admitted: r.status == 200,
                            })
                        }
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
        total.decisions.extend(load.decisions);
        total.other.extend(load.other);
    }
    total
}

/// Checks a load run against a fixed one-second window of `limit` per key, counted exactly
/// across workers (`windows::check_fixed_window`), and that the run put the exactness to the
/// test at least `keys` times. Returns the admissions known per second, for the report.
fn check_accuracy(what: &str, load: &Load, limit: usize, keys: usize) -> Vec<usize> {
    assert!(
        load.other.is_empty(),
        "{what}: unexpected answers: {:?}",
        &load.other[..load.other.len().min(5)]
    );
    let check = check_fixed_window(&load.decisions, limit);
    assert!(
        check.failures.is_empty(),
        "{what}:\n{}\n{:?}",
        check.failures.join("\n"),
        check.admitted
    );
    assert!(
        check.exact_seconds >= keys,
        "{what}: only {} seconds met a refusal, the load never spent a budget: {:?}",
        check.exact_seconds,
        check.admitted
    );
    check.admitted.values().copied().collect()
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
    let load = hammer(
        addr,
        protocol,
        CONNECTIONS,
        RUN,
        Arc::new(|_, _| ("all".into(), Request::get("/load"))),
    )
    .await;
    let per_second = check_accuracy(
        &format!("--concurrency {concurrency} {protocol:?}"),
        &load,
        LIMIT,
        1,
    );
    assert_eq!(
        echo.record().whole,
        load.admitted(),
        "every 200 reached the upstream, nothing else did"
    );
    let line = format!(
        "| {concurrency} | {protocol:?} | {LIMIT}/s, one identifier | {:.0} req/s | {per_second:?} |",
        load.offered_per_second(),
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
    let load = hammer(
        addr,
        Protocol::Http1,
        CONNECTIONS,
        RUN,
        Arc::new(|c, n| {
            let key = format!("key-{}", (c + n) % KEYS);
            let request = Request::get("/load").header("x-api-key", &key);
            (key, request)
        }),
    )
    .await;
    let per_second = check_accuracy(
        &format!("--concurrency {concurrency} limit_by header"),
        &load,
        LIMIT,
        KEYS,
    );
    assert_eq!(echo.record().whole, load.admitted());
    let line = format!(
        "| {concurrency} | Http1 | {LIMIT}/s for each of {KEYS} `x-api-key` values | {:.0} req/s | {per_second:?} |",
        load.offered_per_second(),
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

/// Sends `n` requests one after the other on `connection`, recording each decision's bounds.
async fn sequence(connection: &mut Connection, n: usize) -> Vec<(Decision, Option<i64>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let sent = epoch_seconds(SystemTime::now());
        let response = connection.send(&Request::get("/")).await.unwrap();
        let answered = epoch_seconds(SystemTime::now());
        assert!(
            response.status == 200 || response.status == 429,
            "{}",
            response.status
        );
        let retry_after = response.header("retry-after").and_then(|v| v.parse().ok());
        out.push((
            Decision {
                key: "all".into(),
                sent,
                answered,
                admitted: response.status == 200,
            },
            retry_after,
        ));
    }
    out
}

/// Windows on Envoy's real clock, judged by the bounds the client recorded around each
/// decision (the exact arithmetic is tested with a manual clock in `tests/host/windows.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_window_refills_each_second_and_a_minute_window_does_not() {
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr())
        .listener("second", rate_limiting(json!({"second": 3})))
        .listener("minute", rate_limiting(json!({"minute": 3})));
    let envoy = Envoy::start(&config).await.unwrap();
    let mut second = Connection::open(envoy.listener("second"), Protocol::Http1)
        .await
        .unwrap();
    // Three seconds' worth of requests: every second that meets a refusal has admitted
    // exactly 3, and at least two such seconds (a budget spent, then refilled).
    let mut decisions: Vec<Decision> = Vec::new();
    loop {
        decisions.extend(sequence(&mut second, 20).await.into_iter().map(|(d, _)| d));
        let span = decisions.last().map_or(0.0, |d| d.answered) - decisions[0].sent;
        if span > 3.0 {
            break;
        }
    }
    let check = check_fixed_window(&decisions, 3);
    assert!(check.failures.is_empty(), "{:?}", check.failures);
    assert!(check.exact_seconds >= 2, "{check:?}");

    // The minute budget spans seconds: two requests, then two more in a later second. A
    // minute boundary in between would start a new budget: then the sequence runs again.
    let mut minute = Connection::open(envoy.listener("minute"), Protocol::Http1)
        .await
        .unwrap();
    let mut attempts = 0;
    let (run, minute_of) = loop {
        attempts += 1;
        assert!(attempts <= 3, "three minute boundaries in a row");
        let mut run = sequence(&mut minute, 2).await;
        let next_second = run[1].0.answered.floor() + 1.0 - epoch_seconds(SystemTime::now());
        tokio::time::sleep(Duration::from_secs_f64(next_second.max(0.0) + 0.05)).await;
        run.extend(sequence(&mut minute, 2).await);
        let first = (run[0].0.sent / 60.0).floor();
        let last = (run[3].0.answered / 60.0).floor();
        if first == last {
            break (run, first);
        }
        // A new minute: wait for a fresh instance's budget by using the next minute whole.
        tokio::time::sleep(Duration::from_secs(61)).await;
    };
    let statuses: Vec<bool> = run.iter().map(|(d, _)| d.admitted).collect();
    assert_eq!(statuses, [true, true, true, false], "{run:?}");
    assert!(
        run[3].0.sent.floor() > run[0].0.answered.floor(),
        "two seconds"
    );
    // Retry-After counts the seconds to the end of the minute the refusal happened in.
    let blocked = &run[3];
    let end = (minute_of + 1.0) * 60.0;
    let (low, high) = (
        (end - blocked.0.answered).floor() as i64,
        (end - blocked.0.sent).ceil() as i64,
    );
    let retry = blocked.1.expect("retry-after on the 429");
    assert!(
        (low..=high).contains(&retry),
        "Retry-After {retry}, expected within {low}..={high}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_weighs_the_previous_second() {
    const LIMIT: f64 = 10.0;
    let echo = EchoUpstream::start().await.unwrap();
    let config = EnvoyConfig::new(echo.addr()).listener(
        "sliding",
        rate_limiting(json!({"second": 10, "window_type": "sliding"})),
    );
    let envoy = Envoy::start(&config).await.unwrap();
    let mut connection = Connection::open(envoy.listener("sliding"), Protocol::Http1)
        .await
        .unwrap();
    // A full window, then requests in the second after it. The previous window weighs
    // 10 x (the part of the current second still to come); a request is admitted while the
    // current count plus that weight stays under 10. The decision's instant lies between
    // the bounds the client recorded, which gives each answer a range it must fall in.
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 5, "no run stayed within two seconds");
        if attempts > 1 {
            // Two seconds on, no earlier window weighs any more.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let full = sequence(&mut connection, 15).await;
        let s = full[0].0.sent.floor();
        if full.iter().any(|(d, _)| d.answered.floor() != s) {
            // The first batch crossed a second: try again from a fresh window.
            continue;
        }
        assert_eq!(full.iter().filter(|(d, _)| d.admitted).count(), 10);
        let half = s + 1.5 - epoch_seconds(SystemTime::now());
        tokio::time::sleep(Duration::from_secs_f64(half.max(0.0))).await;
        let next = sequence(&mut connection, 15).await;
        let mut count = 0.0;
        let mut judged = 0;
        for (decision, _) in &next {
            if decision.sent.floor() != s + 1.0 || decision.answered.floor() != s + 1.0 {
                break;
            }
            judged += 1;
            let elapsed = |t: f64| t - (s + 1.0);
            if decision.admitted {
                // Admitted at some t <= answered: count + 10 (1 - elapsed(t)) < 10.
                assert!(
                    count < LIMIT * elapsed(decision.answered),
                    "admitted with {count} counted by {}",
                    decision.answered
                );
                count += 1.0;
            } else {
                // Refused at some t >= sent: count + 10 (1 - elapsed(t)) >= 10.
                assert!(
                    count >= LIMIT * elapsed(decision.sent) - 1e-9,
                    "refused with only {count} counted at {}",
                    decision.sent
                );
            }
        }
        if judged == 0 || count >= LIMIT {
            continue;
        }
        assert!(
            next.iter().take(judged).any(|(d, _)| !d.admitted),
            "the previous window must weigh: all {judged} admitted"
        );
        break;
    }
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
            let before = cpu_ns(envoy.pid());
            for _ in 0..N {
                let t = Instant::now();
                connection.send(&request).await.unwrap();
                latencies.push(t.elapsed());
            }
            let used = cpu_ns(envoy.pid()) - before;
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
    let load = hammer(
        envoy.listener("native"),
        Protocol::Http1,
        CONNECTIONS,
        RUN,
        Arc::new(|_, _| ("all".into(), Request::get("/load"))),
    )
    .await;
    let per_second: Vec<usize> = check_fixed_window(&load.decisions, usize::MAX)
        .admitted
        .into_values()
        .collect();
    println!(
        "| {concurrency} | Http1 | native local_ratelimit, 100/s token bucket | {:.0} req/s | {per_second:?} |",
        load.offered_per_second()
    );
}
