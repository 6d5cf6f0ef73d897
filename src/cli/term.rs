//! What the terminal can show: colour, width, and rendering of problems.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{LazyLock, Mutex, RwLock};

use miette::{GraphicalReportHandler, GraphicalTheme, ThemeCharacters, ThemeStyles};

use kstack::diagnostics::{display_path, Problem, ProblemReport, Problems, Sources};
use kstack::redact::Redactor;

/// The secrets of the environments loaded so far. Everything printed (results, errors, logs)
/// passes through `out` or `err`, which hide them.
static SECRETS: LazyLock<RwLock<Redactor>> = LazyLock::new(RwLock::default);

/// Hides these values (and their escaped, quoted, encoded and per-line forms) from now on.
/// Where operations' notices go: warnings on stderr, secrets into the redactor.
pub(super) struct Terminal;

impl kstack::ops::Notice for Terminal {
    fn note(&self, message: &str) {
        errln(format_args!("{message}"));
    }

    fn warning(&self, message: &str) {
        warning(message);
    }

    fn secrets(&self, values: &mut dyn Iterator<Item = &str>) {
        hide_secrets(values);
    }
}

pub(super) fn hide_secrets<'a>(values: impl IntoIterator<Item = &'a str>) {
    SECRETS.write().unwrap_or_else(|poisoned| poisoned.into_inner()).add(values);
}

/// `text` with every hidden value replaced: for what reaches the terminal other than
/// through `out` and `err` (the progress bar).
pub(super) fn redacted(text: fmt::Arguments) -> String {
    let text = text.to_string();
    SECRETS.read().unwrap_or_else(|poisoned| poisoned.into_inner()).redact(&text).into_owned()
}

/// Whether `text` holds a hidden value in any of its forms.
pub(super) fn mentions_secret(text: &str) -> bool {
    matches!(SECRETS.read().unwrap_or_else(|poisoned| poisoned.into_inner()).redact(text), std::borrow::Cow::Owned(_))
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (https://no-color.org).
pub(super) fn stderr_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Live progress only when a person watches both streams: not in a pipe, a log or CI, and not
/// on a terminal that cannot redraw.
pub(super) fn animated() -> bool {
    std::io::stderr().is_terminal() && std::io::stdout().is_terminal() && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

pub(super) fn stdout_color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// How writing to stdout went: a reader that left (`kstack state list dev | head`) is normal,
/// any other failure (a full disk) makes the command fail once it has finished its work.
#[derive(Clone, Copy, PartialEq)]
enum StdoutHealth {
    Open,
    ReaderGone,
    Failed,
}

static STDOUT: Mutex<StdoutHealth> = Mutex::new(StdoutHealth::Open);

/// Prints to stdout like `print!`, without the panic `print!` gives once stdout is closed:
/// the command carries on (an apply must not stop half-way because its pager quit) and later
/// output is dropped.
pub(super) fn out(text: fmt::Arguments) {
    let mut health = STDOUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *health != StdoutHealth::Open {
        return;
    }
    let text = redacted(text);
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            *health = StdoutHealth::ReaderGone;
        } else {
            *health = StdoutHealth::Failed;
            error(&format!("cannot write to stdout: {err}"), None);
        }
    }
}

/// `out` with a newline, like `println!`.
pub(super) fn outln(text: fmt::Arguments) {
    out(format_args!("{text}\n"));
}

/// Prints to stderr like `eprint!`, without its panic: when stderr itself is gone there is
/// nowhere left to report that, and the command's work and exit code matter more.
pub(super) fn err(text: fmt::Arguments) {
    let _ = std::io::stderr().lock().write_all(redacted(text).as_bytes());
}

/// `err` with a newline, like `eprintln!`.
pub(super) fn errln(text: fmt::Arguments) {
    err(format_args!("{text}\n"));
}

/// Whether some output could not be written for a reason other than its reader leaving.
pub(super) fn stdout_failed() -> bool {
    *STDOUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) == StdoutHealth::Failed
}

fn report_handler() -> GraphicalReportHandler {
    let styles = if stderr_color() { ThemeStyles::ansi() } else { ThemeStyles::none() };
    let width = terminal_width().unwrap_or(100);
    GraphicalReportHandler::new_themed(GraphicalTheme { characters: ThemeCharacters::unicode(), styles }).with_width(width).with_links(false)
}

fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// Renders every problem, then a one-line count, for stderr.
pub(super) fn render_problems(what: &str, problems: Problems, sources: &Sources) -> String {
    let handler = report_handler();
    let problems = problems.into_sorted();
    let mut out = String::new();
    for problem in &problems {
        let report = ProblemReport::new(problem.clone(), sources);
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&problem.message);
        }
        out.push('\n');
    }
    let count = problems.len();
    out.push_str(&format!("error: {what} has {count} problem{}; nothing was changed\n", if count == 1 { "" } else { "s" }));
    out
}

/// Problems as JSON, for editors and CI annotations.
pub(super) fn problems_json(problems: Problems, sources: &Sources) -> serde_json::Value {
    let list: Vec<serde_json::Value> = problems
        .into_sorted()
        .into_iter()
        .map(|Problem { message, loc, label, hint }| {
            let location = loc.map(|loc| {
                serde_json::json!({
                    "file": display_path(&sources.get(loc.source).path),
                    "line": loc.line,
                    "column": loc.column,
                })
            });
            serde_json::json!({"message": message, "location": location, "label": label, "hint": hint})
        })
        .collect();
    serde_json::json!(list)
}

/// An error that is not about input files, with an optional hint, on stderr.
pub(super) fn error(message: &str, hint: Option<&str>) {
    use owo_colors::OwoColorize;
    let color = stderr_color();
    let label = if color { "error:".red().bold().to_string() } else { String::from("error:") };
    errln(format_args!("{label} {message}"));
    if let Some(hint) = hint {
        let label = if color { "hint:".cyan().to_string() } else { String::from("hint:") };
        errln(format_args!("  {label} {hint}"));
    }
}

/// A warning on stderr: the command goes on.
pub(super) fn warning(message: &str) {
    use owo_colors::OwoColorize;
    let label = if stderr_color() { "warning:".yellow().bold().to_string() } else { String::from("warning:") };
    errln(format_args!("{label} {message}"));
}

/// A file's diff, or a note in its place when the file is rendered from a secret: its old
/// version holds the secret's earlier value after a rotation, which no redactor knows.
pub(super) fn withheld_if_secret(content_diff: Option<String>) -> Option<String> {
    content_diff.map(|diff| if mentions_secret(&diff) { String::from("(diff withheld: the file is rendered from a secret)") } else { diff })
}
