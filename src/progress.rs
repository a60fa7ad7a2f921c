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
        Progress { bar, prefix, len, start: Instant::now(), next_line: 0, last_line: None }
    }

    /// Sets the position to `pos` with a status message.
    pub fn update(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            None => {
                if self.line_due(pos, Instant::now()) {
                    let secs = self.start.elapsed().as_secs_f64();
                    let eta =
                        if pos > 0 { secs / pos as f64 * (self.len - pos) as f64 } else { 0.0 };
                    eprintln!(
                        "{} {pos}/{} {msg} [{:.0}s elapsed, ETA {:.0}s]",
                        self.prefix, self.len, secs, eta
                    );
                    if pos >= self.next_line {
                        self.next_line = pos + (self.len / 10).max(1);
                    }
                    self.last_line = Some((Instant::now(), pos));
                }
            }
        }
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
}
