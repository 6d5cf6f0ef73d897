//! `kstack roll` through the binary on the AWS emulator, with test nodes serving the
//! instances' loopback addresses where hooks talk to them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kstack_testkit::node::{ClientKey, Node};
use kstack_testkit::{runtime, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";
const GROUP: &str = "fleet-app";

/// The fixture fleet in `cidr` (`VPC_CIDR`, `SUBNET_CIDR`), sized `size`, with `group_extra`
/// settings for the group and `roll_hooks`, applied with a seeded image of `node`.
fn applied_fleet(moto: &Moto, rt: &tokio::runtime::Runtime, project: Project, size: u32, group_extra: &str, hooks: &str) -> (Project, Clients) {
    project.edit(FLEET, "    min: 2\n    max: 2\n", &format!("    min: {size}\n    max: {}\n{group_extra}", size + 1));
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}roll_hooks:\n{hooks}"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.kstack(moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    (project, aws)
}

fn fleet_at(octet: u8) -> Project {
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", &format!("10.{octet}.0.0/16"));
    project.edit(FLEET, "SUBNET_CIDR", &format!("10.{octet}.1.0/24"));
    project
}

/// A fleet of `size` applied, then given a new instance type: every instance outdated.
/// Returns the instances it had.
fn outdated_fleet(moto: &Moto, rt: &tokio::runtime::Runtime, octet: u8, size: u32, hooks: &str) -> (Project, Clients, Vec<String>) {
    let (project, aws) = applied_fleet(moto, rt, fleet_at(octet), size, "", hooks);
    let before = instance_ids(&aws, rt);
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    (project, aws, before)
}

fn instance_ids(aws: &Clients, rt: &tokio::runtime::Runtime) -> Vec<String> {
    rt.block_on(aws.group(GROUP)).instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect()
}

