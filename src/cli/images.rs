//! `kstack images <image>`

use std::time::SystemTime;

use kstack::bake::inventory::ImageAmi;
use kstack::model::Project;
use kstack::ops::bake::Baking;

use super::running::runtime;
use super::term::Terminal;
use super::{term, CliError};

/// List an image's AMIs in its region and each region it is copied to: hash, age, and what
/// starts instances from each (environments, or launch templates and configurations by name).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack images node
  kstack images node --json

AMIs past the image's `keep:` that nothing uses are retired by its next bake.")]
pub(super) struct Args {
    /// Image name (images/<image>.yaml).
    image: String,

    /// Print the AMIs as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let runtime = runtime()?;
    let baking = runtime.block_on(Baking::open(project, &args.image, &Terminal))?;
    let amis = runtime.block_on(baking.amis())?;
    if args.json {
        term::outln(format_args!("{:#}", serde_json::json!({ "image": args.image, "amis": amis })));
        return Ok(());
    }
    if amis.is_empty() {
        term::outln(format_args!("image `{}` has no AMIs yet: `kstack bake {}` makes one", args.image, args.image));
        return Ok(());
    }
    let rows: Vec<[String; 5]> = amis.iter().map(row).collect();
    let header = ["REGION", "AMI", "HASH", "AGE", "USED BY"].map(String::from);
    let widths: Vec<usize> = (0..4).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(&rows) {
        term::outln(format_args!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        ));
    }
    Ok(())
}

fn row(ami: &ImageAmi) -> [String; 5] {
    let hash = ami.hash.as_deref().map_or("-", |h| &h[..h.len().min(12)]).to_owned();
    let state = if ami.state == "available" { String::new() } else { format!(" ({})", ami.state) };
    let used = if ami.used_by.is_empty() { String::from("-") } else { ami.used_by.iter().cloned().collect::<Vec<_>>().join(", ") };
    [ami.region.clone(), format!("{}{state}", ami.ami), hash, age(&ami.created), used]
}

/// `3d`, `5h`, `12m`: how long ago an ISO 8601 time was.
fn age(created: &str) -> String {
    let Some(then) = kstack::state::parse_rfc3339(created) else { return String::from("?") };
    let seconds = SystemTime::now().duration_since(then).map(|d| d.as_secs()).unwrap_or(0);
    match seconds {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s => format!("{}m", s / 60),
    }
}
