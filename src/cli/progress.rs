//! Progress of long work on stderr. On a terminal (stdout and stderr both, so a roll with its
//! output sent to a file stays plain), live lines redrawn in place under the lines of finished steps; anywhere
//! else only those lines, nothing animated. Apply and destroy show resources done, in flight
//! and left; a roll each group's batch, the instances in flight, what it waits for and the
//! floor it keeps; a bake its current step. Every live line shows the elapsed time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use owo_colors::OwoColorize;

use kstack::apply::Event;
use kstack::resource::Address;
use kstack::roll::RollEvent;

use super::term;

const TICK: Duration = Duration::from_millis(120);

/// Where live lines go: stderr on a terminal, nowhere otherwise.
fn draw_target() -> ProgressDrawTarget {
    if term::animated() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A line above the live ones (or plainly on stderr when there are none).
fn line(bar: &ProgressBar, text: String) {
    if bar.is_hidden() {
        term::errln(format_args!("{text}"));
    } else {
        // AWS's error messages can quote what kstack sent.
        bar.println(term::redacted(format_args!("{text}")));
    }
}

pub(super) struct ApplyProgress {
    bar: ProgressBar,
    in_flight: Mutex<BTreeSet<Address>>,
    color: bool,
}

impl ApplyProgress {
    pub(super) fn new(steps: usize) -> ApplyProgress {
        let color = term::stderr_color();
        let bar = ProgressBar::with_draw_target(Some(steps as u64), draw_target());
        bar.set_style(style("{spinner} [{elapsed_precise}] {pos}/{len} done, {wide_msg}"));
        bar.enable_steady_tick(TICK);
        ApplyProgress { bar, in_flight: Mutex::new(BTreeSet::new()), color }
    }

    fn line(&self, text: String) {
        line(&self.bar, text);
    }

    fn update_message(&self) {
        if let Ok(in_flight) = self.in_flight.lock() {
            let names: Vec<&str> = in_flight.iter().map(Address::as_str).collect();
            let left = self.bar.length().unwrap_or(0).saturating_sub(self.bar.position() + names.len() as u64);
            self.bar.set_message(format!("{} in flight, {left} left: {}", names.len(), names.join(", ")));
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

/// A roll's progress: a live line per group being rolled.
pub(super) struct RollProgress {
    lines: MultiProgress,
    groups: Mutex<BTreeMap<String, (ProgressBar, GroupView)>>,
}

/// What a group's live line says.
#[derive(Default)]
struct GroupView {
    replacing: Vec<String>,
    floor: Option<u32>,
    waiting: Option<String>,
}

impl GroupView {
    fn message(&self) -> String {
        let mut parts = Vec::new();
        if !self.replacing.is_empty() {
            parts.push(format!("replacing {}", self.replacing.join(", ")));
        }
        if let Some(floor) = self.floor {
            parts.push(format!("at least {floor} in service"));
        }
        if let Some(what) = &self.waiting {
            parts.push(format!("waiting for {what}"));
        }
        parts.join(" · ")
    }
}

impl RollProgress {
    pub(super) fn new() -> RollProgress {
        RollProgress { lines: MultiProgress::with_draw_target(draw_target()), groups: Mutex::new(BTreeMap::new()) }
    }

    pub(super) fn event(&self, event: RollEvent) {
        let Ok(mut groups) = self.groups.lock() else { return };
        let (bar, view) = groups.entry(event.group().to_owned()).or_insert_with(|| {
            let bar = self.lines.add(ProgressBar::new(1));
            bar.set_style(style("{spinner} {prefix:.bold} batch {pos}/{len} [{elapsed_precise}] {wide_msg}"));
            bar.set_prefix(event.group().to_owned());
            bar.enable_steady_tick(TICK);
            (bar, GroupView::default())
        });
        match &event {
            RollEvent::Batch { number, of, surged, taken_out, floor, .. } => {
                bar.set_length(*of as u64);
                bar.set_position(*number as u64);
                *view = GroupView { replacing: [surged.as_slice(), taken_out.as_slice()].concat(), floor: Some(*floor), waiting: None };
            }
            RollEvent::Waiting { what, .. } => view.waiting = Some(what.clone()),
            RollEvent::Step { .. } => view.waiting = None,
        }
        bar.set_message(view.message());
        line(bar, format!("roll: {event}"));
    }

    pub(super) fn finish(&self) {
        if let Ok(groups) = self.groups.lock() {
            for (bar, _) in groups.values() {
                bar.finish_and_clear();
            }
        }
    }
}

/// A sequence of steps (a bake): the current one live with its elapsed time.
pub(super) struct StepProgress {
    bar: ProgressBar,
    prefix: &'static str,
}

impl StepProgress {
    /// `live` false keeps it to plain lines even on a terminal (`--json`).
    pub(super) fn new(prefix: &'static str, live: bool) -> StepProgress {
        let target = if live { draw_target() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(style("{spinner} [{elapsed_precise}] {wide_msg}"));
        bar.enable_steady_tick(TICK);
        StepProgress { bar, prefix }
    }

    pub(super) fn step(&self, text: &str) {
        self.bar.set_message(text.to_owned());
        line(&self.bar, format!("{}: {text}", self.prefix));
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
