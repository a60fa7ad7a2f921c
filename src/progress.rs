//! Progress reporting: a bar with rate and ETA on a terminal, periodic plain lines otherwise
//! (background runs, CI logs).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of items.
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
    len: u64,
    start: Instant,
    next_line: u64,
}

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
        Progress { bar, prefix, len, start: Instant::now(), next_line: 0 }
    }

    /// Sets the position to `pos` with a status message.
    pub fn update(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                b.set_message(msg.to_string());
            }
            None => {
                if pos >= self.next_line || pos == self.len {
                    let secs = self.start.elapsed().as_secs_f64();
                    let eta =
                        if pos > 0 { secs / pos as f64 * (self.len - pos) as f64 } else { 0.0 };
                    eprintln!(
                        "{} {pos}/{} {msg} [{:.0}s elapsed, ETA {:.0}s]",
                        self.prefix, self.len, secs, eta
                    );
                    self.next_line = pos + (self.len / 10).max(1);
                }
            }
        }
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
