//! Engine checkpoints: everything the engine holds — events waiting in the reorder buffer,
//! open partial matches, threshold windows, suppression windows, per-agent profiles,
//! enforcements and counters — as bytes, and back.
//!
//! Why: a Kafka partition's detection state must move with the partition. When an instance
//! stops, crashes or loses the partition in a rebalance, the next owner restores the state
//! written with the offsets it reflects and continues as if nothing had happened: a chain whose
//! first step was read by one instance completes on the other. The test of a checkpoint is
//! strict — an engine restored mid-stream gives exactly the alerts of one that never stopped
//! (`tests/checkpoint.rs`).
//!
//! The form is postcard (compact, no schema to ship) with a format name and version up front,
//! then a table of events, then the state. Events are kept as their native JSON line (content
//! fingerprints apart, in binary) plus the baseline features the engine set on them, so a
//! restored partial match carries the same evidence and figures; the state refers to them by
//! id, so an event held by several partial matches is written once.
//!
//! **Chains.** An open partial match holds its events until it completes or its span ends,
//! often minutes, and the state is checkpointed every second or so: writing every held event
//! at every checkpoint was nearly all of a checkpoint's cost. A checkpoint written against an
//! [`EventLog`] (the events earlier checkpoints of its chain wrote) writes only the events new
//! since, and refers to the rest; restoring reads the chain's checkpoints for their events,
//! and the last full one and the deltas after it for the state
//! ([`crate::Engine::restore_chain`]). The writer decides when to start a new chain (an empty
//! log), e.g. when the chain holds far more than the state needs.
//!
//! **Deltas.** At a high event rate the rules' own state outgrows the events: a rule keyed by
//! session holds a window for every session of its span. A delta
//! ([`crate::Engine::checkpoint_delta`]) writes, for each rule, only the keys whose window or
//! partial matches changed since a copy of the engine taken at the previous checkpoint, and
//! the keys that went. Threshold windows and sequence keys are held in maps whose entries an
//! engine and its copies share until one side changes an entry (which then gets a new
//! allocation), so finding what changed compares pointers key by key instead of serialising
//! every window. A restore applies the deltas after the chain's last full checkpoint in
//! order.
//! Detectors are saved
//! by rule id, version and query: a restored engine running a changed rule starts that rule
//! empty (as a hot reload does) and keeps every other rule's state.

use std::cell::RefCell;
use std::collections::VecDeque;

use cordon_ingest::{BaselineFeatures, BaselineField, CoreField, Event};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The format name written first in every checkpoint.
pub const FORMAT: &str = "cordon-engine-checkpoint";
/// The format name of a delta: a checkpoint whose rules' state is what changed since the
/// previous checkpoint of its chain ([`crate::Engine::checkpoint_delta`]).
pub const DELTA_FORMAT: &str = "cordon-engine-checkpoint-delta";
/// The version this build writes and reads.
pub const VERSION: u32 = 3;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint, or of another version.
    #[error("not a Cordon engine checkpoint of version {VERSION}: {0}")]
    Format(String),
    /// Damaged bytes.
    #[error("damaged checkpoint: {0}")]
    Damaged(String),
}

/// An event as a checkpoint keeps it: its native JSON without the content fingerprints, the
/// fingerprints in binary, and the baseline features set on it.
#[derive(Serialize, Deserialize)]
struct SavedEvent(
    String,
    Option<Vec<u64>>,
    Option<Vec<u64>>,
    Vec<(String, f64, f64, f64)>,
);

/// [`SavedEvent`] as it is written: borrowed from the event, so saving copies the
/// fingerprints and feature names once, into the checkpoint, and not first into a
/// `SavedEvent` (postcard writes `&str`/`String` and slices/vectors alike).
#[derive(Serialize)]
struct SavingEvent<'a>(
    &'a str,
    Option<&'a [u64]>,
    Option<&'a [u64]>,
    Vec<(&'static str, f64, f64, f64)>,
);

impl SavingEvent<'_> {
    /// The event's saved bytes, written into a buffer sized for them up front.
    fn bytes(e: &Event) -> Result<Vec<u8>, postcard::Error> {
        let json = e.to_json_without_fingerprints();
        let features: Vec<(&'static str, f64, f64, f64)> = e
            .baseline()
            .map(|b| {
                b.iter()
                    .map(|(f, v)| (f.name(), v.value, v.observed, v.expected))
                    .collect()
            })
            .unwrap_or_default();
        let (r, a) = (e.result_fp(), e.args_fp());
        let fps = r.map_or(0, <[u64]>::len) + a.map_or(0, <[u64]>::len);
        // Varint lengths and numbers take at most 10 bytes each; names are short.
        let size = json.len() + 10 * fps + 64 * features.len() + 32;
        postcard::to_extend(
            &SavingEvent(&json, r, a, features),
            Vec::with_capacity(size),
        )
    }
}

