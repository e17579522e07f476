//! HTTP dates: the per-worker `Date` header cache and the IMF-fixdate formatter that
//! `Last-Modified` also uses.
//!
//! Formatting is hand-written (civil-from-days arithmetic into a fixed 29-byte array) so
//! neither the cache refresh nor a response head allocates; `httpdate` is used only to
//! parse the dates clients send and, in tests, as the reference this formatter must match.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const HTTP_DATE_LEN: usize = 29;

/// 9999-12-31T23:59:59Z: the last instant a four-digit year can show.
const LAST_FORMATTABLE_SECOND: u64 = 253_402_300_799;

const WEEKDAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// The current time as an IMF-fixdate, reformatted only when the second changes.
///
/// One per worker: the connection loop calls [`DateCache::refresh`] once per loop turn and
/// every response head copies [`DateCache::get`].
#[derive(Debug, Clone)]
pub struct DateCache {
    unix_secs: u64,
    text: [u8; HTTP_DATE_LEN],
}

impl DateCache {
    /// A cache already holding the current time.
    pub fn new() -> Self {
        let mut cache = DateCache { unix_secs: 0, text: format_http_date(0) };
        cache.refresh();
        cache
    }

    /// Re-reads the clock; reformats only if the second has changed.
    pub fn refresh(&mut self) {
        self.refresh_to(SystemTime::now());
    }

    /// Sets the cache to `now` (the clock reading `refresh` uses; tests pass fixed times).
    pub fn refresh_to(&mut self, now: SystemTime) {
        let secs = unix_secs(now);
        if secs != self.unix_secs {
            self.unix_secs = secs;
            self.text = format_http_date(secs);
        }
    }

    /// The cached date, ready to copy into a `Date:` header.
    pub fn get(&self) -> &[u8] {
        &self.text
    }

    /// The cached time in whole seconds since the Unix epoch (for validating client dates).
    pub fn now_secs(&self) -> u64 {
        self.unix_secs
    }
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Whole seconds since the Unix epoch; times before it count as the epoch.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// Parses any of the three HTTP date formats (RFC 9110 §5.6.7) into Unix seconds.
/// `None` for anything that is not a valid date, so callers ignore the header.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    Some(unix_secs(time))
}

/// Formats Unix seconds as an IMF-fixdate; seconds past year 9999 show 9999-12-31 23:59:59.
pub fn format_http_date(unix_secs: u64) -> [u8; HTTP_DATE_LEN] {
    let t = Civil::at(unix_secs);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[0..3].copy_from_slice(WEEKDAYS[t.weekday]);
    write_two_digits(&mut out[5..7], t.day);
    out[8..11].copy_from_slice(MONTHS[t.month_index]);
    write_four_digits(&mut out[12..16], t.year);
    write_time(&mut out[17..25], t.second_of_day);
    out
}

/// Length of the access log's date, `25/Nov/2026:02:20:00 +0000`.
pub const CLF_DATE_LEN: usize = 26;

/// Formats Unix seconds as the Common Log Format date (UTC), with no allocation.
pub fn format_clf_date(unix_secs: u64) -> [u8; CLF_DATE_LEN] {
    let t = Civil::at(unix_secs);
    let mut out = *b"01/Jan/1970:00:00:00 +0000";
    write_two_digits(&mut out[0..2], t.day);
    out[3..6].copy_from_slice(MONTHS[t.month_index]);
    write_four_digits(&mut out[7..11], t.year);
    write_time(&mut out[12..20], t.second_of_day);
    out
}

/// Length of the JSON access log's time without its fraction, `2026-11-25T02:20:00`.
pub const RFC3339_SECONDS_LEN: usize = 19;

/// Formats Unix seconds as an RFC 3339 date and time (UTC) to the second, no allocation;
/// the caller appends the fraction and `Z`.
pub fn format_rfc3339_seconds(unix_secs: u64) -> [u8; RFC3339_SECONDS_LEN] {
    let t = Civil::at(unix_secs);
    let mut out = *b"1970-01-01T00:00:00";
    write_four_digits(&mut out[0..4], t.year);
    write_two_digits(&mut out[5..7], t.month_index as u64 + 1);
    write_two_digits(&mut out[8..10], t.day);
    write_time(&mut out[11..19], t.second_of_day);
    out
}

/// A moment split into what the date formats print.
struct Civil {
    weekday: usize,
    day: u64,
    month_index: usize,
    year: u64,
    second_of_day: u64,
}

impl Civil {
    fn at(unix_secs: u64) -> Civil {
        let secs = unix_secs.min(LAST_FORMATTABLE_SECOND);
        let days = secs / 86_400;
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (index 4 with Sunday = 0).
        Civil {
            weekday: ((days + 4) % 7) as usize,
            day,
            month_index: (month - 1) as usize,
            year,
            second_of_day: secs % 86_400,
        }
    }
}

fn write_four_digits(out: &mut [u8], value: u64) {
    write_two_digits(&mut out[0..2], value / 100);
    write_two_digits(&mut out[2..4], value % 100);
}

/// `HH:MM:SS` into 8 bytes.
fn write_time(out: &mut [u8], second_of_day: u64) {
    write_two_digits(&mut out[0..2], second_of_day / 3600);
    write_two_digits(&mut out[3..5], second_of_day / 60 % 60);
    write_two_digits(&mut out[6..8], second_of_day % 60);
}

fn write_two_digits(out: &mut [u8], value: u64) {
    out[0] = b'0' + (value / 10 % 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_the_access_log_date() {
        assert_eq!(&format_clf_date(784_111_777), b"06/Nov/1994:08:49:37 +0000");
        assert_eq!(&format_rfc3339_seconds(784_111_777), b"1994-11-06T08:49:37");
        assert_eq!(&format_rfc3339_seconds(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&format_clf_date(0), b"01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn formats_the_rfc_example_date() {
        assert_eq!(&format_http_date(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn formats_the_epoch_and_a_leap_day() {
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&format_http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn clamps_dates_past_year_9999() {
        assert_eq!(&format_http_date(u64::MAX), b"Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn cache_reformats_when_the_second_changes() {
        let mut cache = DateCache::new();
        cache.refresh_to(at(784_111_777));
        assert_eq!(cache.get(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(cache.now_secs(), 784_111_777);
        cache.refresh_to(at(784_111_778) + Duration::from_millis(999));
        assert_eq!(cache.get(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }

    #[test]
    fn new_cache_holds_the_current_time() {
        let cache = DateCache::new();
        let now = unix_secs(SystemTime::now());
        assert!(now - cache.now_secs() <= 1);
        assert_eq!(cache.get().len(), HTTP_DATE_LEN);
    }

    #[test]
    fn parses_all_three_client_date_formats() {
        for text in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_http_date(text.as_bytes()), Some(784_111_777), "{text}");
        }
        assert_eq!(parse_http_date(b"yesterday"), None);
        assert_eq!(parse_http_date(b"\xff\xfe"), None);
    }

    proptest! {
        #[test]
        fn matches_httpdate_for_every_second(secs in 0u64..=LAST_FORMATTABLE_SECOND) {
            let ours = format_http_date(secs);
            let reference = httpdate::fmt_http_date(at(secs));
            prop_assert_eq!(&ours[..], reference.as_bytes());
        }

        #[test]
        fn formatted_dates_parse_back(secs in 0u64..=LAST_FORMATTABLE_SECOND) {
            prop_assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
        }
    }
}
