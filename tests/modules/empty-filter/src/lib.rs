//! `wasmgate_empty_filter.wasm`: a proxy-wasm (ABI 0.2.1) filter that does nothing. Its HTTP
//! context overrides no callback, so each one returns the SDK's default (`Continue`), and its
//! root contexts are the SDK's no-op ones, which accept any configuration. `cargo xtask bench`
//! runs three instances (each with its own root_id and vm_id, as our three plugins have) in
//! Envoy: what they cost is what crossing into V8 costs a filter before it does any work, the
//! floor our plugins' overhead in Envoy is compared with.

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext};

    struct Empty;

    impl Context for Empty {}

    impl HttpContext for Empty {}

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Empty) });
    }}
}
