//! Progress of long commands (seed, rebuild, verify, export): a bar with rate and ETA on a
//! terminal (indicatif), a plain line every few seconds otherwise (log files, CI), so a long
//! run is never silent.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    what: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
}

struct Plain {
    started: Instant,
    last_line: Instant,
    position: u64,
    total: u64,
}

impl Progress {
    /// Progress of `what`, counted in `unit`s, out of `total` (0 when not known yet).
    pub fn new(what: impl Into<String>, unit: &'static str, total: u64) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar
        });
        let now = Instant::now();
        Self {
            what,
            unit,
            bar,
            plain: Mutex::new(Plain {
                started: now,
                last_line: now,
                position: 0,
                total,
            }),
        }
    }

    /// The total became known, or changed.
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
        if let Ok(mut plain) = self.plain.lock() {
            plain.total = total;
        }
    }

    pub fn set_position(&self, position: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
            return;
        }
        let Ok(mut plain) = self.plain.lock() else {
            return;
        };
        plain.position = position;
        if plain.last_line.elapsed() >= PLAIN_EVERY {
            plain.last_line = Instant::now();
            eprintln!("{}", line(&self.what, self.unit, &plain));
        }
    }

    pub fn inc(&self, by: u64) {
        let position = match self.plain.lock() {
            Ok(plain) => plain.position + by,
            Err(_) => return,
        };
        self.set_position(position);
    }

    /// Clear the bar (the command prints its own summary).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn line(what: &str, unit: &str, plain: &Plain) -> String {
    let elapsed = plain.started.elapsed().as_secs_f64().max(0.001);
    let rate = plain.position as f64 / elapsed;
    let mut text = format!("{what}: {} {unit}", plain.position);
    if plain.total > 0 {
        text.push_str(&format!(" of {}", plain.total));
    }
    text.push_str(&format!(" ({rate:.0}/s"));
    if plain.total > plain.position && rate > 0.0 {
        let left = (plain.total - plain.position) as f64 / rate;
        text.push_str(&format!(", about {left:.0} s left"));
    }
    text.push(')');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_says_how_far_how_fast_and_how_long() {
        let plain = Plain {
            started: Instant::now() - Duration::from_secs(10),
            last_line: Instant::now(),
            position: 1_000,
            total: 3_000,
        };
        let text = line("verifying", "events", &plain);
        assert!(
            text.starts_with("verifying: 1000 events of 3000 ("),
            "{text}"
        );
        assert!(
            text.contains("/s, about 20 s left)") || text.contains("/s, about 19 s left)"),
            "{text}"
        );
    }
}
