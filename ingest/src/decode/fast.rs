//! The fast path of the native decoder: one forward scan over the common shape of an event.
//!
//! Decoding was half of a file run's instructions, and most of that was serde_json's generic
//! machinery around short strings: a visitor call per key, a `Cow` per key, an escape scan set
//! up afresh for each of the twenty-odd keys and as many hex fingerprints of a record. Gateways
//! write the same shape every time — an object of dotted keys, plain strings, a few numbers,
//! two fingerprint arrays and an arguments object — so this scanner reads exactly that and
//! nothing more: strings without escapes (sixteen bytes per step), numbers in JSON's grammar,
//! fingerprints straight from their bytes, objects flattened to dotted names like the full
//! decoder does. Free-form values (tool arguments, description hashes, arrays outside the
//! schema) are built as serde_json builds a `Value`, and only a value the builder cannot take
//! (an escape, an odd number, deep nesting) is handed to serde_json; a description-hash map
//! that recurs byte for byte is built once per thread and shared. Top-level keys are
//! predicted from the order the thread's previous records had (a gateway writes its keys in
//! one order): the predicted name is compared where it stands, and only a miss is read as a
//! string and looked up.
//!
//! Anything else — an escape, a wrong type, a number it does not parse exactly like
//! serde_json, deep nesting, any syntax error — makes it give up, and the full decoder
//! ([`super::decode_reference`]) decodes the record from the start. So the full decoder
//! stays the definition and the only source of error messages; the fast path either builds
//! the same event or none. The tests and the `decode_fast` fuzz target hold it to that.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde_json::Value as Json;

use crate::event::{build_event, sort_distinct, CoreField, Event, EventBuilder, FieldKind};
use crate::fingerprint::{parse_hex, parse_hex_bytes};

/// Nesting the fast path follows, in objects and again inside a free-form value, before it
/// leaves a record to the full decoder: twice this stays well under serde_json's limit of
/// 128, past which the full decoder refuses a record.
const MAX_DEPTH: usize = 32;

/// Recurring free-form values kept per thread ([`Scan::shared_json`]).
const SHARED_KEPT: usize = 256;

/// Slots of the key predictor ([`Scan::next_key`]): one per core field, one for the start of
/// a record, one for after a key outside the schema.
const KEY_SLOTS: usize = CoreField::ALL.len() + 2;
const AT_START: usize = CoreField::ALL.len();
const AFTER_EXTRA: usize = CoreField::ALL.len() + 1;
/// No prediction.
const UNKNOWN: u8 = u8::MAX;

thread_local! {
    static SHARED: RefCell<FxHashMap<Box<[u8]>, Arc<Json>>> = RefCell::default();
    static NEXT_KEY: Cell<[u8; KEY_SLOTS]> = const { Cell::new([UNKNOWN; KEY_SLOTS]) };
    /// The fingerprint scratch, kept from record to record: a new one grew three times per
    /// record (two arrays of a dozen fingerprints).
    static FPS: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
}

/// Decodes a native record of the common shape, or returns `None` for the full decoder.
pub(super) fn decode(text: &str) -> Option<Event> {
    build_event(|ev| {
        let mut s = Scan {
            text,
            b: text.as_bytes(),
            i: 0,
            ev,
            path: String::new(),
            fps: FPS.take(),
            fp_lists: [None, None],
            next_key: NEXT_KEY.with(Cell::get),
            prev_key: AT_START,
        };
        s.fps.clear();
        s.ws();
        let done = s.object(0);
        if done.is_some() {
            let [result, args] = s.fp_lists.clone().map(|r| r.and_then(|r| s.fps.get(r)));
            s.ev.set_fingerprint_lists(result, args);
        }
        NEXT_KEY.with(|c| c.set(s.next_key));
        FPS.set(std::mem::take(&mut s.fps));
        done?;
        s.ws();
        (s.i == s.b.len()).then_some(())
    })
}

struct Scan<'a, 'e> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// The event's fields, written in place.
    ev: EventBuilder<'e>,
    /// The dotted prefix of nested keys (empty at the top level).
    path: String,
    /// The record's fingerprint lists, each sorted and distinct, set on the event together
    /// once the record is read (one allocation of their exact size).
    fps: Vec<u64>,
    /// Where `audit.result_fp` and `audit.args_fp` are in `fps`.
    fp_lists: [Option<std::ops::Range<usize>>; 2],
    /// For each top-level key (a core field, the start, or any key outside the schema), the
    /// core field whose key followed it last time, as an index into `CoreField::ALL`
    /// ([`UNKNOWN`] if none). A gateway writes its keys in the same order in every record, so
    /// the next key is nearly always the predicted one: its bytes are compared where they
    /// stand, and the scan for the string's end and the name lookup (about 165 instructions
    /// per key) are skipped. Kept per thread from record to record.
    next_key: [u8; KEY_SLOTS],
    /// The slot of the key before this one.
    prev_key: usize,
}