/// Instances of the group EC2 reports running, whatever the group thinks.
fn running_instances(aws: &Clients, rt: &tokio::runtime::Runtime) -> usize {
    rt.block_on(async {
        let filter = aws_sdk_ec2::types::Filter::builder().name("tag:kstack:address").values("asg.app").build();
        let running = aws_sdk_ec2::types::Filter::builder().name("instance-state-name").values("running").build();
        let described = aws.ec2.describe_instances().filters(filter).filters(running).send().await.unwrap();
        described.reservations().iter().map(|r| r.instances().len()).sum()
    })
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Samples a count of the group's instances every 50 ms until stopped.
struct Sampler {
    running: Arc<AtomicBool>,
    thread: JoinHandle<Vec<usize>>,
}

/// The group's instances in service.
fn in_service(aws: &Clients, rt: &tokio::runtime::Runtime) -> usize {
    let group = rt.block_on(aws.group(GROUP));
    group.instances().iter().filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService")).count()
}

impl Sampler {
    fn start(moto: &Moto, count: impl Fn(&Clients, &tokio::runtime::Runtime) -> usize + Send + 'static) -> Sampler {
        let running = Arc::new(AtomicBool::new(true));
        let endpoint = moto.endpoint.clone();
        let flag = Arc::clone(&running);
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            let aws = rt.block_on(Clients::at(&endpoint));
            let mut samples = Vec::new();
            while flag.load(Ordering::SeqCst) {
                samples.push(count(&aws, &rt));
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Sampler { running, thread }
    }

    fn stop(self) -> Vec<usize> {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Keeps a test node booted at the address of every running instance of the group, as
/// EC2 would: new instances get a node, terminated ones lose theirs.
struct NodeKeeper {
    running: Arc<AtomicBool>,
    serving: Arc<AtomicUsize>,
    /// The addresses a node serves now.
    addresses: Arc<std::sync::Mutex<Vec<String>>>,
    thread: JoinHandle<usize>,
}

impl NodeKeeper {
    fn start(moto: &Moto, key: Arc<ClientKey>) -> NodeKeeper {
        let running = Arc::new(AtomicBool::new(true));
        let endpoint = moto.endpoint.clone();
        let flag = Arc::clone(&running);
        let serving = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&serving);
        let addresses = Arc::new(std::sync::Mutex::new(Vec::new()));
        let served = Arc::clone(&addresses);
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            let aws = rt.block_on(Clients::at(&endpoint));
            let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
            let mut booted = 0;
            while flag.load(Ordering::SeqCst) {
                let addresses: Vec<String> = rt.block_on(async {
                    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:kstack:address").values("asg.app").build();
                    let running = aws_sdk_ec2::types::Filter::builder().name("instance-state-name").values("running").build();
                    let described = aws.ec2.describe_instances().filters(filter).filters(running).send().await.unwrap();
                    described.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.private_ip_address().map(str::to_owned)).collect()
                });
                nodes.retain(|address, _| addresses.contains(address));
                for address in addresses {
                    if !nodes.contains_key(&address) {
                        nodes.insert(address.clone(), Node::boot_at(&key, &address));
                        booted += 1;
                    }
                }
                count.store(nodes.len(), Ordering::SeqCst);
                *served.lock().unwrap() = nodes.keys().cloned().collect();
                std::thread::sleep(Duration::from_millis(50));
            }
            booted
        });
        NodeKeeper { running, serving, addresses, thread }
    }

    fn wait_until_serving(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.serving.load(Ordering::SeqCst) < count {
            assert!(std::time::Instant::now() < deadline, "{count} nodes did not boot within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every node; returns how many were booted in all.
    fn stop(self) -> usize {
        self.running.store(false, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// A shell test that the instance's address answers with an SSH banner, so a hook proves a
/// machine serves the address it was given.
fn serves_ssh(address: &str) -> String {
    format!("timeout 2 bash -c 'exec 3<>/dev/tcp/{address}/22 && head -c 8 <&3' 2>/dev/null | grep -q SSH-2.0")
}

#[test]
fn a_new_launch_template_version_rolls_six_nodes_one_at_a_time_with_hooks_on_each_node() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hooks.log");
    let shown = log.display();
    let address = "{{ instance.address }}";
    let who = "{{ instance.id }} {{ instance.address }} {{ instance.name }}";
    // Readiness waits for the new node to answer SSH; pre-stop insists the old one still does.
    let hooks = format!(
        "  readiness: for i in $(seq 100); do if {}; then echo ready {who} >> {shown}; exit 0; fi; sleep 0.2; done; exit 1\n  pre_stop: {} && echo stop {who} >> {shown}\n  validate: echo validate {{{{ env }}}}/{{{{ group }}}} >> {shown}\n",
        serves_ssh(address),
        serves_ssh(address),
    );
    let project = Project::fixture("project");
    project.loopback_fleet(7);
    let policy = "    roll: { max_surge: 0, max_unavailable: 1, min_healthy_percent: 80 }\n";
    let (project, aws) = applied_fleet(&moto, &rt, project, 6, policy, &hooks);
    let before = instance_ids(&aws, &rt);
    assert_eq!(before.len(), 6);
    let key = Arc::new(ClientKey::new());
    let keeper = NodeKeeper::start(&moto, Arc::clone(&key));
    keeper.wait_until_serving(6);

    // A new launch template version. (A change of user data alone would do on AWS, and
    // `outdated` is unit-tested for it, but the emulator fails to launch group instances from
    // a template with user data: its launch template model asserts on the stored type.)
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap();
    let planned = stdout(&dry);
    assert!(planned.starts_with("app: 6 outdated of 6\n"), "{planned}");
    assert_eq!(planned.matches("  batch ").count(), 6, "one instance at a time: {planned}");
    assert!(planned.contains("  batch 6: take out i-"), "{planned}");

    let sampler = Sampler::start(&moto, in_service);
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "120"]).output().unwrap();
    let samples = sampler.stop();
    let booted = keeper.stop();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert_eq!(stdout(&rolled).trim(), "app: 6 replaced");
    // Piped, progress is plain lines: nothing redrawn, no escape sequences.
    let progress = stderr(&rolled);
    assert!(!progress.contains('\x1b') && !progress.contains('\r'), "{progress}");
    let batches: Vec<&str> = progress.lines().filter(|l| l.contains(": batch ")).collect();
    assert_eq!(batches.len(), 6, "{progress}");
    assert!(batches.iter().all(|l| l.starts_with("roll: ") && l.ends_with("at least 5 in service)")), "{batches:?}");
    assert!(samples.len() >= 6, "sampled throughout: {samples:?}");
    assert!(samples.iter().all(|n| *n >= 5), "in service never below 80% of 6: {samples:?}");
    assert_eq!(booted, 12, "a node for each old and each new instance");

    let group = rt.block_on(aws.group(GROUP));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(6), Some(7)));
    assert!(group.suspended_processes().is_empty(), "{:?}", group.suspended_processes());
    let after = instance_ids(&aws, &rt);
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|id| !before.contains(id)), "{before:?} -> {after:?}");
    assert_eq!(running_instances(&aws, &rt), 6, "no instance left behind");

    // Per batch: the old node is stopped while it still serves, its successor serves before
    // the batch is validated, each with its own id, address and DNS name.
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 18, "{log}");
    for batch in lines.chunks(3) {
        let (stop, ready, validate) = (&batch[0], &batch[1], &batch[2]);
        assert_eq!(stop[0], "stop", "{log}");
        assert!(before.contains(&stop[1].to_owned()), "{log}");
        assert_eq!(ready[0], "ready", "{log}");
        assert!(after.contains(&ready[1].to_owned()), "{log}");
        for instance in [stop, ready] {
            assert!(instance[2].starts_with("127."), "{log}");
            assert!(instance[3].contains(&instance[2].replace('.', "-")), "the DNS name of that address: {log}");
        }
        assert_eq!(validate[..], ["validate", "fleet/app"], "{log}");
    }

    let again = project.kstack(&moto).args(["roll", "fleet"]).output().unwrap();
    assert!(stdout(&again).contains("Nothing to roll"), "{}", stdout(&again));
}

