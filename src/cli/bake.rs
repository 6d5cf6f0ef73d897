//! `kstack bake <image>`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kstack::bake::BakeOptions;
use kstack::model::Project;
use kstack::ops::bake::Baking;

use super::progress::Shown;
use super::running::{runtime, stop_on_signals};
use super::term::Terminal;
use super::{term, CliError};

/// Bake an immutable node AMI: launch a builder, apply the image's roles, run their checks,
/// and save it as an image. An AMI baked from the same source, roles and variables is reused.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack bake node
  kstack bake node --force --keep-on-error
  kstack bake node --json > node-manifest.json
  kstack bake node --cleanup          remove what dead bakes left and builders kept for debugging

Exit status: 0 an image is available (baked or reused), 1 the bake failed (nothing is left behind
unless --keep-on-error), 130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM (the builder and
its group are removed first).")]
pub(super) struct Args {
    /// Image name (images/<image>.yaml).
    image: String,

    /// Bake even if an AMI with the same content hash exists.
    #[arg(long)]
    force: bool,

    /// On failure, keep the builder and its security group and say how to log in.
    #[arg(long)]
    keep_on_error: bool,

    /// Admit SSH to the builder from this CIDR [default: this machine's address towards it].
    #[arg(long, value_name = "CIDR")]
    ssh_cidr: Option<String>,

    /// How long to wait for the builder to accept SSH, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    ssh_timeout: u64,

    /// How long to wait for the builder's console output to show its SSH host keys, in
    /// seconds; after that the first key it offers is trusted, and the manifest says so.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    host_key_wait: u64,

    /// Print the manifest (AMI per region, hash, source) as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Also write the manifest to this file.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,

    /// Instead of baking, remove what dead bakes left and builders kept for debugging (found by
    /// tag); bakes still running are named and left alone.
    #[arg(long)]
    cleanup: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let runtime = runtime()?;
    let baking = runtime.block_on(Baking::open(project, &args.image, &Terminal))?;
    // With --json the run is for a machine: plain lines only.
    let steps = Arc::new(Shown::bake(!args.json));
    if args.cleanup {
        let removed = runtime.block_on(baking.clean_up(steps.clone()));
        steps.finish();
        term::outln(format_args!("removed {} leftover bake resources in {}", removed?, baking.cloud.region));
        return Ok(());
    }
    let options = BakeOptions {
        force: args.force,
        keep_on_error: args.keep_on_error,
        ssh_cidr: args.ssh_cidr.clone(),
        ssh_timeout: Duration::from_secs(args.ssh_timeout),
        host_key_wait: Duration::from_secs(args.host_key_wait),
        stop: stop_on_signals(&runtime),
        ..BakeOptions::default()
    };
    let baked = runtime.block_on(baking.bake(options, steps.clone()));
    steps.finish();
    let manifest = baked?;
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    if let Some(path) = &args.manifest {
        std::fs::write(path, format!("{json}\n")).map_err(|error| CliError::failed(format!("cannot write {}: {error}", path.display()), None))?;
    }
    if args.json {
        term::outln(format_args!("{json}"));
    } else {
        let how = if manifest.reused { "reused" } else { "baked" };
        for (region, ami) in &manifest.amis {
            term::outln(format_args!("{region}: {ami} ({how}, image `{}`, hash {})", manifest.image, &manifest.hash[..12]));
        }
        for (region, amis) in &manifest.retired {
            term::outln(format_args!("{region}: retired {} (past `keep:`, used by nothing)", amis.join(", ")));
        }
    }
    Ok(())
}
