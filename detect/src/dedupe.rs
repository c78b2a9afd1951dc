//! Duplicate events: `event.id` is the dedupe key (DESIGN, Events).
//!
//! Producers that retry (a gateway whose produce request timed out, a Kafka producer without
//! idempotence, a relay replaying a spool) deliver the same event twice. Counted twice, one
//! event would open two partial matches, fill a threshold window twice or shift a baseline, and
//! alerts would name different evidence than a clean stream gives. So the engine remembers the
//! ids of the events it accepted for as long as a copy could still be accepted — while the
//! event's time is within the allowed lateness of the watermark; anything older is refused as
//! late anyway — and drops a second event with the same id and time, counting it.
//!
//! Memory follows the reorder buffer: the ids of roughly the events of one lateness window.
//! Events without an id are never deduplicated.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Ids of recently accepted events, with their times.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Recent {
    /// id → event time (ns).
    ids: FxHashMap<Box<str>, i64>,
    /// (event time, id) in arrival order; a front entry leaves once it is older than the
    /// horizon (entries behind an older one wait for it: they stay a little longer, never
    /// less).
    order: VecDeque<(i64, Box<str>)>,
}

impl Recent {
    /// Whether an event with this id and time was already accepted; remembers it if not.
    pub fn seen(&mut self, id: &str, ts: i64) -> bool {
        if let Some(&t) = self.ids.get(id) {
            if t == ts {
                return true;
            }
        }
        let id: Box<str> = id.into();
        self.ids.insert(id.clone(), ts);
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
