//! `kstack roll` through the binary on the AWS emulator.

mod support;

use support::{runtime, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";

/// The fixture fleet in `10.<octet>.0.0/16`, sized to `min`..`max`, with `roll_hooks`,
/// applied with a seeded image of `node`.
fn applied_fleet(moto: &Moto, rt: &tokio::runtime::Runtime, octet: u8, size: (u32, u32), hooks: &str) -> (Project, Clients) {
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", &format!("10.{octet}.0.0/16"));
    project.edit(FLEET, "SUBNET_CIDR", &format!("10.{octet}.1.0/24"));
    project.edit(FLEET, "    min: 2\n    max: 2\n", &format!("    min: {}\n    max: {}\n", size.0, size.1));
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}roll_hooks:\n{hooks}"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.kstack(moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    (project, aws)
}

fn instance_ids(aws: &Clients, rt: &tokio::runtime::Runtime) -> Vec<String> {
    rt.block_on(aws.group("fleet-app")).instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect()
}

#[test]
fn a_roll_replaces_every_outdated_instance_without_shrinking_the_group_and_then_does_nothing() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hooks.log");
    let shown = log.display();
    let hooks = format!(
        "  readiness: echo ready {{{{ instance.id }}}} {{{{ instance.address }}}} >> {shown}\n  pre_stop: echo stop {{{{ instance.id }}}} {{{{ group }}}} >> {shown}\n  validate: echo validate {{{{ env }}}}/{{{{ group }}}} >> {shown}\n"
    );
    let (project, aws) = applied_fleet(&moto, &rt, 30, (3, 4), &hooks);
    let before = instance_ids(&aws, &rt);
    assert_eq!(before.len(), 3);

    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&dry.stdout).trim(), "app: 0 outdated of 3");

    // A new instance type: a new launch template version, and three outdated instances.
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).starts_with("app: 3 outdated of 3: i-"), "{}", String::from_utf8_lossy(&dry.stdout));

    // Sample the in-service count while the roll runs: it must never drop below the size.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        let endpoint = moto.endpoint.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            let config = rt.block_on(
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .endpoint_url(endpoint)
                    .region(aws_config::Region::new("eu-west-1"))
                    .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"))
                    .load(),
            );
            let client = aws_sdk_autoscaling::Client::new(&config);
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                let groups = rt.block_on(client.describe_auto_scaling_groups().auto_scaling_group_names("fleet-app").send()).unwrap();
                let in_service = groups.auto_scaling_groups()[0]
                    .instances()
                    .iter()
                    .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
                    .count();
                samples.push(in_service);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            samples
        })
    };
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    assert!(samples.len() >= 3, "sampled throughout: {samples:?}");
    assert!(samples.iter().all(|n| *n >= 3), "in service never below the group's size: {samples:?}");
    let stderr = String::from_utf8_lossy(&rolled.stderr);
    assert!(rolled.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&rolled.stdout).trim(), "app: 3 replaced, 0 already current");
    // Surge first: each batch is in service before its outdated instance is terminated.
    let surge = stderr.find("surging to 4").unwrap();
    let terminate = stderr.find("terminating").unwrap();
    assert!(surge < terminate, "{stderr}");

    let group = rt.block_on(aws.group("fleet-app"));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(3), Some(4)), "size and maximum restored");
    assert!(group.suspended_processes().is_empty(), "processes resumed: {:?}", group.suspended_processes());
    let after: Vec<String> = group.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|id| !before.contains(id)), "every instance replaced: {before:?} -> {after:?}");
    rt.block_on(async {
        let described = aws.ec2.describe_instances().set_instance_ids(Some(after.clone())).send().await.unwrap();
        for instance in described.reservations().iter().flat_map(|r| r.instances()) {
            assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.medium"));
        }
    });

    // Hooks ran per batch: readiness for the new instance, pre-stop for the old, then validate.
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 9, "{log}");
    let mut stopped = Vec::new();
    for chunk in lines.chunks(3) {
        assert_eq!(chunk[0][0], "ready", "{log}");
        assert!(after.contains(&chunk[0][1].to_owned()) && chunk[0][2].contains('.'), "a new instance with its address: {log}");
        assert_eq!((chunk[1][0], chunk[1][2]), ("stop", "app"), "{log}");
        stopped.push(chunk[1][1].to_owned());
        assert_eq!(chunk[2][..], ["validate", "fleet/app"], "{log}");
    }
    stopped.sort();
    let mut old = before.clone();
    old.sort();
    assert_eq!(stopped, old, "every old instance got its pre-stop hook");

    let again = project.kstack(&moto).args(["roll", "fleet"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("Nothing to roll"), "{stdout}");

    // `apply --roll` does both in one go.
    project.edit(FLEET, "instance_type: t3.medium", "instance_type: t3.large");
    let both = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--roll"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&both.stdout);
    assert!(both.status.success(), "{}", String::from_utf8_lossy(&both.stderr));
    assert!(stdout.contains("Apply complete!") && stdout.contains("app: 3 replaced, 0 already current"), "{stdout}");
}

#[test]
fn a_failing_readiness_hook_stops_the_roll_with_the_group_as_it_was_and_a_rerun_finishes() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let flag = scratch.path().join("node-ready");
    let (project, aws) = applied_fleet(&moto, &rt, 31, (2, 2), &format!("  readiness: test -e {}\n", flag.display()));
    let before = instance_ids(&aws, &rt);
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    let stopped = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the readiness hook failed for i-"), "{stderr}");
    let group = rt.block_on(aws.group("fleet-app"));
    let now: Vec<String> = group.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    assert_eq!(now, before, "the surged instance is gone, the old ones untouched");
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(2), Some(2)));
    assert!(group.suspended_processes().is_empty(), "processes resumed after the failure");

    std::fs::write(&flag, "").unwrap();
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    assert_eq!(String::from_utf8_lossy(&rolled.stdout).trim(), "app: 2 replaced, 0 already current");
    assert_eq!(rt.block_on(aws.group("fleet-app")).desired_capacity(), Some(2));
}
