//! Reliability: apply and destroy through a proxy that injects AWS faults (throttling, 5xx,
//! resets, slow and lost replies), then checks with direct API calls that every run ended
//! consistent: after apply, each resource exists exactly once and a plan finds nothing to do;
//! after destroy, nothing tagged with the environment is left.
//!
//! Stopped by SIGTERM or Ctrl-C mid-way, apply and destroy finish the change in flight, write
//! state that matches AWS, release the lock and exit 143 / 130.
//!
//! `KSTACK_RELIABILITY_RUNS` (default 6) and `KSTACK_FAULT_RATE` (percent of requests, default
//! 25) size it; CI runs the default, a longer soak is `KSTACK_RELIABILITY_RUNS=30 cargo test
//! --test it reliability:: -- --nocapture`.

use std::collections::BTreeMap;

use kstack_testkit::faults::{Fault, FaultProxy};
use kstack_testkit::{env_filter, runtime, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `kstack <args>` through the proxy until it succeeds (a run a fault stopped is fine,
/// as long as running it again converges); returns how many runs it took.
fn until_success(project: &Project, moto: &Moto, proxy: &FaultProxy, args: &[&str]) -> Result<usize, String> {
    let mut last = String::new();
    // A fault stops a run now and then; the next one finishes. A run that keeps failing is a bug,
    // found in four runs rather than hidden behind a half hour of retries.
    for attempt in 1..=4 {
        let mut command = project.kstack(moto);
        for (key, value) in proxy.env() {
            command.env(key, value);
        }
        let output = command.args(args).timeout(std::time::Duration::from_secs(600)).output().unwrap();
        if output.status.success() {
            return Ok(attempt);
        }
        last = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    Err(format!("`kstack {}` never succeeded through the faults: {last}", args.join(" ")))
}

/// kstack's address tags of every resource of the environment that EC2 and Auto Scaling
/// report, counted.
fn tagged(rt: &tokio::runtime::Runtime, aws: &Clients, environment: &str) -> BTreeMap<String, usize> {
    rt.block_on(async {
        let mut addresses: Vec<String> = Vec::new();
        let address = |tags: &[aws_sdk_ec2::types::Tag]| {
            tags.iter().find(|t| t.key() == Some("kstack:address")).and_then(|t| t.value()).unwrap_or("?").to_owned()
        };
        let filter = env_filter(environment);
        let vpcs = aws.ec2.describe_vpcs().filters(filter.clone()).send().await.unwrap();
        addresses.extend(vpcs.vpcs().iter().map(|v| address(v.tags())));
        let subnets = aws.ec2.describe_subnets().filters(filter.clone()).send().await.unwrap();
        addresses.extend(subnets.subnets().iter().map(|s| address(s.tags())));
        let tables = aws.ec2.describe_route_tables().filters(filter.clone()).send().await.unwrap();
        addresses.extend(tables.route_tables().iter().map(|t| address(t.tags())));
        let gateways = aws.ec2.describe_internet_gateways().filters(filter.clone()).send().await.unwrap();
        addresses.extend(gateways.internet_gateways().iter().map(|g| address(g.tags())));
        let groups = aws.ec2.describe_security_groups().filters(filter.clone()).send().await.unwrap();
        addresses.extend(groups.security_groups().iter().map(|g| address(g.tags())));
        let templates = aws.ec2.describe_launch_templates().filters(filter).send().await.unwrap();
        addresses.extend(templates.launch_templates().iter().map(|t| address(t.tags())));
        let scaling = aws.autoscaling.describe_auto_scaling_groups().send().await.unwrap();
        addresses.extend(
            scaling
                .auto_scaling_groups()
                .iter()
                .filter(|g| g.tags().iter().any(|t| t.key() == Some("kstack:environment") && t.value() == Some(environment)))
                .map(|g| g.tags().iter().find(|t| t.key() == Some("kstack:address")).and_then(|t| t.value()).unwrap_or("?").to_owned()),
        );
        let mut counted = BTreeMap::new();
        for address in addresses {
            *counted.entry(address).or_insert(0) += 1;
        }
        counted
    })
}

#[test]
fn apply_and_destroy_through_injected_faults_always_end_consistent() {
    let runs = setting("KSTACK_RELIABILITY_RUNS", 6);
    let rate = setting("KSTACK_FAULT_RATE", 25);
    let rt = runtime();
    let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
    let mut inconsistent = Vec::new();
    let mut reruns = 0;
    for seed in 1..=runs {
        let moto = Moto::start();
        let aws = rt.block_on(moto.clients());
        rt.block_on(aws.seed_image("node"));
        let project = Project::fixture("project");
        project.edit(FLEET, "VPC_CIDR", &format!("10.{}.0.0/16", 100 + seed));
        project.edit(FLEET, "SUBNET_CIDR", &format!("10.{}.1.0/24", 100 + seed));
        let proxy = FaultProxy::start(&moto.endpoint, seed, rate);

        let mut check = |what: &str, result: Result<(), String>| {
            if let Err(problem) = result {
                inconsistent.push(format!("seed {seed}, {what}: {problem}"));
            }
        };
        match until_success(&project, &moto, &proxy, &["apply", "fleet", "--auto-approve"]) {
            Ok(attempts) => reruns += attempts - 1,
            Err(problem) => check("apply", Err(problem)),
        }
        let counted = tagged(&rt, &aws, "fleet");
        let duplicated: Vec<String> = counted.iter().filter(|(_, n)| **n > 1).map(|(a, n)| format!("{a} x{n}")).collect();
        check("apply left duplicates", if duplicated.is_empty() { Ok(()) } else { Err(duplicated.join(", ")) });
        let expected = ["asg.app", "launch_template.app", "route_table.nodes", "security_group.nodes", "subnet.nodes.eu-west-1a", "vpc.main"];
        let missing: Vec<&str> = expected.iter().copied().filter(|a| !counted.contains_key(*a)).collect();
        check("apply left resources missing", if missing.is_empty() { Ok(()) } else { Err(missing.join(", ")) });
        let plan = project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).output().unwrap();
        check("plan after apply", if plan.status.code() == Some(0) { Ok(()) } else { Err(String::from_utf8_lossy(&plan.stdout).into_owned()) });

        match until_success(&project, &moto, &proxy, &["destroy", "fleet", "--auto-approve"]) {
            Ok(attempts) => reruns += attempts - 1,
            Err(problem) => check("destroy", Err(problem)),
        }
        let left = tagged(&rt, &aws, "fleet");
        check("destroy left orphans", if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) });
        for (fault, count) in proxy.injected() {
            *injected.entry(fault).or_default() += count;
        }
    }
    let total: u64 = injected.values().sum();
    let kinds: Vec<String> = Fault::ALL.iter().map(|f| format!("{} {}", f.name(), injected.get(f).copied().unwrap_or(0))).collect();
    println!(
        "reliability: faults {total} injected ({}), {runs} apply/destroy runs, {reruns} reruns after a fault stopped one, {} inconsistent",
        kinds.join(", "),
        inconsistent.len()
    );
    assert!(total > 0, "the proxy injected faults");
    assert_eq!(inconsistent, Vec::<String>::new());
}

