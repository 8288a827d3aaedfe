//! The proxies under test as child processes (iron-proxy, and mitmdump when
//! it is on PATH, and a plain CONNECT relay as a floor), pinned with
//! `taskset`, plus /proc readings.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use super::upstream::{Upstream, REAL, STUB};

pub struct Proxy {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub pid: u32,
    /// The first WARN/ERROR lines seen on the child's output, and their count.
    pub problems: Arc<Mutex<(usize, Vec<String>)>>,
    child: Child,
    _dir: TempDir,
}

impl Proxy {
    fn new(child: Child, problems: Problems, dir: TempDir) -> Self {
        Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_pem: String::new(),
            pid: child.id(),
            problems,
            child,
            _dir: dir,
        }
    }
}

/// Stop the child and what it started (a wrapper's own child): SIGTERM,
/// up to 5 s to exit (so a profiler can write its data), then SIGKILL.
impl Drop for Proxy {
    fn drop(&mut self) {
        let mut pids = descendants(self.child.id());
        pids.push(self.child.id());
        // The program itself first: a wrapper (profiler) then finishes.
        signal_pids("-TERM", &[self.pid]);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_pids("-TERM", &alive(&pids));
        for _ in 0..20 {
            let _ = self.child.try_wait(); // reap the direct child
            if alive(&pids).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_pids("-KILL", &alive(&pids));
        let _ = self.child.wait();
    }
}

fn signal_pids(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut kill = Command::new("kill");
    kill.arg(sig).args(pids.iter().map(u32::to_string));
    let _ = kill.stderr(Stdio::null()).status();
}

/// The process running `program` at or under `pid` (past wrappers).
fn find_program(pid: u32, program: &Path) -> u32 {
    let runs = |p: &u32| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == program);
    std::iter::once(pid)
        .chain(descendants(pid))
        .find(runs)
        .unwrap_or(pid)
}

/// Those of `pids` that still run (zombies count as gone).
fn alive(pids: &[u32]) -> Vec<u32> {
    let running = |p: &&u32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        !stat.is_empty()
            && !stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    };
    pids.iter().filter(running).copied().collect()
}

/// Processes under `pid` (from the parent field of /proc/*/stat).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok());
        parent.extend(ppid.map(|pp: u32| (p, pp)));
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, _) in parent.iter().filter(|(_, pp)| *pp == p) {
            out.push(c);
            frontier.push(c);
        }
    }
    out
}

/// `taskset -c <cpu> [wrapper...] program` when pinning, else
/// `[wrapper...] program`; `wrapper` comes from `IRON_PROXY_BENCH_WRAP`
/// (e.g. `heaptrack -o /tmp/hp`), for iron-proxy only; CPU and RSS are then
/// read from the proxy process under the wrapper (RSS includes the
/// wrapper's own overhead if it lives in-process, as heaptrack's does).
fn pinned(program: &Path, cpu: Option<usize>, wrap: bool) -> Command {
    let wrapper = std::env::var("IRON_PROXY_BENCH_WRAP").ok().filter(|_| wrap);
    let mut argv: Vec<String> = match cpu {
        Some(cpu) => vec!["taskset".into(), "-c".into(), cpu.to_string()],
        None => Vec::new(),
    };
    argv.extend(
        wrapper
            .iter()
            .flat_map(|w| w.split_whitespace().map(String::from)),
    );
    argv.push(program.display().to_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

type Problems = Arc<Mutex<(usize, Vec<String>)>>;

/// Drain `out` on a thread for the life of the child, counting problem
/// lines; the first line from which `ready` extracts an address is sent.
fn drain(
    out: impl Read + Send + 'static,
    ready: fn(&str) -> Option<SocketAddr>,
) -> (mpsc::Receiver<SocketAddr>, Problems) {
    let problems = Arc::new(Mutex::new((0usize, Vec::new())));
    let (tx, rx) = mpsc::channel();
    let seen = problems.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, out);
        let mut line = Vec::with_capacity(1024);
        let mut tx = Some(tx);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(addr) = tx.as_ref().and_then(|_| ready(&text)) {
                let _ = tx.take().map(|tx| tx.send(addr));
            }
            let problem = ["\"WARN\"", "\"ERROR\"", "error:", "Error", "Traceback"]
                .iter()
                .any(|p| text.contains(p));
            if problem {
                let mut p = seen.lock().unwrap();
                p.0 += 1;
                if p.1.len() < 5 {
                    p.1.push(text.trim_end().chars().take(400).collect());
                }
            }
        }
    });
    (rx, problems)
}

fn ready(rx: mpsc::Receiver<SocketAddr>, what: &str) -> SocketAddr {
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not report its listening address"))
}

