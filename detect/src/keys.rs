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
                        let mut key = prefix.clone();
                        push_fp(&mut key, *fp);
                        next.push(key);
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
                (Some((f, l)), _) if f == i => push_fp(out, l[c]),
                (_, Some(v)) => push_value(out, v),
                (_, None) => out.push('\u{0}'),
            }
            out.push('\u{1f}');
        }
    }
    n
}

/// Appends a fingerprint as its 16 hex digits. A key on a fingerprint field fans out to
/// a key per fingerprint, a dozen per event: `format!` spent about 150 instructions on each.
fn push_fp(out: &mut String, fp: u64) {
    let hex = cordon_ingest::fingerprint::hex16(fp);
    // Hex digits are ASCII.
    out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
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
                push_fp(out, *fp);
                out.push(',');
            }
        }
        FieldValue::Json(j) => out.push_str(&j.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cordon_ingest::{CoreField, FieldRef};

    /// A key on a fingerprint field fans out to one key per fingerprint, each written as its
    /// 16 hex digits (leading zeros kept), the same by every path.
    #[test]
    fn fingerprint_keys_fan_out_as_sixteen_hex_digits() {
        let ev = cordon_ingest::decode_native(
            br#"{"@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a","audit.result_fp":["0000000000000001","ffffffffffffffff","00ab00cd00ef0012"]}"#,
        )
        .unwrap();
        let keys = [
            JoinKey {
                field: FieldRef::Core(CoreField::AgentId),
                optional: false,
            },
            JoinKey {
                field: FieldRef::Core(CoreField::ResultFp),
                optional: false,
            },
        ];
        let want: Vec<String> = [0x1u64, 0x00ab_00cd_00ef_0012, u64::MAX]
            .iter()
            .map(|fp| format!("a\u{1f}{fp:016x}\u{1f}"))
            .collect();
        assert_eq!(join_keys(&ev, &keys), want);
        let mut pool = Vec::new();
        let n = join_keys_into(&ev, &keys, &mut pool);
        assert_eq!(&pool[..n], &want[..]);
        let mut one = String::new();
        push_value(&mut one, ev.field(&keys[1].field));
        assert_eq!(one, "0000000000000001,00ab00cd00ef0012,ffffffffffffffff,");
    }
}
