//! Hot reload (SPEC §6): credential files (plain and Kubernetes-style
//! symlink swaps), bad reloads that change nothing, torn writes, SIGHUP and
//! `POST /v1/reload`, allowlist changes, content-based change detection and
//! in-flight requests. Every wait is on a reload signal (the `reloaded` log
//! line, `/readyz`, a metric), bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const STUB: &str = "github-token-stub";
const OLD: &str = "ghp_OLDsecret0123456789abcdefOLD";
const NEW: &str = "ghp_NEWsecret9876543210fedcbaNEW";
const ERR: &str = "x-iron-proxy-error";

/// Distinguishes requests in the upstream's record (`/echo?id=N`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Upstream, and a proxy allowing `api.test` with credential `gh`
/// (`STUB` → `OLD`) bound to it. Its CA exists before it starts, so no file
/// changes after startup but the test's own.
async fn setup(configure: impl FnOnce(ProxyConfig) -> ProxyConfig) -> (Upstream, ProxyHandle) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .credential("gh", STUB, OLD, &["api.test"]);
    let config = with_existing_ca(config);
    let proxy = start_proxy(configure(config)).await;
    (upstream, proxy)
}

/// `GET /echo` with `Authorization: Bearer <stub>` on `client`; returns what
/// the upstream received in `Authorization`.
async fn auth_seen_on(client: &mut Client, up: &Upstream, stub: &str) -> String {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst).to_string();
    let authority = format!("api.test:{}", up.port);
    let request = req("GET", &authority, &format!("/echo?id={id}"))
        .header("authorization", format!("Bearer {stub}"))
        .body(Default::default())
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let query = format!("id={id}");
    let mut seen = up.requests().into_iter().rev();
    let seen = seen.find(|s| s.query.as_deref() == Some(&query));
    let seen = seen.expect("request reached the upstream");
    seen.header("authorization").unwrap_or_default().to_string()
}

/// The same over a brand-new tunnel.
async fn auth_seen(proxy: &ProxyHandle, up: &Upstream, stub: &str) -> String {
    let mut client = h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    auth_seen_on(&mut client, up, stub).await
}

fn bearer(value: &str) -> String {
    format!("Bearer {value}")
}

// (a) ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotated_credential_file_is_used_by_the_first_request_after_reload() {
    let (up, proxy) = setup(|c| c).await;
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    // Tunnels opened before the rotation, kept open across it.
    let mut h1 = h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    let mut h2 = h2_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    assert_eq!(auth_seen_on(&mut h1, &up, STUB).await, bearer(OLD));
    assert_eq!(auth_seen_on(&mut h2, &up, STUB).await, bearer(OLD));
    let generation = proxy.generation().await;

    write_atomic(&proxy.secret_path("gh"), format!("{NEW}\n").as_bytes());
    let line = proxy.wait_reloaded(generation).await;
    assert_eq!(line["generation"].as_u64(), Some(generation + 1), "{line}");
    assert_eq!(line["ca_changed"], false, "{line}");

    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
    // Each request takes the live snapshot, in old tunnels too.
    assert_eq!(auth_seen_on(&mut h1, &up, STUB).await, bearer(NEW));
    assert_eq!(auth_seen_on(&mut h2, &up, STUB).await, bearer(NEW));
    assert_eq!(proxy.generation().await, generation + 1);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 1.0);
    assert_eq!(
        proxy.metric("iron_proxy_snapshot_generation").await,
        (generation + 1) as f64
    );
    assert!(!proxy.all_logs().contains(NEW) && !proxy.all_logs().contains(OLD));
}

// (b) ------------------------------------------------------------------

/// A Kubernetes Secret volume: `..<ts>/token`, `..data -> ..<ts>`,
/// `token -> ..data/token`.
struct SecretVolume {
    dir: tempfile::TempDir,
}

