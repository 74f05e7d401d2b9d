//! Progress events for long operations.
//!
//! Operators watch `juju run … create-backup` for minutes; a silent action looks hung.
//! [`ProgressReporter`] turns the pipeline's byte counts into `progress` events, at most
//! one a second (plus one at each phase change), carrying bytes done and the rate.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::protocol::{Event, Progress};

/// Where an operation sends its events (the connection's writer).
pub type EventSink = mpsc::Sender<Event>;

/// Throttled progress for one operation.
pub struct ProgressReporter {
    sink: EventSink,
    backup_id: Option<String>,
    started: Instant,
    last: Option<Instant>,
    interval: Duration,
}

impl ProgressReporter {
    pub fn new(sink: EventSink, backup_id: Option<String>) -> Self {
        ProgressReporter {
            sink,
            backup_id,
            started: Instant::now(),
            last: None,
            interval: Duration::from_secs(1),
        }
    }

    /// Reports if a second has passed since the last report (or `force`).
    pub fn update(&mut self, phase: &str, bytes_done: u64, parts: Option<u64>, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|l| now.duration_since(l) < self.interval)
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            (bytes_done as f64 / secs) as u64
        } else {
            0
        };
        // A slow or vanished client must never stall the backup: drop the event instead.
        let _ = self.sink.try_send(Event::Progress(Progress {
            phase: phase.to_owned(),
            backup_id: self.backup_id.clone(),
            bytes_done,
            rate_bytes_per_sec: rate,
            parts_uploaded: parts,
        }));
    }

    /// Time since the operation started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
