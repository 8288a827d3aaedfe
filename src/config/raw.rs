//! The TOML schema as written, and its conversion into `Config`.
//!
//! Each section and each `[[array]]` item is deserialised on its own with
//! `serde_path_to_error`, so a typo in one credential does not hide a
//! problem in another, and every message carries its full key path.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use http::HeaderName;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{
    duration, validate_credentials, validate_refresh, Admin, Ca, Config, CredentialConfig, Limits,
    Listen, OAuthRefresh, Problem, Reload, Source, Upstream,
};
use crate::policy::{AllowRule, Host, HostPattern};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    proxy: Option<String>,
    admin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCa {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    generate_if_missing: bool,
    #[serde(default)]
    extra_trust: Vec<PathBuf>,
    leaf_validity: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
    connect_timeout: Option<String>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    resolve: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    connect_line_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    poll_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    host: String,
    ports: Option<Vec<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    file: Option<PathBuf>,
    env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: String,
    stub: String,
    source: RawSource,
    hosts: Vec<String>,
    headers: Option<Vec<String>>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    require: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuthRefresh {
    token_url: String,
    access: String,
    refresh: String,
    refresh_before: Option<String>,
}

const SECTIONS: &[&str] = &[
    "listen",
    "admin",
    "ca",
    "upstream",
    "limits",
    "reload",
    "allow",
    "credential",
    "oauth_refresh",
];

/// Collects problems into a list while converting; `None` results mean the
/// item was unusable and was skipped.
struct Ctx<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    fn section<T: DeserializeOwned + Default>(&mut self, table: &toml::Table, key: &str) -> T {
        match table.get(key) {
            None => T::default(),
            Some(v) => self.item(v.clone(), key).unwrap_or_default(),
        }
    }

    fn item<T: DeserializeOwned>(&mut self, value: toml::Value, prefix: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." || path.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{path}")
                };
                self.push(key, e.into_inner().to_string().trim().to_owned());
                None
            }
        }
    }

    fn array<T: DeserializeOwned>(&mut self, table: &toml::Table, key: &str) -> Vec<(usize, T)> {
        match table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let t = self.item::<T>(v.clone(), &format!("{key}[{i}]"))?;
                    Some((i, t))
                })
                .collect(),
            Some(_) => {
                self.push(
                    key,
                    format!("must be an array of tables, written [[{key}]]"),
                );
                Vec::new()
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        raw: Option<String>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        match raw {
            None => default,
            Some(s) => duration::parse(&s).unwrap_or_else(|m| {
                self.push(key, m);
                default
            }),
        }
    }

    fn addr(&mut self, key: &str, raw: Option<String>, default: &str) -> SocketAddr {
        let text = raw.unwrap_or_else(|| default.to_owned());
        text.parse().unwrap_or_else(|_| {
            self.push(
                key,
                format!("`{text}` is not an address like \"127.0.0.1:8080\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn positive(&mut self, key: &str, raw: Option<usize>, default: usize, min: usize) -> usize {
        let v = raw.unwrap_or(default);
        if v < min {
            self.push(key, format!("must be at least {min}"));
            return default;
        }
        v
    }
}

pub(super) fn parse(text: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<Config> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(
                "(syntax)",
                e.to_string().trim().replace('\n', " "),
            ));
            return None;
        }
    };
    let mut cx = Ctx { problems };
    for key in table.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
        cx.push(
            key.clone(),
            format!("unknown section; expected one of: {}", SECTIONS.join(", ")),
        );
    }
    let raw_listen = cx.section(&table, "listen");
    let listen = listen(&mut cx, raw_listen);
    let admin: RawAdmin = cx.section(&table, "admin");
    let raw_ca = cx.section(&table, "ca");
    let ca = ca(&mut cx, raw_ca);
    let raw_upstream = cx.section(&table, "upstream");
    let upstream = upstream(&mut cx, raw_upstream);
    let raw_limits = cx.section(&table, "limits");
    let limits = limits(&mut cx, raw_limits);
    let raw_reload: RawReload = cx.section(&table, "reload");
    let reload = Reload {
        poll_interval: cx.duration(
            "reload.poll_interval",
            raw_reload.poll_interval,
            Reload::default().poll_interval,
        ),
    };
    let rules: Vec<AllowRule> = cx
        .array::<RawAllow>(&table, "allow")
        .into_iter()
        .filter_map(|(i, r)| allow_rule(&mut cx, i, r))
        .collect();
    let policy = crate::policy::Policy::new(rules);
    let creds: Vec<(usize, CredentialConfig)> = cx
        .array::<RawCredential>(&table, "credential")
        .into_iter()
        .filter_map(|(i, r)| credential(&mut cx, i, r).map(|c| (i, c)))
        .collect();
    let refresh: Vec<(usize, OAuthRefresh)> = cx
        .array::<RawOAuthRefresh>(&table, "oauth_refresh")
        .into_iter()
        .filter_map(|(i, r)| oauth_refresh(&mut cx, i, r).map(|o| (i, o)))
        .collect();
    validate_credentials(&creds, &policy, cx.problems);
    validate_refresh(&refresh, &creds, &policy, cx.problems);
    Some(Config {
        path: path.to_owned(),
        listen,
        admin: Admin {
            token_file: admin.token_file,
        },
        ca,
        upstream,
        limits,
        reload,
        policy,
        credentials: creds.into_iter().map(|(_, c)| c).collect(),
        oauth_refresh: refresh.into_iter().map(|(_, r)| r).collect(),
    })
}

