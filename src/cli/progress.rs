//! Progress of long work on stderr: the one renderer of `kstack::events`, [`Shown`]. On a
//! terminal (stdout and stderr both, so a roll with its output sent to a file stays plain),
//! live lines redrawn in place under the lines of finished steps; anywhere else, or with
//! `--progress plain`, only those lines, nothing animated; with `--progress json`, one JSON
//! object per event, for a machine following the run. Apply and destroy show resources done, in flight
//! and left; a roll each group's batch, the instances in flight, what it waits for and the
//! floor it keeps; a bake its current step. Every live line shows the elapsed time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use owo_colors::OwoColorize;

use kstack::apply::ApplyEvent;
use kstack::events::{Event, Watch};
use kstack::ops::roll::RollWatch;
use kstack::resource::Address;
use kstack::roles::{RunEvent, TaskStatus};
use kstack::roll::RollEvent;

use super::term;

const TICK: Duration = Duration::from_millis(120);

/// How long work's progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(super) enum Mode {
    /// Live lines on a terminal, plain lines elsewhere.
    #[default]
    Auto,
    /// Plain lines, even on a terminal.
    Plain,
    /// One JSON object per event on stderr.
    Json,
}

static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();

/// Sets the mode for the run, once, from the command line.
pub(super) fn set_mode(mode: Mode) {
    let _ = MODE.set(mode);
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or_default()
}

/// Long work's events as the run shows them; each command's view of its own work.
pub(super) struct Shown(View);

enum View {
    Apply(ApplyProgress),
    Roll(RollProgress),
    Bake(StepProgress),
    Roles(RoleLines),
}

impl Shown {
    /// An apply or destroy of `steps` changes.
    pub(super) fn apply(steps: usize) -> Shown {
        Shown(View::Apply(ApplyProgress::new(steps)))
    }

    pub(super) fn roll() -> Shown {
        Shown(View::Roll(RollProgress::new()))
    }

    /// A bake; `live` false keeps it to plain lines even on a terminal (`--json`).
    pub(super) fn bake(live: bool) -> Shown {
        Shown(View::Bake(StepProgress::new("bake", live)))
    }

    /// Roles on hosts, each task's report on stdout (the command's output); `shown` false
    /// keeps them for the end (`--json`), `diff` shows file changes.
    pub(super) fn roles(shown: bool, diff: bool) -> Shown {
        Shown(View::Roles(RoleLines { shown, diff, color: term::stdout_color() }))
    }

    /// Clears the live lines.
    pub(super) fn finish(&self) {
        match &self.0 {
            View::Apply(view) => view.finish(),
            View::Roll(view) => view.finish(),
            View::Bake(view) => view.finish(),
            View::Roles(_) => {}
        }
    }
}

impl Watch for Shown {
    fn event(&self, event: Event) {
        if mode() == Mode::Json {
            return term::errln(format_args!("{}", serde_json::to_string(&event).unwrap_or_default()));
        }
        match (&self.0, event) {
            (View::Apply(view), Event::Apply(event)) => view.event(event),
            (View::Roll(view), Event::Roll(event)) => view.event(event),
            (View::Bake(view), Event::Bake(step)) => view.step(&step),
            (View::Roles(view), Event::Roles(event)) => view.event(&event),
            // Work another view does not show: the log has it.
            (_, event) => tracing::debug!(?event, "progress"),
        }
    }
}