impl SavedEvent {
    #[cfg(test)]
    fn from_event(e: &Event) -> SavedEvent {
        let features = e
            .baseline()
            .map(|b| {
                b.iter()
                    .map(|(f, v)| (f.name().to_owned(), v.value, v.observed, v.expected))
                    .collect()
            })
            .unwrap_or_default();
        SavedEvent(
            e.to_json_without_fingerprints(),
            e.result_fp().map(<[u64]>::to_vec),
            e.args_fp().map(<[u64]>::to_vec),
            features,
        )
    }

    fn into_event(self) -> Result<Event, String> {
        let SavedEvent(json, result_fp, args_fp, features) = self;
        let mut e = cordon_ingest::decode_native(json.as_bytes())
            .map_err(|err| format!("a saved event does not decode ({err})"))?;
        if let Some(fps) = result_fp {
            e.set_fingerprints(CoreField::ResultFp, fps);
        }
        if let Some(fps) = args_fp {
            e.set_fingerprints(CoreField::ArgsFp, fps);
        }
        if !features.is_empty() {
            let mut b = BaselineFeatures::default();
            for (name, value, observed, expected) in features {
                let f = BaselineField::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| format!("unknown baseline feature {name:?}"))?;
                b.set(f, value, observed, expected);
            }
            e.set_baseline(b);
        }
        Ok(e)
    }
}

/// The events a chain of checkpoints holds, by [`Event::instance_id`], with the size each
/// was written at: a checkpoint written against it ([`crate::Engine::checkpoint_with`])
/// refers to these events instead of writing them again, and writes only the others.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    written: FxHashMap<u64, u32>,
}

impl EventLog {
    /// Events in the log.
    pub fn len(&self) -> usize {
        self.written.len()
    }

    /// Whether the log is empty (the next checkpoint writes every event it holds).
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Bytes of the events in the log, as written.
    pub fn bytes(&self) -> u64 {
        self.written.values().map(|&n| u64::from(n)).sum()
    }
}

/// A checkpoint written against an [`EventLog`].
#[derive(Debug)]
pub struct Written {
    /// The checkpoint: the engine's state, and the events it holds that the log did not.
    pub bytes: Vec<u8>,
    /// The events this checkpoint's state refers to: the log for the next checkpoint of the
    /// chain, once this one is stored. Events of the old log that are no longer held are not
    /// in it.
    pub log: EventLog,
    /// Events written into this checkpoint.
    pub new_events: usize,
    /// Their bytes.
    pub new_event_bytes: u64,
    /// The largest parts of the state (rule id, `profiles`, `reorder buffer`, …) and their
    /// bytes before compression, largest first: what a checkpoint's size is made of.
    pub largest: Vec<(String, usize)>,
}

/// While a checkpoint is being written on this thread: what earlier ones of its chain hold,
/// what this one refers to, and the events it writes.
struct Saving {
    /// A delta: the state it leaves out still refers to the events of `before`, so the next
    /// log keeps them.
    cumulative: bool,
    before: FxHashMap<u64, u32>,
    referenced: FxHashMap<u64, u32>,
    new: Vec<(u64, Vec<u8>)>,
    new_bytes: u64,
}

/// While a checkpoint is being restored on this thread: the chain's events by id, as bytes
/// until first referred to, then decoded (once: every partial holding an event shares it).
struct Loading {
    raw: FxHashMap<u64, Vec<u8>>,
    decoded: FxHashMap<u64, Event>,
    /// The first event that could not be resolved, and why (postcard keeps no message of
    /// its own for a custom error).
    error: Option<String>,
}

thread_local! {
    static SAVING: RefCell<Option<Saving>> = const { RefCell::new(None) };
    static LOADING: RefCell<Option<Loading>> = const { RefCell::new(None) };
}

/// Writes events against `log` on this thread until [`Saver::finish`] (or drop).
pub(crate) struct Saver(());

impl Saver {
    pub(crate) fn start(log: EventLog) -> Saver {
        Saver::begin(log, false)
    }

    /// For a delta: the next log is this one's with the events the delta adds.
    pub(crate) fn start_delta(log: EventLog) -> Saver {
        Saver::begin(log, true)
    }

    fn begin(log: EventLog, cumulative: bool) -> Saver {
        SAVING.with(|c| {
            *c.borrow_mut() = Some(Saving {
                cumulative,
                before: log.written,
                referenced: FxHashMap::default(),
                new: Vec::new(),
                new_bytes: 0,
            })
        });
        Saver(())
    }

