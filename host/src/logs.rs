//! What modules log (`proxy_log`, WASI stdout/stderr): kept per worker plugin in a bounded
//! ring (for tests and for the reason of a refused configuration) and sent to the `log` crate
//! with the plugin's name.
//!
//! The ring is bounded in records and in bytes ([`MAX_RECORDS`], [`MAX_RING_BYTES`]): a
//! module's messages are host memory, and 1,000 records of 64 KiB each would be 64 MiB per
//! plugin and worker.

use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    /// `None` past critical (5): cpp-host answers such a `proxy_log` BAD_ARGUMENT.
    pub fn from_abi(level: u32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    fn to_log(self) -> log::Level {
        match self {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error | LogLevel::Critical => log::Level::Error,
        }
    }
}

/// The level `proxy_get_log_level` reports and below which `proxy_log` keeps nothing: the
/// plugin's configured level, raised to the process logger's when one is installed. Envoy
/// reports its logger's level so that a module does not format what would be dropped; the
/// gateway's logger passes Info and up. Without a process logger (`Off`: tests, embedders that
/// only read the ring) the ring is the only sink and the configured level alone counts.
pub fn effective_level(configured: u32) -> u32 {
    effective_level_with(configured, log::max_level())
}

fn effective_level_with(configured: u32, process: log::LevelFilter) -> u32 {
    let process = match process {
        log::LevelFilter::Off => None,
        log::LevelFilter::Error => Some(LogLevel::Error),
        log::LevelFilter::Warn => Some(LogLevel::Warn),
        log::LevelFilter::Info => Some(LogLevel::Info),
        log::LevelFilter::Debug => Some(LogLevel::Debug),
        log::LevelFilter::Trace => Some(LogLevel::Trace),
    };
    let configured = configured.min(LogLevel::Critical as u32);
    process.map_or(configured, |p| configured.max(p as u32))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
}

/// A bounded log of one plugin on one worker.
#[derive(Debug)]
pub struct LogSink {
    plugin: String,
    records: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<LogRecord>,
    /// The bytes of every kept message.
    bytes: usize,
    /// Records ever logged, kept or since dropped: a mark that still means something once
    /// the ring is full.
    logged: u64,
}

/// Longest message kept (longer ones are cut).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Records kept per ring; the oldest go first.
pub const MAX_RECORDS: usize = 1000;
/// Message bytes kept per ring; the oldest records go first.
pub const MAX_RING_BYTES: usize = 1 << 20;

impl LogSink {
    pub fn new(plugin: &str) -> LogSink {
        LogSink {
            plugin: plugin.to_owned(),
            records: Mutex::new(Ring::default()),
        }
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        let mut message = message.to_owned();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        log::log!(target: "wasm", level.to_log(), "{}: {}", self.plugin, message);
        let mut ring = self.lock();
        while ring.records.len() >= MAX_RECORDS
            || (!ring.records.is_empty() && ring.bytes + message.len() > MAX_RING_BYTES)
        {
            match ring.records.pop_front() {
                Some(old) => ring.bytes -= old.message.len(),
                None => break,
            }
        }
        ring.bytes += message.len();
        ring.logged += 1;
        ring.records.push_back(LogRecord { level, message });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn records(&self) -> Vec<LogRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// A mark for [`LogSink::records_since`]: how many records were ever logged.
    pub fn mark(&self) -> u64 {
        self.lock().logged
    }

    /// The kept records logged after `mark` (those the ring has dropped since are gone).
    pub fn records_since(&self, mark: u64) -> Vec<LogRecord> {
        let ring = self.lock();
        let new = ring.logged.saturating_sub(mark);
        let new = usize::try_from(new)
            .unwrap_or(usize::MAX)
            .min(ring.records.len());
        ring.records
            .iter()
            .skip(ring.records.len() - new)
            .cloned()
            .collect()
    }

    /// How many records the ring holds.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        let mut ring = self.lock();
        ring.records.clear();
        ring.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(sink: &LogSink) -> usize {
        sink.records().iter().map(|r| r.message.len()).sum()
    }

    #[test]
    fn the_ring_keeps_at_most_max_records_the_newest() {
        let sink = LogSink::new("p");
        for i in 0..MAX_RECORDS + 5 {
            sink.log(LogLevel::Info, &i.to_string());
        }
        let records = sink.records();
        assert_eq!(records.len(), MAX_RECORDS);
        assert_eq!(records[0].message, "5");
        assert_eq!(
            records[MAX_RECORDS - 1].message,
            (MAX_RECORDS + 4).to_string()
        );
    }

    #[test]
    fn the_ring_keeps_at_most_max_ring_bytes_the_newest() {
        let sink = LogSink::new("p");
        let per = MAX_RING_BYTES / 16;
        // Exactly at the limit: everything stays.
        for i in 0..16u8 {
            sink.log(
                LogLevel::Info,
                &char::from(b'a' + i).to_string().repeat(per),
            );
        }
        assert_eq!(sink.len(), 16);
        assert_eq!(bytes(&sink), MAX_RING_BYTES);
        // One byte more: the oldest record goes.
        sink.log(LogLevel::Info, "z");
        assert_eq!(sink.len(), 16);
        assert!(sink.records()[0].message.starts_with('b'));
        assert_eq!(bytes(&sink), MAX_RING_BYTES - per + 1);
        // Messages are cut at MAX_MESSAGE, so 64 KiB records fill the ring at 16.
        for _ in 0..100 {
            sink.log(LogLevel::Info, &"x".repeat(MAX_MESSAGE * 2));
        }
        assert_eq!(sink.len(), MAX_RING_BYTES / MAX_MESSAGE);
        assert!(bytes(&sink) <= MAX_RING_BYTES);
        sink.clear();
        assert!(sink.is_empty());
        assert_eq!(bytes(&sink), 0);
    }

    #[test]
    fn levels_past_critical_are_not_levels() {
        assert_eq!(LogLevel::from_abi(5), Some(LogLevel::Critical));
        assert_eq!(LogLevel::from_abi(0), Some(LogLevel::Trace));
        assert_eq!(LogLevel::from_abi(6), None);
        assert_eq!(LogLevel::from_abi(u32::MAX), None);
    }

    #[test]
    fn without_a_process_logger_the_configured_level_counts() {
        // No test installs a logger: the process filter is Off.
        assert_eq!(log::max_level(), log::LevelFilter::Off);
        assert_eq!(effective_level(1), 1);
        assert_eq!(effective_level(0), 0);
        assert_eq!(effective_level(9), 5);
    }

    /// The gateway's logger passes Info and up: a module configured for debug is told info.
    #[test]
    fn a_process_logger_raises_the_level_to_its_own() {
        use log::LevelFilter::*;
        assert_eq!(effective_level_with(1, Info), 2);
        assert_eq!(effective_level_with(0, Trace), 0);
        assert_eq!(effective_level_with(1, Debug), 1);
        assert_eq!(
            effective_level_with(3, Info),
            3,
            "a higher configured level stays"
        );
        assert_eq!(effective_level_with(1, Error), 4);
        assert_eq!(effective_level_with(9, Warn), 5);
    }
}
