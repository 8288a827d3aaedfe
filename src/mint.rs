//! Leaf certificates for intercepted hosts.
//!
//! Owns: signing a leaf for a host with the current CA (ECDSA P-256, SAN =
//! the host name or IP, `serverAuth` EKU, AKI, backdated `not_before` for
//! clock skew) and the bounded cache of ready `ServerConfig`s.
//!
//! Invariants:
//! - One process-wide leaf key signs every leaf. The CA key never does: it
//!   only signs certificates. A leaf key compromise therefore exposes only
//!   leaves this process minted, each short-lived; a fresh key comes with
//!   every restart.
//! - A `LeafCache` belongs to one CA: it lives in the snapshot and is carried
//!   over by a reload only when the CA is unchanged, so after a rotation no
//!   leaf of the old CA can be served; the old cache goes with the last
//!   snapshot that used it.
//! - Concurrent first connections to one host share a single mint (the
//!   cache's placeholder makes the others wait for the first).
//! - An entry is served for at most half the leaf validity, so no agent
//!   is ever handed a leaf close to expiry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::ca::CertificateAuthority;
use crate::policy::Host;

/// Hosts whose leaves are kept ready; one agent pod talks to a handful.
pub const CACHE_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("cannot mint a leaf certificate for {host}: {detail}")]
    Sign { host: String, detail: String },
}

#[derive(Clone)]
struct Entry {
    config: Arc<ServerConfig>,
    fresh_until: Instant,
}

/// Counters for `/metrics` (registered by `metrics::Metrics`).
#[derive(Debug, Clone)]
pub struct MintStats {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub mints: IntCounter,
}

impl MintStats {
    pub fn from_metrics(m: &crate::metrics::Metrics) -> MintStats {
        MintStats {
            hits: m.leaf_hits.clone(),
            misses: m.leaf_misses.clone(),
            mints: m.leaf_mints.clone(),
        }
    }
}

/// Ready TLS configs per host, for one CA (bounded LRU).
pub struct LeafCache {
    cache: quick_cache::sync::Cache<Host, Entry>,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("hosts", &self.cache.len())
            .finish()
    }
}

impl Default for LeafCache {
    fn default() -> Self {
        LeafCache::with_capacity(CACHE_CAPACITY)
    }
}

