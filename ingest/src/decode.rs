//! The native decoder: one JSON object per line into an [`Event`], in a single pass.
//!
//! The decoder drives serde_json's streaming deserializer directly with a visitor that knows
//! the schema: each key is matched against the core field names as it is read (nested objects
//! are walked with the dotted prefix kept in one reusable buffer, so `{"audit":{"decision":…}}`
//! and `{"audit.decision":…}` land in the same slot), values go straight into typed slots, and
//! keys are borrowed from the input whenever they contain no escapes. There is no intermediate
//! `serde_json::Value` tree for the whole record — only unknown fields are kept as JSON values.
//!
//! serde_json was chosen over sonic-rs: the `decode` benchmark keeps this decoder above 85% of a
//! derive-based parse of the same bytes, and serde_json has no SIMD/unsafe build surface.
//! simd-json (runtime-detected AVX2, driving these same visitors) was tried later: 3 % fewer
//! instructions on a file run and no change in its time, so it was not taken.
//!
//! In front of it sits a fast path (`fast`) for the shape gateways write, which reads a
//! record in one forward scan and gives up on anything unusual; the serde_json decoder then
//! decodes that record and words every error (see that module for why).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::error::DecodeError;
use crate::event::{CoreField, Event, FieldKind};

mod fast;
pub(crate) use fast::first_special;

/// Whether keys are matched against the event schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Schema {
    /// Cordon's event schema: core fields are typed and type-checked.
    #[default]
    Native,
    /// Arbitrary JSON: every field is kept as an untyped extra (for `cordon hunt`).
    Generic,
}

/// Decodes one native Cordon event from one JSON text.
///
/// A missing `event.id` is derived from a hash of the bytes, so that a replayed record keeps
/// its id; a missing `@timestamp` is an error (event time drives every window).
pub fn decode_native(bytes: &[u8]) -> Result<Event, DecodeError> {
    let ev = decode_with(bytes, Schema::Native)?;
    finish_native(ev, bytes)
}

/// [`decode_native`] without its fast path: the full decoder, which defines the result. The
/// fast path must give the same event or leave the record to it; tests and the fuzz target
/// compare the two.
pub fn decode_reference(bytes: &[u8]) -> Result<Event, DecodeError> {
    let text = utf8(bytes)?;
    let ev = decode_full(text, Schema::Native)?;
    finish_native(ev, bytes)
}

/// Checks the required fields of a native event and fills derived ones.
pub(crate) fn finish_native(mut ev: Event, bytes: &[u8]) -> Result<Event, DecodeError> {
    if ev.timestamp_nanos().is_none() {
        return Err(DecodeError::Missing {
            field: "@timestamp",
        });
    }
    if ev.id().is_none() {
        ev.set_str(CoreField::EventId, content_id(bytes));
    }
    crate::catalogue::label(&mut ev);
    if ev.args_fp().is_none() {
        if let Some(args) = ev.arguments() {
            let fps = crate::fingerprint::fingerprints_of_args(args);
            ev.set_fingerprints(CoreField::ArgsFp, fps);
        }
    }
    Ok(ev)
}

/// A stable id for a record that has none: `h-` and 26 hex digits of the SHA-256 of its bytes.
pub fn content_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("h-{}", &hex::encode(&digest[..13])[..26])
}

/// Decodes one JSON object into an event with the given schema handling.
///
/// A native record of the usual shape is read by a specialised scanner (`fast`); any other
/// goes through serde_json, which also words every error.
pub fn decode_with(bytes: &[u8], schema: Schema) -> Result<Event, DecodeError> {
    let text = utf8(bytes)?;
    if schema == Schema::Native {
        if let Some(ev) = fast::decode(text) {
            return Ok(ev);
        }
        FULL_DECODES.fetch_add(1, Ordering::Relaxed);
    }
    decode_full(text, schema)
}

static FULL_DECODES: AtomicU64 = AtomicU64::new(0);