    /// The events written (to store with the checkpoint) and the new log.
    pub(crate) fn finish(self) -> (Vec<(u64, Vec<u8>)>, EventLog, u64) {
        let s = SAVING.with(|c| c.borrow_mut().take());
        match s {
            Some(s) => {
                let mut written = s.referenced;
                if s.cumulative {
                    written.extend(s.before);
                }
                (s.new, EventLog { written }, s.new_bytes)
            }
            None => (Vec::new(), EventLog::default(), 0),
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        SAVING.with(|c| c.borrow_mut().take());
    }
}

/// Resolves events of a chain on this thread until dropped.
pub(crate) struct Loader(());

impl Loader {
    pub(crate) fn start(events: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Loader {
        LOADING.with(|c| {
            *c.borrow_mut() = Some(Loading {
                raw: events.into_iter().collect(),
                decoded: FxHashMap::default(),
                error: None,
            })
        });
        Loader(())
    }
}

impl Loader {
    /// Why an event could not be resolved, if one could not: a better account of a decode
    /// error than the decoder's own.
    pub(crate) fn error(&self) -> Option<String> {
        LOADING.with(|c| c.borrow_mut().as_mut().and_then(|l| l.error.take()))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        LOADING.with(|c| c.borrow_mut().take());
    }
}

/// An event in a checkpoint: its id. The event itself goes into the checkpoint's event table
/// the first time the chain refers to it ([`EventLog`]).
struct Encoded<'a>(&'a Event);

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let id = self.0.instance_id();
        SAVING.with(|c| {
            let mut c = c.borrow_mut();
            let Some(st) = c.as_mut() else {
                return Err(serde::ser::Error::custom(
                    "an event written outside a checkpoint",
                ));
            };
            if !st.referenced.contains_key(&id) {
                let size = match st.before.get(&id) {
                    Some(&n) => n,
                    None => {
                        let b = SavingEvent::bytes(self.0).map_err(serde::ser::Error::custom)?;
                        let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
                        st.new_bytes += u64::from(n);
                        st.new.push((id, b));
                        n
                    }
                };
                st.referenced.insert(id, size);
            }
            Ok(())
        })?;
        s.serialize_u64(id)
    }
}

/// The other way: an id, resolved through the chain's events.
struct Decoded(Event);

impl<'de> Deserialize<'de> for Decoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decoded, D::Error> {
        use serde::de::Error as _;
        let id = u64::deserialize(d)?;
        LOADING.with(|c| {
            let mut c = c.borrow_mut();
            let Some(l) = c.as_mut() else {
                return Err(D::Error::custom("an event read outside a checkpoint"));
            };
            if let Some(e) = l.decoded.get(&id) {
                return Ok(Decoded(e.clone()));
            }
            let resolved = match l.raw.remove(&id) {
                None => Err(format!("event {id} is in none of the checkpoint's files")),
                Some(raw) => postcard::from_bytes::<SavedEvent>(&raw)
                    .map_err(|e| format!("saved event {id}: {e}"))
                    .and_then(SavedEvent::into_event),
            };
            match resolved {
                Ok(e) => {
                    l.decoded.insert(id, e.clone());
                    Ok(Decoded(e))
                }
                Err(why) => {
                    l.error.get_or_insert_with(|| why.clone());
                    Err(D::Error::custom(why))
                }
            }
        })
    }
}

/// Bytes written as one byte string (postcard writes a `Vec<u8>` byte by byte).
pub(crate) struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Vec<u8>, E> {
                Ok(b.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(b)
            }
        }
        d.deserialize_bytes(V).map(Bytes)
    }
}

/// A `Vec<u8>` field written as one byte string (`#[serde(with = "crate::checkpoint::raw")]`):
/// postcard lays out a sequence of bytes and a byte string alike, so the bytes read back
/// either way, but it writes a sequence one byte at a time.
pub(crate) mod raw {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::Bytes::deserialize(d).map(|b| b.0)
    }
}

/// [`raw`] for an `Option<Vec<u8>>`.
pub(crate) mod opt_raw {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&super::BytesRef(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<super::Bytes>::deserialize(d).map(|b| b.map(|b| b.0))
    }
}

/// [`Bytes`], borrowed.
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// `#[serde(with = "…::event")]` for an [`Event`] field.
pub(crate) mod event {
    use super::*;

    pub fn serialize<S: Serializer>(e: &Event, s: S) -> Result<S::Ok, S::Error> {
        Encoded(e).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        Ok(Decoded::deserialize(d)?.0)
    }
}

