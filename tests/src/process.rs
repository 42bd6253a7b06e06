//! What Linux's `/proc` says about a process: the figures the memory tests and the benchmarks
//! read, of an Envoy child ([`crate::Envoy::pid`]) or of the test process itself
//! ([`std::process::id`]).

/// The peak resident memory of process `pid`, in bytes (`VmHWM` in `/proc/<pid>/status`);
/// `None` when it cannot be read.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time the threads of process `pid` have used, in nanoseconds (sum of
/// `/proc/<pid>/task/*/schedstat`); 0 when it cannot be read. Unlike latency, it does not move
/// when other processes load the machine.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
