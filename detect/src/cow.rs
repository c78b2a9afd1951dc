//! Copies on write, counted.
//!
//! A checkpoint is written from a copy of the engine that shares the rules' windows and
//! partial matches with it (`Arc`s); the engine copies one only when it next changes it while
//! the copy still holds it. That copying happens on the engine threads, right after a commit,
//! in proportion to the state the next events touch — a cost no other figure shows. Every
//! change to shared state goes through [`unshare`], which counts the copies and their time
//! (process-wide: they are read by the metrics endpoint, which knows no engine).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

static COPIES: AtomicU64 = AtomicU64::new(0);
static COPY_NANOS: AtomicU64 = AtomicU64::new(0);

/// `Arc::make_mut`, counting (and timing) the copies it makes because a checkpoint's copy of
/// the engine still shares the value.
pub(crate) fn unshare<T: Clone>(a: &mut Arc<T>) -> &mut T {
    // The engine never holds weak references, so a single strong one is not shared.
    if Arc::strong_count(a) == 1 {
        return Arc::make_mut(a);
    }
    let t = Instant::now();
    let v = Arc::make_mut(a);
    COPIES.fetch_add(1, Ordering::Relaxed);
    COPY_NANOS.fetch_add(
        u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    v
}

/// Windows and partial matches copied so far in this process because a checkpoint's copy of
/// an engine shared them, and the seconds spent copying them.
pub fn copies_on_write() -> (u64, f64) {
    (
        COPIES.load(Ordering::Relaxed),
        COPY_NANOS.load(Ordering::Relaxed) as f64 / 1e9,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_value_is_copied_and_counted() {
        let mut a = Arc::new(vec![1u8; 64]);
        unshare(&mut a).push(2);
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "an unshared value is changed in place"
        );
        let copy = a.clone();
        // The counter is process-wide: other tests may add to it, never take from it.
        let (before, _) = copies_on_write();
        unshare(&mut a).push(3);
        let (after, _) = copies_on_write();
        assert_eq!((copy.len(), a.len()), (65, 66), "the copy is untouched");
        assert!(
            after > before,
            "the copy made for a shared value is counted"
        );
    }
}