fn listen(cx: &mut Ctx<'_>, raw: RawListen) -> Listen {
    Listen {
        proxy: cx.addr("listen.proxy", raw.proxy, "127.0.0.1:8080"),
        admin: cx.addr("listen.admin", raw.admin, "127.0.0.1:9090"),
    }
}

fn ca(cx: &mut Ctx<'_>, raw: RawCa) -> Ca {
    let leaf_validity = cx.duration(
        "ca.leaf_validity",
        raw.leaf_validity,
        std::time::Duration::from_secs(24 * 3600),
    );
    if leaf_validity < std::time::Duration::from_secs(60) {
        cx.push(
            "ca.leaf_validity",
            "must be at least 1m: leaves are cached for half of it",
        );
    }
    Ca {
        cert: raw.cert.unwrap_or_else(|| PathBuf::from("certs/ca.crt")),
        key: raw.key.unwrap_or_else(|| PathBuf::from("certs/ca.key")),
        generate_if_missing: raw.generate_if_missing,
        extra_trust: raw.extra_trust,
        leaf_validity,
    }
}

fn upstream(cx: &mut Ctx<'_>, raw: RawUpstream) -> Upstream {
    let mut resolve = BTreeMap::new();
    for (name, addr) in raw.resolve {
        let key = format!("upstream.resolve.\"{name}\"");
        let host = match Host::parse(&name) {
            Ok(Host::Name(n)) => n,
            Ok(Host::Ip(_)) => {
                cx.push(key, "an IP address needs no resolve entry; name the host");
                continue;
            }
            Err(m) => {
                cx.push(key, m);
                continue;
            }
        };
        match addr.parse::<IpAddr>() {
            Ok(ip) => {
                resolve.insert(host, ip);
            }
            Err(_) => cx.push(key, format!("`{addr}` is not an IP address")),
        }
    }
    Upstream {
        extra_roots: raw.extra_roots,
        connect_timeout: cx.duration(
            "upstream.connect_timeout",
            raw.connect_timeout,
            std::time::Duration::from_secs(10),
        ),
        allow_private: raw.allow_private,
        resolve,
    }
}

fn limits(cx: &mut Ctx<'_>, raw: RawLimits) -> Limits {
    let d = Limits::default();
    Limits {
        max_connections: cx.positive(
            "limits.max_connections",
            raw.max_connections,
            d.max_connections,
            1,
        ),
        max_header_bytes: cx.positive(
            "limits.max_header_bytes",
            raw.max_header_bytes,
            d.max_header_bytes,
            1024,
        ),
        max_headers: cx.positive("limits.max_headers", raw.max_headers, d.max_headers, 8),
        connect_line_timeout: cx.duration(
            "limits.connect_line_timeout",
            raw.connect_line_timeout,
            d.connect_line_timeout,
        ),
        tls_handshake_timeout: cx.duration(
            "limits.tls_handshake_timeout",
            raw.tls_handshake_timeout,
            d.tls_handshake_timeout,
        ),
        header_read_timeout: cx.duration(
            "limits.header_read_timeout",
            raw.header_read_timeout,
            d.header_read_timeout,
        ),
        idle_timeout: cx.duration("limits.idle_timeout", raw.idle_timeout, d.idle_timeout),
        drain_timeout: cx.duration("limits.drain_timeout", raw.drain_timeout, d.drain_timeout),
    }
}