/// How many native records the fast path left to the full decoder since the process started
/// (undecodable ones included). A gateway whose records always land here — one that escapes
/// `/` in every string, say — decodes at the full decoder's speed, and this shows it.
pub fn full_decodes() -> u64 {
    FULL_DECODES.load(Ordering::Relaxed)
}

/// UTF-8 is checked once for the whole record: reading from a `str`, serde_json does not
/// check each string again (that was 4 % of a Kafka run's profile), and the fast path slices
/// it at ASCII quotes only. The check is `simdutf8`'s (32 or 64 bytes a step where the CPU
/// has the instructions; the standard library's took about 600 instructions for a record of
/// 1 KB); only a record that fails is checked again by the standard library, for where.
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    if let Ok(text) = simdutf8::basic::from_utf8(bytes) {
        return Ok(text);
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        DecodeError::Syntax(format!(
            "invalid unicode: the bytes at line {line} column {column} are not UTF-8"
        ))
    })
}

/// The full decoder: serde_json's streaming deserializer driven by the schema's visitors.
fn decode_full(text: &str, schema: Schema) -> Result<Event, DecodeError> {
    let mut ev = Event::new();
    let mut path = String::with_capacity(64);
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(MapSeed {
        ev: &mut ev,
        path: &mut path,
        schema,
    })
    .map_err(DecodeError::from_json)?;
    de.end().map_err(DecodeError::from_json)?;
    Ok(ev)
}

/// A key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Walks one JSON object whose keys are prefixed with `path`.
struct MapSeed<'a> {
    ev: &'a mut Event,
    path: &'a mut String,
    schema: Schema,
}

impl<'de> DeserializeSeed<'de> for MapSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MapSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (one event per line)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let MapSeed { ev, path, schema } = self;
        let base = path.len();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            path.truncate(base);
            if base > 0 {
                path.push('.');
            }
            path.push_str(&key.0);
            let core = match schema {
                Schema::Native => CoreField::from_name(path),
                Schema::Generic => None,
            };
            match core {
                Some(field) => map.next_value_seed(CoreSeed { ev, field })?,
                None => map.next_value_seed(AnySeed { ev, path, schema })?,
            }
        }
        path.truncate(base);
        Ok(())
    }
}

/// Reads a value of a field that is not in the schema: objects are flattened further,
/// anything else is kept under its dotted name.
struct AnySeed<'a> {
    ev: &'a mut Event,
    path: &'a mut String,
    schema: Schema,
}

impl<'de> DeserializeSeed<'de> for AnySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl AnySeed<'_> {
    fn keep(self, v: Json) {
        self.ev.set_extra(self.path.as_str(), v);
    }
}