/// `#[serde(with = "…::events")]` for a `Vec<Event>` field.
pub(crate) mod events {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Event], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(Encoded))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        Ok(Vec::<Decoded>::deserialize(d)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

/// `#[serde(with = "…::event_deque")]` for a `VecDeque<Event>` field.
pub(crate) mod event_deque {
    use super::*;

    pub fn serialize<S: Serializer>(v: &VecDeque<Event>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(Encoded))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<Event>, D::Error> {
        Ok(Vec::<Decoded>::deserialize(d)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

/// `#[serde(with = "…::opt_events")]` for a `Vec<Option<Event>>` field.
pub(crate) mod opt_events {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Option<Event>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|e| e.as_ref().map(Encoded)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Event>>, D::Error> {
        Ok(Vec::<Option<Decoded>>::deserialize(d)?
            .into_iter()
            .map(|e| e.map(|e| e.0))
            .collect())
    }
}

/// `#[serde(with = "…::distinct")]` for a threshold window's distinct values.
pub(crate) mod distinct {
    use super::*;

    type Map = FxHashMap<String, (i64, Option<Event>)>;

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|(k, (t, e))| (k, t, e.as_ref().map(Encoded))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        Ok(Vec::<(String, i64, Option<Decoded>)>::deserialize(d)?
            .into_iter()
            .map(|(k, t, e)| (k, (t, e.map(|e| e.0))))
            .collect())
    }
}

/// A map whose keys and values are shared with the copies a checkpoint takes
/// (`Arc<str>` → `Arc<V>`), written exactly as the plain `String` → `V` map it stands for: the
/// checkpoint's form does not depend on how the state is held in memory.
pub(crate) type Shared<V> = FxHashMap<std::sync::Arc<str>, std::sync::Arc<V>>;

/// Serialises a [`Shared`] map as its plain form.
pub(crate) struct SharedMap<'a, V>(pub &'a Shared<V>);

impl<V: Serialize> Serialize for SharedMap<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (&**k, &**v)))
    }
}

/// A [`Shared`] map from its plain form.
pub(crate) fn shared<V>(plain: FxHashMap<String, V>) -> Shared<V> {
    plain
        .into_iter()
        .map(|(k, v)| (std::sync::Arc::from(k), std::sync::Arc::new(v)))
        .collect()
}

/// What changed in a [`Shared`] map since a copy of it: the entries whose value is not the
/// copy's (every change goes through `Arc::make_mut`, which gives a value shared with a copy
/// a new allocation) and the keys the copy has and the map has not. Written as
/// `(Vec<(key, value)>, Vec<key>)`; read back with [`MapDelta::apply`].
pub(crate) struct SharedDiff<'a, V> {
    changed: Vec<(&'a str, &'a V)>,
    removed: Vec<&'a str>,
}

impl<'a, V> SharedDiff<'a, V> {
    /// `now` against the copy `prev`.
    pub(crate) fn new(now: &'a Shared<V>, prev: &'a Shared<V>) -> SharedDiff<'a, V> {
        let mut changed: Vec<(&str, &V)> = now
            .iter()
            .filter(|(k, v)| {
                prev.get(&***k)
                    .is_none_or(|p| !std::sync::Arc::ptr_eq(p, v))
            })
            .map(|(k, v)| (&**k, &**v))
            .collect();
        let mut removed: Vec<&str> = prev
            .keys()
            .filter(|k| !now.contains_key(&***k))
            .map(|k| &**k)
            .collect();
        // In key order: the same state gives the same bytes.
        changed.sort_unstable_by_key(|(k, _)| *k);
        removed.sort_unstable();
        SharedDiff { changed, removed }
    }
}

impl<V: Serialize> Serialize for SharedDiff<'_, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.changed, &self.removed).serialize(s)
    }
}

/// A [`SharedDiff`] read back.
#[derive(Deserialize)]
pub(crate) struct MapDelta<V> {
    changed: Vec<(String, V)>,
    removed: Vec<String>,
}

impl<V> MapDelta<V> {
    /// Brings `map` (the state as of the copy the diff was taken against) to the state the
    /// diff was taken from.
    pub(crate) fn apply(self, map: &mut Shared<V>) {
        for k in &self.removed {
            map.remove(k.as_str());
        }
        for (k, v) in self.changed {
            map.insert(std::sync::Arc::from(k), std::sync::Arc::new(v));
        }
    }
}