impl SecretVolume {
    fn new(first: &str) -> Self {
        let volume = SecretVolume {
            dir: tempfile::tempdir().unwrap(),
        };
        let root = volume.root();
        volume.write_version("..2026_01", first);
        std::os::unix::fs::symlink("..2026_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", root.join("token")).unwrap();
        volume
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn token(&self) -> PathBuf {
        self.root().join("token")
    }

    fn write_version(&self, version: &str, value: &str) {
        let dir = self.root().join(version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{value}\n")).unwrap();
    }

    /// The kubelet's update: new version dir, `..data_tmp`, rename over
    /// `..data`, remove the old version.
    fn rotate(&self, old_version: &str, version: &str, value: &str) {
        let root = self.root();
        self.write_version(version, value);
        std::os::unix::fs::symlink(version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join(old_version)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_secret_volume_symlink_swap_is_picked_up() {
    let volume = SecretVolume::new(OLD);
    let k8s = format!(
        "[[credential]]\nname = \"k8s\"\nstub = \"k8s-token-stub\"\nsource = {{ file = {} }}\nhosts = [\"api.test\"]\n",
        qs(volume.token().to_str().unwrap())
    );
    let (up, proxy) = setup(|c| c.extra(&k8s)).await;
    assert_eq!(auth_seen(&proxy, &up, "k8s-token-stub").await, bearer(OLD));

    volume.rotate("..2026_01", "..2026_02", NEW);
    proxy.wait_reloaded(1).await;
    assert_eq!(auth_seen(&proxy, &up, "k8s-token-stub").await, bearer(NEW));

    // A second update, back to a third value: the watch survived the swap.
    let third = "ghp_THIRDsecret000000000000THIRD";
    volume.rotate("..2026_02", "..2026_03", third);
    proxy.wait_reloaded(2).await;
    assert_eq!(
        auth_seen(&proxy, &up, "k8s-token-stub").await,
        bearer(third)
    );
    // The other credential was untouched throughout.
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
}

// (c) ------------------------------------------------------------------

/// Break something, check the reload is refused and changes nothing, fix
/// it, check the next reload succeeds. `named`: what the error must name.
async fn bad_reload_changes_nothing(
    break_it: impl FnOnce(&ProxyHandle),
    named: &[String],
    fix: impl FnOnce(&ProxyHandle),
    expect_after_fix: &str,
) {
    let (up, proxy) = setup(|c| c).await;
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(proxy.metric("iron_proxy_reload_failures_total").await, 0.0);

    break_it(&proxy);
    let line = proxy.wait_reload_failed(0).await;
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains("still serving generation 1"),
        "message: {line}"
    );
    let problems = line["problems"].as_str().unwrap_or_default();
    for name in named {
        assert!(
            problems.contains(name.as_str()),
            "{name:?} not named in {line}"
        );
    }
    assert_eq!(proxy.metric("iron_proxy_reload_failures_total").await, 1.0);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 0.0);

    // Nothing changed: same generation, same CA, the old value swapped in.
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    assert!(proxy.reloads().is_empty(), "{}", proxy.all_logs());

    fix(&proxy);
    let line = proxy.wait_reloaded(1).await;
    assert_eq!(line["generation"].as_u64(), Some(2), "{line}");
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(expect_after_fix));
    assert_eq!(proxy.metric("iron_proxy_reload_failures_total").await, 1.0);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 1.0);
    assert!(!proxy.all_logs().contains(OLD) && !proxy.all_logs().contains(NEW));
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Points credential `gh` at `<dir>/missing-secret`, which does not exist.
fn name_missing_secret(p: &ProxyHandle) {
    let old = qs(&path_text(&p.secret_path("gh")));
    let missing = qs(&path_text(&p.dir.path().join("missing-secret")));
    p.edit_config(|text| text.replace(&old, &missing));
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_credential_file_is_refused_and_the_fix_is_picked_up() {
    bad_reload_changes_nothing(
        |p| write_atomic(&p.secret_path("gh"), b""),
        &["credential[0]".into(), "secret-gh".into()],
        |p| write_atomic(&p.secret_path("gh"), format!("{NEW}\n").as_bytes()),
        NEW,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_config_is_refused_and_the_fix_is_picked_up() {
    let original = std::sync::Mutex::new(String::new());
    bad_reload_changes_nothing(
        |p| {
            *original.lock().unwrap() = std::fs::read_to_string(&p.config_path).unwrap();
            write_atomic(&p.config_path, b"[listen\nproxy = = \"not toml\n");
        },
        &["iron-proxy.toml".into()],
        |p| write_atomic(&p.config_path, original.lock().unwrap().as_bytes()),
        OLD,
    )
    .await;
}

/// Config now names a credential file that does not exist; creating that
/// file (what an operator does once the secret is mounted) is the fix.
#[tokio::test(flavor = "multi_thread")]
async fn config_naming_a_missing_file_is_refused_and_creating_the_file_fixes_it() {
    bad_reload_changes_nothing(
        |p| {
            name_missing_secret(p);
        },
        &["credential[0]".into(), "missing-secret".into()],
        |p| write_atomic(&p.dir.path().join("missing-secret"), NEW.as_bytes()),
        NEW,
    )
    .await;
}

/// Same break; the fix is putting the config back.
#[tokio::test(flavor = "multi_thread")]
async fn config_naming_a_missing_file_is_refused_and_reverting_the_config_fixes_it() {
    let original = std::sync::Mutex::new(String::new());
    bad_reload_changes_nothing(
        |p| {
            *original.lock().unwrap() = std::fs::read_to_string(&p.config_path).unwrap();
            name_missing_secret(p);
        },
        &["credential[0]".into(), "missing-secret".into()],
        |p| write_atomic(&p.config_path, original.lock().unwrap().as_bytes()),
        OLD,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_key_that_does_not_match_the_cert_is_refused_and_the_fix_is_picked_up() {
    let original = std::sync::Mutex::new(Vec::new());
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    bad_reload_changes_nothing(
        |p| {
            let key = p.dir.path().join("ca.key");
            *original.lock().unwrap() = std::fs::read(&key).unwrap();
            write_atomic(&key, other_key.as_bytes());
        },
        &["ca.key".into()],
        |p| write_atomic(&p.dir.path().join("ca.key"), &original.lock().unwrap()),
        OLD,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mismatched_ca_key_keeps_serving_leaves_of_the_old_ca() {
    let (up, proxy) = setup(|c| c.allow("other.test", &[1])).await;
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    write_atomic(&proxy.dir.path().join("ca.key"), other_key.as_bytes());
    proxy.wait_reload_failed(0).await;
    let ca = proxy.admin("GET", "/ca.pem", None, b"").await;
    assert_eq!(pem_certs(&ca.body), pem_certs(&proxy.ca_pem));
    // A host never seen before (no cached leaf) gets a leaf of the old CA.
    let tls = proxy.tls_to("other.test", 1, ALPN_H1).await;
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (ca_subject, _) = subject_and_issuer(&pem_certs(&proxy.ca_pem)[0]);
    assert_eq!(subject_and_issuer(leaf).1, ca_subject);
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
    assert_eq!(proxy.metric("iron_proxy_ca_generation").await, 1.0);
}

// (d) ------------------------------------------------------------------

/// A writer that truncates the file, writes half the token, pauses 30 ms,
/// then writes the rest: the proxy must never publish the half.
#[tokio::test(flavor = "multi_thread")]
async fn slow_non_atomic_writer_never_exposes_a_half_written_token() {
    let (up, proxy) = setup(|c| c.extra("[reload]\npoll_interval = \"50ms\"")).await;
    let up = Arc::new(up);
    let proxy = Arc::new(proxy);
    let tokens = [
        OLD,
        NEW,
        "ghp_ROUND2secret00000000000000R2",
        "ghp_ROUND3secret11111111111111R3",
        "ghp_ROUND4secret22222222222222R4",
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (up, proxy, stop) = (up.clone(), proxy.clone(), stop.clone());
        tokio::spawn(async move {
            let mut client = h2_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) && seen.len() < 20_000 {
                seen.push(auth_seen_on(&mut client, &up, STUB).await);
            }
            seen
        })
    };

    let secret = proxy.secret_path("gh");
    for (round, token) in tokens.iter().enumerate().skip(1) {
        let (path, token_owned) = (secret.clone(), token.to_string());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            let bytes = format!("{token_owned}\n").into_bytes();
            let half = bytes.len() / 2;
            file.write_all(&bytes[..half]).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
            file.write_all(&bytes[half..]).unwrap();
            file.flush().unwrap();
        });
        within("writer thread", async {
            while !writer.is_finished() {
                pause(5).await;
            }
        })
        .await;
        writer.join().unwrap();
        let line = proxy.wait_reloaded(round as u64).await;
        assert_eq!(
            line["generation"].as_u64(),
            Some(round as u64 + 1),
            "{line}"
        );
        assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(token));
    }

    stop.store(true, Ordering::SeqCst);
    let seen = within("load task", load).await.unwrap();
    assert!(
        seen.len() > 20,
        "only {} requests during the test",
        seen.len()
    );
    let allowed: Vec<String> = tokens.iter().map(|t| bearer(t)).collect();
    for value in &seen {
        assert!(
            allowed.contains(value),
            "upstream saw a torn or unknown value {value:?}"
        );
    }
    assert_eq!(seen.last().unwrap(), &bearer(tokens[4]));
}

/// A writer that never lets the file hold still for 100 ms (truncate, half,
/// 30 ms, the rest, 30 ms, again, for 2 s): no snapshot may be built from
/// what it shows half-way.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_never_holds_still_is_never_published_half_written() {
    let (up, proxy) = setup(|c| c).await;
    let path = proxy.secret_path("gh");
    let writer = split_writes(
        &path,
        format!("{OLD}\n").into_bytes(),
        30,
        30,
        Duration::from_secs(2),
    );
    let mut client = h2_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await;
    let mut seen = std::collections::BTreeMap::new();
    while !writer.is_finished() {
        let value = auth_seen_on(&mut client, &up, STUB).await;
        *seen.entry(value).or_insert(0) += 1;
        pause(5).await;
    }
    writer.join().unwrap();
    // Once it holds still again, whatever was published is settled.
    pause(500).await;
    *seen
        .entry(auth_seen_on(&mut client, &up, STUB).await)
        .or_insert(0) += 1;
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&bearer(OLD)],
        "values the upstream saw (count each): {seen:?}\nreloads: {:?}",
        proxy.reloads()
    );
}

// (e) ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sighup_publishes_a_new_generation() {
    let (_up, proxy) = setup(|c| c).await;
    assert_eq!(proxy.generation().await, 1);

    proxy.signal("HUP");
    let line = proxy.wait_reloaded(1).await;
    assert_eq!(line["generation"].as_u64(), Some(2), "{line}");
    assert_eq!(proxy.generation().await, 2);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 1.0);
    assert_eq!(proxy.metric("iron_proxy_snapshot_generation").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn post_v1_reload_returns_the_new_generation() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream).allow("api.test", &[upstream.port]);
    let (config, _token_dir) = with_admin_token(with_existing_ca(config), "adm1n-t0ken");
    let proxy = start_proxy(config).await;

