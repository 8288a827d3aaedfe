//! The loopback HTTPS origin (hyper auto server over tokio-rustls, ALPN h2 +
//! http/1.1) with its own ECDSA P-256 test CA, and the client TLS configs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const STUB: &str = "access-token-stub";
pub const REAL: &str = "real-access-token-0123456789abcdef";
/// The fixed response body: 64 bytes.
const BODY: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct Upstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
    /// Requests that arrived carrying the real token (proof of the swap).
    pub swapped: Arc<AtomicU64>,
    /// TLS handshakes the origin completed.
    pub handshakes: Arc<AtomicU64>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and a leaf for `api.test` signed by it: (CA PEM, chain, key).
fn issue() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "bench upstream CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["api.test".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "api.test");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca_pem, vec![cert.der().clone()], key)
}

/// Start the origin on the current runtime: 200 + 64 bytes for any request.
pub async fn start() -> Upstream {
    let (ca_pem, chain, key) = issue();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swapped = Arc::new(AtomicU64::new(0));
    let counter = swapped.clone();
    let handshakes = Arc::new(AtomicU64::new(0));
    let accepted = handshakes.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, counter, builder) = (acceptor.clone(), counter.clone(), builder.clone());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let real = req
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .is_some_and(|v| v.as_bytes().ends_with(REAL.as_bytes()));
                    if real {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let body = Full::new(Bytes::from_static(BODY));
                    async move { Ok::<_, Infallible>(Response::new(body)) }
                });
                let io = TokioIo::new(tls);
                let _ = builder.serve_connection(io, service).await;
            });
        }
    });
    Upstream {
        addr,
        ca_pem,
        swapped,
        handshakes,
    }
}

/// A client config trusting only `ca_pem`, offering `alpn`; session
/// resumption off so that every new connection is a full handshake.
pub fn client_config(ca_pem: &str, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}
