//! One structured (JSON) line per request, written by a thread of its own.
//!
//! A worker formats its line and hands it to a bounded queue ([`LineSender`]); one writer
//! thread ([`Writer`]) takes whatever is waiting and writes it to stdout in one go. A worker
//! never waits for stdout (a slow terminal or a paused pipe reader would stall every request
//! behind it, and every worker behind one lock): when the queue is full the line is dropped
//! and counted (`wasmgate_access_log_dropped_total`). The queue is bounded in lines and in
//! bytes, since a line carries the request's path. A stdout that is gone (`gateway run |
//! head`) loses the lines and nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use http::{Method, Request, Uri, Version};

use crate::proxy::Downstream;

/// What a request's line says. Kept in the forms the request path already has (an address,
/// a method, a URI): they become text only when a line is written, and with the access log
/// off they never do.
#[derive(Clone, Debug)]
pub struct AccessLog {
    pub client: IpAddr,
    pub method: Method,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub route: Option<String>,
    pub service: Option<String>,
    pub upstream: Option<Uri>,
    /// From the request's arrival to the response head.
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    /// What each filter did (`plugin: outcome`), in order.
    pub filters: Vec<(String, Cow<'static, str>)>,
    pub error: Option<String>,
}

impl Default for AccessLog {
    fn default() -> AccessLog {
        AccessLog {
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            method: Method::GET,
            path: String::new(),
            protocol: "",
            status: 0,
            route: None,
            service: None,
            upstream: None,
            latency_ms: 0.0,
            upstream_latency_ms: None,
            filters: Vec::new(),
            error: None,
        }
    }
}

/// `HTTP/1.1` and the like, as `http::Version`'s Debug spells them.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// A JSON value of the line, in serde_json's own escaping and number forms. Writing to a
/// `Vec` cannot fail.
macro_rules! json {
    ($out:expr, $value:expr) => {
        let _ = serde_json::to_writer(&mut *$out, $value);
    };
}

impl AccessLog {
    pub fn new<B>(downstream: &Downstream, request: &Request<B>) -> AccessLog {
        AccessLog {
            client: downstream.client.ip(),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            protocol: protocol(request.version()),
            ..AccessLog::default()
        }
    }

    /// The line for now, newline included.
    pub fn line(&self) -> Vec<u8> {
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.line_at(time)
    }

    /// The line written straight, without a `serde_json::Value` tree per request, as that
    /// tree printed it: keys in order, a filter named twice shown once with its last outcome.
    fn line_at(&self, time: f64) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.path.len());
        let field = |out: &mut Vec<u8>, first: bool, key: &str| {
            if !first {
                out.push(b',');
            }
            json!(out, key);
            out.push(b':');
        };
        out.push(b'{');
        field(&mut out, true, "client");
        json!(&mut out, &self.client);
        field(&mut out, false, "error");
        json!(&mut out, &self.error);
        field(&mut out, false, "filters");
        let filters: BTreeMap<&str, &str> = self
            .filters
            .iter()
            .map(|(filter, outcome)| (filter.as_str(), outcome.as_ref()))
            .collect();
        json!(&mut out, &filters);
        field(&mut out, false, "latency_ms");
        json!(&mut out, &self.latency_ms);
        field(&mut out, false, "method");
        json!(&mut out, self.method.as_str());
        field(&mut out, false, "path");
        json!(&mut out, &self.path);
        field(&mut out, false, "protocol");
        json!(&mut out, &self.protocol);
        field(&mut out, false, "route");
        json!(&mut out, &self.route);
        field(&mut out, false, "service");
        json!(&mut out, &self.service);
        field(&mut out, false, "status");
        json!(&mut out, &self.status);
        field(&mut out, false, "time");
        json!(&mut out, &time);
        field(&mut out, false, "upstream");
        json!(&mut out, &self.upstream.as_ref().map(Uri::to_string));
        field(&mut out, false, "upstream_latency_ms");
        json!(&mut out, &self.upstream_latency_ms);
        out.extend_from_slice(b"}\n");
        out
    }
}