/// Runs `kstack <args>` and kills it (SIGKILL) after `after`; removes the lock a killed run
/// leaves. Returns whether it was killed before it finished.
fn kill_after(project: &Project, moto: &Moto, args: &[&str], after: std::time::Duration) -> bool {
    let mut child = project.kstack_process(moto).args(args).spawn().unwrap();
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    if !finished {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    if !finished {
        project.kstack(moto).args(["state", "unlock", "fleet"]).assert().success();
    }
    !finished
}

#[test]
fn apply_and_destroy_killed_at_many_points_converge_without_duplicates_or_orphans() {
    let points = setting("KSTACK_KILL_POINTS", 6);
    let rt = runtime();
    let moto = Moto::start();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", "10.120.0.0/16");
    project.edit(FLEET, "SUBNET_CIDR", "10.120.1.0/24");
    let expected = ["asg.app", "launch_template.app", "route_table.nodes", "security_group.nodes", "subnet.nodes.eu-west-1a", "vpc.main"];
    let mut killed = 0;
    let mut inconsistent = Vec::new();
    // Kills spread over the run (a run here takes a few seconds), each followed by a clean
    // check that nothing is duplicated, then a run to the end.
    for (verb, args) in [("apply", ["apply", "fleet", "--auto-approve"]), ("destroy", ["destroy", "fleet", "--auto-approve"])] {
        for point in 0..points {
            let after = std::time::Duration::from_millis(60 + point * 900 / points.max(1));
            if kill_after(&project, &moto, &args, after) {
                killed += 1;
            }
            let duplicated: Vec<String> = tagged(&rt, &aws, "fleet").into_iter().filter(|(_, n)| *n > 1).map(|(a, n)| format!("{a} x{n}")).collect();
            if !duplicated.is_empty() {
                inconsistent.push(format!("{verb} killed after {after:?}: {}", duplicated.join(", ")));
            }
        }
        let finished = project.kstack(&moto).args(args).output().unwrap();
        if !finished.status.success() {
            inconsistent.push(format!("{verb} after the kills: {}", String::from_utf8_lossy(&finished.stderr)));
        }
        let counted = tagged(&rt, &aws, "fleet");
        let consistent = match verb {
            "apply" => counted.len() == expected.len() && expected.iter().all(|a| counted.get(*a) == Some(&1)),
            _ => counted.is_empty(),
        };
        if !consistent {
            inconsistent.push(format!("after the final {verb}: {counted:?}"));
        }
        if verb == "apply" {
            let plan = project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).output().unwrap();
            if plan.status.code() != Some(0) {
                inconsistent.push(format!("plan after apply: {}", String::from_utf8_lossy(&plan.stdout)));
            }
        }
    }
    println!("kills: {killed} of {} runs killed mid-way, {} inconsistent", 2 * points, inconsistent.len());
    assert!(killed > 0, "some runs were killed before they finished");
    assert_eq!(inconsistent, Vec::<String>::new());
}

