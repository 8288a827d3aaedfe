//! Configuration file → validated `Config` (SPEC §4).
//!
//! Owns: the TOML schema (`raw` structs with `deny_unknown_fields`), defaults,
//! and every static rule of SPEC §4.1, each reported with the key path it is
//! about. Parsing is per section and per array item so that one run reports
//! every problem, not only the first. Does not read credential values, CA
//! files or trust files: that is `store::Snapshot::build`, which `check` runs
//! next.

pub mod duration;
mod raw;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use crate::policy::{Host, HostPattern, Policy};

/// One problem, with the key path it concerns (`credential[1].stub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (pass the right file with --config PATH)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from; reload reads it again.
    pub path: PathBuf,
    pub listen: Listen,
    pub admin: Admin,
    pub ca: Ca,
    pub upstream: Upstream,
    pub limits: Limits,
    pub reload: Reload,
    pub policy: Policy,
    pub credentials: Vec<CredentialConfig>,
    pub oauth_refresh: Vec<OAuthRefresh>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generate_if_missing: bool,
    pub extra_trust: Vec<PathBuf>,
    pub leaf_validity: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub extra_roots: Vec<PathBuf>,
    pub connect_timeout: Duration,
    pub allow_private: bool,
    /// Static name → address map, consulted before DNS. Operator-written, so
    /// these addresses are trusted by the private-address guard.
    pub resolve: BTreeMap<String, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub connect_line_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_header_bytes: 65536,
            max_headers: 128,
            connect_line_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// How often watched files are re-hashed, in case a change notification
    /// was missed (network filesystems, some volume types).
    pub poll_interval: Duration,
}

impl Default for Reload {
    fn default() -> Self {
        Reload {
            poll_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialConfig {
    pub name: String,
    pub stub: String,
    pub source: Source,
    pub hosts: Vec<HostPattern>,
    pub headers: Vec<HeaderName>,
    pub allow_plaintext: bool,
    pub require: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthRefresh {
    pub token_url: http::Uri,
    pub access: String,
    pub refresh: String,
    pub refresh_before: Option<Duration>,
}

impl Config {
    /// Reads and validates a config file; every problem is reported.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Reads a config file and returns what could be understood together
    /// with every problem, so `check` can go on to test credential sources
    /// and the CA even when the file has other problems.
    pub fn load_lenient(path: &Path) -> Result<(Option<Config>, Vec<Problem>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut problems = Vec::new();
        let config = raw::parse(&text, path, &mut problems);
        Ok((config, problems))
    }

    /// Validates TOML text; `path` is only recorded (and used in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let config = raw::parse(text, path, &mut problems);
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }
}

/// Hop-by-hop and framing headers are never a credential's carrier: they are
/// removed before forwarding (SPEC §5.5 and RFC 9110 §7.6.1).
const FORBIDDEN_CREDENTIAL_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Cross-item rules of SPEC §4.1 over the items that parsed.
fn validate_credentials(
    creds: &[(usize, CredentialConfig)],
    policy: &Policy,
    problems: &mut Vec<Problem>,
) {
    let mut names = HashSet::new();
    for (i, c) in creds {
        if !names.insert(c.name.as_str()) {
            problems.push(Problem::new(
                format!("credential[{i}].name"),
                format!(
                    "duplicate credential name `{}`; names must be unique",
                    c.name
                ),
            ));
        }
        for (j, other) in creds {
            if i == j {
                continue;
            }
            if c.stub == other.stub && i > j {
                problems.push(Problem::new(
                    format!("credential[{i}].stub"),
                    format!(
                        "same stub as credential[{j}] (`{}`); every stub must be unique",
                        other.name
                    ),
                ));
            } else if !c.stub.is_empty()
                && c.stub != other.stub
                && other.stub.contains(c.stub.as_str())
            {
                problems.push(Problem::new(
                    format!("credential[{i}].stub"),
                    format!(
                        "stub is a substring of credential[{j}]'s stub (`{}`); pick stubs that do \
                         not contain each other",
                        other.name
                    ),
                ));
            }
        }
        for (k, host) in c.hosts.iter().enumerate() {
            if !policy.admits(host) {
                problems.push(Problem::new(
                    format!("credential[{i}].hosts[{k}]"),
                    format!(
                        "no [[allow]] rule admits {}; add one or remove the host",
                        pattern_text(host)
                    ),
                ));
            }
        }
        for (k, h) in c.headers.iter().enumerate() {
            if FORBIDDEN_CREDENTIAL_HEADERS.contains(&h.as_str()) {
                problems.push(Problem::new(
                    format!("credential[{i}].headers[{k}]"),
                    format!(
                        "`{h}` is a hop-by-hop or framing header and cannot carry a credential"
                    ),
                ));
            }
        }
    }
}

fn validate_refresh(
    items: &[(usize, OAuthRefresh)],
    creds: &[(usize, CredentialConfig)],
    policy: &Policy,
    problems: &mut Vec<Problem>,
) {
    for (i, r) in items {
        for (key, name) in [("access", &r.access), ("refresh", &r.refresh)] {
            if !creds.iter().any(|(_, c)| &c.name == name) {
                problems.push(Problem::new(
                    format!("oauth_refresh[{i}].{key}"),
                    format!("no [[credential]] is named `{name}`"),
                ));
            }
        }
        let admitted = r
            .token_url
            .host()
            .and_then(|h| Host::parse(h).ok())
            .map(|h| {
                let port = r.token_url.port_u16().unwrap_or(443);
                policy.decide(&crate::policy::Authority { host: h, port })
            });
        if !matches!(admitted, Some(crate::policy::Decision::Allow { .. })) {
            problems.push(Problem::new(
                format!("oauth_refresh[{i}].token_url"),
                "no [[allow]] rule admits the token endpoint's host and port",
            ));
        }
    }
}

pub fn pattern_text(p: &HostPattern) -> String {
    match p {
        HostPattern::Exact(n) => n.clone(),
        HostPattern::Suffix(s) => format!("*{s}"),
        HostPattern::Ip(ip) => ip.to_string(),
        HostPattern::Cidr(net) => net.to_string(),
    }
}

#[cfg(test)]
mod tests;