/// A number as serde_json would hand it to the full decoder's visitors.
enum Num {
    Int(i64),
    Float(f64),
}

impl<'a> Scan<'a, '_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        // Records are mostly compact: the next byte is nearly always the token itself.
        let c = *self.b.get(self.i)?;
        if c > b' ' {
            return Some(c);
        }
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes, the opening quote next.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let len = plain_len(&self.b[start..])?;
        self.i = start + len + 1;
        self.text.get(start..start + len)
    }

    /// An object whose keys are prefixed with `self.path`, the opening brace next.
    fn object(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let base = self.path.len();
        loop {
            let field = if depth == 0 {
                let field = match self.predicted_key() {
                    Some(f) => Some(f),
                    None => {
                        let key = self.string()?;
                        let f = CoreField::from_name(key);
                        if f.is_none() {
                            self.path.clear();
                            self.path.push_str(key);
                        }
                        f
                    }
                };
                let slot = field.map_or(AFTER_EXTRA, |f| f as usize);
                if let Some(f) = field {
                    self.next_key[self.prev_key] = f as u8;
                }
                self.prev_key = slot;
                self.eat(b':')?;
                field
            } else {
                let key = self.string()?;
                self.eat(b':')?;
                // As the full decoder names them: an empty prefix adds no dot.
                self.path.truncate(base);
                if base > 0 {
                    self.path.push('.');
                }
                self.path.push_str(key);
                CoreField::from_name(&self.path)
            };
            match field {
                Some(field) => self.core(field)?,
                None => self.extra(depth)?,
            }
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    self.path.truncate(base);
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The top-level key [`Scan::next_key`] predicts, read if the record has it next (the
    /// key's opening quote, its exact name, its closing quote): no core field's name holds a
    /// quote, a backslash or a control character, so those bytes are that key and nothing
    /// else. `None` leaves the position as it was, for the key to be read in full.
    fn predicted_key(&mut self) -> Option<CoreField> {
        let f = *CoreField::ALL.get(usize::from(self.next_key[self.prev_key]))?;
        let name = f.name().as_bytes();
        self.ws();
        let (open, close) = (self.i, self.i + 1 + name.len());
        if self.b.get(open) == Some(&b'"')
            && self
                .b
                .get(open + 1..close)
                .is_some_and(|k| same_bytes(k, name))
            && self.b.get(close) == Some(&b'"')
        {
            self.i = close + 1;
            Some(f)
        } else {
            None
        }
    }

    /// The value of a core field.
    fn core(&mut self, field: CoreField) -> Option<()> {
        let c = self.peek()?;
        if c == b'n' {
            // null: the field is absent, whatever its type.
            return self.literal(b"null");
        }
        match field.kind() {
            FieldKind::Str => {
                let v = self.string()?;
                self.ev.set_str(field, v);
            }
            FieldKind::Timestamp => {
                let v = self.string()?;
                self.ev.set_timestamp_text(v).ok()?;
            }
            FieldKind::Int => match self.number()? {
                Num::Int(v) => self.ev.set_result_bytes(v),
                Num::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                    self.ev.set_result_bytes(v as i64)
                }
                Num::Float(_) => return None,
            },
            FieldKind::Float => match self.number()? {
                Num::Int(v) => self.ev.set_duration_ms(v as f64),
                Num::Float(v) => self.ev.set_duration_ms(v),
            },
            FieldKind::Fingerprints => self.fingerprints(field)?,
            FieldKind::Json => match field {
                CoreField::Arguments => {
                    let v = self.json()?;
                    self.ev.set_arguments(v);
                }
                _ => {
                    let v = self.shared_json()?;
                    self.ev.set_tool_description_sha256_shared(v);
                }
            },
        }
        Some(())
    }

    /// The value of a field outside the schema, named by `self.path`.
    fn extra(&mut self, depth: usize) -> Option<()> {
        let v = match self.peek()? {
            b'{' => return self.object(depth + 1),
            _ => self.json()?,
        };
        self.ev.set_extra(self.path.as_str(), v);
        Some(())
    }

    /// A number in JSON's grammar that parses to the value serde_json gives it: integers of
    /// up to 18 digits (no `-0`, which serde_json reads as a float) and finite floats.
    fn number(&mut self) -> Option<Num> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let digits = i;
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits_end(b, i + 1),
            _ => return None,
        }
        let int_end = i;
        if b.get(i) == Some(&b'.') {
            // At least one digit after the point.
            let end = digits_end(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits_end(b, i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.i = i;
        let text = &self.text[start..i];
        if i == int_end {
            if int_end - digits > 18 || (negative && b[digits] == b'0') {
                return None;
            }
            text.parse().ok().map(Num::Int)
        } else {
            let v: f64 = text.parse().ok()?;
            v.is_finite().then_some(Num::Float(v))
        }
    }

    /// An array of 16-hex-digit strings, straight into the event's sorted list.
    fn fingerprints(&mut self, field: CoreField) -> Option<()> {
        if self.peek()? != b'[' {
            return None;
        }
        let start = self.fps.len();
        self.members(b']', |s| {
            let fp = s.hex16()?;
            s.fps.push(fp);
            Some(())
        })?;
        let n = sort_distinct(&mut self.fps[start..]);
        self.fps.truncate(start + n);
        // A later list of the same field replaces the earlier one, as in the full decoder.
        let list = usize::from(field == CoreField::ArgsFp);
        self.fp_lists[list] = Some(start..start + n);
        Some(())
    }

    /// A fingerprint: a string of exactly 16 hex digits, the opening quote next. Its digits
    /// are read in place (a digit is never a quote, a backslash or a control character, so
    /// there is no escape to look for); any other string goes the long way, and is refused
    /// unless it is 16 hex digits.
    fn hex16(&mut self) -> Option<u64> {
        self.ws();
        let (b, i) = (self.b, self.i);
        if b.get(i) == Some(&b'"') && b.get(i + 17) == Some(&b'"') {
            if let Some(fp) = b.get(i + 1..i + 17).and_then(parse_hex_bytes) {
                self.i = i + 18;
                return Some(fp);
            }
        }
        parse_hex(self.string()?)
    }

    /// A free-form value. The common shapes (strings without escapes, numbers, objects and
    /// arrays of them) are built here; anything else is handed to serde_json, from the
    /// value's start.
    fn json(&mut self) -> Option<Json> {
        self.ws();
        let start = self.i;
        if let Some(v) = self.value(0) {
            return Some(v);
        }
        self.i = start;
        self.skip_value()?;
        serde_json::from_str(&self.text[start..self.i]).ok()
    }

    /// A free-form value that recurs byte for byte (a server's tool description hashes, sent
    /// on every `tools/list`): one copy of each recent one is kept on this thread, keyed by
    /// its text, and handed out again. Equal text parses to an equal value, so the event is
    /// the one [`Scan::json`] would build; it is built once, and events holding the same copy
    /// compare by pointer. At most [`SHARED_KEPT`] values are kept; when full, the store
    /// starts over.
    fn shared_json(&mut self) -> Option<Arc<Json>> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        let b = self.b;
        let text = &b[start..self.i];
        if let Some(v) = SHARED.with_borrow(|kept| kept.get(text).cloned()) {
            return Some(v);
        }
        self.i = start;
        let v = Arc::new(self.json()?);
        SHARED.with_borrow_mut(|kept| {
            if kept.len() >= SHARED_KEPT {
                kept.clear();
            }
            kept.insert(text.into(), v.clone());
        });
        Some(v)
    }

    /// A free-form value built as serde_json builds a `Value`: a later duplicate key replaces
    /// an earlier one (`Map::insert`, as its visitor does), numbers as [`Scan::number`] reads
    /// them. `None` on an escape, a number it leaves to serde_json, nesting past
    /// [`MAX_DEPTH`] or a syntax error; the caller then starts again with serde_json.
    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth >= MAX_DEPTH {
            return None;
        }
        Some(match self.peek()? {
            b'{' => {
                let mut map = serde_json::Map::new();
                self.members(b'}', |s| {
                    let key = s.string()?;
                    s.eat(b':')?;
                    let v = s.value(depth + 1)?;
                    map.insert(key.to_owned(), v);
                    Some(())
                })?;
                Json::Object(map)
            }
            b'[' => {
                let mut items = Vec::new();
                self.members(b']', |s| {
                    items.push(s.value(depth + 1)?);
                    Some(())
                })?;
                Json::Array(items)
            }
            b'"' => Json::String(self.string()?.to_owned()),
            b't' => self.literal(b"true").map(|()| Json::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Json::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Json::Null)?,
            _ => match self.number()? {
                Num::Int(v) => Json::from(v),
                Num::Float(v) => Json::from(v),
            },
        })
    }

    /// The members of an object or the items of an array, its opening bracket next: `member`
    /// reads one, then a comma or `close` follows.
    fn members(
        &mut self,
        close: u8,
        mut member: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.i += 1;
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            member(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Moves past one value, counting brackets outside strings. serde_json then checks the
    /// span is one well-formed value; this only needs to find where a well-formed one ends.
    fn skip_value(&mut self) -> Option<()> {
        let b = self.b;
        let mut depth = 0usize;
        loop {
            match *b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    loop {
                        match *b.get(self.i)? {
                            b'"' => break,
                            b'\\' => self.i += 2,
                            _ => self.i += 1,
                        }
                    }
                    self.i += 1;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b',' | b':' if depth == 0 => return None,
                _ => self.i += 1,
            }
            if depth == 0 {
                // A scalar at the top ends at the next delimiter.
                while let Some(&c) = b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    if matches!(c, b'{' | b'[' | b'"') {
                        return None;
                    }
                    self.i += 1;
                }
                return Some(());
            }
        }
    }
}

