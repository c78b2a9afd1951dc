//! `@timestamp` text to nanoseconds since the epoch.
//!
//! jiff parses RFC 3339 in full (offsets, lower-case separators, commas, leap seconds, expanded
//! years) and stays the definition here: it decides every text and writes every error. But that
//! generality cost about 750 instructions per event, a twentieth of decoding a whole record,
//! while gateways write one shape only: `YYYY-MM-DDTHH:MM:SS[.fraction]Z` in UTC. This module reads
//! that shape directly and hands anything else to jiff.
//!
//! The calendar part (month lengths, leap years, the day's place since the epoch) is still
//! jiff's: the fast path asks it for the midnight of a date and keeps the answer for the next
//! event, which in a stream is nearly always of the same day. What it does itself is the time of
//! day, digits and ranges that leave no room for doubt, and it gives up (returns `None`) on any
//! byte it does not expect, so that it can only ever agree with jiff or defer to it. The
//! property test below holds it to that.

use std::cell::Cell;

/// The date (its ten bytes, packed) whose midnight the fast path last asked jiff for, and that
/// midnight in seconds since the epoch.
#[derive(Clone, Copy)]
struct Day {
    date: (u64, u16),
    midnight: i64,
}

thread_local! {
    static LAST_DAY: Cell<Option<Day>> = const { Cell::new(None) };
}

