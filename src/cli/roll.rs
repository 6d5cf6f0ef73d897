//! `kstack roll <env>`

use std::time::Duration;

use crate::aws::Cloud;
use crate::model::Project;
use crate::roll::{group_state, roll_group, RollGroup};
use crate::state::StateStore;

use super::session::runtime;
use super::{load_and_compile, report_problems, term, Failure};

/// Move every node group onto its current launch settings (AMI and instance type)
/// without losing capacity: new instances first, then the outdated ones go through the group.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack roll dev --dry-run        show which instances are outdated
  kstack roll dev --group workers --max-surge 2

Exit status: 0 every group runs its current settings, 1 the roll stopped (see the message).")]
pub struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Only these node groups (repeatable); groups go in the environment's `roll_order`.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,

    /// Instances replaced at a time, surged before the old ones go [default: each group's
    /// `max_surge`, 1 unless set].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=100))]
    max_surge: Option<u16>,

    /// Print the outdated instances per group and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// How long to wait for new instances to be in service, or old ones to leave, in seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    timeout: u64,
}

impl Args {
    /// Every group of `env`, with the groups' own settings: what `apply --roll` runs.
    pub fn everything(env: &str) -> Args {
        Args { env: env.to_owned(), groups: Vec::new(), max_surge: None, dry_run: false, timeout: 900 }
    }
}

pub fn run(project: &Project, args: &Args) -> Result<(), Failure> {
    let (sources, result) = load_and_compile(project, &args.env);
    let compiled = result.map_err(|problems| report_problems(&args.env, problems, &sources))?;
    let environment = &compiled.checked.environment;
    let store = StateStore::new(&project.root, &environment.name);
    let _lock = store.lock(&format!("kstack roll {}", args.env)).map_err(|error| {
        term::error(&error.to_string(), Some(&error.hint()));
        Failure::Reported
    })?;
    let runtime = runtime()?;
    let cloud = runtime.block_on(Cloud::connect(&environment.region.value, &environment.name));
    let groups: Vec<(&str, u32)> = environment
        .roll_sequence()
        .into_iter()
        .map(|g| (g.name.value.as_str(), g.max_surge))
        .filter(|(g, _)| args.groups.is_empty() || args.groups.iter().any(|w| w == g))
        .collect();
    let progress = |line: &str| eprintln!("roll: {line}");
    let mut replaced = 0;
    for (group, group_surge) in groups {
        let surge = args.max_surge.map_or(group_surge as usize, usize::from);
        let aws_name = format!("{}-{group}", environment.name);
        let outcome: Result<_, crate::roll::RollError> = runtime.block_on(async {
            let state = group_state(&cloud, &aws_name).await?;
            if args.dry_run || state.outdated.is_empty() {
                return Ok((state, 0));
            }
            let roll = RollGroup {
                environment: &environment.name,
                group,
                aws_name: &aws_name,
                surge,
                timeout: Duration::from_secs(args.timeout),
                hooks: &environment.roll_hooks,
            };
            let rolled = roll_group(&cloud, &roll, &progress).await?;
            Ok((state, rolled))
        });
        match outcome {
            Ok((state, rolled)) => {
                replaced += rolled;
                if args.dry_run {
                    println!(
                        "{group}: {} outdated of {}{}",
                        state.outdated.len(),
                        state.outdated.len() + state.current.len(),
                        if state.outdated.is_empty() { String::new() } else { format!(": {}", state.outdated.join(", ")) }
                    );
                } else {
                    println!("{group}: {rolled} replaced, {} already current", state.current.len());
                }
            }
            Err(error) => {
                term::error(&format!("roll of `{group}` stopped: {error}"), Some("fix the cause and run `kstack roll` again; it continues with what is still outdated"));
                return Err(Failure::Reported);
            }
        }
    }
    if !args.dry_run && replaced == 0 {
        println!("Nothing to roll: every instance runs its group's current launch settings.");
    }
    Ok(())
}