/// Sends `signal` to `kstack <args>` once its state file satisfies `under_way`; returns the
/// run's output.
fn signal_when(project: &Project, moto: &Moto, args: &[&str], signal: &str, under_way: impl Fn(&serde_json::Value) -> bool) -> std::process::Output {
    let child = project.kstack_process(moto).args(args).spawn().unwrap();
    let state = project.path().join(".kstack/state/fleet.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let read = std::fs::read(&state).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if read.as_ref().is_some_and(&under_way) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "`kstack {}` never got under way", args.join(" "));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sent = std::process::Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

/// The addresses state lists of the kinds `tagged` reads.
fn recorded(project: &Project) -> std::collections::BTreeSet<String> {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(project.path().join(".kstack/state/fleet.json")).unwrap()).unwrap();
    let kinds = ["vpc.", "subnet.", "route_table.", "internet_gateway.", "security_group.", "launch_template.", "asg."];
    state["resources"].as_object().unwrap().keys().filter(|a| kinds.iter().any(|k| a.starts_with(k))).cloned().collect()
}

#[test]
fn sigterm_mid_apply_and_ctrl_c_mid_destroy_finish_the_change_in_flight_write_state_and_release_the_lock() {
    let rt = runtime();
    let moto = Moto::start();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", "10.121.0.0/16");
    project.edit(FLEET, "SUBNET_CIDR", "10.121.1.0/24");
    let lock = project.path().join(".kstack/state/fleet.lock");
    let has = |address: &'static str| move |state: &serde_json::Value| state["resources"].get(address).is_some();

    // SIGTERM once the VPC is recorded: one step at a time, so most are still to come.
    let applying = ["apply", "fleet", "--auto-approve", "--parallelism", "1"];
    let stopped = signal_when(&project, &moto, &applying, "TERM", has("vpc.main"));
    let message = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert_eq!(stopped.status.code(), Some(143), "{message}");
    assert!(message.contains("Apply stopped: terminated (SIGTERM).") && message.contains("not started"), "{message}");
    assert!(message.contains("the lock is released"), "{message}");
    assert!(!lock.exists(), "the lock is released");
    let in_aws: std::collections::BTreeSet<String> = tagged(&rt, &aws, "fleet").into_keys().collect();
    assert_eq!(recorded(&project), in_aws, "state lists exactly what exists in AWS");
    assert!(in_aws.contains("vpc.main") && !in_aws.contains("asg.app"), "stopped part-way: {in_aws:?}");
    let resumed = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);

    // Ctrl-C once the group is deleted: the rest of the environment stays, recorded.
    let destroying = ["destroy", "fleet", "--auto-approve", "--parallelism", "1"];
    let stopped = signal_when(&project, &moto, &destroying, "INT", |state| state["resources"].get("asg.app").is_none());
    let message = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert_eq!(stopped.status.code(), Some(130), "{message}");
    assert!(message.contains("Destroy stopped: interrupted (SIGINT).") && message.contains("the lock is released"), "{message}");
    assert!(!lock.exists(), "the lock is released");
    let in_aws: std::collections::BTreeSet<String> = tagged(&rt, &aws, "fleet").into_keys().collect();
    assert_eq!(recorded(&project), in_aws, "state lists exactly what exists in AWS");
    assert!(in_aws.contains("vpc.main") && !in_aws.contains("asg.app"), "stopped part-way: {in_aws:?}");
    project.kstack(&moto).args(["destroy", "fleet", "--auto-approve"]).assert().success();
    assert!(tagged(&rt, &aws, "fleet").is_empty());
}