/// Why a timestamp's text was refused.
#[derive(Debug, thiserror::Error)]
pub enum TimestampError {
    /// Not RFC 3339 (jiff's reason).
    #[error("{0}")]
    Syntax(#[from] jiff::Error),
    /// A valid time that nanoseconds since 1970 in 64 bits cannot hold. The event model keeps
    /// times that way; before this check such a time wrapped around to a wrong one.
    #[error("outside the times Cordon can hold, 1677-09-21T00:12:44Z to 2262-04-11T23:47:16Z")]
    OutOfRange,
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp.
pub(crate) fn parse_nanos(text: &str) -> Result<i64, TimestampError> {
    let nanos = match fast(text.as_bytes()) {
        Some(n) => n,
        None => text.parse::<jiff::Timestamp>()?.as_nanosecond(),
    };
    i64::try_from(nanos).map_err(|_| TimestampError::OutOfRange)
}

/// Powers of ten that scale a fraction of `k` digits to nanoseconds, by `k`.
const SCALE: [i64; 10] = [
    1_000_000_000,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// The common shape's nanoseconds since the epoch, or `None` for jiff to decide.
fn fast(b: &[u8]) -> Option<i128> {
    // YYYY-MM-DDTHH:MM:SS, then an optional fraction of 1 to 9 digits, then Z.
    if b.len() < 20 || b.len() > 30 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (&last, rest) = b[19..].split_last()?;
    if last != b'Z' {
        return None;
    }
    let (h, m, s) = (two(b[11], b[12])?, two(b[14], b[15])?, two(b[17], b[18])?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    let mut nanos = 0i64;
    if let Some((&dot, digits)) = rest.split_first() {
        if dot != b'.' || digits.is_empty() {
            return None;
        }
        for &c in digits {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            nanos = nanos * 10 + i64::from(d);
        }
        nanos *= SCALE[digits.len()];
    }
    let secs = midnight(&b[..10])? + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Two ASCII digits as a number.
fn two(a: u8, b: u8) -> Option<u8> {
    let (a, b) = (a.wrapping_sub(b'0'), b.wrapping_sub(b'0'));
    (a <= 9 && b <= 9).then(|| a * 10 + b)
}

/// Seconds since the epoch at the start of `date` (`YYYY-MM-DD`, UTC), as jiff reckons it.
fn midnight(date: &[u8]) -> Option<i64> {
    let mut word = [0u8; 8];
    word.copy_from_slice(&date[..8]);
    let key = (
        u64::from_le_bytes(word),
        u16::from_le_bytes([date[8], date[9]]),
    );
    if let Some(day) = LAST_DAY.get() {
        if day.date == key {
            return Some(day.midnight);
        }
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9];
    if date[4] != b'-' || date[7] != b'-' || digits.iter().any(|&i| !date[i].is_ascii_digit()) {
        return None;
    }
    let mut text = [0u8; 20];
    text[..10].copy_from_slice(date);
    text[10..].copy_from_slice(b"T00:00:00Z");
    let ts: jiff::Timestamp = std::str::from_utf8(&text).ok()?.parse().ok()?;
    let midnight = ts.as_second();
    LAST_DAY.set(Some(Day {
        date: key,
        midnight,
    }));
    Some(midnight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jiff_nanos(text: &str) -> Option<i128> {
        text.parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_nanosecond())
    }

    /// `parse_nanos`, as the `i128` jiff would give.
    fn parsed(text: &str) -> Option<i128> {
        parse_nanos(text).ok().map(i128::from)
    }

    #[test]
    fn the_common_shape_is_read_directly() {
        for (text, want) in [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:01.5Z", 1_500_000_000),
            ("2026-11-02T08:00:02.381596302Z", 1_793_606_402_381_596_302),
            ("2024-02-29T23:59:59.000000001Z", 1_709_251_199_000_000_001),
            ("1969-12-31T23:59:59.999Z", -1_000_000),
        ] {
            assert_eq!(fast(text.as_bytes()), Some(want), "{text}");
            assert_eq!(jiff_nanos(text), Some(want), "{text}");
        }
    }

    #[test]
    fn other_shapes_are_left_to_jiff() {
        for text in [
            "2026-11-02T08:00:02+01:00",
            "2026-11-02t08:00:02Z",
            "2026-11-02 08:00:02Z",
            "2026-11-02T08:00:02,5Z",
            "2026-11-02T08:00:02.Z",
            "2026-11-02T08:00:02.1234567891Z",
            "2026-11-02T08:00:60Z",
            "2026-11-02T24:00:00Z",
            "2026-02-30T08:00:00Z",
            "2026-13-01T08:00:00Z",
            "+02026-11-02T08:00:02Z",
            "2026-11-02T08:00:02z",
            "2026-11-02T08:0a:02Z",
        ] {
            assert_eq!(fast(text.as_bytes()), None, "{text}");
        }
        // A date jiff refuses is never cached, so the next time of that day is refused too.
        assert!(parse_nanos("2026-02-30T08:00:00Z").is_err());
        assert!(parse_nanos("2026-02-30T08:00:01Z").is_err());
        // Jiff reads what the fast path leaves: an offset, a leap second.
        assert_eq!(
            parse_nanos("1970-01-01T01:00:00+01:00").unwrap(),
            0,
            "offsets are jiff's"
        );
        assert_eq!(
            parsed("2016-12-31T23:59:60Z"),
            jiff_nanos("2016-12-31T23:59:60Z")
        );
    }

    #[test]
    fn times_an_i64_of_nanoseconds_cannot_hold_are_refused() {
        assert_eq!(
            parse_nanos("2262-04-11T23:47:16.854775807Z").unwrap(),
            i64::MAX
        );
        assert_eq!(
            parse_nanos("1677-09-21T00:12:43.145224192Z").unwrap(),
            i64::MIN
        );
        for text in [
            "2262-04-11T23:47:16.854775808Z",
            "1677-09-21T00:12:43.145224191Z",
            "9999-12-30T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
        ] {
            let e = parse_nanos(text).unwrap_err();
            assert!(matches!(e, TimestampError::OutOfRange), "{text}: {e}");
            assert!(e.to_string().contains("2262-04-11T23:47:16Z"), "{e}");
        }
    }

    /// A timestamp near the common shape: valid ones of every length of fraction, and ones
    /// with one byte changed.
    fn near_shape() -> impl Strategy<Value = String> {
        let valid = (
            0u16..=9999,
            1u8..=12,
            1u8..=31,
            0u8..=24,
            0u8..=60,
            0u8..=60,
            proptest::option::of("[0-9]{1,10}"),
        )
            .prop_map(|(y, mo, d, h, mi, s, f)| {
                let frac = f.map(|f| format!(".{f}")).unwrap_or_default();
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z")
            });
        (
            valid,
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(text, at, byte, change)| {
                let mut b = text.into_bytes();
                if change {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                String::from_utf8_lossy(&b).into_owned()
            })
    }

    proptest! {
        #[test]
        fn agrees_with_jiff(text in near_shape(), other in near_shape()) {
            // Two texts in turn, so that a cached day of one meets the other.
            for t in [&text, &other, &text] {
                if let Some(n) = fast(t.as_bytes()) {
                    prop_assert_eq!(Some(n), jiff_nanos(t), "{}", t);
                }
                let held = jiff_nanos(t).filter(|n| i64::try_from(*n).is_ok());
                prop_assert_eq!(parsed(t), held, "{}", t);
            }
        }
    }
}
