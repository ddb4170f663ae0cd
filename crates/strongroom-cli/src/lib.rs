//! Library parts of the `strongroom` command line, shared with its fuzz targets and tests:
//! the configuration file, record-key escaping and hex, and duration and time parsing.
#![forbid(unsafe_code)]

pub mod config;

use std::time::Duration;

/// Reads everything from `r` (a plaintext value from stdin) into a buffer that is zeroized
/// when dropped, and whose earlier, smaller copies are zeroized as it grows (a plain
/// `read_to_end` would leave them in freed memory). Reads at most `limit + 1` bytes, so a
/// caller can tell "over the limit" without holding an unbounded input.
///
/// # Errors
/// The reader's error.
pub fn read_secret(
    mut r: impl std::io::Read,
    limit: usize,
) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(8192));
    let mut chunk = zeroize::Zeroizing::new([0u8; 8192]);
    loop {
        let n = match r.read(&mut chunk[..]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.len() + n > buf.capacity() {
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(
                (buf.len() + n).max(buf.capacity() * 2),
            ));
            bigger.extend_from_slice(&buf);
            // The old buffer is zeroized as it is dropped here.
            buf = bigger;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            return Ok(buf);
        }
    }
}

/// Parses a duration like `7d`, `12h`, `30m`, `45s`, `1d12h` or `0s`.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 7d, 12h, 30m, 45s".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {c:?}; use d, h, m or s (e.g. 7d, 1d12h, 30m)"
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("{s:?} is too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?}: the last number has no unit; use d, h, m or s"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC) into seconds since the Unix epoch.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a time; use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d.as_slice() else {
        return Err(bad());
    };
    let (y, m, day): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        day.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let p: Vec<&str> = t.split(':').collect();
            let [h, mi, se] = p.as_slice() else {
                return Err(bad());
            };
            let (h, mi, se): (i64, i64, i64) = (
                h.parse().map_err(|_| bad())?,
                mi.parse().map_err(|_| bad())?,
                se.parse().map_err(|_| bad())?,
            );
            if h > 23 || mi > 59 || se > 60 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + se
        }
    };
    // Days from civil (Howard Hinnant), the inverse of the formatting in strongroom-core.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + secs_of_day).map_err(|_| bad())
}

/// `s` made safe to print on one line of a terminal: control characters (line breaks, escape
/// sequences), Unicode line separators and bidirectional overrides are escaped (`\n`,
/// `\u{1b}`), so text from the audit log cannot forge a line or rewrite what is shown.
#[must_use]
pub fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            let hidden = c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
                        | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
                );
            if hidden {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A record key made safe to print on one line: valid UTF-8 as itself with only control and
/// bidirectional characters escaped ([`escape_controls`]), and each byte that is not part of
/// valid UTF-8 as `\xNN`.
#[must_use]
pub fn escape_key(key: &[u8]) -> String {
    let mut out = String::new();
    for chunk in key.utf8_chunks() {
        out.push_str(&escape_controls(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Parses hex digits (either case, an even number of them) into bytes.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("{s:?} has an odd number of hex digits"));
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .filter(|_| p.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| format!("{s:?} is not hex (0-9, a-f)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_print_as_text_with_only_controls_and_bidi_escaped() {
        assert_eq!(escape_key("ключ/ü 😀".as_bytes()), "ключ/ü 😀");
        assert_eq!(escape_key(b"a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(escape_key("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        assert_eq!(escape_key(b"ok\xff\x00"), "ok\\xff\\u{0}");
    }

    #[test]
    fn hex_parses_and_refuses() {
        assert_eq!(parse_hex("00ffAb").unwrap(), [0, 0xff, 0xab]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        for bad in ["0", "zz", "+1", "0x00", "é1"] {
            assert!(parse_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_secret_reads_everything_and_stops_past_the_limit() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let got = read_secret(&data[..], 1 << 20).unwrap();
        assert_eq!(&got[..], &data[..]);
        let got = read_secret(&data[..], 10_000).unwrap();
        assert!(
            got.len() > 10_000 && got.len() <= 10_000 + 8192,
            "{}",
            got.len()
        );
        assert_eq!(&got[..], &data[..got.len()]);
        assert!(read_secret(&b""[..], 10).unwrap().is_empty());
    }

    use super::*;

    #[test]
    fn times_round_trip_with_the_core_formatting() {
        for secs in [0u64, 951_782_400, 1_795_999_415, 4_102_444_799] {
            let shown = strongroom_core::Timestamp::from_unix_secs(secs).to_string();
            assert_eq!(parse_time(&shown).unwrap(), secs, "{shown}");
        }
        assert_eq!(parse_time("2026-11-30").unwrap(), 1_795_996_800);
        for bad in [
            "",
            "2026-13-01",
            "2026-11-30T25:00:00Z",
            "2026-11-30T10:00:00",
            "yesterday",
            "1969-12-31",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            parse_duration("1d12h30m5s").unwrap(),
            Duration::from_secs(86400 + 12 * 3600 + 1805)
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "7", "d", "7w", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn escape_controls_keeps_text_on_one_line() {
        assert_eq!(escape_controls("alice"), "alice");
        assert_eq!(escape_controls("évé \\ ok"), "évé \\ ok");
        assert_eq!(escape_controls("evil\n#2 fake"), "evil\\n#2 fake");
        assert_eq!(escape_controls("a\rb\tc\u{1b}[2Jd"), "a\\rb\\tc\\u{1b}[2Jd");
        assert_eq!(
            escape_controls("x\u{2028}y\u{202e}z"),
            "x\\u{2028}y\\u{202e}z"
        );
        assert!(
            !escape_controls("a\u{85}b\u{7f}")
                .chars()
                .any(char::is_control)
        );
    }
}
