//! End-to-end: a loopback HTTPS origin and the real iron-proxy binary in one
//! run, direct vs proxied, one table (issue 5 items 3 and 4).
//!
//! `cargo bench --bench proxy`
//!
//! The bench process (load generator + origin, one single-threaded tokio
//! runtime) re-executes itself under `taskset -c <first CPU>`; the proxy runs
//! under `taskset -c <second CPU>`. With fewer than two CPUs or no `taskset`
//! it runs unpinned and says so. A `relay` column runs the same load through
//! a plain CONNECT relay (this binary, no interception) on the proxy's CPU:
//! the floor that two extra hops through the other core cost on this machine.
//! If `mitmdump` is on PATH, rows (a)–(d) get a mitmproxy column.
//!
//! `IRON_PROXY_BENCH_SECS` sets the measured seconds per
//! cell (default 4, after 1 s of warm-up); `IRON_PROXY_BENCH_ROWS` picks
//! rows (default `abcde`), e.g. to profile one of them;
//! `IRON_PROXY_BENCH_LOG` overrides the proxy's `RUST_LOG` (default `info`:
//! one audit record per request, as deployed); `IRON_PROXY_BENCH_WRAP` runs
//! the proxy under a profiler, e.g. `heaptrack -o /tmp/hp` or
//! `perf record -g -o /tmp/perf.data`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "proxy/child.rs"]
mod child;
#[path = "proxy/load.rs"]
mod load;
#[path = "proxy/relay.rs"]
mod relay;
#[path = "proxy/table.rs"]
mod table;
#[path = "proxy/upstream.rs"]
mod upstream;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use load::{Outcome, Target, Window};
use table::{cpu, percentile, rate, ratio, rps, verdict, Line};

/// Set (to "<bench cpu>,<proxy cpu>") in the re-executed, pinned bench.
const PIN_ENV: &str = "IRON_PROXY_BENCH_PINNED";
const TUNNELS: usize = 500;

struct Pin {
    proxy_cpu: Option<usize>,
    note: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == relay::FLAG) {
        return relay::serve(args[i + 1].parse().unwrap());
    }
    let pin = pin();
    let secs = std::env::var("IRON_PROXY_BENCH_SECS").ok();
    let secs: f64 = secs.and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let window = Window {
        warm: Duration::from_secs(1),
        measure: Duration::from_secs_f64(secs),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(pin, window));
}

