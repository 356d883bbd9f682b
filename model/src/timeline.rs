//! One stopwatch for every procedure that reports its steps as a [`TimelineStep`] list (the SMF's
//! path switch, a service module's migration). It runs on tokio's [`Instant`], so a test that
//! pauses tokio's clock (`tokio::time::pause`) sees exact, repeatable times; every step also
//! carries its start on the host's wall clock (one anchor read when the stopwatch starts, plus
//! the monotonic offset), so steps of different processes line up.
//!
//! Every method that reads the clock has a form taking the time explicitly (`*_at`), for state
//! machines that are handed `now` instead of reading a clock.

use crate::ran::{unix_now_us, TimelineStep};
use std::time::Duration;
use tokio::time::Instant;

/// The steps of one procedure on a monotonic clock, with a wall-clock anchor.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    start: Instant,
    start_unix_us: u64,
    steps: Vec<TimelineStep>,
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self::start()
    }
}

impl Stopwatch {
    /// Starts now.
    pub fn start() -> Self {
        Self::start_at(Instant::now())
    }

    /// Starts at `now` (the caller's reading of the clock).
    pub fn start_at(now: Instant) -> Self {
        Self {
            start: now,
            start_unix_us: unix_now_us(),
            steps: Vec::new(),
        }
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Records step `name` that began at `began` and ends now; its duration in µs.
    pub fn record(&mut self, name: impl Into<String>, began: Instant) -> u64 {
        self.record_at(name, began, Instant::now())
    }

    /// Records step `name` that began at `began` and ended at `end`; its duration in µs.
    pub fn record_at(&mut self, name: impl Into<String>, began: Instant, end: Instant) -> u64 {
        let took_us = us(end.saturating_duration_since(began));
        self.push(
            name.into(),
            us(began.saturating_duration_since(self.start)),
            took_us,
        );
        took_us
    }

    /// Records a step measured elsewhere (e.g. by a peer) that took `took_us` and ended at `end`.
    pub fn record_took_at(&mut self, name: impl Into<String>, took_us: u64, end: Instant) {
        let end_us = us(end.saturating_duration_since(self.start));
        self.push(name.into(), end_us.saturating_sub(took_us), took_us);
    }

    /// Runs `step` and records it under `name`; its output.
    pub async fn time<T>(
        &mut self,
        name: impl Into<String>,
        step: impl std::future::Future<Output = T>,
    ) -> T {
        let began = Instant::now();
        let out = step.await;
        self.record(name, began);
        out
    }

    /// µs from the start to `now`.
    pub fn elapsed_us_at(&self, now: Instant) -> u64 {
        us(now.saturating_duration_since(self.start))
    }

    /// The steps so far.
    pub fn steps(&self) -> &[TimelineStep] {
        &self.steps
    }

    /// The steps, taken.
    pub fn into_steps(self) -> Vec<TimelineStep> {
        self.steps
    }

    fn push(&mut self, step: String, at_us: u64, took_us: u64) {
        self.steps.push(TimelineStep {
            step,
            at_us,
            took_us,
            at_unix_us: Some(self.start_unix_us.saturating_add(at_us)),
        });
    }
}

/// A duration in whole µs (saturating).
pub fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_placed_from_the_start_and_anchored_on_the_wall_clock() {
        let t0 = Instant::now();
        let mut sw = Stopwatch::start_at(t0);
        let ms = Duration::from_millis;
        assert_eq!(sw.record_at("a", t0 + ms(2), t0 + ms(7)), 5_000);
        sw.record_took_at("b", 3_000, t0 + ms(10));
        // A step that "began" before the start (or ended before it began) saturates.
        assert_eq!(sw.record_at("c", t0 + ms(4), t0 + ms(1)), 0);
        let s = sw.steps();
        assert_eq!(
            s.iter()
                .map(|s| (s.step.as_str(), s.at_us, s.took_us))
                .collect::<Vec<_>>(),
            [("a", 2_000, 5_000), ("b", 7_000, 3_000), ("c", 4_000, 0)]
        );
        let anchor = s[0].at_unix_us.expect("anchored") - 2_000;
        assert_eq!(s[1].at_unix_us, Some(anchor + 7_000));
        assert_eq!(sw.elapsed_us_at(t0 + ms(12)), 12_000);
        assert_eq!(us(Duration::MAX), u64::MAX);
    }

    #[test]
    fn a_paused_clock_gives_exact_times() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let steps = rt.block_on(async {
            let mut sw = Stopwatch::start();
            sw.time("sleep", tokio::time::sleep(Duration::from_millis(250)))
                .await;
            sw.into_steps()
        });
        assert_eq!((steps[0].at_us, steps[0].took_us), (0, 250_000));
    }
}