#[test]
fn a_surge_roll_replaces_every_instance_without_shrinking_and_apply_can_roll_too() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = applied_fleet(&moto, &rt, fleet_at(30), 3, "", "  validate: 'true'\n");
    let before = instance_ids(&aws, &rt);
    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap();
    assert_eq!(stdout(&dry).trim(), "app: 0 outdated of 3");

    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run", "--max-surge", "2"]).output().unwrap();
    let planned = stdout(&dry);
    assert!(planned.starts_with("app: 3 outdated of 3\n  batch 1: surge for i-"), "{planned}");
    assert_eq!(planned.matches("  batch ").count(), 2, "{planned}");

    let sampler = Sampler::start(&moto, in_service);
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    let samples = sampler.stop();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert_eq!(stdout(&rolled).trim(), "app: 3 replaced");
    assert!(samples.iter().all(|n| *n >= 3), "in service never below the group's size: {samples:?}");
    let log = stderr(&rolled);
    assert!(log.find("surging to 4").unwrap() < log.find("terminating").unwrap(), "new first: {log}");
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(3), Some(4)), "size and maximum restored");
    assert!(instance_ids(&aws, &rt).iter().all(|id| !before.contains(id)));
    assert!(!std::fs::read_to_string(project.path().join(".kstack/state/fleet.json")).unwrap().contains("\"roll\""));

    project.edit(FLEET, "instance_type: t3.medium", "instance_type: t3.large");
    let both = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--roll"]).output().unwrap();
    assert!(both.status.success(), "{}", stderr(&both));
    assert!(stdout(&both).contains("Apply complete!") && stdout(&both).contains("app: 3 replaced"), "{}", stdout(&both));
}

#[test]
fn a_failing_readiness_hook_stops_the_roll_with_the_group_as_it_was_and_resume_finishes() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let flag = scratch.path().join("node-ready");
    let (project, aws, before) = outdated_fleet(&moto, &rt, 31, 2, &format!("  readiness: test -e {}\n", flag.display()));

    let stopped = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{}", stderr(&stopped));
    assert!(stderr(&stopped).contains("the readiness hook failed for i-"), "{}", stderr(&stopped));
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!(instance_ids(&aws, &rt), before, "the surged instance is gone, the old ones untouched");
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(2), Some(3)));
    assert!(group.suspended_processes().is_empty(), "processes resumed after the failure");

    // The stopped roll is recorded: a plain roll or an apply points at --resume.
    let again = project.kstack(&moto).args(["roll", "fleet"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("did not finish; it stopped: app: the readiness hook failed"), "{}", stderr(&again));
    assert!(stderr(&again).contains("kstack roll fleet --resume"), "{}", stderr(&again));

    std::fs::write(&flag, "").unwrap();
    // Resumed in an incident without a secret's variable at hand: the hooks need none.
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}secrets:\n  registry_token: KSTACK_TEST_UNSET_TOKEN\n"));
    let resumed = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(["roll", "fleet", "--resume"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("secret `registry_token` is not set"), "{}", stderr(&resumed));
    assert_eq!(stdout(&resumed).trim(), "app: 2 replaced");
    assert_eq!(rt.block_on(aws.group(GROUP)).desired_capacity(), Some(2));
    let nothing = project.kstack(&moto).args(["roll", "fleet", "--resume"]).output().unwrap();
    assert!(stderr(&nothing).contains("`fleet` has no unfinished roll"), "{}", stderr(&nothing));
}

/// Starts a roll and kills it (SIGKILL) once its first batch has surged, then removes the
/// lock the dead process left, as its user would after reading who held it.
fn kill_mid_roll(project: &Project, moto: &Moto) {
    kill_when_surged(project, moto);
    let locked = project.kstack(moto).args(["roll", "fleet", "--resume"]).output().unwrap();
    assert!(stderr(&locked).contains("is locked by") && stderr(&locked).contains("`kstack roll fleet`"), "{}", stderr(&locked));
    assert!(stderr(&locked).contains("that run is gone"), "{}", stderr(&locked));
    project.kstack(moto).args(["state", "unlock", "fleet"]).assert().success();
}

fn kill_when_surged(project: &Project, moto: &Moto) {
    let mut child = project.kstack_process(moto).args(["roll", "fleet", "--timeout", "60"]).spawn().unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("waiting for 1 new instance") {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
    }
    let status = child.wait().unwrap();
    panic!("the roll ended ({status}) before its first batch surged: {seen:?}");
}

#[test]
fn a_roll_killed_mid_batch_resumes_without_losing_or_leaking_an_instance() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws, before) = outdated_fleet(&moto, &rt, 32, 3, "  readiness: sleep 1\n");

    kill_mid_roll(&project, &moto);
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!(group.desired_capacity(), Some(4), "killed with the surge in place");
    let mut suspended: Vec<&str> = group.suspended_processes().iter().filter_map(|p| p.process_name()).collect();
    suspended.sort_unstable();
    assert_eq!(
        suspended,
        ["AZRebalance", "AlarmNotification", "ReplaceUnhealthy", "ScheduledActions"],
        "and the processes that would fight it suspended"
    );
    let state = std::fs::read_to_string(project.path().join(".kstack/state/fleet.json")).unwrap();
    assert!(state.contains("\"batch\""), "the batch in flight is recorded: {state}");
    // The group says so in AWS, `roll --status` says where it stopped, and a plan warns.
    let note = group.tags().iter().find(|t| t.key() == Some("kstack:roll")).and_then(|t| t.value()).unwrap_or_default().to_owned();
    assert!(note.contains("AZRebalance, ReplaceUnhealthy, ScheduledActions, AlarmNotification suspended"), "{note}");
    assert!(note.contains("kstack roll fleet --resume"), "{note}");
    let status = stdout(&project.kstack(&moto).args(["roll", "fleet", "--status"]).output().unwrap());
    assert!(status.contains("did not finish"), "{status}");
    assert!(status.contains("batch 1 in flight (surged for: i-"), "{status}");
    assert!(status.contains("suspended by the roll: AZRebalance, ReplaceUnhealthy, ScheduledActions, AlarmNotification"), "{status}");
    let planned = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert!(!stdout(&planned).contains("kstack:roll"), "the roll's tag is no change to plan: {}", stdout(&planned));
    assert!(stderr(&planned).contains("did not finish"), "{}", stderr(&planned));

    // Applying now would shrink the surged group: it refuses, as does a fresh roll.
    project.edit(FLEET, "description: Test nodes", "description: Test nodes of the fleet");
    let apply = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert_eq!(apply.status.code(), Some(1));
    assert!(stderr(&apply).contains("did not finish; it was interrupted; nothing was applied"), "{}", stderr(&apply));
    project.edit(FLEET, "description: Test nodes of the fleet", "description: Test nodes");

    let resumed = project.kstack(&moto).args(["roll", "fleet", "--resume"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(stdout(&resumed).trim(), "app: 3 replaced");
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(3), Some(4)));
    assert!(group.suspended_processes().is_empty());
    assert!(group.tags().iter().all(|t| t.key() != Some("kstack:roll")), "the finished roll's tag is gone");
    assert!(stdout(&project.kstack(&moto).args(["roll", "fleet", "--status"]).output().unwrap()).contains("No unfinished roll of `fleet`."));
    assert!(instance_ids(&aws, &rt).iter().all(|id| !before.contains(id)));
    assert_eq!(running_instances(&aws, &rt), 3, "no surged instance left running");
}