/// Serialises a detector's state with postcard. Inside an engine checkpoint, events go to
/// the checkpoint's table; a detector saved on its own carries a table of its own.
pub(crate) fn to_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    if SAVING.with(|c| c.borrow().is_some()) {
        return postcard::to_allocvec(v).map_err(|e| e.to_string());
    }
    let saver = Saver::start(EventLog::default());
    let body = postcard::to_allocvec(v).map_err(|e| e.to_string())?;
    let (events, _, _) = saver.finish();
    let events: Vec<(u64, Bytes)> = events.into_iter().map(|(id, b)| (id, Bytes(b))).collect();
    postcard::to_allocvec(&(events, Bytes(body))).map_err(|e| e.to_string())
}

thread_local! {
    /// The largest checkpoint buffer handed back on this thread ([`recycle`]).
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `size` bytes: the spare one of this thread if there is one.
pub(crate) fn spare_buffer(size: usize) -> Vec<u8> {
    let mut b = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    b.clear();
    b.reserve(size);
    b
}

/// Hands back a checkpoint's bytes ([`Written::bytes`]) once they are stored, so that the
/// next checkpoint written on this thread goes into the same memory. A checkpoint is
/// megabytes, written every second or so: in new memory each time, the kernel zeroes every
/// page of it again as it is first touched. The thread keeps the largest buffer handed
/// back.
pub fn recycle(mut bytes: Vec<u8>) {
    bytes.clear();
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if bytes.capacity() > s.capacity() {
            *s = bytes;
        }
    });
}

/// Reads a detector's state (see [`to_bytes`]).
pub(crate) fn from_bytes<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    if LOADING.with(|c| c.borrow().is_some()) {
        return postcard::from_bytes(b).map_err(|e| e.to_string());
    }
    let (events, body): (Vec<(u64, Bytes)>, Bytes) =
        postcard::from_bytes(b).map_err(|e| e.to_string())?;
    let loader = Loader::start(events.into_iter().map(|(id, b)| (id, b.0)));
    postcard::from_bytes(&body.0).map_err(|e| loader.error().unwrap_or_else(|| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte strings and byte sequences are laid out alike: a checkpoint written before a
    /// field became [`raw`] reads back, and the other way round.
    #[test]
    fn raw_fields_keep_the_layout_of_byte_sequences() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Seq(Vec<u8>, Option<Vec<u8>>);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Raw(
            #[serde(with = "raw")] Vec<u8>,
            #[serde(with = "opt_raw")] Option<Vec<u8>>,
        );
        let bytes: Vec<u8> = (0..=255).chain(0..200).collect();
        for opt in [None, Some(vec![]), Some(bytes.clone())] {
            let seq = postcard::to_allocvec(&Seq(bytes.clone(), opt.clone())).unwrap();
            let raw = postcard::to_allocvec(&Raw(bytes.clone(), opt.clone())).unwrap();
            assert_eq!(seq, raw);
            let back: Raw = postcard::from_bytes(&seq).unwrap();
            assert_eq!(back, Raw(bytes.clone(), opt.clone()));
            let back: Seq = postcard::from_bytes(&raw).unwrap();
            assert_eq!(back, Seq(bytes.clone(), opt));
        }
    }
    use cordon_ingest::generate::{generate, GenConfig};

    /// The borrowed writer must give exactly the bytes of the owned form the reader takes,
    /// or checkpoints written before it (and after) would not read back the same.
    #[test]
    fn events_are_saved_as_the_owned_form_writes_them_and_read_back_equal() {
        let events = generate(&GenConfig {
            seed: 3,
            agents: 6,
            duration_nanos: 2 * 3_600_000_000_000,
            sessions_per_attack: 1,
            ..Default::default()
        })
        .events;
        let mut with_fps = 0;
        for (i, mut e) in events.into_iter().take(400).enumerate() {
            if i % 3 == 0 {
                let mut b = BaselineFeatures::default();
                b.set(
                    BaselineField::ALL[i % BaselineField::ALL.len()].1,
                    1.5,
                    2.0,
                    0.25,
                );
                e.set_baseline(b);
            }
            with_fps += usize::from(e.result_fp().is_some() || e.args_fp().is_some());
            let saved = SavingEvent::bytes(&e).expect("saved");
            let owned = postcard::to_allocvec(&SavedEvent::from_event(&e)).expect("owned");
            assert_eq!(saved, owned, "event {i}");
            let back = postcard::from_bytes::<SavedEvent>(&saved)
                .expect("read")
                .into_event()
                .expect("an event");
            assert_eq!(back, e, "event {i}");
            assert_eq!(
                back.baseline().map(|b| b.iter().count()),
                e.baseline().map(|b| b.iter().count()),
                "event {i}: features"
            );
        }
        assert!(with_fps > 0, "the traffic has events with fingerprints");
    }
}
