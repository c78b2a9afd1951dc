//! What the detectors of multi-event rules share: their output (a [`Finding`], turned into
//! an alert by the engine, which applies exceptions and suppression uniformly) and their
//! state counters.

use cordon_ingest::Event;

/// A match of a multi-event rule: its events in step order, and which step positions were
/// `![…]` steps (they have no event).
#[derive(Clone, Debug)]
pub struct Finding {
    /// The events, in step order.
    pub events: Vec<Event>,
    /// Positions of missing-event steps.
    pub missing: Vec<usize>,
}

/// State counters of a stateful detector.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateStats {
    /// Open partial matches (or keyed windows).
    pub open: usize,
    /// Approximate bytes held.
    pub bytes: usize,
    /// New partials refused because their key and stage were full.
    pub rejected: u64,
    /// Partials evicted to respect the global cap.
    pub evicted: u64,
    /// Partials dropped because their span passed.
    pub expired: u64,
    /// Partials closed by `until` or a `![…]` step.
    pub closed: u64,
}

/// A detector of one multi-event rule.
pub trait Stateful: Send {
    /// Observes one event (events arrive in event-time order).
    fn observe(&mut self, ev: &Event, out: &mut Vec<Finding>);
    /// Observes one event that can satisfy only the rule's single-event conditions in
    /// `steps` ([`crate::engine::Steps`], by position in `Rule::event_matchers`): the engine's
    /// index found the others' guards false, so a detector may skip testing them.
    fn observe_steps(&mut self, ev: &Event, _steps: crate::engine::Steps, out: &mut Vec<Finding>) {
        self.observe(ev, out);
    }
    /// Event time has reached `wm`: spans that ended before it close.
    fn on_watermark(&mut self, wm: i64, out: &mut Vec<Finding>);
    /// End of input: every window closes.
    fn finish(&mut self, out: &mut Vec<Finding>);
    /// Counters, with the bytes held (walks every partial: for `--stats`, not for scrapes).
    fn state(&self) -> StateStats;
    /// Counters and open partials, without the byte estimate: cheap enough for every
    /// metrics scrape (which holds the engines' lock).
    fn counts(&self) -> StateStats;
    /// Everything the detector holds, for a checkpoint ([`crate::checkpoint`]).
    fn save(&self) -> Result<Vec<u8>, String>;
    /// A copy of the detector with its state (a checkpoint is serialised from the copy, off
    /// the thread that runs the rules).
    fn boxed_clone(&self) -> Box<dyn Stateful>;
    /// Replaces the detector's state with a saved one (of the same rule).
    fn load(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// What changed since `prev`, a copy of this detector taken at the previous checkpoint
    /// of the chain: read back by [`Stateful::apply_delta`] onto the state as of `prev`.
    /// `None` when the detector keeps no deltas (its checkpoints then hold its whole state).
    fn save_delta(&self, _prev: &dyn Stateful) -> Option<Result<Vec<u8>, String>> {
        None
    }
    /// Brings the state loaded from the chain's earlier checkpoints up to a delta.
    fn apply_delta(&mut self, _bytes: &[u8]) -> Result<(), String> {
        Err("this rule's state has no deltas".into())
    }
    /// The detector as `Any`, for [`Stateful::save_delta`] to reach the copy's state.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