/// Runs a roll and kills it (SIGKILL) right after its `after`-th progress line; returns
/// whether it was killed before it finished.
fn kill_after_line(project: &Project, moto: &Moto, after: usize) -> bool {
    let mut child = project.kstack_process(moto).args(["roll", "fleet", "--timeout", "60"]).spawn().unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    if lines.map_while(Result::ok).nth(after - 1).is_some() {
        child.kill().unwrap();
    }
    !child.wait().unwrap().success()
}

#[test]
fn a_roll_killed_after_any_of_its_steps_resumes_to_the_same_end() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = applied_fleet(&moto, &rt, fleet_at(35), 3, "", "  validate: 'true'\n");
    let types = ["t3.small", "t3.medium"];
    let mut round = 0;
    // Every instance outdated again: the other instance type.
    let mut outdate = || {
        round += 1;
        let (from, to) = (types[(round + 1) % 2], types[round % 2]);
        project.edit(FLEET, &format!("instance_type: {from}"), &format!("instance_type: {to}"));
        project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    };
    outdate();
    let whole = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    let lines = stderr(&whole).lines().count();
    // About ten moments spread over the whole roll, its last step included.
    let moments: Vec<usize> = (1..lines).step_by((lines / 10).max(1)).chain([lines - 1]).collect();
    let mut killed = 0;
    for step in moments.iter().copied() {
        outdate();
        let before = instance_ids(&aws, &rt);
        // Late moments can lose the race with the roll's own end; that run ends as it should.
        killed += usize::from(kill_after_line(&project, &moto, step));
        project.kstack(&moto).args(["state", "unlock", "fleet"]).assert().success();
        let mut resumed = project.kstack(&moto).args(["roll", "fleet", "--resume", "--timeout", "60"]).output().unwrap();
        if stderr(&resumed).contains("has no unfinished roll") {
            // Killed before its journal was written: nothing to resume, so roll afresh.
            resumed = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
        }
        assert!(resumed.status.success(), "killed after line {step}: {}", stderr(&resumed));

        let group = rt.block_on(aws.group(GROUP));
        assert_eq!((group.desired_capacity(), group.max_size()), (Some(3), Some(4)), "killed after line {step}");
        assert!(group.suspended_processes().is_empty(), "killed after line {step}: processes resumed");
        let after = instance_ids(&aws, &rt);
        assert!(after.iter().all(|id| !before.contains(id)), "killed after line {step}: all replaced");
        assert_eq!(running_instances(&aws, &rt), 3, "killed after line {step}: none lost or leaked");
        let state = std::fs::read_to_string(project.path().join(".kstack/state/fleet.json")).unwrap();
        assert!(!state.contains("\"roll\""), "killed after line {step}: the roll is finished");
    }
    assert!(killed + 2 >= moments.len(), "killed at {killed} of {} moments", moments.len());
}

#[test]
fn an_aborted_roll_puts_the_group_back_to_its_size_and_processes() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws, before) = outdated_fleet(&moto, &rt, 33, 2, "  readiness: sleep 1\n");

    kill_mid_roll(&project, &moto);
    assert_eq!(rt.block_on(aws.group(GROUP)).desired_capacity(), Some(3));
    // In the incident a secret's variable is not at hand: status and abort need none.
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}secrets:\n  registry_token: KSTACK_TEST_UNSET_TOKEN\n"));
    let planned = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(["plan", "fleet"]).output().unwrap();
    assert_eq!(planned.status.code(), Some(2), "a plan needs it: {}", stderr(&planned));
    let status = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(["roll", "fleet", "--status"]).output().unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(stdout(&status).contains("did not finish") && stdout(&status).contains("batch 1 in flight"), "{}", stdout(&status));
    let aborted = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(["roll", "fleet", "--abort"]).output().unwrap();
    assert!(aborted.status.success(), "{}", stderr(&aborted));
    for reads in [&["plan", "fleet", "--destroy"][..], &["output", "fleet"], &["state", "list", "fleet"]] {
        let read = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(reads).output().unwrap();
        assert!(read.status.success(), "{reads:?}: {}", stderr(&read));
    }
    let destroy_plan = project.kstack(&moto).env_remove("KSTACK_TEST_UNSET_TOKEN").args(["plan", "fleet", "--destroy"]).output().unwrap();
    assert!(stdout(&destroy_plan).contains("asg.app will be destroyed"), "{}", stdout(&destroy_plan));
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(2), Some(3)));
    assert!(group.suspended_processes().is_empty());
    assert_eq!(instance_ids(&aws, &rt), before, "the old instances stay, the surged one is gone");
    assert_eq!(running_instances(&aws, &rt), 2);
    let state = std::fs::read_to_string(project.path().join(".kstack/state/fleet.json")).unwrap();
    assert!(!state.contains("\"roll\""), "the roll is forgotten: {state}");
}

