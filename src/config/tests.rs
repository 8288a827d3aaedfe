use super::*;

const BASE: &str = r#"
[[allow]]
host = "api.test"
ports = [443]

[[allow]]
host = "*.github.test"

[[credential]]
name = "access"
stub = "access-token-stub"
source = { file = "secrets/access" }
hosts = ["api.test"]
"#;

fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    Config::parse(text, Path::new("test.toml")).map_err(|e| match e {
        ConfigError::Invalid { problems, .. } => problems,
        other => panic!("unexpected {other}"),
    })
}

fn problems(extra: &str) -> Vec<String> {
    parse(&format!("{BASE}{extra}"))
        .err()
        .unwrap_or_default()
        .iter()
        .map(|p| p.to_string())
        .collect()
}

fn assert_problem(extra: &str, key: &str, needle: &str) {
    let ps = problems(extra);
    assert!(
        ps.iter()
            .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(needle)),
        "expected `{key}` ~ `{needle}` in {ps:#?}"
    );
}

#[test]
fn minimal_config_gets_spec_defaults() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.listen.proxy.to_string(), "127.0.0.1:8080");
    assert_eq!(c.listen.admin.to_string(), "127.0.0.1:9090");
    assert_eq!(c.ca.cert, PathBuf::from("certs/ca.crt"));
    assert_eq!(c.ca.leaf_validity, Duration::from_secs(86_400));
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
    assert!(!c.upstream.allow_private);
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.policy.rules()[1].ports, vec![443, 80]);
    assert_eq!(c.credentials[0].headers, vec![http::header::AUTHORIZATION]);
    assert!(!c.credentials[0].require && !c.credentials[0].allow_plaintext);
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    assert_problem(
        "[limits]\nmax_conections = 3\n",
        "limits.max_conections",
        "unknown field",
    );
    assert_problem("[bogus]\n", "bogus", "unknown section");
    let ps = problems("[[credential]]\nname = \"b\"\nstub = \"b-stub\"\nsource = { file = \"x\" }\nhosts = [\"api.test\"]\nhots = 1\n");
    assert!(
        ps.iter()
            .any(|p| p.starts_with("credential[1]") && p.contains("hots")),
        "{ps:?}"
    );
}

#[test]
fn duplicate_names_are_errors() {
    assert_problem(
        "[[credential]]\nname = \"access\"\nstub = \"other-stub\"\nsource = { env = \"X\" }\nhosts = [\"api.test\"]\n",
        "credential[1].name",
        "duplicate credential name",
    );
}

#[test]
fn duplicate_stubs_are_errors() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"access-token-stub\"\nsource = { env = \"X\" }\nhosts = [\"api.test\"]\n",
        "credential[1].stub",
        "same stub",
    );
}

#[test]
fn stub_substring_of_another_stub_is_an_error() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"token-stub\"\nsource = { env = \"X\" }\nhosts = [\"api.test\"]\n",
        "credential[1].stub",
        "substring",
    );
}

#[test]
fn empty_stub_is_an_error() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"\"\nsource = { env = \"X\" }\nhosts = [\"api.test\"]\n",
        "credential[1].stub",
        "must not be empty",
    );
}

#[test]
fn credential_bound_to_unadmitted_host_is_an_error() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"b-stub\"\nsource = { env = \"X\" }\nhosts = [\"api.test\", \"evil.test\"]\n",
        "credential[1].hosts[1]",
        "no [[allow]] rule admits evil.test",
    );
    // A wildcard rule admits a host below it.
    assert!(problems(
        "[[credential]]\nname = \"b\"\nstub = \"b-stub\"\nsource = { env = \"X\" }\nhosts = [\"api.github.test\"]\n"
    )
    .is_empty());
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let ps = problems(
        "[limits]\nidle_timeout = \"soon\"\n[upstream]\nresolve = { \"a.test\" = \"nope\" }\n\
         [[credential]]\nname = \"access\"\nstub = \"\"\nsource = { env = \"X\" }\nhosts = [\"evil.test\"]\n",
    );
    for key in [
        "limits.idle_timeout",
        "upstream.resolve",
        "credential[1].name",
        "credential[1].stub",
        "credential[1].hosts[0]",
    ] {
        assert!(
            ps.iter().any(|p| p.starts_with(key)),
            "missing {key} in {ps:#?}"
        );
    }
}

#[test]
fn durations_use_spec_syntax() {
    let c = parse(&format!(
        "{BASE}[limits]\nconnect_line_timeout = \"250ms\"\n"
    ))
    .unwrap();
    assert_eq!(c.limits.connect_line_timeout, Duration::from_millis(250));
    assert_problem(
        "[limits]\nidle_timeout = \"90\"\n",
        "limits.idle_timeout",
        "not a duration",
    );
}

#[test]
fn source_must_be_exactly_one_of_file_or_env() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"b-stub\"\nsource = { file = \"f\", env = \"E\" }\nhosts = [\"api.test\"]\n",
        "credential[1].source",
        "exactly one",
    );
}

#[test]
fn hop_by_hop_headers_cannot_carry_credentials() {
    assert_problem(
        "[[credential]]\nname = \"b\"\nstub = \"b-stub\"\nsource = { env = \"E\" }\nhosts = [\"api.test\"]\nheaders = [\"Proxy-Authorization\"]\n",
        "credential[1].headers[0]",
        "hop-by-hop",
    );
}

#[test]
fn allow_rules_are_validated() {
    assert_problem("[[allow]]\nhost = \"a*.test\"\n", "allow[2].host", "`*`");
    assert_problem(
        "[[allow]]\nhost = \"x.test\"\nports = []\n",
        "allow[2].ports",
        "one or more",
    );
    assert_problem(
        "[[allow]]\nhost = \"10.0.0.0/33\"\n",
        "allow[2].host",
        "CIDR",
    );
}

#[test]
fn oauth_refresh_names_existing_credentials_and_allowed_url() {
    assert_problem(
        "[[oauth_refresh]]\ntoken_url = \"https://evil.test/token\"\naccess = \"access\"\nrefresh = \"nope\"\n",
        "oauth_refresh[0].refresh",
        "no [[credential]] is named `nope`",
    );
    assert_problem(
        "[[oauth_refresh]]\ntoken_url = \"https://evil.test/token\"\naccess = \"access\"\nrefresh = \"access\"\n",
        "oauth_refresh[0].token_url",
        "no [[allow]] rule",
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let ps = problems("[listen\n");
    assert!(ps[0].contains("line"), "{ps:?}");
}
