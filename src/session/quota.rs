//! The node-wide cap on live sessions (`sessions.max_sessions`), shared by every worker.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Live sessions on this node, across workers. Each worker's host takes a slot when it creates
/// a session and gives it back when the session ends.
#[derive(Debug)]
pub struct SessionQuota {
    live: AtomicUsize,
    max: usize,
}

impl SessionQuota {
    pub fn new(max: usize) -> SessionQuota {
        SessionQuota { live: AtomicUsize::new(0), max }
    }

    /// Takes a slot; false when the node already hosts `max` sessions.
    pub fn try_acquire(&self) -> bool {
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    pub fn release(&self) {
        // Saturating: a release without an acquire is a bug, but must not wrap to "full".
        let _ = self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let q = SessionQuota::new(2);
        assert!(q.try_acquire() && q.try_acquire());
        assert!(!q.try_acquire());
        q.release();
        assert!(q.try_acquire());
        q.release();
        q.release();
        q.release();
        assert_eq!(q.live(), 0);
    }
}
