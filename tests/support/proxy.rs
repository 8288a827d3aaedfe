//! The proxy under test: config builder and the binary as a subprocess.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::upstream::Upstream;

/// Host names the default config resolves to 127.0.0.1 (SPEC §4 `resolve`).
pub const TEST_HOSTS: &[&str] = &[
    "api.test",
    "other.test",
    "plain.test",
    "dead.test",
    "denied.test",
    "a.wild.test",
];

/// How long the proxy may take to print its `listening` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One `[[credential]]`; the real value goes to `<dir>/secret-<name>`.
#[derive(Clone, Debug)]
pub struct Credential {
    pub name: String,
    pub stub: String,
    pub real: String,
    pub hosts: Vec<String>,
    pub headers: Option<Vec<String>>,
    pub allow_plaintext: bool,
    pub require: bool,
}

/// Builder for a proxy config file (SPEC §4) bound to 127.0.0.1:0.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    trust: Vec<String>,
    resolve: Vec<(String, String)>,
    allows: Vec<(String, Vec<u16>)>,
    credentials: Vec<Credential>,
    upstream_lines: Vec<String>,
    extra: String,
    /// Environment variables set on the proxy child only.
    env: Vec<(String, String)>,
    /// Files written into the proxy's directory before it starts.
    files: Vec<(String, Vec<u8>)>,
    /// Run the proxy under `taskset -c 0` (one CPU allowed).
    one_cpu: bool,
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// Trusts `upstream`'s CA (if it has one) and resolves [`TEST_HOSTS`].
    pub fn new(upstream: &Upstream) -> Self {
        let config = Self::bare();
        if upstream.ca_pem.is_empty() {
            config
        } else {
            config.trust(&upstream.ca_pem)
        }
    }

    /// No upstream trust, no rules; [`TEST_HOSTS`] resolve to 127.0.0.1.
    pub fn bare() -> Self {
        let resolve = TEST_HOSTS
            .iter()
            .map(|h| (h.to_string(), "127.0.0.1".to_string()));
        ProxyConfig {
            resolve: resolve.collect(),
            ..Default::default()
        }
    }

    /// Add a PEM file to `upstream.extra_roots`.
    pub fn trust(mut self, pem: &str) -> Self {
        self.trust.push(pem.to_string());
        self
    }

    pub fn resolve(mut self, host: &str, ip: &str) -> Self {
        self.resolve.push((host.to_string(), ip.to_string()));
        self
    }

    pub fn allow(mut self, host: &str, ports: &[u16]) -> Self {
        self.allows.push((host.to_string(), ports.to_vec()));
        self
    }

    pub fn credential(mut self, name: &str, stub: &str, real: &str, hosts: &[&str]) -> Self {
        self.credentials.push(Credential {
            name: name.to_string(),
            stub: stub.to_string(),
            real: real.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            headers: None,
            allow_plaintext: false,
            require: false,
        });
        self
    }

    /// Set `headers` on the credential added last.
    pub fn headers(mut self, headers: &[&str]) -> Self {
        self.last_credential().headers = Some(headers.iter().map(|h| h.to_string()).collect());
        self
    }

    /// Set `allow_plaintext = true` on the credential added last.
    pub fn allow_plaintext(mut self) -> Self {
        self.last_credential().allow_plaintext = true;
        self
    }

    /// Set `require = true` on the credential added last.
    pub fn require(mut self) -> Self {
        self.last_credential().require = true;
        self
    }

    /// A raw `key = value` line for the `[upstream]` table.
    pub fn upstream_option(mut self, line: &str) -> Self {
        self.upstream_lines.push(line.to_string());
        self
    }

    /// Raw TOML appended at the end (new tables such as `[limits]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Run the proxy with a single CPU allowed (`taskset -c 0`).
    pub fn one_cpu(mut self) -> Self {
        self.one_cpu = true;
        self
    }

    /// Set an environment variable on the proxy process (not the test's).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Write `<dir>/<name>` before the proxy starts (e.g. `ca.crt`, so the
    /// dev CA is not generated at startup).
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.files.push((name.to_string(), bytes.to_vec()));
        self
    }

    fn last_credential(&mut self) -> &mut Credential {
        self.credentials.last_mut().expect("add a credential first")
    }

    /// Write secret and CA files into `dir` and return the config text.
    pub fn render(&self, dir: &Path) -> String {
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let mut out = String::new();
        out += "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n";
        out += &format!(
            "[ca]\ncert = {}\nkey = {}\ngenerate_if_missing = true\n\n",
            q(&dir.join("ca.crt")),
            q(&dir.join("ca.key")),
        );
        out += &self.render_upstream(dir);
        for (host, ports) in &self.allows {
            out += &format!("[[allow]]\nhost = {}\nports = {ports:?}\n\n", qs(host));
        }
        for credential in &self.credentials {
            out += &render_credential(credential, dir);
        }
        out += &self.extra;
        out
    }

    fn render_upstream(&self, dir: &Path) -> String {
        let mut roots = Vec::new();
        for (i, pem) in self.trust.iter().enumerate() {
            let path = dir.join(format!("upstream-ca-{i}.pem"));
            std::fs::write(&path, pem).unwrap();
            roots.push(q(&path));
        }
        let resolve = self
            .resolve
            .iter()
            .map(|(h, ip)| format!("{} = {}", qs(h), qs(ip)));
        let resolve: Vec<String> = resolve.collect();
        let mut out = format!(
            "[upstream]\nextra_roots = [{}]\nresolve = {{ {} }}\n",
            roots.join(", "),
            resolve.join(", ")
        );
        for line in &self.upstream_lines {
            out += line;
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

fn render_credential(c: &Credential, dir: &Path) -> String {
    let secret = dir.join(format!("secret-{}", c.name));
    std::fs::write(&secret, &c.real).unwrap();
    let hosts: Vec<String> = c.hosts.iter().map(|h| qs(h)).collect();
    let mut out = format!(
        "[[credential]]\nname = {}\nstub = {}\nsource = {{ file = {} }}\nhosts = [{}]\n",
        qs(&c.name),
        qs(&c.stub),
        q(&secret),
        hosts.join(", ")
    );
    if let Some(headers) = &c.headers {
        let headers: Vec<String> = headers.iter().map(|h| qs(h)).collect();
        out += &format!("headers = [{}]\n", headers.join(", "));
    }
    if c.allow_plaintext {
        out += "allow_plaintext = true\n";
    }
    if c.require {
        out += "require = true\n";
    }
    out.push('\n');
    out
}

/// A TOML basic string (JSON string syntax is a subset of it).
pub fn qs(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn q(path: &Path) -> String {
    qs(path.to_str().unwrap())
}

/// A running `iron-proxy run`; killed on drop.
pub struct ProxyHandle {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The proxy's CA certificate (`<dir>/ca.crt`), what agents trust.
    pub ca_pem: String,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub child: Child,
    /// Every stdout and stderr line, in arrival order.
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Write `config`, start the proxy and wait (bounded) until it listens.
pub async fn start_proxy(config: ProxyConfig) -> ProxyHandle {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("iron-proxy.toml");
    std::fs::write(&config_path, config.render(dir.path())).unwrap();
    let binary = env!("CARGO_BIN_EXE_iron-proxy");
    let mut command = if config.one_cpu {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0", binary]);
        taskset
    } else {
        Command::new(binary)
    };
    let mut child = command
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(["--log-format", "json"])
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iron-proxy");
    let logs = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stderr.take().unwrap(), logs.clone());
    collect_lines(child.stdout.take().unwrap(), logs.clone());
    let (proxy_addr, admin_addr) = wait_listening(&mut child, &logs, &config_path).await;
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt")).expect("proxy wrote ca.crt");
    ProxyHandle {
        proxy_addr,
        admin_addr,
        ca_pem,
        dir,
        config_path,
        child,
        logs,
    }
}

fn collect_lines(pipe: impl Read + Send + 'static, logs: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            logs.lock().unwrap().push(text);
            line.clear();
        }
    });
}

