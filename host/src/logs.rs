//! What modules log (`proxy_log`, WASI stdout/stderr): kept per worker plugin in a bounded
//! ring (for tests and for the reason of a refused configuration) and sent to the `log` crate
//! with the plugin's name.

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
    pub fn from_abi(level: u32) -> LogLevel {
        match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => LogLevel::Critical,
        }
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
}

/// A bounded log of one plugin on one worker.
#[derive(Debug)]
pub struct LogSink {
    plugin: String,
    records: Mutex<VecDeque<LogRecord>>,
    capacity: usize,
}

/// Longest message kept (longer ones are cut).
pub const MAX_MESSAGE: usize = 64 * 1024;

impl LogSink {
    pub fn new(plugin: &str) -> LogSink {
        LogSink {
            plugin: plugin.to_owned(),
            records: Mutex::new(VecDeque::new()),
            capacity: 1000,
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
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(LogRecord { level, message });
    }

    pub fn records(&self) -> Vec<LogRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Records logged since `from` (an index into [`LogSink::len`]).
    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
