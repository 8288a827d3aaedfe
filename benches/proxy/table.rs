//! The one printed table.

use super::load::Outcome;

/// One table line; `values` per column (direct first), `ratios` for each
/// column after direct, over direct.
pub struct Line {
    pub row: &'static str,
    pub metric: String,
    pub values: Vec<String>,
    pub ratios: Vec<String>,
    pub target: String,
    pub result: String,
    /// CPU % (bench/child) and origin TLS handshakes, per column.
    pub cpu: Vec<String>,
}

pub fn ratio(direct: f64, other: f64) -> String {
    if direct.is_finite() && other.is_finite() && direct > 0.0 {
        format!("{:.2}x", other / direct)
    } else {
        "-".into()
    }
}

/// PASS/MISS (nothing when the figure is missing).
pub fn verdict(value: f64, ok: bool, detail: &str) -> String {
    if !value.is_finite() {
        return String::new();
    }
    format!("{} {detail}", if ok { "PASS" } else { "MISS" })
        .trim_end()
        .to_string()
}

/// Requests per second, NaN when the cell did not run or failed.
pub fn rps(o: &Option<Outcome>) -> f64 {
    o.as_ref()
        .filter(|o| o.failed == 0)
        .map_or(f64::NAN, |o| o.rps)
}

pub fn rate(o: &Option<Outcome>) -> String {
    match o {
        None => "-".into(),
        Some(o) if o.failed > 0 => "FAILED".into(),
        Some(o) => format!("{:.0}", o.rps),
    }
}

/// Latency percentile `p` in µs.
pub fn percentile(o: &Option<Outcome>, p: f64) -> f64 {
    let Some(o) = o
        .as_ref()
        .filter(|o| o.failed == 0 && !o.latencies.is_empty())
    else {
        return f64::NAN;
    };
    let l = &o.latencies;
    l[((l.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// "bench% / proxy%, N hs": CPU use and origin handshakes in the window.
pub fn cpu(o: &Option<Outcome>) -> String {
    let Some(o) = o.as_ref().filter(|o| o.failed == 0) else {
        return "-".into();
    };
    let proxy = o.cpu_proxy.map_or("-".into(), |p| format!("{p:.0}"));
    format!("{:.0} / {proxy}, {} hs", o.cpu_bench, o.origin_handshakes)
}

/// Print the table, then CPU use per cell; `columns` names the values
/// (the first is direct).
pub fn print(lines: &[Line], columns: &[&str]) {
    let mut head = vec!["row".to_string(), "metric".to_string()];
    head.extend(columns.iter().map(|c| c.to_string()));
    head.extend(columns[1..].iter().map(|c| format!("{c}/direct")));
    head.extend(["target", "result"].map(String::from));
    let mut rows = vec![head];
    for l in lines {
        let mut r = vec![l.row.to_string(), l.metric.clone()];
        r.extend(l.values.iter().cloned());
        r.extend(l.ratios.iter().cloned());
        r.extend([l.target.clone(), l.result.clone()]);
        rows.push(r);
    }
    render(&rows);
    println!("\nCPU, % of one core (bench process / proxy child), and TLS handshakes the origin completed, per measured window:");
    let mut head = vec!["row".to_string(), "metric".to_string()];
    head.extend(columns.iter().map(|c| c.to_string()));
    let mut rows = vec![head];
    for l in lines.iter().filter(|l| l.cpu.iter().any(|c| c != "-")) {
        let mut r = vec![l.row.to_string(), l.metric.clone()];
        r.extend(l.cpu.iter().cloned());
        rows.push(r);
    }
    render(&rows);
}

fn render(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|k| rows.iter().map(|r| r[k].chars().count()).max().unwrap_or(0))
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let cols: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("{}", cols.join(" | ").trim_end());
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("{}", rule.join("-|-"));
        }
    }
}
