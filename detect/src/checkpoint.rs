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
//! The form is postcard (compact, no schema to ship) with a format name and version up front.
//! Events are kept as their native JSON line (content fingerprints apart, in binary) plus the
//! baseline features the engine set on them, so a restored partial match carries the same
//! evidence and figures. Detectors are saved
//! by rule id, version and query: a restored engine running a changed rule starts that rule
//! empty (as a hot reload does) and keeps every other rule's state.

use std::collections::VecDeque;

use cordon_ingest::{BaselineFeatures, BaselineField, CoreField, Event};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The format name written first in every checkpoint.
pub const FORMAT: &str = "cordon-engine-checkpoint";
/// The version this build writes and reads.
pub const VERSION: u32 = 2;

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

impl SavedEvent {
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

/// `#[serde(with = "…::event")]` for an [`Event`] field.
pub(crate) mod event {
    use super::*;

    pub fn serialize<S: Serializer>(e: &Event, s: S) -> Result<S::Ok, S::Error> {
        SavedEvent::from_event(e).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        SavedEvent::deserialize(d)?
            .into_event()
            .map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "…::events")]` for a `Vec<Event>` field.
pub(crate) mod events {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Event], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(SavedEvent::from_event))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        Vec::<SavedEvent>::deserialize(d)?
            .into_iter()
            .map(|e| e.into_event().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `#[serde(with = "…::event_deque")]` for a `VecDeque<Event>` field.
pub(crate) mod event_deque {
    use super::*;

    pub fn serialize<S: Serializer>(v: &VecDeque<Event>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(SavedEvent::from_event))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<Event>, D::Error> {
        Vec::<SavedEvent>::deserialize(d)?
            .into_iter()
            .map(|e| e.into_event().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `#[serde(with = "…::opt_events")]` for a `Vec<Option<Event>>` field.
pub(crate) mod opt_events {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Option<Event>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|e| e.as_ref().map(SavedEvent::from_event)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Event>>, D::Error> {
        Vec::<Option<SavedEvent>>::deserialize(d)?
            .into_iter()
            .map(|e| {
                e.map(|e| e.into_event().map_err(serde::de::Error::custom))
                    .transpose()
            })
            .collect()
    }
}

/// `#[serde(with = "…::distinct")]` for a threshold window's distinct values.
pub(crate) mod distinct {
    use super::*;
    use rustc_hash::FxHashMap;

    type Map = FxHashMap<String, (i64, Option<Event>)>;

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            m.iter()
                .map(|(k, (t, e))| (k, t, e.as_ref().map(SavedEvent::from_event))),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        Vec::<(String, i64, Option<SavedEvent>)>::deserialize(d)?
            .into_iter()
            .map(|(k, t, e)| {
                let e = e
                    .map(|e| e.into_event().map_err(serde::de::Error::custom))
                    .transpose()?;
                Ok((k, (t, e)))
            })
            .collect()
    }
}

/// Serialises a detector's state with postcard.
pub(crate) fn to_bytes<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| e.to_string())
}

/// Reads a detector's state.
pub(crate) fn from_bytes<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| e.to_string())
}