#[test]
fn a_launch_configuration_group_rolls_onto_its_new_configuration() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = applied_fleet(&moto, &rt, fleet_at(34), 2, "    launch: configuration\n", "  validate: 'true'\n");
    let before = instance_ids(&aws, &rt);
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    // AWS reports each instance's launch configuration; the emulator reports the group's
    // current one for every instance, so here the instance type is what gives them away.
    let group = rt.block_on(aws.group(GROUP));
    assert!(group.launch_configuration_name().is_some() && group.launch_template().is_none());
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert_eq!(stdout(&rolled).trim(), "app: 2 replaced");
    let after = instance_ids(&aws, &rt);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|id| !before.contains(id)), "{before:?} -> {after:?}");
}

#[test]
fn a_roll_stopped_by_sigterm_finishes_its_batch_starts_no_other_releases_its_lock_and_resumes() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws, before) = outdated_fleet(&moto, &rt, 36, 2, "  readiness: sleep 2\n");

    // Two batches of one: SIGTERM while the first one's new instance passes its hook.
    let mut child = project.kstack_process(&moto).args(["roll", "fleet", "--timeout", "60"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("readiness hook") {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("readiness hook")), "the first batch never got to its hook: {seen:?}");
    std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    seen.extend(lines.map(Result::unwrap));
    let output = seen.join("\n");
    assert_eq!(child.wait().unwrap().code(), Some(143), "{output}");
    assert!(output.contains("roll of `app` in eu-west-1 stopped: terminated (SIGTERM)") && output.contains("the lock is released"), "{output}");
    assert!(!output.contains("batch 2/2"), "{output}");
    assert!(!project.path().join(".kstack/state/fleet.lock").exists(), "the lock is released");

    // The first batch finished: one old instance replaced, the group at its size, healing.
    let group = rt.block_on(aws.group(GROUP));
    let after = instance_ids(&aws, &rt);
    assert_eq!(before.iter().filter(|id| after.contains(id)).count(), 1, "{before:?} → {after:?}");
    assert_eq!(group.desired_capacity(), Some(2));
    assert!(group.suspended_processes().is_empty(), "no batch in flight: processes resumed");
    assert_eq!(running_instances(&aws, &rt), 2);

    let resumed = project.kstack(&moto).args(["roll", "fleet", "--resume"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(stdout(&resumed).trim(), "app: 1 replaced");
    assert!(instance_ids(&aws, &rt).iter().all(|id| !before.contains(id)));
}

/// Processes on this machine whose command line has `needle` (its arguments joined by spaces).
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).replace('\0', " ").contains(needle))
        .count()
}

#[test]
fn a_hung_hook_times_out_is_killed_and_the_group_is_back_at_its_size() {
    let moto = Moto::start();
    let rt = runtime();
    // A `kubectl wait` that never returns, started by the hook's shell.
    let hung = "sleep 3607";
    let (project, aws, before) = outdated_fleet(&moto, &rt, 38, 2, &format!("  timeout_seconds: 2\n  readiness: {hung}; true\n"));
    let started = std::time::Instant::now();
    let stopped = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{}", stderr(&stopped));
    assert!(stderr(&stopped).contains("the readiness hook timed out for i-"), "{}", stderr(&stopped));
    assert!(stderr(&stopped).contains("after 2s and was killed"), "{}", stderr(&stopped));
    assert!(started.elapsed() < std::time::Duration::from_secs(40), "{:?}", started.elapsed());
    assert_eq!(processes_with(hung), 0, "the hook's child went with it");
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!(instance_ids(&aws, &rt), before, "the surged instance is gone, the old ones untouched");
    assert_eq!(group.desired_capacity(), Some(2));
    assert!(group.suspended_processes().is_empty(), "processes resumed after the timeout");
}