impl<'de> Visitor<'de> for AnySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.keep(Json::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.keep(Json::from(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.keep(Json::from(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.keep(Json::from(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.keep(Json::String(v.to_owned()));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.keep(Json::String(v));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.keep(Json::Null);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(v) = seq.next_element::<Json>()? {
            items.push(v);
        }
        self.keep(Json::Array(items));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        MapSeed {
            ev: self.ev,
            path: self.path,
            schema: self.schema,
        }
        .visit_map(map)
    }
}

/// Reads the value of a core field into its typed slot.
struct CoreSeed<'a> {
    ev: &'a mut Event,
    field: CoreField,
}

impl<'de> DeserializeSeed<'de> for CoreSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.field.kind() {
            FieldKind::Json => {
                let v = Json::deserialize(d)?;
                if !v.is_null() {
                    match self.field {
                        CoreField::Arguments => self.ev.set_arguments(v),
                        _ => self.ev.set_tool_description_sha256(v),
                    }
                }
                Ok(())
            }
            _ => d.deserialize_any(self),
        }
    }
}

use serde::Deserialize;

impl CoreSeed<'_> {
    fn wrong<E: de::Error>(&self, found: &str) -> E {
        let expected = match self.field.kind() {
            FieldKind::Str => "a string",
            FieldKind::Timestamp => "an RFC 3339 timestamp string",
            FieldKind::Int => "an integer",
            FieldKind::Float => "a number",
            FieldKind::Fingerprints => "an array of 16-hex-digit fingerprints",
            FieldKind::Json => "a JSON value",
        };
        E::custom(format_args!(
            "field `{}`: expected {expected}, found {found}",
            self.field.name()
        ))
    }
}

impl<'de> Visitor<'de> for CoreSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the value of `{}`", self.field.name())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.field.kind() {
            FieldKind::Str => {
                self.ev.set_str(self.field, v);
                Ok(())
            }
            FieldKind::Timestamp => self.ev.set_timestamp_text(v).map_err(|e| {
                E::custom(format_args!(
                    "field `@timestamp`: expected an RFC 3339 timestamp, found {v:?} ({e})"
                ))
            }),
            _ => Err(self.wrong(&format!("the string {v:?}"))),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        Err(self.wrong(&format!("the boolean {v}")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match self.field.kind() {
            FieldKind::Int => {
                self.ev.set_result_bytes(v);
                Ok(())
            }
            FieldKind::Float => {
                self.ev.set_duration_ms(v as f64);
                Ok(())
            }
            _ => Err(self.wrong(&format!("the number {v}"))),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Err(self.wrong(&format!("the number {v} (too large)"))),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.field.kind() {
            FieldKind::Float => {
                self.ev.set_duration_ms(v);
                Ok(())
            }
            FieldKind::Int if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                self.ev.set_result_bytes(v as i64);
                Ok(())
            }
            _ => Err(self.wrong(&format!("the number {v}"))),
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // null: the field is absent.
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.field.kind() != FieldKind::Fingerprints {
            return Err(self.wrong("an array"));
        }
        // Collected on the stack, then boxed at their exact size: one allocation per array
        // (none for an empty one) instead of a guessed capacity shrunk afterwards.
        let mut stack = [0u64; 32];
        let mut n = 0;
        let mut spilled: Vec<u64> = Vec::new();
        let bad = |found: &str| {
            <A::Error as de::Error>::custom(format_args!(
                "field `{}`: expected an array of 16-hex-digit fingerprints, found {found}",
                self.field.name()
            ))
        };
        while let Some(s) = seq
            .next_element::<Key<'de>>()
            .map_err(|_| bad("a non-string item"))?
        {
            let fp =
                crate::fingerprint::parse_hex(&s.0).ok_or_else(|| bad(&format!("{:?}", s.0)))?;
            if n < stack.len() {
                stack[n] = fp;
                n += 1;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&stack);
                }
                spilled.push(fp);
            }
        }
        if spilled.is_empty() {
            self.ev.set_fingerprints_from(self.field, &mut stack[..n]);
        } else {
            self.ev.set_fingerprints(self.field, spilled);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.wrong("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FieldValue;

    const LINE: &[u8] = br#"{"event.id":"01J","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a1","audit":{"decision":"deny","result_bytes":12},"mcp.method.name":"tools/call","gen_ai.tool.call.arguments":{"to":"x@y.z"},"custom":{"deep":{"k":1}},"tags":["a","b"]}"#;

    #[test]
    fn nested_and_flat_keys_are_equivalent() {
        let nested = decode_native(LINE).unwrap();
        let flat = decode_native(
            br#"{"event.id":"01J","@timestamp":"2026-11-20T10:00:00Z","gen_ai.agent.id":"a1","audit.decision":"deny","audit.result_bytes":12,"mcp.method.name":"tools/call","gen_ai.tool.call.arguments":{"to":"x@y.z"},"custom.deep.k":1,"tags":["a","b"]}"#,
        )
        .unwrap();
        assert_eq!(nested, flat);
        assert_eq!(nested.core(CoreField::Decision), FieldValue::Str("deny"));
        assert_eq!(nested.result_bytes(), Some(12));
        assert_eq!(nested.get("custom.deep.k"), FieldValue::Int(1));
        assert_eq!(nested.category().as_str(), "tool");
        assert!(
            nested.args_fp().is_some(),
            "fingerprints computed from arguments"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err =
            decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z","audit.result_bytes":"big"}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("audit.result_bytes"), "{err}");
        assert!(err.contains("expected an integer"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn bad_timestamp_and_missing_timestamp() {
        let err = decode_native(br#"{"@timestamp":"yesterday"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RFC 3339"), "{err}");
        let err = decode_native(br#"{"event.id":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("@timestamp"), "{err}");
        // A time past 2262 used to wrap around to one in 1677.
        let err = decode_native(br#"{"@timestamp":"2300-01-01T00:00:00Z"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field `@timestamp`") && err.contains("2262-04-11T23:47:16Z"),
            "{err}"
        );
    }

    #[test]
    fn truncated_and_non_object_input() {
        for bad in [
            &b"{\"@timestamp\":\"2026"[..],
            b"[1,2]",
            b"",
            b"42",
            b"{\"a\":1} x",
        ] {
            assert!(
                decode_native(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn invalid_utf8_names_where() {
        let err = decode_native(b"{\"@timestamp\":\"2026-11-20T10:00:00Z\",\"x\":\"a\xffb\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid unicode"), "{err}");
        assert!(err.contains("line 1 column 44"), "{err}");
    }

    #[test]
    fn utf8_check_agrees_with_the_standard_library() {
        // Valid and invalid sequences (a lone continuation byte, an overlong form, a
        // surrogate, a code point past U+10FFFF, a cut-off sequence) at every offset of a
        // record long enough for the vector steps, and at its very end.
        let pieces: [&[u8]; 9] = [
            "é".as_bytes(),
            "€".as_bytes(),
            "𝄞".as_bytes(),
            b"\x80",
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
            b"\xff",
        ];
        for piece in pieces {
            for at in 0..140 {
                let mut bytes = vec![b'a'; at];
                bytes.extend_from_slice(piece);
                bytes.extend_from_slice(&[b'z'; 70][..(at * 7) % 70]);
                let want = std::str::from_utf8(&bytes);
                let got = utf8(&bytes);
                assert_eq!(got.is_ok(), want.is_ok(), "{piece:?} at {at}");
                if let (Ok(g), Ok(w)) = (got, want) {
                    assert_eq!(g, w);
                }
            }
        }
    }

    #[test]
    fn missing_id_is_derived_from_content() {
        let a = decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z"}"#).unwrap();
        let b = decode_native(br#"{"@timestamp":"2026-11-20T10:00:00Z"}"#).unwrap();
        assert_eq!(a.id(), b.id());
        assert!(a.id().unwrap().starts_with("h-"));
    }

    #[test]
    fn generated_traffic_takes_the_fast_path() {
        let cfg = crate::generate::GenConfig {
            agents: 6,
            ..Default::default()
        };
        let events = crate::generate::generate(&cfg).events;
        assert!(events.len() > 500, "{}", events.len());
        for ev in &events {
            let line = ev.to_string();
            let fast = fast::decode(&line).unwrap_or_else(|| panic!("fast path refused {line}"));
            let full = decode_full(&line, Schema::Native).unwrap();
            assert_eq!(fast, full, "{line}");
            assert_eq!(fast.arguments_bytes(), full.arguments_bytes());
        }
        // Anything unusual goes to the full decoder, and is counted.
        let before = full_decodes();
        let escaped = decode_native(
            br#"{"@timestamp":"2026-11-20T10:00:00Z","server.address":"mcp.example\/x"}"#,
        )
        .unwrap();
        assert_eq!(escaped.str(CoreField::ServerAddress), Some("mcp.example/x"));
        assert!(full_decodes() > before);
        // The nested form too.
        let text = std::str::from_utf8(LINE).unwrap();
        assert_eq!(
            fast::decode(text).expect("fast path"),
            decode_full(text, Schema::Native).unwrap()
        );
    }

    #[test]
    fn generic_schema_keeps_everything_as_extra() {
        let ev = decode_with(LINE, Schema::Generic).unwrap();
        assert_eq!(ev.get_extra("audit.decision"), Some(&Json::from("deny")));
        assert_eq!(ev.core(CoreField::Decision), FieldValue::Missing);
    }
}
