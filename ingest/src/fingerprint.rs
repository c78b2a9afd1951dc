//! Content fingerprints: which values moved, without the values.
//!
//! A gateway that logs `audit.args_fp` / `audit.result_fp` lets Cordon see that the IBAN a tool
//! returned is the IBAN a later call sends out, without either event carrying the IBAN. The
//! definition is fixed (DESIGN.md, README) so that gateways and Cordon compute the same values:
//! lowercase, split on every character outside `[a-z0-9@._+:/-]`, trim trailing `.` and `:`,
//! keep distinct tokens of at least 6 characters, emit the first 16 hex digits of each token's
//! SHA-256, sorted.
//!
//! In memory a fingerprint is the `u64` those 16 hex digits spell: comparing and intersecting
//! them (lineage) costs no allocation, and sorting the numbers sorts the hex strings.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Minimum token length that is fingerprinted: shorter tokens are common words.
pub const MIN_TOKEN_LEN: usize = 6;

fn is_token_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '@' | '.' | '_' | '+' | ':' | '/' | '-')
}

/// Fingerprints a text, as the hex strings gateways write.
pub fn fingerprint_text(text: &str) -> Vec<String> {
    fingerprints_of_text(text).into_iter().map(to_hex).collect()
}

/// Fingerprints tool arguments (every scalar value, joined by spaces), as hex strings.
pub fn fingerprint_args(args: &Value) -> Vec<String> {
    fingerprints_of_args(args).into_iter().map(to_hex).collect()
}

/// A fingerprint as its 16 lowercase hex digits.
pub fn to_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// The 16 hex digits of a fingerprint, without allocating.
pub fn hex16(fp: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((fp >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Parses a fingerprint written as exactly 16 hex digits.
pub fn parse_hex(s: &str) -> Option<u64> {
    parse_hex_bytes(s.as_bytes())
}

/// [`parse_hex`] of bytes: exactly 16 of them, each a hex digit. The decoder reads a
/// fingerprint's digits straight from the record with it.
///
/// Every record carries a dozen of these, so the sixteen digits are checked and turned into
/// their values as one vector (SSE2 through `wide`), then paired into bytes: a table walk,
/// a digit at a time, took about 120 instructions per fingerprint. `u64::from_str_radix`
/// would also take a leading `+`, which is not a hex digit.
pub(crate) fn parse_hex_bytes(s: &[u8]) -> Option<u64> {
    use wide::u8x16;
    let v = u8x16::new(s.try_into().ok()?);
    // A byte is in a range exactly when its distance from the range's start (wrapping) is
    // no more than the range's length: min(d, len) == d.
    let digit = v - u8x16::splat(b'0');
    let is_digit = digit.min(u8x16::splat(9)).cmp_eq(digit);
    // Letters either case: setting 0x20 maps A–F onto a–f and nothing else into a–f.
    let letter = (v | u8x16::splat(0x20)) - u8x16::splat(b'a');
    let is_letter = letter.min(u8x16::splat(5)).cmp_eq(letter);
    if !(is_digit | is_letter).all() {
        return None;
    }
    let n = is_digit.blend(digit, letter + u8x16::splat(10)).to_array();
    let mut bytes = [0u8; 8];
    for (j, b) in bytes.iter_mut().enumerate() {
        *b = n[2 * j] << 4 | n[2 * j + 1];
    }
    Some(u64::from_be_bytes(bytes))
}

/// Fingerprints a text.
pub fn fingerprints_of_text(text: &str) -> Vec<u64> {
    let lower = text.to_lowercase();
    let mut tokens: Vec<&str> = lower
        .split(|c: char| !is_token_char(c))
        .map(|t| t.trim_end_matches(['.', ':']))
        .filter(|t| t.len() >= MIN_TOKEN_LEN)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let mut out: Vec<u64> = tokens
        .into_iter()
        .map(|t| {
            let d = Sha256::digest(t.as_bytes());
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Fingerprints tool arguments: every scalar value, joined by spaces.
pub fn fingerprints_of_args(args: &Value) -> Vec<u64> {
    let mut text = String::new();
    collect_scalars(args, &mut text);
    fingerprints_of_text(&text)
}

fn collect_scalars(v: &Value, out: &mut String) {
    match v {
        Value::Null => {}
        Value::Bool(b) => push(out, if *b { "true" } else { "false" }),
        Value::Number(n) => push(out, &n.to_string()),
        Value::String(s) => push(out, s),
        Value::Array(a) => a.iter().for_each(|v| collect_scalars(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_scalars(v, out)),
    }
}

fn push(out: &mut String, s: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_test_vector() {
        assert_eq!(
            fingerprint_text(
                "Send DE89370400440532013000 to Mark.Black-2134@gmail.com, please: now."
            ),
            ["56ccc4dcfc96534b", "9cf685bd65e3490c", "b36ca970529c23c7"]
        );
    }

    #[test]
    fn arguments_fingerprint_like_their_text() {
        let args = serde_json::json!({"to": "Mark.Black-2134@gmail.com", "body": ["DE89370400440532013000", 7], "x": null});
        assert_eq!(
            fingerprint_args(&args),
            fingerprint_text("Mark.Black-2134@gmail.com DE89370400440532013000 7")
        );
    }

    #[test]
    fn hex_forms() {
        for fp in [0u64, 1, 0x56cc_c4dc_fc96_534b, u64::MAX] {
            assert_eq!(std::str::from_utf8(&hex16(fp)).unwrap(), to_hex(fp));
            assert_eq!(parse_hex(&to_hex(fp)), Some(fp));
        }
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(parse_hex("+123456789abcdef"), None);
        assert_eq!(parse_hex("0123456789abcdeg"), None);
        assert_eq!(parse_hex("0123456789ABCDEF"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(parse_hex("0123456789abcdef0"), None);
        assert_eq!(parse_hex("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_hex("0000000000000000"), Some(0));
    }

    #[test]
    fn short_and_non_ascii_tokens_are_dropped() {
        assert!(fingerprint_text("héllo wörld ab:cd").is_empty());
        assert_eq!(fingerprint_text("SECRET1").len(), 1);
        assert_eq!(
            fingerprint_text("secret1 SECRET1 secret1."),
            fingerprint_text("secret1")
        );
    }

    proptest::proptest! {
        /// Sixteen hex digits of either case with one byte put anywhere in them (often
        /// another digit, often not): the vector parse gives what the standard library's
        /// parse does, and refuses what it refuses (and a sign).
        #[test]
        fn the_vector_parse_is_the_standard_one(
            digits in "[0-9a-fA-F]{16}",
            at in 0usize..16,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut b = digits.into_bytes();
            b[at] = byte;
            let want = std::str::from_utf8(&b)
                .ok()
                .filter(|t| !t.starts_with('+'))
                .and_then(|t| u64::from_str_radix(t, 16).ok());
            proptest::prop_assert_eq!(parse_hex_bytes(&b), want, "{:?}", b);
        }
    }
}
