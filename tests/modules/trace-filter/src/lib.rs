//! `wasmgate_trace_filter.wasm`: a proxy-wasm (ABI 0.2.1) test filter whose plugin
//! configuration scripts what it does at each HTTP callback, and which logs one trace line
//! per callback through `proxy_log` (info level). `tests/envoy/traces.rs` runs the same
//! scripts in Envoy 1.40 and in `gateway` and compares the lines.
//!
//! # Script (the plugin configuration, JSON)
//!
//! ```json
//! {"name": "A",
//!  "request_headers": "pause", "request_body": "buffer", "response_headers": "continue",
//!  "resume": "http_call", "reply_status": 403,
//!  "set_request_body": "new", "add_request_trailer": true}
//! ```
//!
//! - `name` (required): the filter's name in every trace line.
//! - `request_headers`, `request_body`, `request_trailers`, `response_headers`,
//!   `response_body`, `response_trailers`: one [`Step`] each, `"continue"` unless set:
//!   - `continue`: return Continue;
//!   - `pause`: return Pause (on headers, `resume` says what resumes the direction; on a body,
//!     every call pauses, so the body is buffered and never released by this filter);
//!   - `buffer`: on a body, Pause until `end_of_stream`, then Continue (the body is buffered
//!     and each call sees the running total); elsewhere as `pause`;
//!   - `reply`: `proxy_send_local_response(reply_status)` with body `<name> reply`, header
//!     `x-t-reply: <name>` and `reply_grpc_status` (default -1, none), then Pause.
//! - `resume`: what resumes a direction whose headers this filter paused: `none` (default;
//!   nothing does), `http_call` (a `proxy_http_call` to `callout` — a cluster name, `service.<kong
//!   service>` — made when pausing; its answer resumes), `tick` (the root context's next
//!   `on_tick`, every `tick_ms`, default 50, resumes it through `proxy_set_effective_context`),
//!   `tick_reply` (as `tick`, but the tick answers the stream with `reply_status` instead),
//!   `grpc_call` (a unary `proxy_grpc_call` of `svc.Echo/Say` with the message `hi` to
//!   `callout`, made when pausing; its close resumes),
//!   `body_eos` (this filter's own body callback with `end_of_stream` resumes it, as
//!   request-transformer's `hold_headers` does; it needs Envoy's
//!   `allow_on_headers_stop_iteration`).
//! - `set_request_body` / `set_response_body`: at the body callback with `end_of_stream`,
//!   replace the whole body given to this call with this text.
//! - `add_request_trailer` / `add_response_trailer`: at the body callback with
//!   `end_of_stream`, add the trailer `x-t-added: <name>` (the spec allows adding trailers
//!   there).
//!
//! Unknown fields and steps are refused (`on_configure` returns false, with a log line).
//!
//! # Trace lines
//!
//! `TRACE|<tag>|<name> <callback> <what it saw> -> <what it did>`, where `<tag>` is the
//! request's `x-t-id` header (read in the request headers callback; `-` before or without
//! it). What the filter sees: `eos` as given; for headers the sorted names of `x-t-*` headers
//! (those the client and the trace filters set: other headers are each proxy's own) and
//! `:status` of responses; for bodies `size` (the size the host passed) and `read` (the
//! bytes `proxy_get_buffer_bytes(0, size)` returned, or its status); for trailers every name.
//! What it did: `continue`, `pause`, `reply <status>`, `set_body <len>`, `add_trailer`,
//! `resume_request`/`resume_response`, `http_call`, each host call with the status it
//! returned (`ok`, or the status number). `log` is written from `proxy_on_log`.

pub mod script;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