/// Where live lines go: stderr on a terminal, nowhere otherwise.
fn draw_target() -> ProgressDrawTarget {
    if mode() == Mode::Auto && term::animated() {
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

struct ApplyProgress {
    bar: ProgressBar,
    in_flight: Mutex<BTreeSet<Address>>,
    color: bool,
}

impl ApplyProgress {
    fn new(steps: usize) -> ApplyProgress {
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

    fn event(&self, event: ApplyEvent) {
        match event {
            ApplyEvent::Started { address, .. } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.insert(address);
                }
                self.update_message();
            }
            ApplyEvent::Retrying { address, error, delay } => {
                tracing::info!("{address}: {error}; retrying in {}s", delay.as_secs());
            }
            ApplyEvent::Finished { address, verb, id, elapsed } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.remove(&address);
                }
                self.bar.inc(1);
                self.update_message();
                let text = format!("{address}: {} ({id}) [{:.1}s]", verb.past(), elapsed.as_secs_f64());
                self.line(if self.color { text.green().to_string() } else { text });
            }
            ApplyEvent::Failed { address, verb, error } => {
                if let Ok(mut in_flight) = self.in_flight.lock() {
                    in_flight.remove(&address);
                }
                self.update_message();
                let text = format!("{address}: {} failed: {error}", verb.progressive());
                self.line(if self.color { text.red().to_string() } else { text });
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A roll's progress: a live line per group being rolled.
struct RollProgress {
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
    fn new() -> RollProgress {
        RollProgress { lines: MultiProgress::with_draw_target(draw_target()), groups: Mutex::new(BTreeMap::new()) }
    }

    fn event(&self, event: RollEvent) {
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

    fn finish(&self) {
        if let Ok(groups) = self.groups.lock() {
            for (bar, _) in groups.values() {
                bar.finish_and_clear();
            }
        }
    }
}

/// A sequence of steps (a bake): the current one live with its elapsed time.
struct StepProgress {
    bar: ProgressBar,
    prefix: &'static str,
}

impl StepProgress {
    fn new(prefix: &'static str, live: bool) -> StepProgress {
        let target = if live { draw_target() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(style("{spinner} [{elapsed_precise}] {wide_msg}"));
        bar.enable_steady_tick(TICK);
        StepProgress { bar, prefix }
    }

    fn step(&self, text: &str) {
        self.bar.set_message(text.to_owned());
        line(&self.bar, format!("{}: {text}", self.prefix));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Each task's report on a host as a line on stdout, as Ansible shows it.
struct RoleLines {
    /// False with `--json`: the reports are the output, at the end.
    shown: bool,
    /// File changes as unified diffs.
    diff: bool,
    color: bool,
}

impl RoleLines {
    fn event(&self, event: &RunEvent) {
        let RoleLines { shown, diff, color } = *self;
        if !shown {
            return;
        }
        match event {
            RunEvent::Unreachable { host, error } => {
                let label = if color { "unreachable".red().bold().to_string() } else { String::from("unreachable") };
                term::outln(format_args!("{label}: [{host}] {error}"));
            }
            RunEvent::Task { host, report } => {
                let (label, paint): (&str, fn(&str) -> String) = match report.status {
                    TaskStatus::Ok => ("ok", |s| s.green().to_string()),
                    TaskStatus::Changed => ("changed", |s| s.yellow().to_string()),
                    TaskStatus::Failed => ("failed", |s| s.red().bold().to_string()),
                    TaskStatus::Skipped => ("skipped", |s| s.dimmed().to_string()),
                };
                let label = if color { paint(label) } else { label.to_owned() };
                let handler = if report.handler { " (handler)" } else { "" };
                term::outln(format_args!("{label}: [{host}] {} / {}{handler}", report.role, report.task));
                for change in &report.outcome.diffs {
                    term::outln(format_args!("    {}: {} -> {}", change.field, change.before, change.after));
                }
                if diff {
                    if let Some(content) = term::withheld_if_secret(report.outcome.content_diff.clone()) {
                        for line in content.lines() {
                            term::outln(format_args!("    {line}"));
                        }
                    }
                }
                for note in &report.outcome.notes {
                    term::outln(format_args!("    note: {note}"));
                }
                if let Some(error) = &report.error {
                    term::outln(format_args!("    {error}"));
                }
            }
        }
    }
}

/// A roll's progress, each group's count when it ends, and the roll's.
impl RollWatch for Shown {
    fn group_ended(&self, group: &str, replaced: Option<usize>) {
        self.finish();
        if let Some(replaced @ 1..) = replaced {
            term::outln(format_args!("{group}: {replaced} replaced"));
        }
    }

    fn roll_ended(&self, replaced: usize) {
        if replaced == 0 {
            term::outln(format_args!("Nothing to roll: every instance runs its group's current launch settings."));
        }
    }
}
