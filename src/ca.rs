//! The interception CA: loading, generating, and `ca init` (SPEC §3, §4).
//!
//! Owns: reading the CA pair from PEM files and proving they belong together
//! (the key must match the certificate, which must be a CA and currently
//! valid), generating a new pair, writing it with the key at mode 0600, and
//! the trust bundle agents fetch (`/ca.pem`: current CA plus `extra_trust`).
//! Does not sign leaves (`mint`).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::{Duration as TimeDuration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate; expected a `-----BEGIN CERTIFICATE-----` block")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a usable private key ({detail}); expected a PKCS#8 PEM key as written by `iron-proxy ca init`")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path} is not a usable CA certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("the key {key} does not belong to the certificate {cert}; point ca.cert and ca.key at the same pair")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate the CA: {0}")]
    Generate(String),
}

/// A loaded CA: what signs leaves and what agents trust.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer holds the CA key: never print it.
        f.debug_struct("CertificateAuthority")
            .field("sha256", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads and checks a CA pair from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_pem = read("CA certificate", cert_path)?;
        let key_pem = read("CA key", key_path)?;
        Self::from_pem(&cert_pem, &key_pem, cert_path, key_path)
    }

    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CaError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| {
            CaError::NoCertificate {
                path: cert_path.to_owned(),
            }
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::BadKey {
            path: key_path.to_owned(),
            detail: e.to_string(),
        })?;
        check_ca_cert(&cert_der, &key, cert_path, key_path)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::BadCert {
            path: cert_path.to_owned(),
            detail: e.to_string(),
        })?;
        let fingerprint = hex(&Sha256::digest(cert_der.as_ref()));
        Ok(CertificateAuthority {
            cert_pem: pem_of(&cert_der),
            cert_der,
            issuer,
            fingerprint,
        })
    }

    /// Loads the configured CA, generating it first when allowed and absent.
    pub fn load_or_generate(cfg: &crate::config::Ca) -> Result<Self, CaError> {
        if cfg.generate_if_missing && !cfg.cert.exists() && !cfg.key.exists() {
            let (cert, key) = generate("iron-proxy development CA")?;
            write_pair(&cfg.cert, &cfg.key, &cert, &key, false)?;
            tracing::warn!(cert = %cfg.cert.display(), "generated a new development CA (ca.generate_if_missing = true)");
        }
        Self::load(&cfg.cert, &cfg.key)
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Hex sha256 of the certificate's DER, as `openssl x509 -fingerprint -sha256` shows it (lowercase, no colons).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

fn check_ca_cert(
    der: &CertificateDer<'_>,
    key: &KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), CaError> {
    let bad = |detail: String| CaError::BadCert {
        path: cert_path.to_owned(),
        detail,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad(
            "it is not a CA (basicConstraints CA:TRUE is missing)".into()
        ));
    }
    if !cert.validity().is_valid() {
        return Err(bad(format!(
            "it is not valid now (valid from {} to {}); create a new one with `iron-proxy ca init`",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }
    Ok(())
}

/// Generates a CA pair (ECDSA P-256, ten years, path length 0) as PEM.
pub fn generate(common_name: &str) -> Result<(String, String), CaError> {
    let gen = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(gen)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "iron-proxy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + TimeDuration::days(3650);
    let cert = params.self_signed(&key).map_err(gen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `iron-proxy ca init`: writes `DIR/ca.crt` and `DIR/ca.key` (0600).
pub fn init(out: &Path, common_name: &str, force: bool) -> Result<(PathBuf, PathBuf), CaError> {
    let cert_path = out.join("ca.crt");
    let key_path = out.join("ca.key");
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(CaError::Exists { path: p.clone() });
            }
        }
    }
    let (cert, key) = generate(common_name)?;
    write_pair(&cert_path, &key_path, &cert, &key, force)?;
    Ok((cert_path, key_path))
}

fn write_pair(
    cert: &Path,
    key: &Path,
    cert_pem: &str,
    key_pem: &str,
    force: bool,
) -> Result<(), CaError> {
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| CaError::Write {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    write_file(key, key_pem.as_bytes(), 0o600, force)?;
    write_file(cert, cert_pem.as_bytes(), 0o644, force)
}

/// Writes through a temporary file and a rename so a reader never sees half
/// a key; the mode is set before any byte is written.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_owned(),
        source,
    };
    if !force && path.exists() {
        return Err(CaError::Exists {
            path: path.to_owned(),
        });
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn read(what: &'static str, path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads every certificate in a PEM file (extra trust, extra roots).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let text = read("certificate file", path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::BadCert {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_pair_with_private_key_mode_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = init(dir.path(), "test", false).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(CertificateAuthority::load(&cert, &key).is_ok());
        assert!(matches!(
            init(dir.path(), "test", false),
            Err(CaError::Exists { .. })
        ));
        init(dir.path(), "test", true).unwrap();
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (cert, _) = generate("a").unwrap();
        let (_, other_key) = generate("b").unwrap();
        let r = CertificateAuthority::from_pem(&cert, &other_key, Path::new("c"), Path::new("k"));
        assert!(matches!(r, Err(CaError::KeyMismatch { .. })), "{r:?}");
    }

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let (cert, key) = generate("a").unwrap();
        let e =
            CertificateAuthority::from_pem("garbage", &key, Path::new("/x/ca.crt"), Path::new("k"))
                .unwrap_err();
        assert!(e.to_string().contains("/x/ca.crt"));
        let e = CertificateAuthority::from_pem(&cert, "", Path::new("c"), Path::new("/x/ca.key"))
            .unwrap_err();
        assert!(e.to_string().contains("/x/ca.key"));
    }

    #[test]
    fn pem_round_trips() {
        let (cert, key) = generate("a").unwrap();
        let ca =
            CertificateAuthority::from_pem(&cert, &key, Path::new("c"), Path::new("k")).unwrap();
        assert_eq!(
            CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap(),
            *ca.cert_der()
        );
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
