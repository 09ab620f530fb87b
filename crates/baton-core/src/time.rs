//! ISO 8601 timestamps as Patroni and patronictl write them (`scheduled_at`):
//! `2026-11-22T05:00:00+00:00`, `2026-11-22 05:00:00.123+01:00`, `2026-11-22T05:00:00Z`.
//! A timezone is mandatory, as in Patroni.

/// Milliseconds since the Unix epoch, or `None` when the text is not a timestamp with a
/// timezone.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tz = &rest[1..];
            let (h, m) = match tz.len() {
                5 if tz.as_bytes()[2] == b':' => (tz.get(0..2)?, tz.get(3..5)?),
                4 => (tz.get(0..2)?, tz.get(2..4)?),
                2 => (tz, "00"),
                _ => return None,
            };
            sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)
        }
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

/// `2024-08-28T19:39:26+00:00`: a Unix time in UTC, as Patroni writes history timestamps.
pub fn format_iso8601_utc(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}+00:00")
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(mo <= 2), mo, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{format_iso8601_utc, parse_iso8601};

    #[test]
    fn parses_what_patronictl_writes() {
        assert_eq!(parse_iso8601("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(parse_iso8601("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_iso8601("2026-11-22T05:00:00+00:00"),
            Some(1_795_323_600_000)
        );
        assert_eq!(
            parse_iso8601("2026-11-22 06:00:00+01:00"),
            Some(1_795_323_600_000)
        );
        assert_eq!(
            parse_iso8601("2026-11-22T05:00:00.250-0000"),
            Some(1_795_323_600_250)
        );
        assert_eq!(
            parse_iso8601("2024-02-29T12:00:00+00"),
            Some(1_709_208_000_000)
        );
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            format_iso8601_utc(1_795_323_600),
            "2026-11-22T05:00:00+00:00"
        );
        for secs in [0u64, 951_782_400, 1_709_208_000, 4_102_444_799] {
            let text = format_iso8601_utc(secs);
            assert_eq!(parse_iso8601(&text), Some(secs as i64 * 1000), "{text}");
        }
    }

    #[test]
    fn rejects_timestamps_without_timezone_or_malformed() {
        for bad in [
            "2026-11-22T05:00:00",
            "2026-11-22",
            "tomorrow",
            "2026-13-22T05:00:00Z",
            "2026-11-22T25:00:00Z",
            "2026-11-22T05:00:00+5",
            "2026-11-22T05:00:00.Z",
            "",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }
}