fn allow_rule(cx: &mut Ctx<'_>, i: usize, raw: RawAllow) -> Option<AllowRule> {
    let pattern = HostPattern::parse(&raw.host)
        .map_err(|m| cx.push(format!("allow[{i}].host"), m))
        .ok()?;
    let ports = raw.ports.unwrap_or_else(|| vec![443, 80]);
    if ports.is_empty() || ports.contains(&0) {
        cx.push(
            format!("allow[{i}].ports"),
            "list one or more ports from 1 to 65535",
        );
        return None;
    }
    Some(AllowRule { pattern, ports })
}

fn credential(cx: &mut Ctx<'_>, i: usize, raw: RawCredential) -> Option<CredentialConfig> {
    let at = |k: &str| format!("credential[{i}].{k}");
    if raw.name.trim().is_empty() {
        cx.push(at("name"), "must not be empty");
    }
    if raw.stub.is_empty() {
        cx.push(at("stub"), "must not be empty");
    } else if !raw.stub.bytes().all(|b| b.is_ascii_graphic()) {
        cx.push(
            at("stub"),
            "must be visible ASCII with no spaces (it travels in a header)",
        );
    }
    let source = match (raw.source.file, raw.source.env) {
        (Some(f), None) => Some(Source::File(f)),
        (None, Some(e)) if !e.is_empty() => Some(Source::Env(e)),
        _ => {
            cx.push(
                at("source"),
                "set exactly one of `file = \"PATH\"` or `env = \"VAR\"`",
            );
            None
        }
    };
    if raw.hosts.is_empty() {
        cx.push(
            at("hosts"),
            "list at least one host the credential is bound to",
        );
    }
    let hosts: Vec<HostPattern> = raw
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(k, h)| {
            HostPattern::parse(h)
                .map_err(|m| cx.push(format!("credential[{i}].hosts[{k}]"), m))
                .ok()
        })
        .collect();
    let header_names = raw
        .headers
        .unwrap_or_else(|| vec!["authorization".to_owned()]);
    if header_names.is_empty() {
        cx.push(
            at("headers"),
            "list at least one header, e.g. [\"authorization\"]",
        );
    }
    let headers: Vec<HeaderName> = header_names
        .iter()
        .enumerate()
        .filter_map(|(k, h)| {
            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| {
                    cx.push(
                        format!("credential[{i}].headers[{k}]"),
                        format!("`{h}` is not a header name"),
                    )
                })
                .ok()
        })
        .collect();
    // Items with local problems still take part in the cross-item checks
    // (duplicate names, unadmitted hosts) so one run reports everything.
    Some(CredentialConfig {
        name: raw.name,
        stub: raw.stub,
        source: source?,
        hosts,
        headers,
        allow_plaintext: raw.allow_plaintext,
        require: raw.require,
    })
}

fn oauth_refresh(cx: &mut Ctx<'_>, i: usize, raw: RawOAuthRefresh) -> Option<OAuthRefresh> {
    let token_url = match raw.token_url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
        _ => {
            cx.push(
                format!("oauth_refresh[{i}].token_url"),
                "must be an https:// URL",
            );
            return None;
        }
    };
    let refresh_before = raw.refresh_before.map(|s| {
        duration::parse(&s).unwrap_or_else(|m| {
            cx.push(format!("oauth_refresh[{i}].refresh_before"), m);
            std::time::Duration::ZERO
        })
    });
    Some(OAuthRefresh {
        token_url,
        access: raw.access,
        refresh: raw.refresh,
        refresh_before,
    })
}
