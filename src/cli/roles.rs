//! `kstack roles import <dir>`

use std::path::PathBuf;

use clap::Subcommand;
use kstack::import::ansible::Play;
use kstack::model::Project;
use kstack::ops::roles::{import_ansible, import_playbook, kstack_role_name, Imported};

use super::{term, CliError};

/// Work with the project's node roles.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an Ansible role into a kstack role under roles/: its tasks, handlers, defaults,
    /// vars, templates and files. Each task it cannot convert is listed with its file and line
    /// and kept in tasks.yaml as a comment; the role loads either way. Given a playbook, every
    /// role its plays name is converted (from the roles/ beside it), and each play is shown as
    /// the image and node group it becomes.
    #[command(after_help = "Examples:
  kstack roles import ../ansible/roles/nginx
  kstack roles import ../ansible/roles/app --name web --force
  kstack roles import ../ansible/site.yml

Exit status: 0 converted (tasks left as comments are listed), 1 the role could not be written,
2 not an Ansible role, or the converted role does not load.")]
    Import {
        /// The Ansible role's directory (holding tasks/main.yml), or a playbook.
        dir: PathBuf,

        /// The kstack role's name [default: the directory's name]; not for a playbook.
        #[arg(long)]
        name: Option<String>,

        /// Replace roles/<name> if it exists.
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let Command::Import { dir, name, force } = &args.command;
    if dir.is_file() {
        if name.is_some() {
            return Err(CliError::invalid("--name names one role; a playbook's roles keep their names", None));
        }
        let imported = import_playbook(project, dir, *force)?;
        for role in &imported.roles {
            show(role);
        }
        for play in &imported.plays {
            show_play(play);
        }
        return Ok(());
    }
    show(&import_ansible(project, dir, name.as_deref(), *force)?);
    Ok(())
}

/// A play as kstack has it: an image with the play's roles, and a node group with its variables.
fn show_play(play: &Play) {
    let group: String = play.hosts.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let roles: Vec<&str> = play.roles.iter().map(|r| kstack_role_name(r)).collect();
    term::outln(format_args!("\nPlay for hosts `{}`: an image with its roles, run by a node group with its variables:", play.hosts));
    term::outln(format_args!("  # images/{group}.yaml (with its source, ssh_user, build)\n  roles: {}", serde_json::json!(roles)));
    term::outln(format_args!(
        "  # environments/<env>.yaml\n  node_groups:\n    {group}:\n      image: {group}\n      variables: {}",
        serde_json::Value::Object(play.vars.clone())
    ));
    for left in &play.left {
        term::outln(format_args!("  left for you: {left}"));
    }
}

fn show(imported: &Imported) {
    let converted = &imported.converted;
    term::outln(format_args!(
        "Converted {} into roles/{}: {} tasks, {} handlers, {} templates and files.",
        imported.from.display(),
        imported.name,
        converted.converted,
        imported.handlers,
        converted.files.len()
    ));
    if !converted.left.is_empty() {
        term::outln(format_args!("\nLeft for you ({}; tasks are kept in tasks.yaml as comments):", converted.left.len()));
        for left in &converted.left {
            term::outln(format_args!("  {}:{}  {}: {}", left.file.display(), left.line, left.what, left.why));
        }
    }
    if !converted.notes.is_empty() {
        term::outln(format_args!("\nRewritten, to review:"));
        for note in &converted.notes {
            term::outln(format_args!("  {note}"));
        }
    }
}