    proxy.signal("HUP");
    proxy.wait_reloaded(1).await;
    let reply = proxy
        .admin("POST", "/v1/reload", Some("adm1n-t0ken"), b"")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), serde_json::json!({ "generation": 3 }));
    assert_eq!(proxy.generation().await, 3);
    proxy.wait_reloaded(2).await;

    // A reload that cannot succeed answers 422 with the problems.
    write_atomic(&proxy.config_path, b"not = [valid");
    let reply = proxy
        .admin("POST", "/v1/reload", Some("adm1n-t0ken"), b"")
        .await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert!(reply.body.contains("iron-proxy.toml"), "{reply:?}");
    assert_eq!(proxy.generation().await, 3);
    assert!(proxy.metric("iron_proxy_reload_failures_total").await >= 1.0);
}

// (f) ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_changes_apply_to_new_tunnels_and_to_requests_in_open_ones() {
    let (up, proxy) = setup(|c| c).await;
    let other = format!("other.test:{}", up.port);
    let (head, _) = connect_tunnel(proxy.proxy_addr, &other).await;
    assert_eq!(head.status, 403, "other.test is not allowed yet");

    let api_rule = "[[allow]]\nhost = \"api.test\"";
    let other_rule = format!(
        "[[allow]]\nhost = \"other.test\"\nports = [{}]\n\n",
        up.port
    );
    proxy.edit_config(|t| t.replace(api_rule, &format!("{other_rule}{api_rule}")));
    proxy.wait_reloaded(1).await;

    let mut client = h1_client(proxy.proxy_addr, "other.test", up.port, &proxy.ca_pem).await;
    let reply = client.send(get(&other, "/echo")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let before = up.requests().len();

    proxy.edit_config(|t| t.replace(&other_rule, ""));
    proxy.wait_reloaded(2).await;

    // The tunnel is still open, but its next request is refused.
    let reply = client.send(get(&other, "/echo")).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.header(ERR).is_some(), "{:?}", reply.headers);
    assert_eq!(
        up.requests().len(),
        before,
        "a refused request went upstream"
    );
    let (head, _) = connect_tunnel(proxy.proxy_addr, &other).await;
    assert_eq!(head.status, 403);
    // api.test is unaffected.
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
}

