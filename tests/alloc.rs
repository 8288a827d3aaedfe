//! The per-request rewrite allocates nothing when no stub is present (issue
//! #5): a counting global allocator around the two hot-path calls. Its own
//! test binary, so no other test's allocations are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use http::{HeaderMap, HeaderName, HeaderValue};
use iron_proxy::config::{CredentialConfig, Source};
use iron_proxy::metrics::Metrics;
use iron_proxy::policy::{Host, HostPattern};
use iron_proxy::secret::Secret;
use iron_proxy::swap::{scrub_response, swap_request, Credential};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn credentials(metrics: &Metrics) -> Vec<Credential> {
    [
        ("access", "access-token-stub", "authorization"),
        ("pat", "github-token-stub", "authorization"),
        ("key", "api-key-stub", "x-api-key"),
    ]
    .iter()
    .map(|(name, stub, header)| {
        let cfg = CredentialConfig {
            name: (*name).into(),
            stub: (*stub).into(),
            source: Source::Env("UNUSED".into()),
            hosts: vec![HostPattern::parse("api.example.com").unwrap()],
            headers: vec![HeaderName::from_static(header)],
            allow_plaintext: false,
            require: false,
        };
        Credential::new(
            &cfg,
            Secret::from_bytes(format!("real-{name}-value").as_bytes()).unwrap(),
            metrics.swap_counter(name),
        )
    })
    .collect()
}

fn headers(n: usize) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(32);
    for i in 0..n - 1 {
        h.insert(
            HeaderName::from_bytes(format!("x-header-{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("some value"),
        );
    }
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer not-a-stub"),
    );
    h
}

#[test]
fn the_no_stub_path_does_not_allocate() {
    // The counter is process-wide: this file holds one test only.
    let metrics = Metrics::new();
    let creds = credentials(&metrics);
    let host = Host::parse("api.example.com").unwrap();
    let mut request = headers(20);
    let mut response = headers(10);

    let region = Region::new(GLOBAL);
    let swapped = swap_request(&mut request, &creds, &host, false).unwrap();
    let scrubbed = scrub_response(&mut response, &creds);
    let stats = region.change();

    assert!(swapped.is_empty() && scrubbed == 0);
    assert_eq!(
        stats.allocations + stats.reallocations,
        0,
        "the no-stub path allocated: {stats:?}"
    );

    // And the counter does count: a swap allocates its new value.
    request.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer access-token-stub"),
    );
    let region = Region::new(GLOBAL);
    let swapped = swap_request(&mut request, &creds, &host, false).unwrap();
    assert_eq!(swapped.len(), 1);
    assert!(region.change().allocations > 0);
}
