//! Join keys: the values of a step's `by` fields, as one string (fields separated by U+001F).
//! A missing value excludes the event unless the key was written `?field`, in which case it
//! joins as null (U+0000).

use cordon_ingest::{Event, FieldValue};
use cordon_rules::stateful::JoinKey;

/// The join key of an event for a step, or `None` if a required key field is missing.
pub fn join_key(ev: &Event, keys: &[JoinKey]) -> Option<String> {
    let mut out = String::new();
    join_key_into(ev, keys, &mut out).then_some(out)
}

/// Writes the join key into `out` (cleared first); false if a required key field is missing.
/// Lets a hot path reuse one buffer and allocate only when it stores a new key.
pub fn join_key_into(ev: &Event, keys: &[JoinKey], out: &mut String) -> bool {
    out.clear();
    for k in keys {
        match ev.field(&k.field) {
            FieldValue::Missing if k.optional => out.push('\u{0}'),
            FieldValue::Missing => return false,
            v => push_value(out, v),
        }
        out.push('\u{1f}');
    }
    true
}

/// Most keys one event may fan out to.
pub const MAX_FAN_OUT: usize = 64;

/// The join keys of an event for a step. A key on a multi-valued field (content
/// fingerprints) fans out: the event joins under each of its values (at most
/// [`MAX_FAN_OUT`]), so a step `by audit.result_fp` meets a later step `by audit.args_fp` on
/// any shared fingerprint. Empty if a required key field is missing.
pub fn join_keys(ev: &Event, keys: &[JoinKey]) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut fanned = false;
    for k in keys {
        match ev.field(&k.field) {
            FieldValue::Missing if k.optional => out.iter_mut().for_each(|o| o.push('\u{0}')),
            FieldValue::Missing => return Vec::new(),
            // Only the first fingerprint field fans out (as `join_keys_into` does).
            FieldValue::Fingerprints(l) if !l.is_empty() && !fanned => {
                fanned = true;
                let mut next = Vec::with_capacity(out.len() * l.len());
                'outer: for prefix in &out {
                    for fp in l {
                        if next.len() >= MAX_FAN_OUT {
                            break 'outer;
                        }
                        next.push(format!("{prefix}{fp:016x}"));
                    }
                }
                out = next;
            }
            v => {
                let mut text = String::new();
                push_value(&mut text, v);
                out.iter_mut().for_each(|o| o.push_str(&text));
            }
        }
        out.iter_mut().for_each(|o| o.push('\u{1f}'));
    }
    out
}

/// Like [`join_keys`], but writes into a pool of reused strings and returns how many keys
/// `pool[..n]` holds: a hot path that only looks keys up allocates nothing.
pub fn join_keys_into(ev: &Event, keys: &[JoinKey], pool: &mut Vec<String>) -> usize {
    // Values per key field: one, or a fingerprint list.
    let mut fanned: Option<(usize, &[u64])> = None;
    let mut fixed: [Option<FieldValue<'_>>; 8] = [None; 8];
    if keys.len() > fixed.len() {
        let all = join_keys(ev, keys);
        let n = all.len();
        pool.clear();
        pool.extend(all);
        return n;
    }
    for (i, k) in keys.iter().enumerate() {
        match ev.field(&k.field) {
            FieldValue::Missing if !k.optional => return 0,
            FieldValue::Fingerprints(l) if !l.is_empty() && fanned.is_none() => {
                fanned = Some((i, l))
            }
            v => fixed[i] = Some(v),
        }
    }
    let n = fanned.map_or(1, |(_, l)| l.len().min(MAX_FAN_OUT));
    while pool.len() < n {
        pool.push(String::new());
    }
    for (c, out) in pool.iter_mut().take(n).enumerate() {
        out.clear();
        for (i, value) in fixed.iter().enumerate().take(keys.len()) {
            match (fanned, *value) {
                (Some((f, l)), _) if f == i => {
                    use std::fmt::Write;
                    let _ = write!(out, "{:016x}", l[c]);
                }
                (_, Some(v)) => push_value(out, v),
                (_, None) => out.push('\u{0}'),
            }
            out.push('\u{1f}');
        }
    }
    n
}

/// Appends a value's text form.
pub fn push_value(out: &mut String, v: FieldValue<'_>) {
    match v {
        FieldValue::Missing => out.push('\u{0}'),
        FieldValue::Str(s) => out.push_str(s),
        FieldValue::Int(i) => out.push_str(&i.to_string()),
        FieldValue::Float(x) => out.push_str(&x.to_string()),
        FieldValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        FieldValue::Fingerprints(l) => {
            for fp in l {
                out.push_str(&format!("{fp:016x},"));
            }
        }
        FieldValue::Json(j) => out.push_str(&j.to_string()),
    }
}
