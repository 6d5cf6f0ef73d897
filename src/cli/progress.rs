//! Progress of an apply or destroy on stderr: a spinner with the work in flight on a
//! terminal, one line per finished step everywhere.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use owo_colors::OwoColorize;

use crate::apply::Event;
use crate::resource::Address;

use super::term;

pub(super) struct Progress {
    bar: ProgressBar,
    in_flight: Mutex<BTreeSet<Address>>,
    color: bool,
}

impl Progress {
    pub(super) fn new(steps: usize) -> Progress {
        let color = term::stderr_color();
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {pos}/{len} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar, in_flight: Mutex::new(BTreeSet::new()), color }
    }

    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            term::errln(format_args!("{text}"));
        } else {
            // AWS's error messages can quote what kstack sent.
            self.bar.println(term::redacted(format_args!("{text}")));
        }
    }

    fn update_message(&self) {
        if let Ok(in_flight) = self.in_flight.lock() {
            let names: Vec<&str> = in_flight.iter().map(Address::as_str).collect();
            self.bar.set_message(names.join(", "));
        }
    }

    pub(super) fn event(&self, event: Event) {
        match event {
            Event::Started { address, .. } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.insert(address);
                }
                self.update_message();
            }
            Event::Retrying { address, error, delay } => {
                tracing::info!("{address}: {error}; retrying in {}s", delay.as_secs());
            }
            Event::Finished { address, verb, id, elapsed } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.remove(&address);
                }
                self.bar.inc(1);
                self.update_message();
                let text = format!("{address}: {} ({id}) [{:.1}s]", verb.past(), elapsed.as_secs_f64());
                self.line(if self.color { text.green().to_string() } else { text });
            }
            Event::Failed { address, verb, error } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.remove(&address);
                }
                self.update_message();
                let text = format!("{address}: {} failed: {error}", verb.progressive());
                self.line(if self.color { text.red().to_string() } else { text });
            }
        }
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