// (g) ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rewriting_identical_content_does_not_reload() {
    let (up, proxy) = setup(|c| c.extra("[reload]\npoll_interval = \"200ms\"")).await;
    let secret = proxy.secret_path("gh");
    let secret_bytes = std::fs::read(&secret).unwrap();
    let config_bytes = std::fs::read(&proxy.config_path).unwrap();
    let ca_bytes = std::fs::read(proxy.dir.path().join("ca.crt")).unwrap();

    // Six poll intervals of touches: renames, in-place rewrites, the CA.
    for i in 0..6 {
        if i % 2 == 0 {
            write_atomic(&secret, &secret_bytes);
            write_atomic(&proxy.config_path, &config_bytes);
        } else {
            std::fs::write(&secret, &secret_bytes).unwrap();
            std::fs::write(proxy.dir.path().join("ca.crt"), &ca_bytes).unwrap();
        }
        pause(200).await;
    }
    pause(400).await;
    assert_eq!(proxy.generation().await, 1, "{}", proxy.all_logs());
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 0.0);
    assert!(proxy.reloads().is_empty(), "{}", proxy.all_logs());

    // Control: a real change is seen, and it is the first reload.
    write_atomic(&secret, NEW.as_bytes());
    let line = proxy.wait_reloaded(1).await;
    assert_eq!(line["generation"].as_u64(), Some(2), "{line}");
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
}

