//! The admin port (SPEC §7): health, readiness, metrics, the CA bundle, the
//! bearer-protected `/v1` API, and `iron-proxy credential set` against a
//! running proxy. Real values never appear in any answer, metric or log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use serde_json::Value;
use support::*;

const STUB: &str = "github-token-stub";
const OLD: &str = "ghp_OLDsecret0123456789abcdefOLD";
const NEW: &str = "ghp_NEWsecret9876543210fedcbaNEW";
const TOKEN: &str = "adm-T0ken-42";
const ENV_VAR: &str = "IRON_PROXY_TEST_ENV_CREDENTIAL";
const ENV_STUB: &str = "env-token-stub";
const ENV_REAL: &str = "env_REALsecret_555555555555555";

/// Upstream; proxy with `api.test` allowed, credential `gh` (file,
/// `STUB` → `OLD`) and `envcred` (env var set on the proxy only).
/// `token`: configure `[admin] token_file` with it.
async fn setup(token: Option<&str>) -> (Upstream, ProxyHandle, Option<tempfile::TempDir>) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .credential("gh", STUB, OLD, &["api.test"])
        .env(ENV_VAR, ENV_REAL)
        .extra(&format!(
            "[[credential]]\nname = \"envcred\"\nstub = \"{ENV_STUB}\"\nsource = {{ env = \"{ENV_VAR}\" }}\nhosts = [\"api.test\"]\n"
        ));
    let config = with_existing_ca(config);
    let (config, token_dir) = match token {
        Some(t) => {
            let (c, d) = with_admin_token(config, t);
            (c, Some(d))
        }
        None => (config, None),
    };
    (upstream, start_proxy(config).await, token_dir)
}

/// What the upstream receives in `Authorization` for `Bearer <stub>` sent
/// over a new tunnel.
async fn auth_seen(proxy: &ProxyHandle, up: &Upstream, stub: &str) -> String {
    let mut client = h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    let authority = format!("api.test:{}", up.port);
    let request = req("GET", &authority, "/echo")
        .header("authorization", format!("Bearer {stub}"))
        .body(Default::default())
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = up.last("/echo");
    seen.header("authorization").unwrap_or_default().to_string()
}

/// A refused change left `gh` as it was: its file, what the upstream sees,
/// and the snapshot generation.
async fn assert_gh_unchanged(proxy: &ProxyHandle, up: &Upstream) {
    assert_eq!(
        std::fs::read_to_string(proxy.secret_path("gh")).unwrap(),
        OLD
    );
    assert_eq!(auth_seen(proxy, up, STUB).await, bearer(OLD));
    assert_eq!(proxy.generation().await, 1);
}

fn bearer(value: &str) -> String {
    format!("Bearer {value}")
}

fn prefix(value: &str) -> String {
    sha256_hex(value.as_bytes())[..12].to_string()
}

fn changed_at(item: &Value) -> SystemTime {
    let text = item["changed_at"].as_str().unwrap();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("changed_at {text:?}: {e}"))
}

/// Checks one `/v1/credentials` item's shape; returns it.
fn check_item<'a>(item: &'a Value, name: &str) -> &'a Value {
    let keys: Vec<&str> = item
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        [
            "changed_at",
            "hosts",
            "name",
            "sha256_prefix",
            "source",
            "stub"
        ],
        "{item}"
    );
    assert_eq!(item["name"], name, "{item}");
    let sha = item["sha256_prefix"].as_str().unwrap();
    assert!(
        sha.len() == 12
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{item}"
    );
    changed_at(item);
    item
}

fn item<'a>(list: &'a Value, name: &str) -> &'a Value {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    let found = items.iter().find(|i| i["name"] == name);
    check_item(found.unwrap_or_else(|| panic!("no {name} in {list}")), name)
}

fn no_secret_in(text: &str) {
    for value in [OLD, NEW, ENV_REAL, TOKEN] {
        assert!(!text.contains(value), "a secret leaked: {text}");
    }
}