impl LeafCache {
    pub fn with_capacity(capacity: usize) -> LeafCache {
        LeafCache {
            cache: quick_cache::sync::Cache::new(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// Signs leaves with the process-wide leaf key.
pub struct Minter {
    provider: Arc<CryptoProvider>,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    pub stats: MintStats,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Minter {
    pub fn new(provider: Arc<CryptoProvider>, stats: MintStats) -> Result<Minter, MintError> {
        let provider = Arc::new(prefer_sha256_suites(&provider));
        let err = |detail: String| MintError::Sign {
            host: "(leaf key)".into(),
            detail,
        };
        let leaf_key = KeyPair::generate().map_err(|e| err(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| err(e.to_string()))?;
        Ok(Minter {
            provider,
            leaf_key,
            signing_key,
            stats,
        })
    }

    /// The TLS server config presenting a leaf for `host`, minted on first
    /// use and cached.
    pub async fn server_config(
        &self,
        leaves: &LeafCache,
        ca: &CertificateAuthority,
        host: &Host,
        validity: Duration,
    ) -> Result<Arc<ServerConfig>, MintError> {
        let now = Instant::now();
        leaves.cache.remove_if(host, |e| e.fresh_until <= now);
        let mut minted = false;
        let entry = leaves
            .cache
            .get_or_insert_async(host, async {
                minted = true;
                self.mint(ca, host, validity)
            })
            .await?;
        let counter = if minted {
            &self.stats.misses
        } else {
            &self.stats.hits
        };
        counter.inc();
        Ok(entry.config)
    }

    fn mint(
        &self,
        ca: &CertificateAuthority,
        host: &Host,
        validity: Duration,
    ) -> Result<Entry, MintError> {
        let err = |detail: String| MintError::Sign {
            host: host.to_string(),
            detail,
        };
        let params = leaf_params(host, validity).map_err(|e| err(e.to_string()))?;
        let cert = params
            .signed_by(&self.leaf_key, ca.issuer())
            .map_err(|e| err(e.to_string()))?;
        let chain = vec![cert.der().clone()];
        let certified = Arc::new(CertifiedKey::new(chain, self.signing_key.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Our order, not the client's: clients ask for AES-256-GCM-SHA384
        // first, whose SHA-384 has no hardware path in ring; AES-128-GCM
        // with SHA-256 costs the handshake much less and is no weaker here.
        config.ignore_client_order = true;
        self.stats.mints.inc();
        Ok(Entry {
            config: Arc::new(config),
            fresh_until: Instant::now() + validity / 2,
        })
    }
}

/// The same provider with SHA-256 suites first (AES-128-GCM, then
/// ChaCha20-Poly1305), for the server side of interception.
fn prefer_sha256_suites(provider: &CryptoProvider) -> CryptoProvider {
    let mut p = provider.clone();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        _ => 3,
    };
    p.cipher_suites.sort_by_key(rank);
    p
}

fn leaf_params(host: &Host, validity: Duration) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![match host {
        Host::Name(n) => SanType::DnsName(n.clone().try_into()?),
        Host::Ip(ip) => SanType::IpAddress(*ip),
    }];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host.to_string());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    // Agents with a clock a little behind ours must still accept the leaf.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::DAY);
    let mut serial = [0u8; 16];
    rand_serial(&mut serial);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    Ok(params)
}

/// Unique serials without a new dependency: the hash of a process-wide
/// counter, the time and the process id is unique per leaf.
fn rand_serial(out: &mut [u8; 16]) {
    use sha2::{Digest, Sha256};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let digest = Sha256::digest(format!("{n}:{t}:{}", std::process::id()));
    out.copy_from_slice(&digest[..16]);
    out[0] &= 0x7f; // positive INTEGER
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ca() -> CertificateAuthority {
        let (c, k) = crate::ca::generate("t").unwrap();
        CertificateAuthority::from_pem(&c, &k, Path::new("c"), Path::new("k")).unwrap()
    }

    fn minter() -> Minter {
        let stats = MintStats::from_metrics(&crate::metrics::Metrics::new());
        Minter::new(Arc::new(rustls::crypto::ring::default_provider()), stats).unwrap()
    }

    #[tokio::test]
    async fn caches_per_host_within_one_cache() {
        let (m, ca) = (minter(), ca());
        let (cache, next_ca_cache) = (LeafCache::default(), LeafCache::default());
        let h = Host::Name("api.test".into());
        let day = Duration::from_secs(86_400);
        let a = m.server_config(&cache, &ca, &h, day).await.unwrap();
        let b = m.server_config(&cache, &ca, &h, day).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = m.server_config(&next_ca_cache, &ca, &h, day).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(m.stats.mints.get(), 2);
        assert_eq!(m.stats.hits.get(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_share_one_mint() {
        let m = Arc::new(minter());
        let ca = Arc::new(ca());
        let cache = Arc::new(LeafCache::default());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (m, ca, cache) = (m.clone(), ca.clone(), cache.clone());
                tokio::spawn(async move {
                    let h = Host::Name("once.test".into());
                    let hour = Duration::from_secs(3600);
                    m.server_config(&cache, &ca, &h, hour).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(m.stats.mints.get(), 1);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let (m, ca) = (minter(), ca());
        let cache = LeafCache::with_capacity(8);
        for i in 0..100 {
            let h = Host::Name(format!("h{i}.test"));
            let hour = Duration::from_secs(3600);
            m.server_config(&cache, &ca, &h, hour).await.unwrap();
        }
        assert!(cache.len() <= 8, "cache grew to {}", cache.len());
        assert_eq!(m.stats.mints.get(), 100);
    }

    #[test]
    fn leaf_has_san_eku_and_backdated_validity() {
        let ca = ca();
        let m = minter();
        let params = leaf_params(
            &Host::Ip("127.0.0.1".parse().unwrap()),
            Duration::from_secs(3600),
        )
        .unwrap();
        let cert = params.signed_by(&m.leaf_key, ca.issuer()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert!(x.extended_key_usage().unwrap().unwrap().value.server_auth);
        // ECDSA P-256: id-ecPublicKey with the prime256v1 curve, signed ecdsa-with-SHA256.
        let spki = &x.tbs_certificate.subject_pki.algorithm;
        assert_eq!(spki.algorithm.to_id_string(), "1.2.840.10045.2.1");
        let curve = spki.parameters.as_ref().unwrap().as_oid().unwrap();
        assert_eq!(curve.to_id_string(), "1.2.840.10045.3.1.7");
        assert_eq!(
            x.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        assert!(
            x.validity().not_before.timestamp() < OffsetDateTime::now_utc().unix_timestamp() - 3000
        );
        assert_eq!(
            x.issuer(),
            &x509_parser::parse_x509_certificate(ca.cert_der())
                .unwrap()
                .1
                .tbs_certificate
                .subject
        );
    }
}