/// Rewrite `path` in place with the same bytes, slowly: truncate, half,
/// 20 ms, the rest, 50 ms; over and over for `total`. No two instants
/// 100 ms apart both see it half-written (period 70 ms, half for 20 ms),
/// so it never holds another content across a settle window.
fn slow_identical_rewrites(path: &Path, total: Duration) -> std::thread::JoinHandle<usize> {
    let bytes = std::fs::read(path).unwrap();
    split_writes(path, bytes, 20, 50, total)
}

/// A non-atomic writer: truncate, write half of `bytes`, wait `gap_ms`,
/// write the rest, wait `pause_ms`; again and again for `total`. Returns
/// the number of rounds.
fn split_writes(
    path: &Path,
    bytes: Vec<u8>,
    gap_ms: u64,
    pause_ms: u64,
    total: Duration,
) -> std::thread::JoinHandle<usize> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        use std::io::Write;
        let deadline = std::time::Instant::now() + total;
        let mut rounds = 0;
        while std::time::Instant::now() < deadline {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.write_all(&bytes[..bytes.len() / 2]).unwrap();
            std::thread::sleep(Duration::from_millis(gap_ms));
            file.write_all(&bytes[bytes.len() / 2..]).unwrap();
            drop(file);
            std::thread::sleep(Duration::from_millis(pause_ms));
            rounds += 1;
        }
        rounds
    })
}

