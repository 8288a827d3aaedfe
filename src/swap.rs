//! Stub → real value in request headers, real → stub in response headers
//! (SPEC §5.5, §5.6). Pure functions over `HeaderMap`: no I/O, no locks.
//!
//! Owns: recognising a stub in the forms agents send it (`Bearer <stub>`,
//! `token <stub>` or any other `<scheme> <stub>`, bare `<stub>`, and
//! `Basic base64(user:<stub>)`), the `require` refusal, and the scrub of
//! response headers that echo a real value. A stub matches only as the whole
//! credential token, never as a substring: `Bearer xx-stub-yy` is left alone.
//!
//! The common case (no stub present) is a read-only scan that allocates
//! nothing; values are only rebuilt once a stub was found.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use memchr::memmem;

use crate::policy::{Host, HostPattern};
use crate::secret::Secret;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A credential as the swap sees it: stub, real value and where it may go.
#[derive(Clone)]
pub struct Credential {
    pub name: Arc<str>,
    pub stub: Box<str>,
    pub real: Secret,
    pub source: crate::config::Source,
    pub hosts: Vec<HostPattern>,
    pub headers: Vec<HeaderName>,
    pub allow_plaintext: bool,
    pub require: bool,
    /// When the real value last changed (admin API, runbooks).
    pub changed_at: std::time::SystemTime,
    /// `iron_proxy_swaps_total{credential=name}`.
    pub swaps: prometheus::IntCounter,
    real_finder: memmem::Finder<'static>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("stub", &self.stub)
            .field("real", &self.real)
            .finish_non_exhaustive()
    }
}

impl Credential {
    pub fn new(
        cfg: &crate::config::CredentialConfig,
        real: Secret,
        swaps: prometheus::IntCounter,
    ) -> Credential {
        let real_finder = memmem::Finder::new(real.expose().as_bytes()).into_owned();
        Credential {
            name: Arc::from(cfg.name.as_str()),
            stub: cfg.stub.clone().into_boxed_str(),
            source: cfg.source.clone(),
            hosts: cfg.hosts.clone(),
            headers: cfg.headers.clone(),
            allow_plaintext: cfg.allow_plaintext,
            require: cfg.require,
            changed_at: std::time::SystemTime::now(),
            swaps,
            real,
            real_finder,
        }
    }

    /// Replaces the real value (and the matcher built from it).
    pub fn set_real(&mut self, real: Secret) {
        self.real_finder = memmem::Finder::new(real.expose().as_bytes()).into_owned();
        self.real = real;
    }

    pub fn binds(&self, host: &Host) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }
}

/// How a stub appeared in a header value, so the real value can be put in
/// the same shape.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    Bare,
    /// `<scheme> <stub>`; the scheme is kept exactly as the agent sent it.
    Scheme {
        scheme_len: usize,
    },
    /// `Basic base64(user:<stub>)`; holds the decoded user.
    Basic {
        user: Vec<u8>,
    },
}

/// A request refused because a `require = true` credential's header carried
/// something other than its stub (SPEC §5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub credential: Arc<str>,
    pub header: HeaderName,
}

/// Swaps stubs for real values in place. Returns the names of the
/// credentials swapped (empty, and unallocated, when nothing matched).
pub fn swap_request(
    headers: &mut HeaderMap,
    creds: &[Credential],
    host: &Host,
    plaintext: bool,
) -> Result<Vec<Arc<str>>, Refused> {
    check_required(headers, creds, host)?;
    let mut swapped = Vec::new();
    for cred in creds.iter().filter(|c| c.binds(host)) {
        if plaintext && !cred.allow_plaintext {
            continue;
        }
        for name in &cred.headers {
            // Read-only first: `entry` may grow the map, and most requests
            // carry no stub at all.
            let found = headers
                .get_all(name)
                .iter()
                .any(|v| find_form(v.as_bytes(), &cred.stub).is_some());
            if found && replace_all(headers, name, cred) {
                cred.swaps.inc();
                swapped.push(cred.name.clone());
            }
        }
    }
    Ok(swapped)
}

fn replace_all(headers: &mut HeaderMap, name: &HeaderName, cred: &Credential) -> bool {
    let mut any = false;
    if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
        for value in entry.iter_mut() {
            if let Some(form) = find_form(value.as_bytes(), &cred.stub) {
                if let Some(new) = rebuild(value.as_bytes(), form, &cred.real) {
                    *value = new;
                    any = true;
                }
            }
        }
    }
    any
}

/// With `require`, a checked header toward a bound host must carry a stub
/// (of any credential bound there); absent headers pass, so git's first,
/// unauthenticated request can get its 401.
fn check_required(headers: &HeaderMap, creds: &[Credential], host: &Host) -> Result<(), Refused> {
    for cred in creds.iter().filter(|c| c.require && c.binds(host)) {
        for name in &cred.headers {
            for value in headers.get_all(name) {
                let known = creds
                    .iter()
                    .filter(|c| c.binds(host))
                    .any(|c| find_form(value.as_bytes(), &c.stub).is_some());
                if !known {
                    return Err(Refused {
                        credential: cred.name.clone(),
                        header: name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn find_form(value: &[u8], stub: &str) -> Option<Form> {
    let value = value.trim_ascii();
    let stub = stub.as_bytes();
    if value == stub {
        return Some(Form::Bare);
    }
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = (&value[..space], value[space..].trim_ascii_start());
    if !scheme
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return None;
    }
    if rest == stub {
        return Some(Form::Scheme { scheme_len: space });
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        return basic_user(rest, stub).map(|user| Form::Basic { user });
    }
    None
}

/// Decodes `user:password` and returns `user` when the password is the stub.
/// Decodes into a stack buffer: credentials longer than it are not stubs.
fn basic_user(encoded: &[u8], stub: &[u8]) -> Option<Vec<u8>> {
    let mut buf = [0u8; 768];
    if encoded.len() > buf.len() / 3 * 4 {
        return None;
    }
    let n = B64.decode_slice(encoded, &mut buf).ok()?;
    let decoded = &buf[..n];
    let colon = decoded.iter().position(|&b| b == b':')?;
    (&decoded[colon + 1..] == stub).then(|| decoded[..colon].to_vec())
}

fn rebuild(original: &[u8], form: Form, real: &Secret) -> Option<HeaderValue> {
    let real = real.expose().as_bytes();
    let bytes = match form {
        Form::Bare => real.to_vec(),
        Form::Scheme { scheme_len } => {
            let scheme = &original.trim_ascii()[..scheme_len];
            [scheme, b" ", real].concat()
        }
        Form::Basic { user } => {
            let encoded = B64.encode([&user[..], b":", real].concat());
            [b"Basic ", encoded.as_bytes()].concat()
        }
    };
    let mut value = HeaderValue::from_bytes(&bytes).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Rewrites any response header value that contains a real credential value
/// back to the stub (SPEC §5.6). Returns how many values were rewritten.
pub fn scrub_response(headers: &mut HeaderMap, creds: &[Credential]) -> usize {
    let mut rewritten = 0;
    for value in headers.values_mut() {
        for cred in creds {
            if cred.real_finder.find(value.as_bytes()).is_some() {
                let text = String::from_utf8_lossy(value.as_bytes())
                    .replace(cred.real.expose(), &cred.stub);
                *value =
                    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
                rewritten += 1;
            }
        }
    }
    rewritten
}

#[cfg(test)]
mod tests;
