use super::*;
use crate::config::{CredentialConfig, Source};

fn cred(name: &str, stub: &str, real: &str, host: &str, header: &str) -> Credential {
    let cfg = CredentialConfig {
        name: name.into(),
        stub: stub.into(),
        source: Source::Env("X".into()),
        hosts: vec![HostPattern::parse(host).unwrap()],
        headers: vec![HeaderName::from_bytes(header.as_bytes()).unwrap()],
        allow_plaintext: false,
        require: false,
    };
    let swaps = crate::metrics::Metrics::new().swap_counter(name);
    Credential::new(&cfg, Secret::from_bytes(real.as_bytes()).unwrap(), swaps)
}

fn host(h: &str) -> Host {
    Host::parse(h).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    m
}

fn creds() -> Vec<Credential> {
    vec![
        cred(
            "access",
            "access-token-stub",
            "sk-real-access",
            "api.test",
            "authorization",
        ),
        cred(
            "pat",
            "github-token-stub",
            "ghp-real-pat",
            "github.test",
            "authorization",
        ),
        cred("key", "key-stub", "real-key", "api.test", "x-api-key"),
    ]
}

fn swapped(pairs: &[(&str, &str)], to: &str) -> (HeaderMap, Vec<Arc<str>>) {
    let mut h = headers(pairs);
    let names = swap_request(&mut h, &creds(), &host(to), false).unwrap();
    (h, names)
}

#[test]
fn bearer_token_and_bare_forms_are_swapped() {
    let (h, n) = swapped(&[("authorization", "Bearer access-token-stub")], "api.test");
    assert_eq!(h["authorization"], "Bearer sk-real-access");
    assert_eq!(&*n[0], "access");
    let (h, _) = swapped(
        &[("authorization", "token github-token-stub")],
        "github.test",
    );
    assert_eq!(h["authorization"], "token ghp-real-pat");
    let (h, _) = swapped(&[("x-api-key", "key-stub")], "api.test");
    assert_eq!(h["x-api-key"], "real-key");
    let (h, _) = swapped(
        &[("authorization", "bearer   access-token-stub ")],
        "api.test",
    );
    assert_eq!(h["authorization"], "bearer sk-real-access");
}

#[test]
fn basic_password_is_decoded_swapped_and_reencoded() {
    let sent = format!("Basic {}", B64.encode("x-access-token:github-token-stub"));
    let (h, n) = swapped(&[("authorization", &sent)], "github.test");
    let expect = format!("Basic {}", B64.encode("x-access-token:ghp-real-pat"));
    assert_eq!(h["authorization"], expect.as_str());
    assert_eq!(&*n[0], "pat");
    assert!(h["authorization"].is_sensitive());
}

#[test]
fn stub_toward_unbound_host_is_left_alone() {
    let (h, n) = swapped(
        &[("authorization", "Bearer access-token-stub")],
        "github.test",
    );
    assert_eq!(h["authorization"], "Bearer access-token-stub");
    assert!(n.is_empty());
}

#[test]
fn substrings_and_other_headers_are_not_swapped() {
    for v in [
        "Bearer xaccess-token-stub",
        "Bearer access-token-stubx",
        "Bearer access-token-stub extra",
    ] {
        let (h, n) = swapped(&[("authorization", v)], "api.test");
        assert_eq!(h["authorization"], v);
        assert!(n.is_empty());
    }
    // The stub in a header the credential is not configured for stays.
    let (h, _) = swapped(&[("x-other", "access-token-stub")], "api.test");
    assert_eq!(h["x-other"], "access-token-stub");
}

#[test]
fn every_value_of_a_repeated_header_is_swapped() {
    let (h, _) = swapped(
        &[("x-api-key", "key-stub"), ("x-api-key", "key-stub")],
        "api.test",
    );
    let all: Vec<_> = h.get_all("x-api-key").iter().collect();
    assert_eq!(all, ["real-key", "real-key"]);
}

#[test]
fn plaintext_swaps_only_when_allowed() {
    let mut cs = creds();
    let mut h = headers(&[("authorization", "Bearer access-token-stub")]);
    assert!(swap_request(&mut h, &cs, &host("api.test"), true)
        .unwrap()
        .is_empty());
    assert_eq!(h["authorization"], "Bearer access-token-stub");
    cs[0].allow_plaintext = true;
    swap_request(&mut h, &cs, &host("api.test"), true).unwrap();
    assert_eq!(h["authorization"], "Bearer sk-real-access");
}

#[test]
fn require_refuses_foreign_values_but_passes_absent_header() {
    let mut cs = creds();
    cs[1].require = true;
    let gh = host("github.test");
    let mut foreign = headers(&[("authorization", "token ghp-someone-elses")]);
    let r = swap_request(&mut foreign, &cs, &gh, false).unwrap_err();
    assert_eq!(&*r.credential, "pat");
    let mut none = headers(&[("accept", "*/*")]);
    assert!(swap_request(&mut none, &cs, &gh, false).is_ok());
    let mut stub = headers(&[("authorization", "token github-token-stub")]);
    assert!(swap_request(&mut stub, &cs, &gh, false).is_ok());
}

#[test]
fn response_echo_is_scrubbed_back_to_stub() {
    let mut h = headers(&[
        ("x-echo", "saw Bearer sk-real-access here"),
        ("x-ok", "fine"),
    ]);
    assert_eq!(scrub_response(&mut h, &creds()), 1);
    assert_eq!(h["x-echo"], "saw Bearer access-token-stub here");
    assert_eq!(h["x-ok"], "fine");
}

#[test]
fn malformed_basic_is_left_alone() {
    for v in ["Basic !!!", "Basic", "Basic Zm9v", "Basic "] {
        let (h, n) = swapped(&[("authorization", v)], "github.test");
        assert_eq!(h["authorization"], v);
        assert!(n.is_empty());
    }
}