#[test]
fn a_roll_with_an_instance_already_down_takes_it_first_and_never_drops_below_its_floor() {
    let moto = Moto::start();
    let rt = runtime();
    let project = Project::fixture("project");
    project.loopback_fleet(9);
    // Three nodes, one at a time, never fewer than two serving (60%).
    let policy = "    roll: { max_surge: 0, max_unavailable: 1, min_healthy_percent: 60 }\n";
    let hooks =
        format!("  readiness: for i in $(seq 100); do if {}; then exit 0; fi; sleep 0.2; done; exit 1\n", serves_ssh("{{ instance.address }}"));
    let (project, aws) = applied_fleet(&moto, &rt, project, 3, policy, &hooks);
    let keeper = NodeKeeper::start(&moto, Arc::new(ClientKey::new()));
    keeper.wait_until_serving(3);
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    // The instance a roll of a healthy group takes out last is down.
    let planned = stdout(&project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap());
    let down = planned.lines().last().and_then(|l| l.rsplit(' ').next()).unwrap().to_owned();
    assert!(down.starts_with("i-"), "{planned}");
    let marked = aws.autoscaling.set_instance_health().instance_id(&down).health_status("Unhealthy").should_respect_grace_period(false);
    rt.block_on(marked.send()).unwrap();

    // Serving: healthy in the group, with a node answering at its address. (The emulator
    // brings a replacement into service the moment its predecessor goes, so the group's own
    // count would never dip; a node takes a moment to boot, as a real one does.)
    let addresses = Arc::clone(&keeper.addresses);
    let serving = move |aws: &Clients, rt: &tokio::runtime::Runtime| -> usize {
        let group = rt.block_on(aws.group(GROUP));
        let healthy: Vec<String> = group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService") && i.health_status() == Some("Healthy"))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        if healthy.is_empty() {
            return 0;
        }
        let described = rt.block_on(aws.ec2.describe_instances().set_instance_ids(Some(healthy)).send()).unwrap();
        let served = addresses.lock().unwrap().clone();
        described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.private_ip_address().is_some_and(|a| served.iter().any(|s| s == a)))
            .count()
    };
    let sampler = Sampler::start(&moto, serving);
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "120"]).output().unwrap();
    let samples = sampler.stop();
    keeper.stop();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert_eq!(stdout(&rolled).trim(), "app: 3 replaced");
    assert!(samples.len() >= 6, "sampled throughout: {samples:?}");
    assert!(samples.iter().all(|n| *n >= 2), "never fewer than 2 of 3 serving: {samples:?}");
    let log = stderr(&rolled);
    let terminations: Vec<&str> = log.lines().filter(|l| l.contains(": terminating i-")).collect();
    assert_eq!(terminations.len(), 3, "{log}");
    assert!(terminations[0].contains(&format!("terminating {down} ")), "the instance already down goes first: {log}");
}

#[test]
fn a_size_an_autoscaler_sets_during_a_roll_survives_it() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let once = scratch.path().join("scaled");
    // After the first batch, an autoscaler raises the group from 3 to 4 instances (boto3
    // from the emulator's environment, reaching it through AWS_ENDPOINT_URL as kstack does).
    let script = scratch.path().join("scale.py");
    std::fs::write(
        &script,
        "import boto3\n\
         a = boto3.client('autoscaling', region_name='eu-west-1')\n\
         g = [g for g in a.describe_auto_scaling_groups()['AutoScalingGroups'] if g['AutoScalingGroupName'].startswith('fleet-app-')][0]\n\
         a.set_desired_capacity(AutoScalingGroupName=g['AutoScalingGroupName'], DesiredCapacity=4)\n",
    )
    .unwrap();
    let python = kstack_testkit::repo().join(".venv/moto/bin/python");
    let hooks = format!(
        "  validate: test -e {once} || {{ {python} {script} && touch {once}; }}\n",
        once = once.display(),
        python = python.display(),
        script = script.display()
    );
    let (project, aws, before) = outdated_fleet(&moto, &rt, 39, 3, &hooks);
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert!(once.exists(), "the autoscaler acted: {}", stderr(&rolled));
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!(group.desired_capacity(), Some(4), "the autoscaler's size stays: {}", stderr(&rolled));
    assert_eq!((group.min_size(), group.max_size()), (Some(3), Some(4)));
    let after = instance_ids(&aws, &rt);
    assert_eq!(after.len(), 4);
    assert!(after.iter().all(|id| !before.contains(id)), "every old instance replaced: {before:?} -> {after:?}");
}

/// `apply --roll` holds one lock from the apply through the roll: another run that tries to
/// take it while the roll runs (from the roll's readiness hook) is refused, naming the apply.
#[test]
fn apply_with_roll_holds_one_lock_through_the_apply_and_the_roll() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    let record = scratch.path().join("plans");
    let project = fleet_at(34);
    let plan = format!("{} -C {} plan fleet", assert_cmd::cargo::cargo_bin("kstack").display(), project.path().display());
    let hook = format!("  readiness: {plan} >> {0} 2>&1; echo \"exit $?\" >> {0}\n", record.display());
    let (project, _aws) = applied_fleet(&moto, &rt, project, 2, "", &hook);

    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    let both = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--roll"]).output().unwrap();
    assert!(both.status.success(), "{}", stderr(&both));
    assert!(stdout(&both).contains("Apply complete!") && stdout(&both).contains("app: 2 replaced"), "{}", stdout(&both));
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(recorded.matches("exit 1").count(), 2, "a plan on each new node's readiness, each refused: {recorded}");
    assert!(recorded.contains("environment `fleet` is locked by") && recorded.contains("`kstack apply fleet`"), "{recorded}");
    assert!(!recorded.contains("`kstack roll fleet`"), "the roll took no lock of its own: {recorded}");
}

