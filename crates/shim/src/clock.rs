//! Timestamps in Go's `time.RFC3339Nano` layout, UTC, as Docker writes them
//! in json-file logs and container state: `2006-01-02T15:04:05.999999999Z`,
//! trailing zeros of the fraction dropped (and the dot with them).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn rfc3339_nano(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        // Before 1970: only a broken clock gets here.
        Err(_) => (0, 0),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> String {
        rfc3339_nano(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_136_214_245, 999_999_999), "2006-01-02T15:04:05.999999999Z");
        assert_eq!(at(1_136_214_245, 120_000_000), "2006-01-02T15:04:05.12Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(at(4_102_444_799, 0), "2099-12-31T23:59:59Z");
    }
}
