//! What modules log while `gateway` runs in this process: the host sends every module's log
//! line to the `log` crate (target `wasm`); the command installs this logger so the lines a
//! failing case's module wrote are reported with it. Bounded: the oldest lines go first.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Lines kept at most.
const MAX_LINES: usize = 10_000;

struct Capture {
    /// Every line kept, with its number since the start.
    lines: Mutex<(u64, VecDeque<String>)>,
}

static CAPTURE: Capture = Capture {
    lines: Mutex::new((0, VecDeque::new())),
};

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target() == "wasm"
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let (count, lines) = &mut *guard;
        if lines.len() == MAX_LINES {
            lines.pop_front();
        }
        lines.push_back(format!("[{}] {}", record.level(), record.args()));
        *count += 1;
    }

    fn flush(&self) {}
}

/// Captures module log lines from now on (info and up, as `gateway run` logs by default).
pub fn install() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// A position in the captured lines.
pub fn mark() -> u64 {
    CAPTURE.lines.lock().map_or(0, |guard| guard.0)
}

/// The lines captured since `mark`, one per line.
pub fn since(mark: u64) -> String {
    let Ok(guard) = CAPTURE.lines.lock() else {
        return String::new();
    };
    let (count, lines) = &*guard;
    let new = count.saturating_sub(mark).min(lines.len() as u64) as usize;
    lines
        .iter()
        .skip(lines.len() - new)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}