/// The bench binary itself as a plain CONNECT relay (no interception): the
/// floor any proxy on the other core pays for two extra hops.
pub fn relay(upstream: &Upstream, cpu: Option<usize>) -> Proxy {
    let mut child = pinned(&std::env::current_exe().unwrap(), cpu, false)
        .arg(super::relay::FLAG)
        .arg(upstream.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start relay");
    let (rx, problems) = drain(child.stdout.take().unwrap(), |line| {
        line.strip_prefix("listening ")?.trim().parse().ok()
    });
    let mut relay = Proxy::new(child, problems, tempfile::tempdir().unwrap());
    relay.addr = ready(rx, "relay");
    relay.ca_pem = upstream.ca_pem.clone();
    relay
}

/// Start iron-proxy (bench profile binary) with a config for `upstream`.
pub fn iron_proxy(upstream: &Upstream, cpu: Option<usize>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("upstream-ca.pem"), &upstream.ca_pem).unwrap();
    std::fs::write(d.join("secret"), REAL).unwrap();
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let config = format!(
        "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
         [ca]\ncert = {}\nkey = {}\ngenerate_if_missing = true\n\n\
         [upstream]\nextra_roots = [{}]\nresolve = {{ \"api.test\" = \"127.0.0.1\" }}\n\n\
         [limits]\nmax_connections = 100000\nidle_timeout = \"300s\"\nheader_read_timeout = \"300s\"\n\n\
         [[allow]]\nhost = \"api.test\"\nports = [{}]\n\n\
         [[credential]]\nname = \"bench\"\nstub = \"{STUB}\"\nsource = {{ file = {} }}\nhosts = [\"api.test\"]\n",
        q(d.join("ca.crt")),
        q(d.join("ca.key")),
        q(d.join("upstream-ca.pem")),
        upstream.addr.port(),
        q(d.join("secret")),
    );
    let config_path = d.join("iron-proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let program = Path::new(env!("CARGO_BIN_EXE_iron-proxy"));
    let mut child = pinned(program, cpu, true)
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config_path)
        .current_dir(d)
        .env("RUST_LOG", log_filter())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iron-proxy");
    let (rx, problems) = drain(child.stderr.take().unwrap(), |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields").unwrap_or(&v);
        if fields.get("message")?.as_str()? != "listening" {
            return None;
        }
        fields.get("proxy")?.as_str()?.parse().ok()
    });
    let ca_path = d.join("ca.crt");
    // Built first so that a failed start still stops the child (Drop).
    let mut proxy = Proxy::new(child, problems, dir);
    proxy.addr = ready(rx, "iron-proxy");
    proxy.pid = find_program(proxy.pid, program);
    proxy.ca_pem = std::fs::read_to_string(ca_path).unwrap();
    proxy
}

/// The proxy's log filter: `info` (audit records on, as deployed), or
/// `IRON_PROXY_BENCH_LOG` for experiments (e.g. `info,audit=off`).
pub fn log_filter() -> String {
    std::env::var("IRON_PROXY_BENCH_LOG").unwrap_or_else(|_| "info".into())
}

/// `mitmdump` on PATH, if any.
pub fn find_mitmdump() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mitmdump"))
        .find(|p| p.is_file())
}

/// Start mitmdump as an intercepting proxy toward `upstream` (an addon
/// sends every server connection to the loopback origin; SNI stays api.test).
pub fn mitmproxy(program: &Path, upstream: &Upstream, cpu: Option<usize>) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("upstream-ca.pem"), &upstream.ca_pem).unwrap();
    let addon = format!(
        "def server_connect(data):\n    data.server.address = (\"127.0.0.1\", {})\n",
        upstream.addr.port()
    );
    std::fs::write(d.join("route.py"), addon).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = pinned(program, cpu, false)
        .args(["--quiet", "--listen-host", "127.0.0.1", "--listen-port"])
        .arg(port.to_string())
        .arg("--set")
        .arg(format!("confdir={}", d.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            d.join("upstream-ca.pem").display()
        ))
        .arg("-s")
        .arg(d.join("route.py"))
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mitmdump");
    let (_, problems) = drain(child.stderr.take().unwrap(), |_| None);
    let mut proxy = Proxy::new(child, problems, dir);
    proxy.addr = SocketAddr::from(([127, 0, 0, 1], port));
    // `--quiet` prints nothing when ready: poll the port and the CA file.
    let cert = proxy._dir.path().join("mitmproxy-ca-cert.pem");
    for _ in 0..300 {
        if cert.is_file() && std::net::TcpStream::connect(proxy.addr).is_ok() {
            proxy.ca_pem = std::fs::read_to_string(&cert).unwrap();
            return proxy;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("mitmdump did not start listening on {port}");
}

/// Resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// utime + stime of a process in clock ticks (`pid` 0: this process).
pub fn cpu_ticks(pid: u32) -> u64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    get(14).unwrap_or(0) + get(15).unwrap_or(0)
}