async fn wait_listening(
    child: &mut Child,
    logs: &Mutex<Vec<String>>,
    config_path: &Path,
) -> (SocketAddr, SocketAddr) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let found = logs.lock().unwrap().iter().find_map(|l| listening_addrs(l));
        if let Some(addrs) = found {
            return addrs;
        }
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let config = std::fs::read_to_string(config_path).unwrap_or_default();
            let logs = logs.lock().unwrap().join("\n");
            panic!("iron-proxy did not start (exit: {exited:?})\nconfig:\n{config}\nlogs:\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listening_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    let proxy = v["proxy"].as_str()?.parse().ok()?;
    let admin = v["admin"].as_str()?.parse().ok()?;
    Some((proxy, admin))
}

// === impl ProxyHandle ===

impl ProxyHandle {
    /// CONNECT through this proxy and complete TLS trusting its CA.
    pub async fn tls_to(
        &self,
        host: &str,
        port: u16,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        super::tls_through(self.proxy_addr, host, port, &self.ca_pem, alpn).await
    }

    pub fn all_logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Every log line that parses as a JSON object.
    pub fn json_logs(&self) -> Vec<Value> {
        let logs = self.logs.lock().unwrap();
        let parsed = logs
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok());
        parsed.filter(Value::is_object).collect()
    }

    /// Audit records (`"target":"audit"`), SPEC §5.9.
    pub fn audit_records(&self) -> Vec<Value> {
        let logs = self.json_logs().into_iter();
        logs.filter(|v| v["target"] == "audit").collect()
    }

    /// Wait (bounded by `timeout`) for a log line matching `pred`.
    pub async fn wait_for_log(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.logs.lock().unwrap().iter().find(|l| pred(l)).cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait (bounded) for an audit record matching `pred`; panics if none.
    pub async fn wait_for_audit(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.audit_records().into_iter().find(|r| pred(r)) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!("no matching audit record; logs:\n{}", self.all_logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Path of the file holding credential `name`'s real value.
    pub fn secret_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("secret-{name}"))
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The common case: one upstream and a proxy that allows only `api.test` on
/// its port.
pub async fn api_proxy(opts: super::UpstreamOpts) -> (super::Upstream, ProxyHandle) {
    let upstream = super::start_upstream(opts).await;
    let proxy = start_proxy(ProxyConfig::new(&upstream).allow("api.test", &[upstream.port])).await;
    (upstream, proxy)
}
