//! A smart-HTTP git server over HTTPS on 127.0.0.1:0 that runs
//! `git http-backend` as a CGI per request, in front of a bare repository
//! with one commit. Every request must carry the real PAT as
//! `Basic base64(x-access-token:<pat>)`; anything else gets a 401 with
//! `WWW-Authenticate: Basic realm="git"`, which is what makes git ask its
//! credential helper. Records the Authorization header of every request.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::{TestCa, ALPN_BOTH, UPSTREAM_NAMES};

/// The repository's path under the server: `https://host:port/repo.git`.
pub const REPO_PATH: &str = "/repo.git";
/// The file the one commit adds, and its content.
pub const REPO_FILE: &str = "README.md";
pub const REPO_CONTENT: &str = "hello from the test git server\n";

/// One request as the git server received it.
#[derive(Clone, Debug)]
pub struct GitSeen {
    pub method: String,
    /// Path and query, e.g. `/repo.git/info/refs?service=git-upload-pack`.
    pub target: String,
    pub authorization: Option<String>,
    pub status: u16,
}

pub struct GitServer {
    pub addr: SocketAddr,
    pub port: u16,
    /// The server's own CA, for the proxy's `extra_roots`.
    pub ca_pem: String,
    /// The exact Authorization value accepted.
    pub expected_authorization: String,
    pub seen: Arc<Mutex<Vec<GitSeen>>>,
    /// Holds the bare repository; removed on drop.
    pub root: TempDir,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct State {
    project_root: PathBuf,
    expected: String,
    seen: Arc<Mutex<Vec<GitSeen>>>,
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{password}")))
}

/// A `git` command isolated from the host's configuration.
pub fn git_command(home: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_CONFIG_GLOBAL");
    command
}

/// Whether `git` (and `git http-backend`) can run here.
pub fn git_installed() -> bool {
    let ok = Command::new("git")
        .args(["http-backend", "-h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        // `-h` exits 129 after printing usage; not-found is an Err.
        .is_ok_and(|s| s.code().is_some());
    let version = Command::new("git").arg("--version").output();
    if ok && version.is_ok_and(|o| o.status.success()) {
        return true;
    }
    eprintln!("skipping: git (with http-backend) is not installed");
    false
}

fn run_git(home: &Path, cwd: &Path, args: &[&str]) {
    let out = git_command(home)
        .current_dir(cwd)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.test"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Create `<root>/repo.git` (bare) holding one commit on `main`.
fn make_repo(root: &Path) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    run_git(root, &work, &["init", "-q"]);
    std::fs::write(work.join(REPO_FILE), REPO_CONTENT).unwrap();
    run_git(root, &work, &["add", REPO_FILE]);
    run_git(root, &work, &["commit", "-q", "-m", "initial commit"]);
    let bare = root.join(REPO_PATH.trim_start_matches('/'));
    let bare = bare.to_str().unwrap();
    run_git(root, root, &["clone", "-q", "--bare", "work", bare]);
}

/// Start the server; it accepts only `Basic base64(x-access-token:<real_pat>)`.
pub async fn start_git_server(real_pat: &str) -> GitServer {
    let root = tempfile::tempdir().unwrap();
    make_repo(root.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = TestCa::new("iron-proxy test git server CA");
    let acceptor = TlsAcceptor::from(ca.server_config(UPSTREAM_NAMES, ALPN_BOTH));
    let state = State {
        project_root: root.path().to_path_buf(),
        expected: basic("x-access-token", real_pat),
        seen: Arc::default(),
    };
    let accept_state = state.clone();
    let stop_tx = super::serve_https(listener, acceptor, move |req| {
        handle(req, accept_state.clone())
    });
    GitServer {
        addr,
        port: addr.port(),
        ca_pem: ca.cert_pem,
        expected_authorization: state.expected,
        seen: state.seen,
        root,
        stop: Some(stop_tx),
    }
}

// === impl GitServer ===

impl GitServer {
    pub fn requests(&self) -> Vec<GitSeen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(req: Request<Incoming>, state: State) -> Result<Reply, Infallible> {
    let header = |name: &str| {
        let value = req.headers().get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let authorization = header("authorization");
    let mut seen = GitSeen {
        method: req.method().to_string(),
        target: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .into(),
        authorization: authorization.clone(),
        status: 0,
    };
    let reply = if authorization.as_deref() != Some(state.expected.as_str()) {
        let mut reply = Response::new(Full::new(Bytes::from_static(b"authentication required\n")));
        *reply.status_mut() = StatusCode::UNAUTHORIZED;
        let challenge = "Basic realm=\"git\"".parse().unwrap();
        reply.headers_mut().insert("www-authenticate", challenge);
        reply
    } else {
        let env = cgi_env(&req, &state.project_root);
        let body = req.into_body().collect().await;
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        let run = move || http_backend(env, body);
        tokio::task::spawn_blocking(run).await.unwrap()
    };
    seen.status = reply.status().as_u16();
    state.seen.lock().unwrap().push(seen);
    Ok(reply)
}

fn cgi_env(req: &Request<Incoming>, root: &Path) -> Vec<(String, String)> {
    let header = |name: &str| {
        let value = req.headers().get(name)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let mut env = vec![
        ("GIT_PROJECT_ROOT", root.display().to_string()),
        ("GIT_HTTP_EXPORT_ALL", "1".into()),
        ("PATH_INFO", req.uri().path().to_string()),
        ("REQUEST_METHOD", req.method().to_string()),
        ("QUERY_STRING", req.uri().query().unwrap_or("").to_string()),
        ("CONTENT_TYPE", header("content-type").unwrap_or_default()),
        ("REMOTE_USER", "x-access-token".into()),
        ("REMOTE_ADDR", "127.0.0.1".into()),
    ];
    for (name, var) in [
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
    ] {
        if let Some(value) = header(name) {
            env.push((var, value));
        }
    }
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v));
    env.collect()
}

/// Run `git http-backend` with the request body on stdin; turn its CGI
/// output (`Status:` and headers, blank line, body) into a response.
fn http_backend(env: Vec<(String, String)>, body: Bytes) -> Reply {
    let root = env.iter().find(|(k, _)| k == "GIT_PROJECT_ROOT");
    let home = PathBuf::from(&root.unwrap().1);
    let mut child = git_command(&home)
        .arg("http-backend")
        .envs(env)
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let output = child.wait_with_output().expect("git http-backend output");
    writer.join().unwrap();
    parse_cgi(&output.stdout).unwrap_or_else(|| {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let mut reply = Response::new(Full::new(Bytes::from(stderr)));
        *reply.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        reply
    })
}

fn parse_cgi(out: &[u8]) -> Option<Reply> {
    let (head_len, sep) = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| find(out, sep).map(|i| (i, sep.len())))
        .min()?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let mut reply = Response::new(Full::new(Bytes::copy_from_slice(&out[head_len + sep..])));
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next()?.parse().ok()?;
            *reply.status_mut() = StatusCode::from_u16(code).ok()?;
        } else {
            let name: hyper::header::HeaderName = name.trim().parse().ok()?;
            reply.headers_mut().append(name, value.parse().ok()?);
        }
    }
    Some(reply)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