/// The CPUs this process may run on (`Cpus_allowed_list`, e.g. `0-1,4`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"));
    let mut cpus = Vec::new();
    for part in list
        .unwrap_or("")
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// Re-execute under `taskset` (never returns then), or report why not.
fn pin() -> Pin {
    if let Ok(v) = std::env::var(PIN_ENV) {
        let (bench, proxy) = v.split_once(',').unwrap();
        let note = format!(
            "load generator + origin on CPU {bench} (taskset -c {bench}, allowed now: {:?}); \
             proxy on CPU {proxy} (taskset -c {proxy})",
            allowed_cpus()
        );
        return Pin {
            proxy_cpu: proxy.parse().ok(),
            note,
        };
    }
    let cpus = allowed_cpus();
    let taskset = Command::new("taskset").arg("-V").output();
    let reason = if cpus.len() < 2 {
        format!("UNPINNED: only {} CPU(s) allowed", cpus.len())
    } else if !taskset.is_ok_and(|o| o.status.success()) {
        "UNPINNED: taskset not found".to_string()
    } else {
        let (bench, proxy) = (cpus[0], cpus[1]);
        let status = Command::new("taskset")
            .arg("-c")
            .arg(bench.to_string())
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(PIN_ENV, format!("{bench},{proxy}"))
            .status();
        match status {
            Ok(s) => std::process::exit(s.code().unwrap_or(1)),
            Err(e) => format!("UNPINNED: taskset failed: {e}"),
        }
    };
    Pin {
        proxy_cpu: None,
        note: format!("{reason}; load generator, origin and proxy share all CPUs"),
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name"));
    let model = model
        .map(|m| m.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    let n = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{n} CPUs online, {model}, Linux {}", kernel.trim())
}

/// Run one cell on its own task: a panic or a hang marks it failed.
async fn cell(fut: impl Future<Output = Outcome> + Send + 'static) -> Outcome {
    let task = tokio::spawn(fut);
    match tokio::time::timeout(Duration::from_secs(60), task).await {
        Ok(Ok(out)) => out,
        _ => Outcome {
            failed: 1,
            ..Outcome::default()
        },
    }
}

async fn row_a(t: Arc<Target>, w: Window) -> Outcome {
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(t.h1().await.0);
    }
    load::measure(&t, conns, w, false, load::h1_step).await
}

async fn row_b(t: Arc<Target>, w: Window) -> Outcome {
    load::measure(&t, vec![(); 8], w, false, load::fresh_step).await
}

async fn row_c(t: Arc<Target>, w: Window) -> Outcome {
    let conn = t.h1().await.0;
    load::measure(&t, vec![conn], w, true, load::h1_step).await
}

async fn row_d(t: Arc<Target>, w: Window) -> Outcome {
    let conn = t.h2().await;
    load::measure(&t, vec![conn; 64], w, false, load::h2_step).await
}

type RowFn = fn(Arc<Target>, Window) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>;
const ROWS: [(&str, RowFn); 4] = [
    ("a", |t, w| Box::pin(row_a(t, w))),
    ("b", |t, w| Box::pin(row_b(t, w))),
    ("c", |t, w| Box::pin(row_c(t, w))),
    ("d", |t, w| Box::pin(row_d(t, w))),
];

async fn run(pin: Pin, w: Window) {
    let only = std::env::var("IRON_PROXY_BENCH_ROWS").unwrap_or_else(|_| "abcde".into());
    println!("machine: {}", machine());
    println!("pinning: {}", pin.note);
    let origin = upstream::start().await;
    let proxy = child::iron_proxy(&origin, pin.proxy_cpu);
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid)).unwrap();
    let field = |k: &str| {
        let line = status.lines().find_map(|l| l.strip_prefix(k));
        line.unwrap_or("?").trim().to_string()
    };
    println!(
        "iron-proxy: pid {} on {} (Cpus_allowed_list {}, {} threads); origin {}",
        proxy.pid,
        proxy.addr,
        field("Cpus_allowed_list:"),
        field("Threads:"),
        origin.addr
    );
    let relay = child::relay(&origin, pin.proxy_cpu);
    println!(
        "relay: plain CONNECT relay on the proxy's CPU, no interception \
         (the floor of two extra hops via the other core), pid {}",
        relay.pid
    );
    let mitm = child::find_mitmdump().map(|p| child::mitmproxy(&p, &origin, pin.proxy_cpu));
    match &mitm {
        Some(m) => println!("mitmproxy: mitmdump pid {} on {}", m.pid, m.addr),
        None => println!("mitmproxy: mitmdump not on PATH, column skipped"),
    }
    println!(
        "each cell: {:?} warm-up + {:?} measured; client TLS resumption off \
         (a new connection is a full handshake); proxy RUST_LOG={}",
        w.warm,
        w.measure,
        child::log_filter()
    );
    let via = |p: &child::Proxy| Target::new(Some((p.addr, p.pid)), &origin, &p.ca_pem);
    let mut targets = vec![
        ("direct", Target::new(None, &origin, &origin.ca_pem)),
        ("proxied", via(&proxy)),
        ("relay", via(&relay)),
    ];
    targets.extend(mitm.as_ref().map(|m| ("mitmproxy", via(m))));

    // (e) first, on a fresh proxy, so heap freed by other rows hides nothing.
    let mut rss = None;
    if only.contains('e') {
        let pid = proxy.pid;
        eprintln!("running (e) {TUNNELS} idle tunnels");
        rss = Some(load::idle_tunnels(&targets[1].1, TUNNELS, || child::rss_kib(pid)).await);
    }
    let mut cells: Vec<Vec<Option<Outcome>>> = Vec::new();
    for (name, row) in ROWS {
        let mut out = Vec::new();
        for (target, t) in &targets {
            let mut o = None;
            if only.contains(name) {
                eprintln!("running ({name}) {target}");
                o = Some(cell(row(t.clone(), w)).await);
            }
            out.push(o);
        }
        cells.push(out);
    }
    println!();
    let columns: Vec<&str> = targets.iter().map(|t| t.0).collect();
    table::print(&lines(&cells, rss), &columns);
    println!(
        "\nswap check: {} requests reached the origin with the real token (sent: the stub)",
        origin.swapped.load(Ordering::Relaxed)
    );
    for (name, p) in [("iron-proxy", Some(&proxy)), ("mitmproxy", mitm.as_ref())] {
        if let Some(p) = p {
            let problems = p.problems.lock().unwrap();
            println!("{name}: {} WARN/ERROR log lines", problems.0);
            for line in &problems.1 {
                println!("  {line}");
            }
        }
    }
}

