//! Live state: one immutable `Snapshot`, swapped whole (SPEC §6).
//!
//! Owns: building a snapshot from a `Config` (reading every credential
//! source, the CA, trust files and the admin token, building the upstream
//! pools) with every problem collected, and the `Store` that publishes it.
//!
//! Invariants:
//! - A snapshot is complete and valid or it does not exist: building
//!   validates everything first, and `replace` publishes it in one atomic
//!   pointer swap. Readers never lock and never see half an update.
//! - Each request calls `load()` once and keeps that `Arc` to its end, so
//!   in-flight requests finish with the snapshot they started with.
//! - The leaf cache belongs to the CA: a snapshot with the same CA
//!   certificate as its predecessor shares its cache, one with a new CA
//!   starts empty, so a rotated CA is never served stale leaves.
//! - Only one task publishes (`reload`): no update can be lost between a
//!   build and its publication.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::ca::CertificateAuthority;
use crate::config::{Config, Problem, Source};
use crate::metrics::Metrics;
use crate::mint::LeafCache;
use crate::secret::Secret;
use crate::swap::Credential;
use crate::upstream::Upstream;

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// +1 for every published snapshot.
    pub generation: u64,
    pub config: Arc<Config>,
    pub credentials: Vec<Credential>,
    pub ca: Arc<CertificateAuthority>,
    /// +1 each time the CA certificate changes.
    pub ca_generation: u64,
    pub leaves: Arc<LeafCache>,
    /// What agents should trust: current CA then `extra_trust`, PEM, no
    /// certificate twice.
    pub trust_bundle: String,
    pub upstream: Arc<Upstream>,
    /// The admin API bearer token; `None` disables the mutating routes.
    pub admin_token: Option<Secret>,
}

/// Whether building may write (generate a missing dev CA) or only check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    Run,
    Check,
}

/// What building needs besides the config.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    pub provider: &'a Arc<rustls::crypto::CryptoProvider>,
    pub metrics: &'a Metrics,
    pub mode: BuildMode,
}

impl Snapshot {
    /// Builds a snapshot, reporting every problem with its config key.
    /// `previous` lets unchanged parts (CA generation and leaf cache,
    /// upstream pools, credential change times) carry over.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        cx: BuildContext<'_>,
    ) -> Result<Snapshot, Vec<Problem>> {
        let mut problems = Vec::new();
        let credentials = load_credentials(&config, previous, cx.metrics, &mut problems);
        let ca = load_ca(&config, cx.mode, &mut problems);
        let trust_bundle = ca
            .as_ref()
            .map(|ca| trust_bundle(ca, &config, &mut problems));
        let admin_token = read_admin_token(&config, &mut problems);
        let upstream = match previous {
            Some(prev) if prev.config.upstream == config.upstream => Some(prev.upstream.clone()),
            _ => Upstream::new(&config.upstream, cx.provider.clone())
                .map(Arc::new)
                .map_err(|ps| problems.extend(ps))
                .ok(),
        };
        let (Some(ca), Some(trust_bundle), Some(upstream), true) =
            (ca, trust_bundle, upstream, problems.is_empty())
        else {
            return Err(problems);
        };
        let (ca, ca_generation, leaves) = match previous {
            Some(p) if p.ca.cert_der() == ca.cert_der() => {
                (p.ca.clone(), p.ca_generation, p.leaves.clone())
            }
            Some(p) => (Arc::new(ca), p.ca_generation + 1, Arc::default()),
            None => (Arc::new(ca), 1, Arc::default()),
        };
        Ok(Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            config: Arc::new(config),
            credentials,
            ca,
            ca_generation,
            leaves,
            trust_bundle,
            upstream,
            admin_token,
        })
    }

    /// This snapshot with one credential's real value replaced (admin API).
    pub fn with_credential(&self, name: &str, real: Secret) -> Option<Snapshot> {
        let mut next = self.clone();
        let cred = next.credentials.iter_mut().find(|c| &*c.name == name)?;
        if cred.real != real {
            cred.set_real(real);
            cred.changed_at = SystemTime::now();
        }
        next.generation += 1;
        Some(next)
    }

    pub fn credential(&self, name: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| &*c.name == name)
    }
}

fn load_credentials(
    config: &Config,
    previous: Option<&Snapshot>,
    metrics: &Metrics,
    problems: &mut Vec<Problem>,
) -> Vec<Credential> {
    let mut out = Vec::with_capacity(config.credentials.len());
    for (i, cfg) in config.credentials.iter().enumerate() {
        let real = match read_source(&cfg.source) {
            Ok(real) => real,
            Err(message) => {
                let key = format!("credential[{i}].source");
                problems.push(Problem::new(
                    key,
                    format!("credential `{}`: {message}", cfg.name),
                ));
                continue;
            }
        };
        let changed_at = previous
            .and_then(|p| p.credential(&cfg.name))
            .filter(|c| c.real == real)
            .map_or_else(SystemTime::now, |c| c.changed_at);
        let mut cred = Credential::new(cfg, real, metrics.swap_counter(&cfg.name));
        cred.changed_at = changed_at;
        out.push(cred);
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

/// `None` without a token file; a problem when the file is unusable.
fn read_admin_token(config: &Config, problems: &mut Vec<Problem>) -> Option<Secret> {
    let path = config.admin.token_file.as_ref()?;
    read_source(&Source::File(path.clone()))
        .map_err(|m| problems.push(Problem::new("admin.token_file", m)))
        .ok()
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
            crate::ca::generate("check")
                .and_then(|(c, k)| CertificateAuthority::from_pem(&c, &k, &cfg.cert, &cfg.key))
        }
        BuildMode::Check => CertificateAuthority::load(&cfg.cert, &cfg.key),
    };
    result
        .map_err(|e| problems.push(Problem::new("ca", e.to_string())))
        .ok()
}

fn trust_bundle(ca: &CertificateAuthority, config: &Config, problems: &mut Vec<Problem>) -> String {
    let mut bundle = ca.cert_pem().to_owned();
    let mut seen = HashSet::from([ca.cert_der().as_ref().to_vec()]);
    for (i, path) in config.ca.extra_trust.iter().enumerate() {
        match crate::ca::read_certs(path) {
            Ok(certs) => {
                for c in certs.iter().filter(|c| seen.insert(c.as_ref().to_vec())) {
                    bundle.push_str(&crate::ca::pem_of(c));
                }
            }
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
