//! Who may be reached: destination parsing, the allowlist and the
//! private-address guard (SPEC §5.1, §5.2, §5.8a).
//!
//! Owns: the strict parse of a request target into `Authority`, host
//! patterns (`exact`, `*.suffix`, IP, CIDR), `Policy::decide`, and the
//! classification of addresses that must not be dialled unless an operator
//! named them. Pure functions, no I/O. Does not resolve names (`upstream`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A destination host, normalised: lowercase, no trailing dot, IPv6 without
/// brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a bare host (no port). Refuses anything a resolver could read
    /// differently from us: numeric-looking names (`2130706433`, `0x7f.1`),
    /// percent-escapes, userinfo, non-ASCII.
    pub fn parse(s: &str) -> Result<Host, String> {
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("`{s}` is not a valid IPv6 literal"));
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let name = s.strip_suffix('.').unwrap_or(s);
        validate_dns_name(name)?;
        Ok(Host::Name(name.to_ascii_lowercase()))
    }

    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{name}` is not a valid host name (length)"));
    }
    for label in name.split('.') {
        let ok_len = !label.is_empty() && label.len() <= 63;
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_len || !ok_chars || label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{name}` is not a valid host name"));
        }
    }
    // A last label starting with a digit is how `127.1`, `0x7f.0.0.1` and
    // `2130706433` look; getaddrinfo would turn them into addresses.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return Err(format!(
            "`{name}` looks like a numeric address but is not a dotted-quad IPv4 address"
        ));
    }
    Ok(())
}

/// The proxy's own host (SPEC §9): `CONNECT iron-proxy.internal:443` is
/// always admitted and answered by the proxy itself after interception, so
/// an agent can prove end to end that it trusts the proxy's CA. Nothing is
/// forwarded for it.
pub const SELF_CHECK_HOST: &str = "iron-proxy.internal";

/// `host:port` of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

impl Authority {
    /// Parses an authority (`host:port`, `[v6]:port`, or `host` when
    /// `default_port` is given). Anything with userinfo, a path, escapes or
    /// whitespace is refused.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Authority, String> {
        if s.len() > 300
            || s.bytes()
                .any(|b| !b.is_ascii_graphic() || b"@/?#%\\".contains(&b))
        {
            return Err(format!("`{}` is not a host:port", printable(s)));
        }
        let (host, port) = split_host_port(s)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port.ok_or_else(|| format!("`{s}` has no port"))?,
        };
        Ok(Authority {
            host: Host::parse(host)?,
            port,
        })
    }
}

impl Authority {
    pub fn is_self_check(&self) -> bool {
        self.port == 443 && matches!(&self.host, Host::Name(n) if n == SELF_CHECK_HOST)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if s.starts_with('[') {
        let end = s.find(']').ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("`{s}`: junk after `]`")),
            },
        };
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(format!("`{s}`: IPv6 literals need brackets")),
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((s, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    let canonical = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    match p.parse::<u16>() {
        Ok(n) if canonical && n != 0 && !p.starts_with('0') => Ok(n),
        _ => Err(format!("`{}` is not a port (1-65535)", printable(p))),
    }
}

/// Truncates and strips control characters so echoing input is safe.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One pattern of an `[[allow]]` rule or a credential's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: subdomains only.
    Suffix(String),
    Ip(IpAddr),
    Cidr(IpNet),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if let Some(rest) = s.strip_prefix("*.") {
            validate_dns_name(rest)?;
            return Ok(HostPattern::Suffix(format!(
                ".{}",
                rest.to_ascii_lowercase()
            )));
        }
        if s.contains('*') {
            return Err(format!(
                "`{s}`: `*` is only allowed as the whole first label (`*.example.com`)"
            ));
        }
        if s.contains('/') {
            return s
                .parse::<IpNet>()
                .map(|n| HostPattern::Cidr(n.trunc()))
                .map_err(|_| format!("`{s}` is not a valid CIDR block"));
        }
        if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        match Host::parse(s)? {
            Host::Name(n) => Ok(HostPattern::Exact(n)),
            Host::Ip(ip) => Ok(HostPattern::Ip(ip)),
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(p), Host::Name(n)) => p == n,
            (HostPattern::Suffix(sfx), Host::Name(n)) => n.len() > sfx.len() && n.ends_with(sfx),
            (HostPattern::Ip(p), Host::Ip(ip)) => p == ip,
            (HostPattern::Cidr(net), Host::Ip(ip)) => net.contains(ip),
            _ => false,
        }
    }

    /// Whether every host `other` matches is also matched by `self`; used to
    /// check that each credential host is admitted by some allow rule.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match other {
            HostPattern::Exact(n) => self.matches(&Host::Name(n.clone())),
            HostPattern::Ip(ip) => self.matches(&Host::Ip(*ip)),
            HostPattern::Suffix(o) => match self {
                HostPattern::Suffix(s) => o == s || o.ends_with(s.as_str()),
                _ => false,
            },
            HostPattern::Cidr(o) => match self {
                HostPattern::Cidr(s) => s.contains(o),
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub pattern: HostPattern,
    pub ports: Vec<u16>,
}

/// The outcome of `Policy::decide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `trusted` when the operator wrote the address itself (an IP
    /// or CIDR rule), so the private-address guard does not apply.
    Allow {
        trusted: bool,
    },
    DenyHost,
    DenyPort,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<AllowRule>,
}

