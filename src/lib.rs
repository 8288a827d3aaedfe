//! iron-proxy: egress proxy for AI agent pods.
//!
//! The request's path through the modules, top to bottom:
//!
//! ```text
//! listener ─accept─▶ connect ──CONNECT host:port──▶ policy::decide ──deny──▶ 403 (no TLS, no upstream)
//!                      │ absolute-form http:// (hyper)       │allow
//!                      │                                     ▼
//!                      │                  200 (raw socket) → ClientHello(SNI) → mint (store.ca) → TLS
//!                      ▼                                     ▼
//!                   pipeline ◀──────────── serve (hyper: h1 | h2 by ALPN)
//!                      │ host==CONNECT host? (421) → framing (400) → policy (403) → swap → [refresh]
//!                      ▼
//!                   upstream (resolve → private guard → verified rustls, pooled h1/h2) ──▶ origin
//!                      │ response stream → strip hop-by-hop → scrub echoes → audit → downstream
//! store (ArcSwap<Snapshot>) ◀── reload (files | poll | SIGHUP | POST /v1/reload | PUT credential)
//! admin ── reads store + metrics, asks reload
//! ```
//!
//! Live state is one immutable [`store::Snapshot`] swapped whole; real
//! credential values are [`secret::Secret`]s that never print.

pub mod admin;
pub mod admin_client;
pub mod agent;
pub mod app;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod connect;
pub mod error;
pub mod framing;
pub mod listener;
pub mod metrics;
pub mod mint;
pub mod pipeline;
pub mod policy;
pub mod prefixed;
pub mod refresh;
pub mod reload;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod swap;
pub mod telemetry;
pub mod upstream;
