//! The real modules and hand-written WAT modules in the in-process host (wasmtime), one test
//! binary (see tests/envoy/main.rs for why). The module fuzzer keeps a binary of its own: it
//! would take the CPU from tests that wait on deadlines.

mod abi;
mod abi_probe;
mod cases;
mod clients;
mod foreign;
mod hostile;
mod limits;
mod runner;
mod store;
mod timers;
mod trapped_instance;
mod wasi;
mod windows;
