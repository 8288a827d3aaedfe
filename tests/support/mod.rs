//! Integration-test harness: real servers and real clients on loopback.
//!
//! Owns everything a test needs to drive the `iron-proxy` binary the way an
//! operator and an agent would:
//! - [`TestCa`]: throwaway ECDSA P-256 CAs and server leaves (rcgen),
//! - [`start_upstream`]: an HTTPS (or plain) origin on `127.0.0.1:0` that
//!   records what it saw and counts TCP connections,
//! - [`ProxyConfig`] / [`start_proxy`]: a config builder and the proxy as a
//!   subprocess, with every stderr line captured for leak checks,
//! - client helpers: raw `CONNECT`, TLS through the tunnel, hyper h1/h2
//!   clients, raw bytes for malformed-input tests,
//! - [`eventually!`]: a retry bounded in both tries and time.
//!
//! Every network wait is bounded by [`TIMEOUT`]; every bind is on 127.0.0.1.
//! Each test crate uses only part of this module, hence the allowances.
#![allow(dead_code, unused_macros)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(missing_debug_implementations)]

mod client;
pub mod git_server;
pub mod oauth_server;
mod ops;
mod proxy;
mod routes;
mod tls;
mod upstream;

// Each test crate uses a different part of the harness.
#[allow(unused_imports)]
pub use {client::*, ops::*, proxy::*, tls::*, upstream::*};

use std::future::Future;
use std::time::Duration;

/// Upper bound for any single network wait in the harness.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Await `fut`, panicking with `what` if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

/// Retry `$cond` (an expression, re-evaluated each time; may contain
/// `.await`) every 50 ms until it is true, at most 200 tries and 10 s.
/// Panics with the message (format args) when the bound is reached.
macro_rules! eventually {
    ($cond:expr) => {
        $crate::support::eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut tries = 0u32;
        loop {
            tries += 1;
            if $cond {
                break;
            }
            if tries >= 200 || std::time::Instant::now() >= deadline {
                panic!("eventually: not true after {} tries: {}", tries, format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use eventually;
