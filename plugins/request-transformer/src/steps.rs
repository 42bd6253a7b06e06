//! A count of the steps taken by the parsers' loops, in unit tests only, so that a test can
//! bound the work an input costs without a clock (a clock is no bound on a loaded machine,
//! and in production this compiles to nothing).

#[cfg(test)]
thread_local! {
    static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// One step of a loop whose total a test bounds.
#[cfg(test)]
pub fn step() {
    STEPS.with(|s| s.set(s.get() + 1));
}

#[cfg(not(test))]
#[inline(always)]
pub fn step() {}

/// Runs `f` and returns its result with the steps it took on this thread.
#[cfg(test)]
pub fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    STEPS.with(|s| s.set(0));
    let out = f();
    (out, STEPS.with(|s| s.get()))
}
