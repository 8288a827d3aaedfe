//! Durations written as `"250ms"`, `"10s"`, `"5m"`, `"24h"` (SPEC §4.2).

use std::time::Duration;

/// Parses a positive duration; the error says what form is expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "`{s}` is not a duration ({e}); write it like \"250ms\", \"10s\", \"5m\" or \"24h\""
        )
    })?;
    if d.is_zero() {
        return Err(format!("`{s}` must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_examples() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn refuses_bare_numbers_zero_and_junk() {
        for bad in ["10", "0s", "", "ten seconds", "-1s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