/// Where the run of digits from `i` ends.
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// The length of a string's body up to its closing quote, or `None` when an escape or a
/// control character comes first (or no quote does).
fn plain_len(s: &[u8]) -> Option<usize> {
    first_special(s).filter(|&at| s[at] == b'"')
}

/// `a == b` for two slices of the same length, in at most four loads per side for up to
/// 32 bytes (the first and last 16, 8 or 4 bytes, overlapping): a call to `memcmp` for each
/// predicted key of each record cost about 40 instructions.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    macro_rules! ends {
        ($t:ty, $w:literal) => {{
            let head = |s: &[u8]| s.first_chunk::<$w>().map(|c| <$t>::from_le_bytes(*c));
            let tail = |s: &[u8]| s.last_chunk::<$w>().map(|c| <$t>::from_le_bytes(*c));
            head(a) == head(b) && tail(a) == tail(b)
        }};
    }
    match n {
        16..=32 => ends!(u128, 16),
        8..=15 => ends!(u64, 8),
        4..=7 => ends!(u32, 4),
        _ => a == b,
    }
}

/// Where the first byte JSON cannot hold verbatim in a string is — a quote, a backslash or a
/// control character — or `None` when there is none (the event writer then copies the
/// string as it is).
///
/// Sixteen bytes are compared at a time as one vector (SSE2 on x86-64, through `wide`), and
/// the first special byte is found from the comparison's bit mask. Every key and string
/// value of every record passes here: eight bytes at a time in plain integers took 17 % of a
/// file run's instructions. The last few bytes of the text go eight at a time, then one by
/// one.
pub(crate) fn first_special(s: &[u8]) -> Option<usize> {
    use wide::u8x16;
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    let (quote, backslash, below_space) =
        (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0x1f));
    while let Some(chunk) = s.get(i..i + 16) {
        let v = u8x16::new(chunk.try_into().ok()?);
        // A byte is a control character exactly when the smaller of it and 0x1f is itself.
        let special = v.cmp_eq(quote) | v.cmp_eq(backslash) | v.min(below_space).cmp_eq(v);
        let mask = special.move_mask();
        if mask != 0 {
            return Some(i + mask.trailing_zeros() as usize);
        }
        i += 16;
    }
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        // The high bit of each byte that is zero. Borrows only run upwards, so the lowest
        // flagged byte is exactly the first zero one.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let special =
            zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below_space;
        if special != 0 {
            return Some(i + (special.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&c| matches!(c, b'"' | b'\\' | 0..=0x1f))
        .map(|at| i + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to 40, with a difference at every position, and equal slices.
    #[test]
    fn same_bytes_is_slice_equality() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same_bytes(&a, &b), "{n} at {at}");
            }
            assert!(!same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn plain_strings_end_at_their_quote() {
        assert_eq!(plain_len(b"abc\"rest"), Some(3));
        assert_eq!(plain_len(b"0123456789abcdef\"x"), Some(16));
        assert_eq!(plain_len(b"01234567\""), Some(8));
        assert_eq!(plain_len("héllo wörld, ünïcode\"".as_bytes()), Some(24));
        assert_eq!(plain_len(b"0123456789\\\"abc\""), None, "escape first");
        assert_eq!(plain_len(b"0123456789\tabc\""), None, "control character");
        assert_eq!(plain_len(b"0123456789abcdef"), None, "no closing quote");
        assert_eq!(plain_len(b"\""), Some(0));
        // Every position of the first special byte within and across words.
        for len in 0..70 {
            for special in [b'"', b'\\', b'\n', 0x1f, 0] {
                let mut text = vec![b'a'; len];
                text.push(special);
                text.extend_from_slice(b"\"\\\x01zzzzzzzzzzzzzzzz\"");
                let want = (special == b'"').then_some(len);
                assert_eq!(plain_len(&text), want, "{len} {special}");
                let mut wide = "é".repeat(len / 2).into_bytes();
                let at = wide.len();
                wide.push(special);
                wide.extend_from_slice(b"zzzzzzzz\"");
                assert_eq!(plain_len(&wide), (special == b'"').then_some(at), "{len}");
            }
        }
    }
}