impl Policy {
    pub fn new(rules: Vec<AllowRule>) -> Policy {
        Policy { rules }
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// The proxy's own self-check host is always allowed and trusted: it is
    /// answered by the proxy and never dialled.
    pub fn decide(&self, dest: &Authority) -> Decision {
        if dest.is_self_check() {
            return Decision::Allow { trusted: true };
        }
        let mut host_matched = false;
        for rule in self.rules.iter().filter(|r| r.pattern.matches(&dest.host)) {
            host_matched = true;
            if rule.ports.contains(&dest.port) {
                let trusted = matches!(rule.pattern, HostPattern::Ip(_) | HostPattern::Cidr(_));
                return Decision::Allow { trusted };
            }
        }
        if host_matched {
            Decision::DenyPort
        } else {
            Decision::DenyHost
        }
    }

    /// Whether some rule admits this pattern on some port (SPEC §4.1).
    pub fn admits(&self, pattern: &HostPattern) -> bool {
        self.rules.iter().any(|r| r.pattern.covers(pattern))
    }
}

/// Addresses that are never dialled on the strength of a DNS answer alone
/// (SPEC §5.8a): loopback, private, link-local, CGNAT, unique-local, cloud
/// metadata, unspecified, multicast, reserved, and IPv6 forms that embed
/// one of those IPv4 addresses.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_private_v4(v4);
    }
    let seg0 = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7 (incl. fd00:ec2::254)
        || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg0 & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || seg0 == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
}

/// IPv4 addresses smuggled inside IPv6: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Result<Authority, String> {
        Authority::parse(s, None)
    }

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        let a = auth("API.Test.:443").unwrap();
        assert_eq!(a.host, Host::Name("api.test".into()));
        assert_eq!(a.port, 443);
        assert_eq!(
            auth("127.0.0.1:8443").unwrap().host.as_ip(),
            Some([127, 0, 0, 1].into())
        );
        assert_eq!(auth("[::1]:443").unwrap().to_string(), "[::1]:443");
        assert_eq!(Authority::parse("api.test", Some(80)).unwrap().port, 80);
    }

    #[test]
    fn refuses_malformed_and_ambiguous_targets() {
        for bad in [
            "",
            ":443",
            "api.test",
            "api.test:",
            "api.test:0",
            "api.test:65536",
            "api.test:+443",
            "api.test:0443",
            "api.test:44 3",
            "user@api.test:443",
            "api.test:443@evil.test:443",
            "api.test/x:443",
            "api%2etest:443",
            "::1:443",
            "[::1",
            "[::1]x",
            "[fe80::1%eth0]:443",
            "2130706433:443",
            "127.1:443",
            "0x7f.0.0.1:443",
            "017.0.0.1:443",
            "a..b:443",
            "-a.test:443",
            "ünï.test:443",
            "api.test:443\r\nX: y",
            "*.test:443",
        ] {
            assert!(auth(bad).is_err(), "accepted {bad:?}");
        }
    }

    fn policy(rules: &[(&str, &[u16])]) -> Policy {
        Policy::new(
            rules
                .iter()
                .map(|(h, p)| AllowRule {
                    pattern: HostPattern::parse(h).unwrap(),
                    ports: p.to_vec(),
                })
                .collect(),
        )
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&[("*.example.com", &[443])]);
        assert_eq!(
            p.decide(&auth("a.example.com:443").unwrap()),
            Decision::Allow { trusted: false }
        );
        assert_eq!(
            p.decide(&auth("a.b.example.com:443").unwrap()),
            Decision::Allow { trusted: false }
        );
        assert_eq!(
            p.decide(&auth("example.com:443").unwrap()),
            Decision::DenyHost
        );
        assert_eq!(
            p.decide(&auth("badexample.com:443").unwrap()),
            Decision::DenyHost
        );
        assert_eq!(
            p.decide(&auth("a.example.com:80").unwrap()),
            Decision::DenyPort
        );
    }

    #[test]
    fn the_self_check_host_is_allowed_on_443_only() {
        let p = policy(&[]);
        let own = auth("iron-proxy.internal:443").unwrap();
        assert_eq!(p.decide(&own), Decision::Allow { trusted: true });
        assert_eq!(
            p.decide(&auth("iron-proxy.internal:80").unwrap()),
            Decision::DenyHost
        );
    }

    #[test]
    fn ip_and_cidr_rules_are_trusted() {
        let p = policy(&[("10.0.0.0/8", &[443]), ("::1", &[443])]);
        assert_eq!(
            p.decide(&auth("10.1.2.3:443").unwrap()),
            Decision::Allow { trusted: true }
        );
        assert_eq!(
            p.decide(&auth("[::1]:443").unwrap()),
            Decision::Allow { trusted: true }
        );
        assert_eq!(p.decide(&auth("11.0.0.1:443").unwrap()), Decision::DenyHost);
    }

    #[test]
    fn covers_checks_credential_hosts_against_rules() {
        let wide = HostPattern::parse("*.github.com").unwrap();
        assert!(wide.covers(&HostPattern::parse("api.github.com").unwrap()));
        assert!(wide.covers(&HostPattern::parse("*.api.github.com").unwrap()));
        assert!(!wide.covers(&HostPattern::parse("github.com").unwrap()));
        assert!(HostPattern::parse("10.0.0.0/8")
            .unwrap()
            .covers(&HostPattern::parse("10.2.0.0/16").unwrap()));
        assert!(HostPattern::parse("a*.b.com").is_err());
    }

    #[test]
    fn private_ranges_including_embedded_v4() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "::127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip} should be private");
        }
        for ip in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip} should be public");
        }
    }
}
