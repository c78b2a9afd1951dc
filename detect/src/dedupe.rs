//! Duplicate events: `event.id` is the dedupe key (DESIGN, Events).
//!
//! Producers that retry (a gateway whose produce request timed out, a Kafka producer without
//! idempotence, a relay replaying a spool) deliver the same event twice. Counted twice, one
//! event would open two partial matches, fill a threshold window twice or shift a baseline, and
//! alerts would name different evidence than a clean stream gives. So the engine remembers the
//! ids of the events it accepted for as long as a copy could still be accepted — until the
//! reorder buffer has released events past it (the stream is the allowed lateness beyond it);
//! anything older is refused as late anyway — and drops a second event with the same id and time, counting it.
//!
//! Memory follows the reorder buffer: the ids of roughly the events of one lateness window,
//! each kept as a 64-bit SipHash-1-3 under a random key (no allocation per event; the key,
//! saved with the state, keeps anyone who can choose event ids from making two different
//! events collide). Events without an id are never deduplicated.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Ids of recently accepted events, with their times.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recent {
    /// The SipHash key.
    key: (u64, u64),
    /// Hash of the id → event time (ns).
    ids: FxHashMap<u64, i64>,
    /// (event time, hash of the id) in arrival order; a front entry leaves once it is older
    /// than the horizon (entries behind an older one wait for it: they stay a little longer,
    /// never less).
    order: VecDeque<(i64, u64)>,
}

impl Default for Recent {
    fn default() -> Recent {
        // Two random words from the standard library's per-process random hasher state.
        let random = std::collections::hash_map::RandomState::new();
        Recent {
            key: (random.hash_one(0u8), random.hash_one(1u8)),
            ids: FxHashMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl Recent {
    fn hash(&self, id: &str) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(id.as_bytes());
        h.finish()
    }

    /// Whether an event with this id and time was already accepted; remembers it if not.
    pub fn seen(&mut self, id: &str, ts: i64) -> bool {
        let id = self.hash(id);
        if let Some(&t) = self.ids.get(&id) {
            if t == ts {
                return true;
            }
        }
        self.ids.insert(id, ts);
        self.order.push_back((ts, id));
        false
    }

    /// Forgets events older than `horizon` (ns): a copy of one would be refused as late.
    pub fn expire(&mut self, horizon: i64) {
        while let Some((ts, _)) = self.order.front() {
            if *ts >= horizon {
                break;
            }
            if let Some((ts, id)) = self.order.pop_front() {
                // A later event with the same id and another time replaced the entry: it
                // stays until its own turn.
                if self.ids.get(&id) == Some(&ts) {
                    self.ids.remove(&id);
                }
            }
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_seen_until_it_expires() {
        let mut r = Recent::default();
        assert!(!r.seen("a", 10));
        assert!(r.seen("a", 10));
        // Same id, another time: a different event (a gateway reusing ids), kept.
        assert!(!r.seen("a", 11));
        assert!(r.seen("a", 11));
        assert!(!r.seen("b", 12));
        r.expire(11);
        // The entry of ("a", 10) left; ("a", 11) is still remembered.
        assert!(r.seen("a", 11));
        assert_eq!(r.len(), 2);
        r.expire(13);
        assert!(r.is_empty());
        assert!(!r.seen("a", 11));
    }
}
