//! The per-request header rewrite (SPEC §5.5–§5.6): a realistic request of
//! 20 headers toward a host with 3 bound credentials.
//!
//! `cargo bench --bench swap`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use base64::Engine;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use iron_proxy::config::{CredentialConfig, Source};
use iron_proxy::policy::{Host, HostPattern};
use iron_proxy::secret::Secret;
use iron_proxy::swap::{scrub_response, swap_request, Credential};

fn credential(name: &str, stub: &str, real: &str, header: &str) -> Credential {
    let cfg = CredentialConfig {
        name: name.into(),
        stub: stub.into(),
        source: Source::Env("UNUSED".into()),
        hosts: vec![HostPattern::parse("api.example.com").unwrap()],
        headers: vec![HeaderName::from_bytes(header.as_bytes()).unwrap()],
        allow_plaintext: false,
        require: false,
    };
    let swaps = iron_proxy::metrics::Metrics::new().swap_counter(name);
    Credential::new(&cfg, Secret::from_bytes(real.as_bytes()).unwrap(), swaps)
}

fn credentials() -> Vec<Credential> {
    vec![
        credential(
            "access",
            "access-token-stub",
            &"a".repeat(108),
            "authorization",
        ),
        credential("pat", "github-token-stub", &"p".repeat(40), "authorization"),
        credential("key", "api-key-stub", &"k".repeat(64), "x-api-key"),
    ]
}

/// 20 headers as an agent SDK sends them; `auth` is the Authorization value.
fn request(auth: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs = [
        ("host", "api.example.com"),
        ("user-agent", "claude-cli/1.0.0 (external, cli)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json"),
        ("content-length", "18234"),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "oauth-2025-04-20,interleaved-thinking-2025-05-14",
        ),
        ("x-app", "cli"),
        ("x-stainless-lang", "js"),
        ("x-stainless-package-version", "0.55.1"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "node"),
        ("x-stainless-runtime-version", "v22.11.0"),
        ("x-stainless-retry-count", "0"),
        ("x-stainless-timeout", "600"),
        ("connection", "keep-alive"),
        ("x-request-id", "0b5f6f8e-3c1c-4c55-9a4e-6f0f3f1d2c11"),
    ];
    for (k, v) in pairs {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(auth).unwrap(),
    );
    assert_eq!(h.len(), 20);
    h
}

fn response() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("date", "Sat, 21 Nov 2026 06:00:00 GMT"),
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
        ("request-id", "req_011CUp9y6BQk5e1pD6q8X9sz"),
        (
            "anthropic-organization-id",
            "4e0b7f5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        ),
        ("via", "1.1 google"),
        ("cf-ray", "8f1e2d3c4b5a6978-IAD"),
        ("server", "cloudflare"),
        ("x-robots-tag", "none"),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload",
        ),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let creds = credentials();
    let host = Host::parse("api.example.com").unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("x-access-token:github-token-stub")
    );
    let mut g = c.benchmark_group("swap_request");
    for (label, auth) in [
        ("no_stub", "Bearer not-a-stub-value-from-elsewhere"),
        ("bearer_swap", "Bearer access-token-stub"),
        ("basic_swap", basic.as_str()),
    ] {
        let template = request(auth);
        g.bench_function(label, |b| {
            b.iter_batched_ref(
                || template.clone(),
                |h| black_box(swap_request(h, &creds, &host, false)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    let template = response();
    c.bench_function("scrub_response/no_echo", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| black_box(scrub_response(h, &creds)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
