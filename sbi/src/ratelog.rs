//! Logging at a bounded rate, for events a peer can cause as often as it likes (malformed
//! datagrams, unexpected messages): at most [`LogLimiter::BURST`] lines per
//! [`LogLimiter::INTERVAL`]; the events in between are not logged, only counted, and the next
//! line says how many were left out. The events themselves are counted by the NF's own counters.
//!
//! ```
//! # let mut limiter = sbi::ratelog::LogLimiter::new();
//! if let Some(suppressed) = limiter.allow() {
//!     tracing::warn!(suppressed, "malformed pfcp message dropped");
//! }
//! ```

use std::time::Duration;
use tokio::time::Instant;

/// Decides which of a stream of events get a log line.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// Lines allowed per interval.
    pub const BURST: u32 = 5;
    /// The interval.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// A limiter that has logged nothing yet.
    pub fn new() -> Self {
        Self {
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// [`Self::allow_at`] now (tokio's clock, so a paused test clock drives it too).
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// An event at `now`: `Some(n)` if it may be logged, `n` being the events left unlogged since
    /// the last line; `None` if it is to be left out.
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Self::INTERVAL);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < Self::BURST {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Events left out since the last line.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_and_the_rest_counted_into_the_next_line() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        let logged: Vec<Option<u64>> = (0..8).map(|_| l.allow_at(t0)).collect();
        assert_eq!(
            logged,
            [
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None
            ]
        );
        assert_eq!(l.suppressed(), 3);
        // Still inside the interval: left out.
        assert_eq!(l.allow_at(t0 + LogLimiter::INTERVAL / 2), None);
        // The next interval: the first line says how many were left out.
        assert_eq!(l.allow_at(t0 + LogLimiter::INTERVAL), Some(4));
        assert_eq!(l.allow_at(t0 + LogLimiter::INTERVAL), Some(0));
        // 25 000 events over 10 s: at most BURST lines per second.
        let mut l = LogLimiter::new();
        let lines = (0..25_000u64)
            .filter(|i| l.allow_at(t0 + Duration::from_micros(i * 400)).is_some())
            .count();
        assert_eq!(lines, 10 * LogLimiter::BURST as usize);
    }

    #[test]
    fn a_clock_that_goes_back_never_panics() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now() + Duration::from_secs(5);
        assert!(l.allow_at(t0).is_some());
        assert!(l.allow_at(t0 - Duration::from_secs(3)).is_some());
    }
}