fn lines(cells: &[Vec<Option<Outcome>>], rss: Option<[u64; 4]>) -> Vec<Line> {
    let mut out = Vec::new();
    let rate_row = |row, metric: &str, c: &[Option<Outcome>], min: f64| {
        let (d, p) = (rps(&c[0]), rps(&c[1]));
        Line {
            row,
            metric: metric.into(),
            values: c.iter().map(rate).collect(),
            ratios: c[1..].iter().map(|o| ratio(d, rps(o))).collect(),
            target: if min > 0.0 {
                format!(">= {min:.2}x")
            } else {
                "-".into()
            },
            result: if min > 0.0 {
                verdict(p / d, p / d >= min, "")
            } else {
                String::new()
            },
            cpu: c.iter().map(cpu).collect(),
        }
    };
    out.push(rate_row(
        "(a)",
        "h1 keep-alive, 16 conns, req/s",
        &cells[0],
        0.75,
    ));
    out.push(rate_row(
        "(b)",
        "new conn per request, 8 at a time, req/s",
        &cells[1],
        1.5,
    ));
    let c = &cells[2];
    for (p, name, limit) in [
        (0.5, "p50", Some(15.0)),
        (0.9, "p90", None),
        (0.99, "p99", Some(50.0)),
    ] {
        let v: Vec<f64> = c.iter().map(|o| percentile(o, p)).collect();
        let added = v[1] - v[0];
        let detail = format!("(+{added:.1} us)");
        let show = |v: &f64| {
            if v.is_finite() {
                format!("{v:.1}")
            } else {
                "-".into()
            }
        };
        out.push(Line {
            row: "(c)",
            metric: format!("h1 keep-alive, 1 conn, latency {name} us"),
            values: v.iter().map(show).collect(),
            ratios: v[1..].iter().map(|x| ratio(v[0], *x)).collect(),
            target: limit.map_or("-".into(), |l| format!("added <= {l:.0} us")),
            result: limit.map_or(detail.clone(), |l| verdict(added, added <= l, &detail)),
            // One CPU line for the row (the same cells as p50).
            cpu: c
                .iter()
                .map(|o| if p == 0.5 { cpu(o) } else { "-".into() })
                .collect(),
        });
    }
    let mut rate_c = rate_row("(c)", "h1 keep-alive, 1 conn, req/s", c, 0.0);
    rate_c.cpu = vec!["-".into(); c.len()];
    out.push(rate_c);
    out.push(rate_row(
        "(d)",
        "h2, 1 conn, 64 streams, req/s",
        &cells[3],
        0.75,
    ));
    let n = cells[0].len();
    let mut values = vec!["-".to_string(); n];
    let mut result = String::new();
    if let Some(r) = rss {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / TUNNELS as f64;
        let kib = per(r[0], r[3]);
        values[1] = format!("{kib:.1}");
        let detail = format!(
            "(VmRSS {} -> {} KiB; per tunnel: CONNECT {:.1} + TLS {:.1} + 1st request {:.1})",
            r[0],
            r[3],
            per(r[0], r[1]),
            per(r[1], r[2]),
            per(r[2], r[3])
        );
        result = verdict(kib, kib <= 24.0, &detail);
    }
    out.push(Line {
        row: "(e)",
        metric: format!("RSS per idle tunnel ({TUNNELS}), KiB"),
        values,
        ratios: vec!["-".into(); n - 1],
        target: "<= 24 KiB".into(),
        result,
        cpu: vec!["-".into(); n],
    });
    out
}