/// Lines waiting for the writer, at most.
pub const QUEUE_LINES: usize = 8192;
/// Their bytes, at most (a line holds the request's path, up to what the server takes).
pub const QUEUE_BYTES: usize = 8 << 20;
/// How long the writer lets lines gather after a write before it looks again: under load a
/// worker then hands its line over without waking the writer (a system call per line),
/// while a line still reaches stdout within a few milliseconds.
const GATHER: Duration = Duration::from_millis(2);
/// Bytes written in one go, at most.
const BATCH_BYTES: usize = 256 << 10;

/// What goes through the queue: a line, or `None` once the gateway stops (what was queued
/// before it is written first).
type Message = Option<Vec<u8>>;

/// A worker's end of the queue.
#[derive(Clone, Debug)]
pub struct LineSender {
    lines: SyncSender<Message>,
    /// Bytes in the queue.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    dropped: Arc<AtomicU64>,
}

impl LineSender {
    /// Queues the line, or drops and counts it when the queue is full (or the writer gone).
    pub fn send(&self, line: Vec<u8>) {
        let len = line.len();
        let held = self.queued.fetch_add(len, Ordering::Relaxed);
        if held.saturating_add(len) > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.lines.try_send(Some(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread.
#[derive(Debug)]
pub struct Writer {
    thread: JoinHandle<()>,
    stop: SyncSender<Message>,
}

impl Writer {
    /// Starts the writer on `out`; `dropped` counts the lines it could not take.
    pub fn start(
        out: Box<dyn Write + Send>,
        max_lines: usize,
        max_bytes: usize,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<(Writer, LineSender)> {
        let (lines, receiver) = std::sync::mpsc::sync_channel(max_lines);
        let queued = Arc::new(AtomicUsize::new(0));
        let sender = LineSender {
            lines: lines.clone(),
            queued: Arc::clone(&queued),
            max_bytes,
            dropped,
        };
        let thread = std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_lines(&receiver, &queued, out))?;
        Ok((
            Writer {
                thread,
                stop: lines,
            },
            sender,
        ))
    }

    /// Writes every line queued so far and ends the thread; lines sent later are dropped.
    /// Waits for room in a full queue (the writer is emptying it).
    pub fn finish(self) {
        if self.stop.send(None).is_ok() {
            let _ = self.thread.join();
        }
    }
}

fn write_lines(lines: &Receiver<Message>, queued: &AtomicUsize, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut broken = false;
    let mut stopping = false;
    while !stopping {
        match lines.recv() {
            Ok(Some(line)) => batch.extend_from_slice(&line),
            Ok(None) | Err(_) => stopping = true,
        }
        while !stopping && batch.len() < BATCH_BYTES {
            match lines.try_recv() {
                Ok(Some(line)) => batch.extend_from_slice(&line),
                Ok(None) => stopping = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        // A stdout that failed once (a reader gone) is not tried again: its lines are lost,
        // the workers go on.
        if !broken {
            broken = out.write_all(&batch).and_then(|()| out.flush()).is_err();
        }
        batch.clear();
        if !stopping {
            std::thread::sleep(GATHER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink the test reads, that can be made to block (a stalled stdout) or fail.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        stalled: Arc<Mutex<()>>,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _stalled = self.stalled.lock().unwrap();
            if self.broken.load(Ordering::Relaxed) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn tricky() -> AccessLog {
        AccessLog {
            client: "::1".parse().unwrap(),
            method: Method::GET,
            path: "/a\"b\\c\n\u{1}é😀\u{7f}".into(),
            protocol: "HTTP/1.1",
            status: 429,
            route: Some("r\"".into()),
            service: None,
            upstream: Some(Uri::from_static("http://127.0.0.1:1/x")),
            latency_ms: 1.25,
            upstream_latency_ms: None,
            filters: vec![
                ("rate-limiting".into(), "ran".into()),
                ("a\u{0}".into(), "x".into()),
                ("rate-limiting".into(), "local response".into()),
            ],
            error: Some("boom\t".into()),
        }
    }

    /// The line is what the `serde_json::Value` tree the gateway built before printed, byte
    /// for byte: escapes, key order, a filter named twice.
    #[test]
    fn a_line_is_the_json_the_value_tree_printed() {
        for log in [tricky(), AccessLog::default()] {
            let filters: serde_json::Map<String, serde_json::Value> = log
                .filters
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect();
            let tree = serde_json::json!({
                "time": 1733300000.123456,
                "client": log.client,
                "method": log.method.as_str(),
                "path": log.path,
                "protocol": log.protocol,
                "status": log.status,
                "route": log.route,
                "service": log.service,
                "upstream": log.upstream.as_ref().map(Uri::to_string),
                "latency_ms": log.latency_ms,
                "upstream_latency_ms": log.upstream_latency_ms,
                "filters": filters,
                "error": log.error,
            });
            let line = String::from_utf8(log.line_at(1733300000.123456)).unwrap();
            assert_eq!(line, format!("{tree}\n"));
        }
    }

    fn queue(sink: &Sink, lines: usize, bytes: usize) -> (Writer, LineSender, Arc<AtomicU64>) {
        let dropped = Arc::new(AtomicU64::new(0));
        let (writer, sender) =
            Writer::start(Box::new(sink.clone()), lines, bytes, Arc::clone(&dropped)).unwrap();
        (writer, sender, dropped)
    }

    /// Behind a stdout that does not take anything, a worker's send returns at once: what
    /// the queue cannot hold is dropped and counted, and everything queued is written when
    /// the gateway stops.
    #[test]
    fn a_full_queue_drops_and_counts_and_never_blocks() {
        let sink = Sink::default();
        let stalled = sink.stalled.lock().unwrap();
        let (writer, sender, dropped) = queue(&sink, 4, 1 << 20);
        // The writer takes the first line and blocks writing it; 4 more fill the queue.
        sender.send(b"first\n".to_vec());
        while sender.queued.load(Ordering::Relaxed) != 0 {
            std::thread::yield_now();
        }
        for i in 0..10 {
            sender.send(format!("{i}\n").into_bytes());
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
        drop(stalled);
        writer.finish();
        assert_eq!(
            String::from_utf8(sink.written.lock().unwrap().clone()).unwrap(),
            "first\n0\n1\n2\n3\n"
        );
        // Once the gateway stopped, a line has nowhere to go.
        sender.send(b"late\n".to_vec());
        assert_eq!(dropped.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let sink = Sink::default();
        let stalled = sink.stalled.lock().unwrap();
        let (writer, sender, dropped) = queue(&sink, 100, 10);
        sender.send(b"x\n".to_vec());
        while sender.queued.load(Ordering::Relaxed) != 0 {
            std::thread::yield_now();
        }
        sender.send(b"12345678\n".to_vec());
        sender.send(b"12\n".to_vec());
        sender.send(b"\n".to_vec());
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        drop(stalled);
        drop(sender);
        writer.finish();
        assert_eq!(&*sink.written.lock().unwrap(), b"x\n12345678\n\n");
    }

    /// A stdout gone (EPIPE) costs the lines, nothing else: sends go on, the writer ends.
    #[test]
    fn a_broken_stdout_loses_lines_only() {
        let sink = Sink::default();
        sink.broken.store(true, Ordering::Relaxed);
        let (writer, sender, _) = queue(&sink, 4, 1 << 20);
        for _ in 0..100 {
            sender.send(b"line\n".to_vec());
        }
        drop(sender);
        writer.finish();
        assert!(sink.written.lock().unwrap().is_empty());
    }
}
