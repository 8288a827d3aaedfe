//! Leaf certificates (issue #5): a cold mint (sign + TLS config), a cached
//! hit, and 64 concurrent first connections to one new host, which must
//! produce exactly one mint.
//!
//! `cargo bench --bench mint`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use iron_proxy::ca::{self, CertificateAuthority};
use iron_proxy::metrics::Metrics;
use iron_proxy::mint::{LeafCache, MintStats, Minter};
use iron_proxy::policy::Host;

const DAY: Duration = Duration::from_secs(86_400);

fn setup() -> (Arc<Minter>, Arc<CertificateAuthority>, Metrics) {
    let metrics = Metrics::new();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let minter = Minter::new(provider, MintStats::from_metrics(&metrics)).unwrap();
    let (cert, key) = ca::generate("bench").unwrap();
    let ca = CertificateAuthority::from_pem(&cert, &key, Path::new("c"), Path::new("k")).unwrap();
    (Arc::new(minter), Arc::new(ca), metrics)
}

fn bench(c: &mut Criterion) {
    let (minter, ca, metrics) = setup();
    let host = Host::parse("api.example.com").unwrap();

    c.bench_function("mint/cold", |b| {
        b.iter_batched(
            LeafCache::default,
            |cache| {
                let cfg = minter
                    .server_config(&cache, &ca, &host, DAY)
                    .now_or_never()
                    .unwrap();
                black_box(cfg.unwrap())
            },
            BatchSize::SmallInput,
        )
    });

    let cache = LeafCache::default();
    minter
        .server_config(&cache, &ca, &host, DAY)
        .now_or_never()
        .unwrap()
        .unwrap();
    c.bench_function("mint/cached", |b| {
        b.iter(|| {
            black_box(
                minter
                    .server_config(&cache, &ca, &host, DAY)
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            )
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mints = metrics.leaf_mints.clone();
    let mut round = 0u64;
    c.bench_function("mint/64_concurrent_first_connections", |b| {
        b.iter(|| {
            round += 1;
            let cache = Arc::new(LeafCache::default());
            let host = Host::parse(&format!("h{round}.example.com")).unwrap();
            let before = mints.get();
            runtime.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (minter, ca, cache, host) =
                            (minter.clone(), ca.clone(), cache.clone(), host.clone());
                        tokio::spawn(async move {
                            minter.server_config(&cache, &ca, &host, DAY).await.unwrap()
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            assert_eq!(
                mints.get() - before,
                1,
                "64 concurrent first connections minted more than once"
            );
        })
    });
    println!(
        "leaf mints in total: {} (one per cold iteration, one per concurrent round)",
        mints.get()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
