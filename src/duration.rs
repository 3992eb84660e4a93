//! Durations as sluice's CRDs and flags write them: a whole number above 0 (at most 9 digits) and one unit,
//! `500ms`, `30s`, `5m`, `1h`.
//!
//! Hand-written rather than taken from a crate such as humantime: the CRD schema's pattern
//! (`^[1-9][0-9]{0,8}(ms|s|m|h)$`) defines the accepted form, and this parser accepts exactly that form, so a
//! flag and a CRD field never disagree on what is a duration. humantime would also accept `5min` or
//! `1h 30m`, which the schema rejects.

use std::time::Duration;

/// `500ms`, `30s`, `5m`, `1h`; anything else (`0s`, `05m`, ten digits) is `None`.
pub fn parse(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    if n.is_empty() || n.starts_with('0') || n.len() > 9 {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

/// A whole-second duration for people: `5m`, `90s` as `1m30s`, `1h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("5 minutes"), None);
        assert_eq!(parse("5min"), None, "what the CRD pattern rejects");
        for degenerate in ["0s", "0ms", "05m", "1234567890s", "s"] {
            assert_eq!(parse(degenerate), None, "{degenerate}");
        }
        assert_eq!(
            parse("999999999h"),
            Some(Duration::from_secs(999_999_999 * 3600))
        );
    }

    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(20)), "20s");
    }
}