/// What a person sees running `kstack roll` in a terminal (tmux's screen, sampled while it
/// runs): a live line for the group with its batch, the instances in flight, what the roll waits
/// for, the floor it keeps and the time so far, under the finished steps; gone when it ends.
#[test]
fn a_roll_in_a_terminal_shows_each_group_live_and_clears_it_at_the_end() {
    kstack_testkit::require(kstack_testkit::Need::Tmux);
    let moto = Moto::start();
    let rt = runtime();
    let (project, _aws, _before) = outdated_fleet(&moto, &rt, 37, 2, "  readiness: sleep 3\n");
    let socket = format!("kstack-roll-{}", std::process::id());
    let quote = |text: &str| format!("'{}'", text.replace('\'', "'\\''"));
    let mut command = String::from("env TERM=xterm-256color");
    for (key, value) in moto.env() {
        command.push_str(&format!(" {key}={}", quote(&value)));
    }
    let kstack = assert_cmd::cargo::cargo_bin("kstack");
    command.push_str(&format!(
        " {} -C {} roll fleet; echo kstack-exit=$?; sleep 600",
        quote(&kstack.display().to_string()),
        quote(&project.path().display().to_string())
    ));
    let tmux = |args: &[&str]| std::process::Command::new("tmux").args(["-L", &socket]).args(args).output().unwrap();
    assert!(tmux(&["new-session", "-d", "-x", "200", "-y", "50", "-s", "roll", &command]).status.success());
    let mut screens: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(240) {
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "roll"]).stdout).into_owned();
        let done = screen.contains("kstack-exit=");
        if screens.last() != Some(&screen) {
            screens.push(screen);
        }
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    tmux(&["kill-server"]);
    let last = screens.last().cloned().unwrap_or_default();
    assert!(last.contains("kstack-exit=0"), "{last}");
    // The live line: the group, its batch, the instances in flight, the floor, the time so far.
    let live: Vec<&str> = screens.iter().flat_map(|s| s.lines()).filter(|l| !l.starts_with("roll: ") && l.contains(" batch ")).collect();
    // The hook sleeps 3 s, so the screen is sampled many times while the roll waits on it.
    let waiting = live
        .iter()
        .find(|l| l.contains("replacing i-") && l.contains("at least 2 in service") && l.contains("waiting for the readiness hook for i-"));
    assert!(waiting.is_some_and(|l| l.contains("[00:0")), "no live line with the batch, the floor and the wait: {live:?}");
    // Finished steps stay above it as lines.
    assert!(last.lines().any(|l| l.starts_with("roll: ") && l.contains(": batch 1/2: replacing i-")), "{last}");
    // Once done, no live line is left on the screen.
    assert!(!last.lines().any(|l| !l.starts_with("roll: ") && l.contains(" batch ")), "{last}");
}

