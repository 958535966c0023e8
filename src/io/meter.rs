//! How fast an engine moves bytes when it has work: the bytes its requests moved and the
//! time during which at least one request was in flight ("busy time"). Bytes over busy
//! time is the device's rate as this engine sees it, independent of how often the
//! caller gives it work; the swap store weighs its drives by it.
//!
//! A worker calls [`Meter::begin`] when it takes a request and [`Meter::end`] when the
//! request is over. The one mutex is held for a few arithmetic operations and a clock
//! read (vDSO, no system call), never across I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    /// Requests in flight.
    active: u64,
    /// When `active` last went from 0 to 1.
    since: Option<Instant>,
    /// Busy time of the intervals already closed.
    busy: Duration,
    /// Bytes moved by finished requests.
    bytes: u64,
}

/// Bytes moved and busy time of one engine.
#[derive(Default)]
pub(crate) struct Meter {
    inner: Mutex<Inner>,
}

/// What a meter has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Bytes moved by finished requests (read and written).
    pub bytes: u64,
    /// Time with at least one request in flight, up to now.
    pub busy: Duration,
}

impl Meter {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request starts.
    pub(crate) fn begin(&self) {
        self.begin_at(Instant::now());
    }

    /// A request that moved `bytes` is over (0 for a failed one).
    pub(crate) fn end(&self, bytes: u64) {
        self.end_at(Instant::now(), bytes);
    }

    /// What the meter has seen, the interval still open counted up to now.
    pub(crate) fn activity(&self) -> Activity {
        self.activity_at(Instant::now())
    }

    fn begin_at(&self, now: Instant) {
        let mut m = self.inner();
        if m.active == 0 {
            m.since = Some(now);
        }
        m.active += 1;
    }

    fn end_at(&self, now: Instant, bytes: u64) {
        let mut m = self.inner();
        m.bytes = m.bytes.saturating_add(bytes);
        m.active = m.active.saturating_sub(1);
        if m.active == 0 {
            if let Some(s) = m.since.take() {
                m.busy += now.saturating_duration_since(s);
            }
        }
    }

    fn activity_at(&self, now: Instant) -> Activity {
        let m = self.inner();
        let open = match (m.active, m.since) {
            (0, _) | (_, None) => Duration::ZERO,
            (_, Some(s)) => now.saturating_duration_since(s),
        };
        Activity {
            bytes: m.bytes,
            busy: m.busy + open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_requests_count_their_union_and_idle_time_not_at_all() {
        let m = Meter::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Two requests overlapping over 0..30 ms, then idle, then one over 100..110 ms.
        m.begin_at(at(0));
        m.begin_at(at(10));
        m.end_at(at(20), 1000);
        m.end_at(at(30), 2000);
        assert_eq!(
            m.activity_at(at(50)),
            Activity {
                bytes: 3000,
                busy: Duration::from_millis(30)
            }
        );
        m.begin_at(at(100));
        // An interval still open counts up to now.
        assert_eq!(m.activity_at(at(105)).busy, Duration::from_millis(35));
        m.end_at(at(110), 500);
        assert_eq!(
            m.activity_at(at(500)),
            Activity {
                bytes: 3500,
                busy: Duration::from_millis(40)
            }
        );
    }
}
