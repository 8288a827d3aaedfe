//! Live state: one immutable `Snapshot`, swapped whole (SPEC §6).
//!
//! Owns: building a snapshot from a `Config` (reading every credential
//! source, the CA and trust files, building the upstream pools) with every
//! problem collected, and the `Store` that publishes it.
//!
//! Invariants:
//! - A snapshot is complete and valid or it does not exist: building
//!   validates everything first, and `replace` publishes it in one atomic
//!   pointer swap. Readers never lock and never see half an update.
//! - Each request calls `load()` once and keeps that `Arc` to its end, so
//!   in-flight requests finish with the snapshot they started with.
//! - The CA generation increases whenever the CA certificate changes, so the
//!   leaf cache (keyed by generation) can never serve a stale leaf.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::ca::CertificateAuthority;
use crate::config::{Config, Problem, Source};
use crate::secret::Secret;
use crate::swap::Credential;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub credentials: Vec<Credential>,
    pub ca: Arc<CertificateAuthority>,
    pub ca_generation: u64,
    /// What agents should trust: current CA then `extra_trust`, PEM.
    pub trust_bundle: String,
    pub upstream: Arc<Upstream>,
}

/// Whether building may write (generate a missing dev CA) or only check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    Run,
    Check,
}

impl Snapshot {
    /// Builds a snapshot, reporting every problem with its config key.
    /// `previous` lets unchanged parts (CA generation, upstream pools) carry
    /// over.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        mode: BuildMode,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Snapshot, Vec<Problem>> {
        let mut problems = Vec::new();
        let credentials = load_credentials(&config, &mut problems);
        let ca = load_ca(&config, mode, &mut problems);
        let trust_bundle = ca
            .as_ref()
            .map(|ca| trust_bundle(ca, &config, &mut problems));
        let upstream = match previous {
            Some(prev) if prev.config.upstream == config.upstream => Some(prev.upstream.clone()),
            _ => Upstream::new(&config.upstream, provider.clone())
                .map(Arc::new)
                .map_err(|ps| problems.extend(ps))
                .ok(),
        };
        let (Some(ca), Some(trust_bundle), Some(upstream), true) =
            (ca, trust_bundle, upstream, problems.is_empty())
        else {
            return Err(problems);
        };
        let ca_generation = match previous {
            Some(p) if p.ca.cert_der() == ca.cert_der() => p.ca_generation,
            Some(p) => p.ca_generation + 1,
            None => 1,
        };
        Ok(Snapshot {
            config: Arc::new(config),
            credentials,
            ca: Arc::new(ca),
            ca_generation,
            trust_bundle,
            upstream,
        })
    }
}

fn load_credentials(config: &Config, problems: &mut Vec<Problem>) -> Vec<Credential> {
    let mut out = Vec::with_capacity(config.credentials.len());
    for (i, cfg) in config.credentials.iter().enumerate() {
        let key = format!("credential[{i}].source");
        match read_source(&cfg.source) {
            Ok(real) => out.push(Credential::new(cfg, real)),
            Err(message) => problems.push(Problem::new(
                key,
                format!("credential `{}`: {message}", cfg.name),
            )),
        }
    }
    out
}

/// Reads one credential value. Messages name the file or variable, never the
/// value.
pub fn read_source(source: &Source) -> Result<Secret, String> {
    let bytes = match source {
        Source::File(path) => std::fs::read(path).map_err(|e| {
            format!(
                "cannot read {}: {e}; create it with the real value (mode 0600)",
                path.display()
            )
        })?,
        Source::Env(var) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?
            .into_bytes(),
    };
    Secret::from_bytes(&bytes).map_err(|e| format!("{source}: {e}"))
}

fn load_ca(
    config: &Config,
    mode: BuildMode,
    problems: &mut Vec<Problem>,
) -> Option<CertificateAuthority> {
    let cfg = &config.ca;
    let result = match mode {
        BuildMode::Run => CertificateAuthority::load_or_generate(cfg),
        BuildMode::Check if cfg.generate_if_missing && !cfg.cert.exists() && !cfg.key.exists() => {
            match crate::ca::generate("check") {
                Ok((c, k)) => CertificateAuthority::from_pem(&c, &k, &cfg.cert, &cfg.key),
                Err(e) => Err(e),
            }
        }
        BuildMode::Check => CertificateAuthority::load(&cfg.cert, &cfg.key),
    };
    result
        .map_err(|e| problems.push(Problem::new("ca", e.to_string())))
        .ok()
}

fn trust_bundle(ca: &CertificateAuthority, config: &Config, problems: &mut Vec<Problem>) -> String {
    let mut bundle = ca.cert_pem().to_owned();
    for (i, path) in config.ca.extra_trust.iter().enumerate() {
        match crate::ca::read_certs(path) {
            Ok(certs) => certs
                .iter()
                .for_each(|c| bundle.push_str(&crate::ca::pem_of(c))),
            Err(e) => problems.push(Problem::new(format!("ca.extra_trust[{i}]"), e.to_string())),
        }
    }
    bundle
}

/// Publishes the current snapshot; see the module invariants.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Snapshot>,
}

impl Store {
    pub fn new(snapshot: Snapshot) -> Store {
        Store {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The snapshot to use for one request (or one tunnel's setup).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