// --- open routes ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn open_routes_answer_and_v1_is_404_without_a_token_file() {
    let (up, proxy, _) = setup(None).await;

    let health = proxy.admin("GET", "/healthz", None, b"").await;
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    let ready = proxy.admin("GET", "/readyz", None, b"").await;
    assert_eq!(
        (ready.status, ready.body.trim()),
        (200, "ready generation 1")
    );
    let metrics = proxy.admin("GET", "/metrics", None, b"").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("iron_proxy_snapshot_generation 1"));
    let ca = proxy.admin("GET", "/ca.pem", None, b"").await;
    assert_eq!(ca.status, 200);
    assert_eq!(pem_certs(&ca.body), pem_certs(&proxy.ca_pem));

    for token in [None, Some(TOKEN), Some("")] {
        for (method, path) in [
            ("GET", "/v1/credentials"),
            ("POST", "/v1/reload"),
            ("PUT", "/v1/credentials/gh"),
        ] {
            let reply = proxy.admin(method, path, token, NEW.as_bytes()).await;
            assert_eq!(reply.status, 404, "{method} {path} ({token:?}): {reply:?}");
        }
    }
    // The refused PUT changed nothing.
    assert_gh_unchanged(&proxy, &up).await;
}

// --- bearer token ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn v1_routes_need_the_bearer_token() {
    let (up, proxy, _dir) = setup(Some(TOKEN)).await;
    let routes = [
        ("GET", "/v1/credentials"),
        ("POST", "/v1/reload"),
        ("PUT", "/v1/credentials/gh"),
    ];
    let wrong = ["", "adm-T0ken-4", "adm-T0ken-420", "ADM-T0KEN-42", "x"];
    for (method, path) in routes {
        let mut replies = vec![proxy.admin(method, path, None, NEW.as_bytes()).await];
        for token in wrong {
            replies.push(proxy.admin(method, path, Some(token), NEW.as_bytes()).await);
        }
        for reply in replies {
            assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer"),
                "{reply:?}"
            );
            no_secret_in(&reply.body);
        }
    }
    // Another scheme carrying the right token is not a bearer token.
    let basic = admin_raw(&proxy, "GET", "/v1/credentials", &format!("Basic {TOKEN}")).await;
    assert_eq!(basic.status, 401, "{basic:?}");

    // Nothing changed.
    assert_gh_unchanged(&proxy, &up).await;

    // The right token (the file has a trailing newline: ignored).
    let list = proxy
        .admin("GET", "/v1/credentials", Some(TOKEN), b"")
        .await;
    assert_eq!(list.status, 200, "{list:?}");
    let reload = proxy.admin("POST", "/v1/reload", Some(TOKEN), b"").await;
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(reload.json(), serde_json::json!({ "generation": 2 }));
    let put = proxy
        .admin("PUT", "/v1/credentials/gh", Some(TOKEN), NEW.as_bytes())
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    no_secret_in(&proxy.all_logs());
}

/// A request with a raw `Authorization` value.
async fn admin_raw(proxy: &ProxyHandle, method: &str, path: &str, auth: &str) -> AdminReply {
    let text = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (head, body) = parse_response(&raw_request(proxy.admin_addr, text.as_bytes()).await);
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in &head.headers {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        headers.append(name, value.parse().unwrap());
    }
    AdminReply {
        status: head.status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_file_is_reloaded() {
    let (_up, proxy, dir) = setup(Some(TOKEN)).await;
    let token_file = dir.as_ref().unwrap().path().join("admin-token");
    write_atomic(&token_file, b"second-T0ken\n");
    proxy.wait_reloaded(1).await;
    let old = proxy
        .admin("GET", "/v1/credentials", Some(TOKEN), b"")
        .await;
    assert_eq!(old.status, 401, "{old:?}");
    let new = proxy
        .admin("GET", "/v1/credentials", Some("second-T0ken"), b"")
        .await;
    assert_eq!(new.status, 200, "{new:?}");
}

// --- GET /v1/credentials -----------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_listed_without_their_values() {
    let (_up, proxy, _dir) = setup(Some(TOKEN)).await;
    let reply = proxy
        .admin("GET", "/v1/credentials", Some(TOKEN), b"")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{reply:?}"
    );
    no_secret_in(&reply.body);
    let list = reply.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    let gh = item(&list, "gh");
    assert_eq!(gh["stub"], STUB);
    assert_eq!(gh["hosts"], serde_json::json!(["api.test"]));
    let path = proxy.secret_path("gh");
    assert_eq!(
        gh["source"],
        serde_json::json!({ "file": path.to_str().unwrap() })
    );
    assert_eq!(gh["sha256_prefix"], prefix(OLD));
    let age = SystemTime::now().duration_since(changed_at(gh)).unwrap();
    assert!(age.as_secs() < 60, "changed_at is not recent: {gh}");

    let env = item(&list, "envcred");
    assert_eq!(env["stub"], ENV_STUB);
    assert_eq!(env["source"], serde_json::json!({ "env": ENV_VAR }));
    assert_eq!(env["sha256_prefix"], prefix(ENV_REAL));
}

