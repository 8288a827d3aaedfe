//! The operator CLI: help, usage errors, `ca init`, `check` (SPEC §3, §4.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use support::*;

/// Run `iron-proxy args…` to completion, bounded by 30 s.
fn iron(args: &[&str]) -> Output {
    run_cli(args, None)
}

/// stdout and stderr together, for messages that may go to either.
fn text(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    format!("{stdout}{}", String::from_utf8_lossy(&output.stderr))
}

fn code(output: &Output) -> i32 {
    output
        .status
        .code()
        .expect("exited normally, not by a signal")
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["ca", "init", "--help"],
    ] {
        let output = iron(args);
        assert_eq!(code(&output), 0, "{args:?}: {}", text(&output));
        assert!(
            text(&output).contains("Usage"),
            "{args:?} prints usage: {}",
            text(&output)
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["run", "--no-such-flag"],
        &["check", "--config"],
        &["ca", "init", "--bogus"],
    ] {
        let output = iron(args);
        assert_eq!(code(&output), 2, "{args:?}: {}", text(&output));
    }
}

fn ca_init(out: &Path, force: bool) -> Output {
    let mut args = vec!["ca", "init", "--out", out.to_str().unwrap()];
    if force {
        args.push("--force");
    }
    iron(&args)
}

#[test]
fn ca_init_writes_a_ca_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = ca_init(&out, false);
    assert_eq!(code(&output), 0, "{}", text(&output));
    let cert = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    assert!(cert.contains("-----BEGIN CERTIFICATE-----"), "{cert}");
    client_config(&cert, ALPN_BOTH); // parses as a trust anchor
    let key = std::fs::read_to_string(out.join("ca.key")).unwrap();
    assert!(key.contains("PRIVATE KEY-----"), "key is PEM");
    let mode = std::fs::metadata(out.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "ca.key mode is {:o}", mode & 0o777);
}

#[test]
fn ca_init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(code(&ca_init(dir.path(), false)), 0);
    let key_before = std::fs::read(dir.path().join("ca.key")).unwrap();
    let cert_before = std::fs::read(dir.path().join("ca.crt")).unwrap();

    let output = ca_init(dir.path(), false);
    assert_eq!(code(&output), 1, "{}", text(&output));
    assert_eq!(
        std::fs::read(dir.path().join("ca.key")).unwrap(),
        key_before
    );
    assert_eq!(
        std::fs::read(dir.path().join("ca.crt")).unwrap(),
        cert_before
    );

    let output = ca_init(dir.path(), true);
    assert_eq!(code(&output), 0, "{}", text(&output));
    assert_ne!(
        std::fs::read(dir.path().join("ca.key")).unwrap(),
        key_before,
        "--force wrote a new key"
    );
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(code(&ca_init(dir.path(), false)), 0);
    let upstream_ca = TestCa::new("upstream");
    let config = ProxyConfig::bare()
        .trust(&upstream_ca.cert_pem)
        .allow("api.test", &[443])
        .credential("gh", "github-token-stub", "ghp_real", &["api.test"])
        .render(dir.path());
    let path = dir.path().join("iron-proxy.toml");
    std::fs::write(&path, config).unwrap();
    let output = iron(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code(&output), 0, "{}", text(&output));
}

/// A config with one problem per entry of [`PROBLEMS`].
fn broken_config(dir: &Path) -> String {
    let secret = |name: &str| {
        let path = dir.join(name);
        if name != "missing" {
            std::fs::write(&path, "real-value").unwrap();
        }
        qs(path.to_str().unwrap())
    };
    let credential = |name: &str, stub: &str, file: &str, host: &str| {
        format!(
            "[[credential]]\nname = {}\nstub = {}\nsource = {{ file = {} }}\nhosts = [{}]\n\n",
            qs(name),
            qs(stub),
            secret(file),
            qs(host)
        )
    };
    let ca = |f: &str| qs(dir.join(f).to_str().unwrap());
    let mut toml = format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nbogus = true\n\n\
         [ca]\ncert = {}\nkey = {}\n\n[[allow]]\nhost = \"api.test\"\nports = [443]\n\n",
        ca("ca.crt"),
        ca("ca.key")
    );
    toml += &credential("alpha", "stub-alpha", "s0", "api.test");
    toml += &credential("bravo", "", "s1", "api.test");
    toml += &credential("alpha", "stub-charlie", "s2", "api.test");
    toml += &credential("delta", "stub-alpha-long", "s3", "api.test");
    toml += &credential("echo", "stub-echo", "s4", "nowhere.test");
    toml += &credential("foxtrot", "stub-foxtrot", "missing", "api.test");
    toml
}

/// Each problem in [`broken_config`], as key paths any one of which names it.
const PROBLEMS: &[(&str, &[&str])] = &[
    ("unknown key", &["listen.bogus"]),
    ("empty stub", &["credential[1].stub"]),
    ("duplicate name", &["credential[2].name"]),
    (
        "stub substring of another",
        &["credential[3].stub", "credential[0].stub"],
    ),
    ("host no allow rule admits", &["credential[4].hosts"]),
    ("missing secret file", &["credential[5].source"]),
];

#[test]
fn check_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(code(&ca_init(dir.path(), false)), 0);
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken_config(dir.path())).unwrap();
    let output = iron(&["check", "--config", path.to_str().unwrap()]);
    let printed = text(&output);
    assert_eq!(code(&output), 1, "{printed}");
    let missing: Vec<&str> = PROBLEMS
        .iter()
        .filter(|(_, paths)| !paths.iter().any(|p| printed.contains(p)))
        .map(|(problem, _)| *problem)
        .collect();
    assert!(
        missing.is_empty(),
        "problems not reported: {missing:?}\noutput:\n{printed}"
    );
}

#[test]
fn check_on_a_missing_config_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let output = iron(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code(&output), 1, "{}", text(&output));
}

#[test]
fn check_reports_a_missing_secret_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(code(&ca_init(dir.path(), false)), 0);
    let config = ProxyConfig::bare()
        .allow("api.test", &[443])
        .credential("gh", "github-token-stub", "ghp_real", &["api.test"])
        .render(dir.path());
    std::fs::remove_file(dir.path().join("secret-gh")).unwrap();
    let path = dir.path().join("iron-proxy.toml");
    std::fs::write(&path, config).unwrap();
    let output = iron(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code(&output), 1, "{}", text(&output));
    assert!(
        text(&output).contains("credential[0].source"),
        "{}",
        text(&output)
    );
}
