//! `kstack roles import <dir>`

use std::path::PathBuf;

use clap::Subcommand;
use kstack::model::Project;
use kstack::ops::roles::import_ansible;

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
    /// and kept in tasks.yaml as a comment; the role loads either way.
    #[command(after_help = "Examples:
  kstack roles import ../ansible/roles/nginx
  kstack roles import ../ansible/roles/app --name web --force

Exit status: 0 converted (tasks left as comments are listed), 1 the role could not be written,
2 not an Ansible role, or the converted role does not load.")]
    Import {
        /// The Ansible role's directory (holding tasks/main.yml).
        dir: PathBuf,

        /// The kstack role's name [default: the directory's name].
        #[arg(long)]
        name: Option<String>,

        /// Replace roles/<name> if it exists.
        #[arg(long)]
        force: bool,
    },
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let Command::Import { dir, name, force } = &args.command;
    let imported = import_ansible(project, dir, name.as_deref(), *force)?;
    let converted = &imported.converted;
    term::outln(format_args!(
        "Converted {} into roles/{}: {} tasks, {} handlers, {} templates and files.",
        dir.display(),
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
    Ok(())
}
