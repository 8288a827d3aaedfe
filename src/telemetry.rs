//! Logging setup: JSON lines when stderr is not a terminal, human-readable
//! when it is (`--log-format` overrides).
//!
//! Owns the path from a `tracing` event to stderr. Writing happens on a
//! background thread behind a buffer, so a slow stderr never stalls a
//! request and a burst of lines costs one write; it never drops lines (audit
//! records matter), it only applies back-pressure when its queue is full.
//! Audit records (target `audit`, one per request, on the hot path) skip
//! `tracing` in JSON mode: `audit` formats each into a reused buffer and
//! hands it to the same writer (`write_audit`). Dispatching them as events
//! through the generic formatter cost a measurable share of the proxy's CPU.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Set in JSON mode when the filter lets audit records through (the filter
/// is fixed at start).
static AUDIT: OnceLock<NonBlocking> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber; keep the guard alive until exit so the
/// last lines are flushed.
pub fn init(format: Option<LogFormat>) -> WorkerGuard {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let (writer, guard) =
        NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stderr(),
            ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(writer.clone()),
            )
            .try_init()
            .map(|()| {
                if tracing::enabled!(target: "audit", tracing::Level::INFO) {
                    let _ = AUDIT.set(writer);
                }
            }),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("iron-proxy: logging was already initialised: {e}");
    }
    guard
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes one audit record as a JSON line, straight to the log writer, when
/// JSON logging with audit records is on; otherwise logs it as an `audit`
/// event (human-readable mode, tests without a subscriber). `fields`
/// appends `,"key":value` pairs.
pub fn write_audit(fields: impl FnOnce(&mut String)) {
    let Some(writer) = AUDIT.get() else {
        if tracing::enabled!(target: "audit", tracing::Level::INFO) {
            let mut record = String::new();
            fields(&mut record);
            tracing::info!(target: "audit", "request {}", record.trim_start_matches(','));
        }
        return;
    };
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let _ = write!(
            line,
            "{{\"timestamp\":\"{stamp}\",\"level\":\"INFO\",\"message\":\"request\""
        );
        fields(&mut line);
        line.push_str(",\"target\":\"audit\"}\n");
        let _ = writer.make_writer().write_all(line.as_bytes());
    });
}

/// `,"key":"value"` with JSON string escaping.
pub fn json_str(out: &mut String, key: &str, value: &str) {
    json_key(out, key);
    out.push('"');
    if value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        let _ = Escaped(out).write_str(value);
    } else {
        out.push_str(value);
    }
    out.push('"');
}

/// `,"key":n`
pub fn json_int(out: &mut String, key: &str, value: impl itoa::Integer) {
    json_key(out, key);
    out.push_str(itoa::Buffer::new().format(value));
}

/// `,"key":x` (`null` if not finite).
pub fn json_float(out: &mut String, key: &str, value: f64) {
    json_key(out, key);
    if value.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        out.push_str("null");
    }
}

fn json_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

/// Writes through JSON string escaping.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_fields_are_valid_json() {
        let mut out = String::from("{\"a\":0");
        json_str(&mut out, "plain", "api.test");
        json_str(&mut out, "odd", "a\"b\nc");
        json_int(&mut out, "port", 443u16);
        json_float(&mut out, "ms", 1.25);
        json_float(&mut out, "nan", f64::NAN);
        out.push('}');
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["plain"], "api.test");
        assert_eq!(v["odd"], "a\"b\nc");
        assert_eq!(v["port"], 443);
        assert_eq!(v["ms"], 1.25);
        assert!(v["nan"].is_null());
    }

    #[test]
    fn escapes_what_json_requires() {
        let mut s = String::new();
        Escaped(&mut s).write_str("a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(s, "a\\\"b\\\\c\\nd\\u0001é");
        let v: serde_json::Value = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }
}