/// Content that is the same once the writer is done is no change, even if
/// the proxy glimpsed it half-written on the way.
#[tokio::test(flavor = "multi_thread")]
async fn slow_in_place_rewrites_of_identical_bytes_do_not_reload() {
    let (up, proxy) = setup(|c| c.extra("[reload]\npoll_interval = \"200ms\"")).await;
    let writer = slow_identical_rewrites(&proxy.secret_path("gh"), Duration::from_secs(2));
    within("rewriting thread", async {
        while !writer.is_finished() {
            pause(10).await;
        }
    })
    .await;
    assert!(writer.join().unwrap() >= 20);
    // Three poll intervals after the last write.
    pause(600).await;
    assert!(proxy.reloads().is_empty(), "{}", proxy.all_logs());
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 0.0);
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(OLD));
}

/// The dev CA (`generate_if_missing = true`) is written by the proxy
/// itself while it starts: that is not an operator's change and must not
/// count as one.
#[tokio::test(flavor = "multi_thread")]
async fn dev_ca_generated_at_startup_does_not_trigger_a_reload() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .extra("[reload]\npoll_interval = \"200ms\"");
    let proxy = start_proxy(config).await;
    assert!(
        proxy.all_logs().contains("generated a new development CA"),
        "{}",
        proxy.all_logs()
    );
    // Five poll intervals with nothing changing on disk.
    pause(1000).await;
    assert!(proxy.reloads().is_empty(), "{}", proxy.all_logs());
    assert_eq!(proxy.generation().await, 1);
    assert_eq!(proxy.metric("iron_proxy_reloads_total").await, 0.0);
}

// (h) ------------------------------------------------------------------

async fn streaming_request_survives_rotation(h2: bool) {
    let (up, proxy) = setup(|c| c).await;
    let authority = format!("api.test:{}", up.port);
    let mut client = if h2 {
        h2_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await
    } else {
        h1_client(proxy.proxy_addr, "api.test", up.port, &proxy.ca_pem).await
    };
    let request = req("GET", &authority, "/sse?n=5&delay_ms=200")
        .header("authorization", bearer(STUB))
        .body(Default::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let rest = sse_after_first_event(response.into_body()).await;

    write_atomic(&proxy.secret_path("gh"), NEW.as_bytes());
    proxy.wait_reloaded(1).await;
    assert!(
        !rest.is_finished(),
        "the stream ended before the reload; the test proves nothing"
    );

    let (text, error) = within("rest of the SSE stream", rest).await.unwrap();
    assert_eq!(error, None, "stream cut by the reload; got {text:?}");
    for i in 0..5 {
        assert!(text.contains(&format!("data: event {i}\n")), "{text:?}");
    }
    assert_eq!(up.last("/sse").header("authorization"), Some(&*bearer(OLD)));
    assert_eq!(auth_seen(&proxy, &up, STUB).await, bearer(NEW));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_h1_stream_finishes_across_a_credential_rotation() {
    streaming_request_survives_rotation(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_h2_stream_finishes_across_a_credential_rotation() {
    streaming_request_survives_rotation(true).await;
}
