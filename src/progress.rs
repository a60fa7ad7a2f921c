//! Progress reporting: a bar with rate and ETA on a terminal, periodic plain lines otherwise
//! (background runs, CI logs): one at every tenth of the work and, for slow work, at least one
//! a minute, so that a log shows a long job is alive and how far it is.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of items.
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
    len: u64,
    start: Instant,
    next_line: u64,
    last_line: Option<(Instant, u64)>,
    /// Where the rate is measured from: (time, position); moved by [`Progress::skip_to`].
    rate_origin: (Instant, u64),
}

/// The longest a log goes without a line while the work advances.
const LINE_EVERY: Duration = Duration::from_secs(60);

impl Progress {
    /// Starts a progress display for `len` items labelled `prefix`.
    pub fn new(len: u64, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(len);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(prefix.clone());
            b
        });
        Progress {
            bar,
            prefix,
            len,
            start: Instant::now(),
            next_line: 0,
            last_line: None,
            rate_origin: (Instant::now(), 0),
        }
    }

    /// Moves to `pos`, reached by earlier work (a resumed run, a file kept from before): the
    /// rate and ETA count only the work done from here.
    pub fn skip_to(&mut self, pos: u64) {
        self.rate_origin = (Instant::now(), pos);
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.reset_eta();
        }
    }

    /// Sets the position to `pos` with a status message.
    pub fn update(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            None => {
                let now = Instant::now();
                if self.line_due(pos, now) {
                    let secs = now.duration_since(self.start).as_secs_f64();
                    let eta = self.eta_secs(pos, now);
                    eprintln!(
                        "{} {pos}/{} {msg} [{:.0}s elapsed, ETA {:.0}s]",
                        self.prefix, self.len, secs, eta
                    );
                    if pos >= self.next_line {
                        self.next_line = pos + (self.len / 10).max(1);
                    }
                    self.last_line = Some((now, pos));
                }
            }
        }
    }

    /// Seconds left at `pos` and time `now`, at the rate since [`Progress::skip_to`] (or the
    /// start); 0 before any work.
    fn eta_secs(&self, pos: u64, now: Instant) -> f64 {
        let (since, from) = self.rate_origin;
        let done = pos.saturating_sub(from);
        if done == 0 {
            return 0.0;
        }
        now.duration_since(since).as_secs_f64() / done as f64 * self.len.saturating_sub(pos) as f64
    }

    /// Whether a plain line is due at `pos` and time `now`: at the first update, at every tenth
    /// of the work, at the end, and when the work advanced with no line for [`LINE_EVERY`].
    fn line_due(&self, pos: u64, now: Instant) -> bool {
        let stale = self
            .last_line
            .is_some_and(|(at, was)| pos > was && now.duration_since(at) >= LINE_EVERY);
        pos >= self.next_line || pos == self.len || stale
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_every_tenth_and_at_least_once_a_minute() {
        let mut p = Progress::new(1000, "test");
        p.bar = None;
        let t0 = Instant::now();
        assert!(p.line_due(0, t0), "the first update prints");
        p.next_line = 100;
        p.last_line = Some((t0, 0));
        assert!(!p.line_due(5, t0 + Duration::from_secs(59)));
        assert!(p.line_due(5, t0 + Duration::from_secs(61)), "a minute without a line");
        assert!(!p.line_due(0, t0 + Duration::from_secs(61)), "but only when the work advanced");
        assert!(p.line_due(100, t0 + Duration::from_secs(1)), "a tenth of the work");
        assert!(p.line_due(1000, t0), "the end");
    }

    #[test]
    fn work_done_before_a_resume_does_not_count_in_the_rate() {
        let mut p = Progress::new(100, "test");
        p.skip_to(50);
        let t0 = p.rate_origin.0;
        assert_eq!(p.eta_secs(50, t0 + Duration::from_secs(5)), 0.0);
        // 10 items in 10 s since the resume: 40 left, 40 s (not 10/60 * 40).
        let eta = p.eta_secs(60, t0 + Duration::from_secs(10));
        assert!((eta - 40.0).abs() < 1e-9, "{eta}");
    }
}
