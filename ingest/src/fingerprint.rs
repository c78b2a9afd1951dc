//! Content fingerprints: which values moved, without the values.
//!
//! A gateway that logs `audit.args_fp` / `audit.result_fp` lets Cordon see that the IBAN a tool
//! returned is the IBAN a later call sends out, without either event carrying the IBAN. The
//! definition is fixed (DESIGN.md, README) so that gateways and Cordon compute the same values:
//! lowercase, split on every character outside `[a-z0-9@._+:/-]`, trim trailing `.` and `:`,
//! keep distinct tokens of at least 6 characters, emit the first 16 hex digits of each token's
//! SHA-256, sorted.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Minimum token length that is fingerprinted: shorter tokens are common words.
pub const MIN_TOKEN_LEN: usize = 6;

fn is_token_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '@' | '.' | '_' | '+' | ':' | '/' | '-')
}

/// Fingerprints a text.
pub fn fingerprint_text(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens: Vec<&str> = lower
        .split(|c: char| !is_token_char(c))
        .map(|t| t.trim_end_matches(['.', ':']))
        .filter(|t| t.len() >= MIN_TOKEN_LEN)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let mut out: Vec<String> = tokens
        .into_iter()
        .map(|t| hex::encode(&Sha256::digest(t.as_bytes())[..8]))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Fingerprints tool arguments: every scalar value, joined by spaces.
pub fn fingerprint_args(args: &Value) -> Vec<String> {
    let mut text = String::new();
    collect_scalars(args, &mut text);
    fingerprint_text(&text)
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
    fn short_and_non_ascii_tokens_are_dropped() {
        assert!(fingerprint_text("héllo wörld ab:cd").is_empty());
        assert_eq!(fingerprint_text("SECRET1").len(), 1);
        assert_eq!(
            fingerprint_text("secret1 SECRET1 secret1."),
            fingerprint_text("secret1")
        );
    }
}
