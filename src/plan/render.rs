//! The plan as text, in the style Terraform users read every day.

use std::fmt::Write;

use owo_colors::{OwoColorize, Style};
use serde_json::Value;

use super::{Action, ActionKind, Change, Plan};

struct Styles {
    create: Style,
    update: Style,
    delete: Style,
    dim: Style,
    bold: Style,
}

impl Styles {
    fn new(color: bool) -> Styles {
        if color {
            Styles {
                create: Style::new().green(),
                update: Style::new().yellow(),
                delete: Style::new().red(),
                dim: Style::new().dimmed(),
                bold: Style::new().bold(),
            }
        } else {
            Styles { create: Style::new(), update: Style::new(), delete: Style::new(), dim: Style::new(), bold: Style::new() }
        }
    }
}

pub fn render(plan: &Plan, color: bool) -> String {
    let styles = Styles::new(color);
    let mut out = String::new();
    render_ownership(&mut out, plan, &styles);
    render_capacity(&mut out, plan, &styles);
    if !plan.has_changes() {
        let _ = writeln!(
            out,
            "{} environment `{}` matches its model ({} resources).",
            "No changes.".style(styles.bold),
            plan.environment,
            plan.summary.unchanged
        );
        return out;
    }
    let _ = writeln!(out, "kstack will perform the following actions in `{}`:\n", plan.environment);
    for action in plan.actions.iter().filter(|a| a.action != ActionKind::NoOp) {
        render_action(&mut out, action, &styles);
    }
    let s = &plan.summary;
    let _ = writeln!(
        out,
        "{} {} to add, {} to change, {} to destroy{}.",
        "Plan:".style(styles.bold),
        s.create + s.replace,
        s.update,
        s.delete + s.replace,
        if s.replace > 0 { format!(" ({} replaced)", s.replace) } else { String::new() }
    );
    out
}

/// What the plan takes over and what it leaves alone, before the actions.
fn render_ownership(out: &mut String, plan: &Plan, styles: &Styles) {
    if !plan.takes_over.is_empty() {
        let _ = writeln!(
            out,
            "{} {} resources of `{}` recorded before environments had identities; their tag \
             updates below give them the environment's identity (nothing is recreated).\n",
            "Takes over".style(styles.bold),
            plan.takes_over.len(),
            plan.environment
        );
    }
    let (unrecorded, foreign): (Vec<_>, Vec<_>) = plan.left_alone.iter().partition(|f| f.unrecorded);
    if !unrecorded.is_empty() {
        let _ = writeln!(
            out,
            "{} {} resources carry the tags of `{}` but kstack never recorded making them (tags can be copied), \
             so they are left alone; if one is this environment's, `kstack state adopt {} <address> <id>` makes it so:",
            "Note:".style(styles.update),
            unrecorded.len(),
            plan.environment,
            plan.environment
        );
        for resource in unrecorded {
            let _ = writeln!(out, "  {} {}", resource.address, resource.id.style(styles.dim));
        }
        let _ = writeln!(out);
    }
    if !foreign.is_empty() {
        let _ = writeln!(
            out,
            "{} {} resources tagged `kstack:environment={}` belong to another environment and are left alone:",
            "Note:".style(styles.update),
            foreign.len(),
            plan.environment
        );
        for resource in foreign {
            let whose = match &resource.identity {
                Some(identity) => format!("identity {identity}"),
                None => String::from("no identity, not in this environment's state"),
            };
            let _ = writeln!(out, "  {} {} ({whose})", resource.address, resource.id.style(styles.dim));
        }
        let _ = writeln!(out);
    }
}

fn render_capacity(out: &mut String, plan: &Plan, styles: &Styles) {
    use super::CapacityOutcome;
    for note in &plan.capacity {
        let what = match note.outcome {
            CapacityOutcome::Kept => {
                format!("desired capacity {} was set outside kstack (the model says {}); kept, as it is within min..max", note.observed, note.model)
            }
            CapacityOutcome::Clamped { to } => {
                format!("desired capacity {} was set outside kstack and is outside the new min..max; clamped to {to}", note.observed)
            }
            CapacityOutcome::Asked => format!("desired capacity {} -> {}: the model's `desired` changed", note.observed, note.model),
        };
        let _ = writeln!(out, "{} {}: {what}", "Capacity:".style(styles.bold), note.address);
    }
    if !plan.capacity.is_empty() {
        let _ = writeln!(out);
    }
}

fn render_action(out: &mut String, action: &Action, styles: &Styles) {
    let (symbol, style, what) = match action.action {
        ActionKind::Create => ("  +", styles.create, String::from("will be created")),
        ActionKind::Update => ("  ~", styles.update, String::from("will be updated in place")),
        ActionKind::Replace => {
            let (symbol, style, order) = match action.create_before_destroy {
                true => ("+/-", styles.update, " (new one created first)"),
                false => ("-/+", styles.delete, ""),
            };
            let why = if action.replace_requested { "will be replaced, as requested" } else { "must be replaced" };
            (symbol, style, format!("{why}{order}"))
        }
        ActionKind::Delete => ("  -", styles.delete, String::from("will be destroyed")),
        ActionKind::NoOp => return,
    };
    let _ = writeln!(out, "  {}", format!("# {} {what}", action.address).style(styles.bold));
    let id = action.id.as_deref().map(|id| format!(" ({id})")).unwrap_or_default();
    let _ = writeln!(out, "{} {}{}", symbol.style(style), action.address, id.style(styles.dim));
    match action.action {
        ActionKind::Delete => {}
        _ => {
            for change in &action.changes {
                render_change(out, change, styles);
            }
        }
    }
    out.push('\n');
}

/// Attribute changes as the plan shows them under a resource (an import, say).
pub fn render_changes(changes: &[Change], color: bool) -> String {
    let styles = Styles::new(color);
    let mut out = String::new();
    for change in changes {
        render_change(&mut out, change, &styles);
    }
    out
}

fn render_change(out: &mut String, change: &Change, styles: &Styles) {
    let forces = if change.forces_replacement { format!(" {}", "# forces replacement".style(styles.delete)) } else { String::new() };
    match (&change.before, &change.after) {
        (None, Some(after)) => {
            let _ = writeln!(out, "      {} {} = {}", "+".style(styles.create), change.path, value(after));
        }
        (Some(before), None) => {
            let _ = writeln!(out, "      {} {} = {}", "-".style(styles.delete), change.path, value(before));
        }
        (Some(_), Some(after)) if change.replaced_dependency => {
            let _ = writeln!(
                out,
                "      {} {} = {} {}{forces}",
                "~".style(styles.update),
                change.path,
                value(after),
                "(refers to a replaced resource)".style(styles.dim)
            );
        }
        (Some(Value::Array(before)), Some(Value::Array(after))) => {
            let _ = writeln!(out, "      {} {} = [{forces}", "~".style(styles.update), change.path);
            for item in before.iter().filter(|i| !after.contains(i)) {
                let _ = writeln!(out, "          {} {}", "-".style(styles.delete), value(item));
            }
            for item in after.iter().filter(|i| !before.contains(i)) {
                let _ = writeln!(out, "          {} {}", "+".style(styles.create), value(item));
            }
            let _ = writeln!(out, "        ]");
        }
        (Some(before), Some(after)) => {
            let _ = writeln!(out, "      {} {} = {} -> {}{forces}", "~".style(styles.update), change.path, value(before), value(after));
        }
        (None, None) => {}
    }
}

fn value(value: &Value) -> String {
    match value {
        Value::Null => String::from("(none)"),
        other => other.to_string(),
    }
}