// --- PUT /v1/credentials/{name} -------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn put_to_a_file_source_swaps_and_writes_the_file_atomically() {
    let (up, proxy, _dir) = setup(Some(TOKEN)).await;
    let list = proxy
        .admin("GET", "/v1/credentials", Some(TOKEN), b"")
        .await;
    let before = changed_at(item(&list.json(), "gh"));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));

    let body = format!("{NEW}\n");
    let reply = proxy
        .admin("PUT", "/v1/credentials/gh", Some(TOKEN), body.as_bytes())
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    no_secret_in(&reply.body);
    let updated = reply.json();
    let updated = check_item(&updated, "gh");
    assert_eq!(updated["sha256_prefix"], prefix(NEW), "{updated}");
    assert_eq!(updated["stub"], STUB);
    assert_eq!(updated["hosts"], serde_json::json!(["api.test"]));
    assert!(
        changed_at(updated) > before,
        "changed_at did not move: {updated}"
    );

    // In memory: the very next request.
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
    // On disk: value + "\n", mode 0600, no temp file left behind.
    let path = proxy.secret_path("gh");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{NEW}\n"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let names: Vec<String> = std::fs::read_dir(proxy.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "leftover temp file: {names:?}"
    );
    // The list agrees.
    let list = proxy
        .admin("GET", "/v1/credentials", Some(TOKEN), b"")
        .await;
    let listed = list.json();
    assert_eq!(item(&listed, "gh")["sha256_prefix"], prefix(NEW));
    assert_eq!(item(&listed, "gh")["changed_at"], updated["changed_at"]);

    // The file watcher sees the file it was told about: no flip back later.
    pause(300).await;
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
    no_secret_in(&proxy.all_logs());
    no_secret_in(&proxy.metrics_text().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_to_an_env_source_is_409_and_changes_nothing() {
    let (up, proxy, _dir) = setup(Some(TOKEN)).await;
    let reply = proxy
        .admin(
            "PUT",
            "/v1/credentials/envcred",
            Some(TOKEN),
            NEW.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.body.contains(ENV_VAR), "no explanation: {reply:?}");
    no_secret_in(&reply.body);
    assert_eq!(auth_seen(&proxy, &up, ENV_STUB).await, bearer(ENV_REAL));
    assert_eq!(proxy.generation().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_unknown_is_404_and_invalid_values_are_400() {
    let (up, proxy, _dir) = setup(Some(TOKEN)).await;
    let reply = proxy
        .admin("PUT", "/v1/credentials/nope", Some(TOKEN), NEW.as_bytes())
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");

    let invalid: [&[u8]; 7] = [
        b"",
        b"\n",
        b"has space",
        b"two\nlines",
        b"ctl\x01char",
        b"tab\there",
        b"new\n\n",
    ];
    for value in invalid {
        let reply = proxy
            .admin("PUT", "/v1/credentials/gh", Some(TOKEN), value)
            .await;
        assert_eq!(reply.status, 400, "{value:?}: {reply:?}");
    }
    assert_gh_unchanged(&proxy, &up).await;
}

// --- /metrics --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn metrics_cover_every_family_with_sane_values_and_no_secret() {
    let (up, proxy, _dir) = setup(Some(TOKEN)).await;
    // Two tunnels to one host (a mint, then a cache hit), swaps, a refusal.
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    let (head, _) = connect_tunnel(proxy.proxy_addr, &format!("denied.test:{}", up.port)).await;
    assert_eq!(head.status, 403);
    // One tunnel held open.
    let mut open = h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    let reply = open
        .send(get(&format!("api.test:{}", up.port), "/echo"))
        .await;
    assert_eq!(reply.status, 200);

    let text = proxy.metrics_text().await;
    let value = |series: &str| {
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert!(value(r#"iron_proxy_requests_total{decision="allow",status="200"}"#) >= 3.0);
    assert!(value(r#"iron_proxy_requests_total{decision="deny",status="403"}"#) >= 1.0);
    assert!(value("iron_proxy_upstream_latency_seconds_count") >= 3.0);
    assert!(value("iron_proxy_upstream_latency_seconds_sum") > 0.0);
    assert!(value(r#"iron_proxy_upstream_latency_seconds_bucket{le="+Inf"}"#) >= 3.0);
    assert_eq!(value(r#"iron_proxy_swaps_total{credential="gh"}"#), 2.0);
    assert_eq!(value("iron_proxy_reloads_total"), 0.0);
    assert_eq!(value("iron_proxy_reload_failures_total"), 0.0);
    assert_eq!(value("iron_proxy_snapshot_generation"), 1.0);
    assert_eq!(value("iron_proxy_ca_generation"), 1.0);
    assert!(value("iron_proxy_leaf_cache_misses_total") >= 1.0);
    assert!(value("iron_proxy_leaf_cache_hits_total") >= 1.0);
    let mints = value("iron_proxy_leaf_mints_total");
    assert!(mints >= 1.0 && mints <= value("iron_proxy_leaf_cache_misses_total"));
    assert!(value("iron_proxy_open_connections") >= 1.0);
    assert_eq!(value("iron_proxy_refused_connections_total"), 0.0);
    for family in [
        "iron_proxy_requests_total counter",
        "iron_proxy_upstream_latency_seconds histogram",
        "iron_proxy_swaps_total counter",
        "iron_proxy_snapshot_generation gauge",
        "iron_proxy_open_connections gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}")),
            "{family}: {text}"
        );
    }
    no_secret_in(&text);

    // docs/metrics.md names exactly the families a live proxy exposes.
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let documented: std::collections::BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("iron_proxy_"))
        .collect();
    let live: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(
        documented, live,
        "docs/metrics.md and a live /metrics disagree"
    );

    // Rotations move the reload counters, and still no value shows.
    let put = proxy
        .admin("PUT", "/v1/credentials/gh", Some(TOKEN), NEW.as_bytes())
        .await;
    assert_eq!(put.status, 200);
    write_atomic(&proxy.secret_path("gh"), b"");
    proxy.wait_reload_failed(0).await;
    let text = proxy.metrics_text().await;
    assert_eq!(metric_value(&text, "iron_proxy_reloads_total"), Some(1.0));
    assert_eq!(
        metric_value(&text, "iron_proxy_reload_failures_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "iron_proxy_snapshot_generation"),
        Some(2.0)
    );
    no_secret_in(&text);
    drop(open);
    eventually!(
        proxy.metric("iron_proxy_open_connections").await == 0.0,
        "open_connections does not drop back to 0"
    );
}

// --- iron-proxy credential set ------------------------------------------------

fn text(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    format!("{stdout}{}", String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_credential_set_from_a_file_and_from_stdin() {
    let (up, proxy, dir) = setup(Some(TOKEN)).await;
    let token_file = dir.as_ref().unwrap().path().join("admin-token");
    let admin = format!("http://{}", proxy.admin_addr);
    let value_file = dir.as_ref().unwrap().path().join("new-value");
    std::fs::write(&value_file, format!("{NEW}\n")).unwrap();

    let out = run_cli(
        &[
            "credential",
            "set",
            "gh",
            "--value-file",
            value_file.to_str().unwrap(),
            "--admin",
            &admin,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "credential gh updated: sha256 {}… (changed_at ",
        prefix(NEW)
    );
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(stdout.trim_end().ends_with(')'), "{stdout}");
    no_secret_in(&text(&out));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
    assert_eq!(
        std::fs::read_to_string(proxy.secret_path("gh")).unwrap(),
        format!("{NEW}\n")
    );

    // From stdin; the admin token taken from the config's [admin] token_file.
    let third = "ghp_THIRDsecret000000000000THIRD";
    let out = run_cli(
        &[
            "credential",
            "set",
            "gh",
            "--stdin",
            "--admin",
            &admin,
            "--config",
            proxy.config_path.to_str().unwrap(),
        ],
        Some(format!("{third}\n").as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("credential gh updated: sha256 {}…", prefix(third))),
        "{stdout}"
    );
    assert!(!text(&out).contains(third), "value printed: {}", text(&out));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(third));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_credential_set_refusals_and_usage_errors() {
    let (up, proxy, dir) = setup(Some(TOKEN)).await;
    let dir = dir.unwrap();
    let admin = format!("http://{}", proxy.admin_addr);
    let value_file = dir.path().join("new-value");
    std::fs::write(&value_file, NEW).unwrap();
    let bad_token = dir.path().join("bad-token");
    std::fs::write(&bad_token, "not-the-token\n").unwrap();
    let good_token = dir.path().join("admin-token");
    let value = value_file.to_str().unwrap();
    let set = |name: &str, token: &std::path::Path| {
        let token = token.to_str().unwrap();
        let args = ["credential", "set", name, "--value-file", value];
        let args = [&args[..], &["--admin", &admin, "--token-file", token]].concat();
        run_cli(&args, None)
    };

    // Wrong token: exit 1 with the server's answer; nothing changed.
    let out = set("gh", &bad_token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("401"), "{}", text(&out));
    no_secret_in(&text(&out));
    // Unknown name: 404 relayed; env source: the 409 explanation relayed.
    let out = set("nope", &good_token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));
    let out = set("envcred", &good_token);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(ENV_VAR), "{}", text(&out));
    no_secret_in(&text(&out));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));

    // Usage errors: neither or both value sources.
    let token = good_token.to_str().unwrap();
    let base = [
        "credential",
        "set",
        "gh",
        "--admin",
        &admin,
        "--token-file",
        token,
    ];
    let out = run_cli(&base, None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let mut both = base.to_vec();
    both.extend(["--value-file", value, "--stdin"]);
    let out = run_cli(&both, Some(NEW.as_bytes()));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_gh_unchanged(&proxy, &up).await;
}

// --- /readyz while draining -------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_while_draining_and_healthz_stays_200() {
    use http_body_util::BodyExt;
    let (up, proxy, _dir) = setup(None).await;
    let authority = format!("api.test:{}", up.port);
    let mut client = h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    let response = client
        .request(get(&authority, "/sse?n=5&delay_ms=300"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = within("first SSE event", body.frame()).await;
    assert!(first.is_some_and(|f| f.is_ok()), "no first event");

    proxy.signal("TERM");
    eventually!(
        proxy.admin("GET", "/readyz", None, b"").await.status == 503,
        "/readyz does not turn 503 after SIGTERM"
    );
    let ready = proxy.admin("GET", "/readyz", None, b"").await;
    assert_eq!(ready.body.trim(), "draining", "{ready:?}");
    let health = proxy.admin("GET", "/healthz", None, b"").await;
    assert_eq!(health.status, 200, "{health:?}");

    // The stream still finishes (the drain waits for it).
    let mut text = String::new();
    while let Some(frame) = within("next SSE frame", body.frame()).await {
        let data = frame.expect("stream cut during the drain").into_data();
        text.push_str(&String::from_utf8_lossy(&data.unwrap_or_default()));
    }
    assert!(text.contains("data: event 4\n"), "{text:?}");
}