/// An autoscaler moving the group's desired capacity within min..max, as cluster-autoscaler
/// does: a thread on its own client while `apply` changes the group; then from the roll's
/// `validate` hook (after each batch) through `apply --roll` and `roll`. Each run ends with
/// the autoscaler's size; the plan shows it as observed, not as a change; a new `desired:`
/// in the file is a person's ask, and a new max below the size clamps it. AWS clamps a size
/// outside new bounds itself; kstack sends the clamped size explicitly, which the emulator
/// (which does not clamp everywhere AWS does) and AWS treat alike.
#[test]
fn an_autoscalers_size_is_kept_through_apply_apply_with_roll_and_roll() {
    let moto = Moto::start();
    let rt = runtime();
    let scratch = tempfile::tempdir().unwrap();
    // The hook's autoscaler: each run sets the next size of 2, 3, 4, 5, 6 and logs it.
    let log = scratch.path().join("sizes");
    let script = scratch.path().join("scale.py");
    std::fs::write(
        &script,
        format!(
            "import boto3\n\
             a = boto3.client('autoscaling', region_name='eu-west-1')\n\
             g = [g for g in a.describe_auto_scaling_groups()['AutoScalingGroups'] if g['AutoScalingGroupName'].startswith('fleet-app-')][0]\n\
             try: sizes = open('{log}').read().split()\n\
             except FileNotFoundError: sizes = []\n\
             size = 2 + len(sizes) % 5\n\
             a.set_desired_capacity(AutoScalingGroupName=g['AutoScalingGroupName'], DesiredCapacity=size)\n\
             open('{log}', 'a').write(f'{{size}}\\n')\n",
            log = log.display()
        ),
    )
    .unwrap();
    let python = kstack_testkit::repo().join(".venv/moto/bin/python");
    let hooks = format!("  validate: {} {}\n", python.display(), script.display());
    let project = fleet_at(41);
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 2\n    max: 6\n    desired: 3\n");
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}roll_hooks:\n{hooks}"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let size = |rt: &tokio::runtime::Runtime| rt.block_on(aws.group(GROUP)).desired_capacity().unwrap();
    let last_logged = || std::fs::read_to_string(&log).unwrap().split_whitespace().last().unwrap().parse::<i32>().unwrap();

    // 1. An apply that changes the group while the autoscaler moves it.
    let running = Arc::new(AtomicBool::new(true));
    let autoscaler = {
        let (endpoint, running) = (moto.endpoint.clone(), Arc::clone(&running));
        std::thread::spawn(move || {
            let rt = runtime();
            let aws = rt.block_on(Clients::at(&endpoint));
            let name = rt.block_on(aws.group(GROUP)).auto_scaling_group_name().unwrap().to_owned();
            let (mut last, mut moves) = (0, 0);
            while running.load(Ordering::SeqCst) || moves == 0 {
                last = 2 + moves % 5;
                rt.block_on(aws.autoscaling.set_desired_capacity().auto_scaling_group_name(&name).desired_capacity(last).send()).unwrap();
                moves += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            (last, moves)
        })
    };
    project.edit(FLEET, "    desired: 3\n", "    desired: 3\n    health_check: { grace_period: 120 }\n");
    let applied = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    running.store(false, Ordering::SeqCst);
    let (last, moves) = autoscaler.join().unwrap();
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(stdout(&applied).contains("0 added, 1 changed, 0 destroyed"), "the group's grace period changed: {}", stdout(&applied));
    assert!(moves >= 2, "the autoscaler moved the group during the apply");
    assert_eq!(size(&rt), last, "the autoscaler's last size stays");
    assert_eq!(rt.block_on(aws.group(GROUP)).health_check_grace_period(), Some(120));

    // The plan shows the size as observed, not as a change.
    rt.block_on(
        aws.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(rt.block_on(aws.group(GROUP)).auto_scaling_group_name().unwrap())
            .desired_capacity(5)
            .send(),
    )
    .unwrap();
    let planned = project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).output().unwrap();
    assert_eq!(planned.status.code(), Some(0), "no change: {}", stdout(&planned));
    assert!(stdout(&planned).contains("asg.app: desired capacity 5 was set outside kstack (the model says 3); kept"), "{}", stdout(&planned));
    let json = kstack_testkit::json(&project.kstack(&moto).args(["plan", "fleet", "--json"]).output().unwrap());
    assert_eq!(json["plan"]["capacity"][0]["outcome"], "kept", "{json:#}");

    // 2. `apply --roll` and 3. `roll`: the autoscaler acts after each batch.
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    let both = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--roll"]).output().unwrap();
    assert!(both.status.success(), "{}", stderr(&both));
    assert!(stdout(&both).contains("desired capacity 5 was set outside kstack (the model says 3); kept"), "{}", stdout(&both));
    assert!(stderr(&both).contains("surging to 6"), "the roll surged on top of the autoscaler's 5: {}", stderr(&both));
    assert_eq!(size(&rt), last_logged(), "apply --roll ends at the autoscaler's size");
    let dry = project.kstack(&moto).args(["roll", "fleet", "--dry-run"]).output().unwrap();
    assert!(stdout(&dry).starts_with("app: 0 outdated"), "{}", stdout(&dry));
    // An apply after applies that left the group alone still knows the model asked 3.
    let name = rt.block_on(aws.group(GROUP)).auto_scaling_group_name().unwrap().to_owned();
    rt.block_on(aws.autoscaling.set_desired_capacity().auto_scaling_group_name(&name).desired_capacity(5).send()).unwrap();
    project.edit(FLEET, "instance_type: t3.medium", "instance_type: t3.large");
    let again = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert!(stdout(&again).contains("desired capacity 5 was set outside kstack (the model says 3); kept"), "{}", stdout(&again));
    let before_roll = size(&rt);
    assert_eq!(before_roll, 5, "an apply after the roll keeps the autoscaler's size too");
    let rolled = project.kstack(&moto).args(["roll", "fleet", "--timeout", "60"]).output().unwrap();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert!(stderr(&rolled).contains(&format!("surging to {}", before_roll + 1)), "{}", stderr(&rolled));
    assert_eq!(size(&rt), last_logged(), "roll ends at the autoscaler's size");

    // A new `desired:` in the file is a person's ask; a max below the size clamps it.
    project.edit(FLEET, "    desired: 3\n", "    desired: 4\n");
    let asked = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert!(stdout(&asked).contains("the model's `desired` changed"), "{}", stdout(&asked));
    assert_eq!(size(&rt), 4);
    rt.block_on(
        aws.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(rt.block_on(aws.group(GROUP)).auto_scaling_group_name().unwrap())
            .desired_capacity(6)
            .send(),
    )
    .unwrap();
    project.edit(FLEET, "    max: 6\n", "    max: 5\n");
    let clamped = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert!(
        stdout(&clamped).contains("desired capacity 6 was set outside kstack and is outside the new min..max; clamped to 5"),
        "{}",
        stdout(&clamped)
    );
    let group = rt.block_on(aws.group(GROUP));
    assert_eq!((group.desired_capacity(), group.max_size()), (Some(5), Some(5)));
}

/// On one machine too, a live run's lock is not removed by `kstack state unlock` (it names the
/// live process); `--force` removes it, and the run, finding its lock gone, finishes the batch
/// in flight and starts no other.
#[test]
fn unlocking_a_live_local_run_is_refused_and_forcing_it_stops_the_run() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, _aws, _before) = outdated_fleet(&moto, &rt, 42, 2, "  readiness: sleep 4\n");
    let child = project.kstack_process(&moto).args(["roll", "fleet", "--timeout", "60"]).spawn().unwrap();
    let lock_path = project.path().join(".kstack/state/fleet.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lock_path.exists() {
        assert!(std::time::Instant::now() < deadline, "the roll never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let lock: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock_path).unwrap()).unwrap();
    let id = lock["id"].as_str().unwrap().to_owned();
    let refused = project.kstack(&moto).args(["state", "unlock", "fleet", &id]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains(&format!("held by a live process on this machine: pid {}", child.id())), "{}", stderr(&refused));
    assert!(lock_path.exists(), "nothing was removed");
    project.kstack(&moto).args(["state", "unlock", "fleet", &id, "--force"]).assert().success();
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{}", stderr(&stopped));
    let log = stderr(&stopped);
    assert!(log.contains("was removed or replaced"), "{log}");
    assert_eq!(log.matches("surging to").count(), 1, "no batch started after the lock was lost: {log}");
    let resumed = project.kstack(&moto).args(["roll", "fleet", "--resume", "--timeout", "60"]).output().unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
}
