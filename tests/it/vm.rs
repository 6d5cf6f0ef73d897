//! VM test nodes (`kstack_testkit::vm`): what only a real kernel shows, and the stack's roles
//! on them with the packages they install for real. The test boots its qemu VMs one at a time
//! under software emulation (about 15 to 30 s to SSH on these two cores) and prints how long
//! its steps took. The stack's roles converge once, in the bake of the shipped image; the
//! image's disk then serves every behaviour test of those roles and of the VM itself.

use std::io::Write;
use std::time::{Duration, Instant};

use kstack::model::{RebootPolicy, RebootWindow};
use kstack::reboots::node_config;
use kstack::roles::{HostReport, TaskStatus, Variables};
use kstack::ssh::{Connection, Login};
use kstack_testkit::node::{self, ClientKey};
use kstack_testkit::runner::{login, project_roles, Runner};
use kstack_testkit::vm::{self, Disk, Vm};
use kstack_testkit::vm_cloud;

/// Runs `script` on the VM over kstack's SSH transport and returns its standard output.
async fn run(vm: &Vm, login: &Login, script: &str) -> String {
    let connection = Connection::open(&vm.address, login).await.unwrap();
    let output = connection.run(script, None).await.unwrap();
    connection.close().await;
    assert_eq!(output.status, 0, "`{script}`: {}", output.stderr);
    output.stdout
}

async fn boot_id(vm: &Vm, login: &Login) -> String {
    run(vm, login, "cat /proc/sys/kernel/random/boot_id").await.trim().to_owned()
}

/// How long one SSH attempt may take while a guest may be rebooting.
const SSH_ATTEMPT: Duration = Duration::from_secs(15);

/// Waits until the VM answers with a boot id other than `before` and returns it; every
/// attempt is bounded, since a rebooting guest may leave a connection hanging.
async fn next_boot(vm: &Vm, login: &Login, before: &str, deadline: Instant) -> String {
    loop {
        assert!(Instant::now() < deadline, "{} did not come back with a new boot id in time", vm.address);
        if let Ok(Ok(connection)) = tokio::time::timeout(SSH_ATTEMPT, Connection::open(&vm.address, login)).await {
            if let Ok(Ok(output)) = tokio::time::timeout(SSH_ATTEMPT, connection.run("cat /proc/sys/kernel/random/boot_id", None)).await {
                let after = output.stdout.trim().to_owned();
                if output.status == 0 && !after.is_empty() && after != before {
                    return after;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn failures(report: &HostReport) -> Vec<String> {
    let mut failed: Vec<String> = report
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .map(|t| format!("{}/{}: {}", t.role, t.task, t.error.clone().unwrap_or_default()))
        .collect();
    failed.extend(report.unreachable.clone());
    failed
}

/// Runs the roles' checks, prints each with its result, and asserts that every one passed on
/// the running kernel (none skipped as something only a real VM could show). Returns the
/// names of the checks that ran.
fn verify_all(runner: &Runner, vm: &Vm, when: &str) -> Vec<String> {
    let report = runner.verify(vm);
    assert_eq!(report.unreachable, None);
    for check in &report.checks {
        let result = match (&check.skipped, check.passed) {
            (Some(why), _) => format!("SKIPPED ({why})"),
            (None, true) => String::from("passed"),
            (None, false) => format!("FAILED: {}", check.detail),
        };
        eprintln!("{when}: check `{}`: {result}", check.name);
    }
    let not_passed: Vec<String> =
        report.checks.iter().filter(|c| !c.passed || c.skipped.is_some()).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert_eq!(not_passed, Vec::<String>::new(), "{when}");
    report.checks.iter().map(|c| c.name.clone()).collect()
}

/// Each sysctl the base role sets, with its value rendered from the role's defaults.
fn role_sysctls(runner: &Runner) -> Vec<(String, String)> {
    let base = runner.roles.iter().find(|r| r.name == "base").unwrap();
    let env = minijinja::Environment::new();
    base.tasks
        .iter()
        .filter(|t| t.module == "sysctl")
        .map(|t| {
            let value = env.render_str(t.args["value"].as_str().unwrap(), &base.defaults).unwrap();
            (t.args["name"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// Reads each sysctl back from `/proc/sys` on the VM.
fn assert_sysctls_in_effect(runner: &Runner, vm: &Vm, when: &str) {
    let sysctls = role_sysctls(runner);
    assert!(sysctls.len() >= 6, "{sysctls:?}");
    let paths: Vec<String> = sysctls.iter().map(|(name, _)| format!("/proc/sys/{}", name.replace('.', "/"))).collect();
    let found = runner.rt.block_on(run(vm, &runner.login, &format!("for p in {}; do echo \"$(cat $p)\"; done", paths.join(" "))));
    let found: Vec<&str> = found.lines().map(str::trim).collect();
    let wanted: Vec<&str> = sysctls.iter().map(|(_, value)| value.as_str()).collect();
    assert_eq!(found, wanted, "{when}: {sysctls:?}");
    eprintln!("{when}: in /proc/sys: {}", sysctls.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(", "));
}

/// The node roles of the stack, as an image of worker nodes lists them.
const STACK_ROLES: [&str; 6] = ["base", "thp", "docker", "monit", "unattended-upgrades", "kubelet"];

/// Checks whose `when:` is false with Debian's overlay2: they are not made.
const AUFS_ONLY: [&str; 1] = ["aufs tools"];

/// Debian 12's values for the roles' Ubuntu defaults (see the README's table of what differs
/// from Ubuntu 16.04): the image's variables, and those the roles run with on its nodes. No
/// archive of Docker's or Kubernetes' is added: the VMs' repository, a guest's only package
/// source, stands for them.
fn debian_variables() -> Variables {
    Variables::from([
        // Debian's cloud kernel carries the drivers of AWS's enhanced networking; it is on the disk.
        (String::from("hwe_kernel_package"), serde_json::json!("linux-image-cloud-amd64")),
        (String::from("docker_package"), serde_json::json!("docker.io")),
        (String::from("docker_version"), serde_json::json!(vm::apt_version("docker.io"))),
        // Debian has no aufs.
        (String::from("docker_storage_driver"), serde_json::json!("overlay2")),
        (String::from("docker_apt_source"), serde_json::json!("")),
        (String::from("kubernetes_apt_source"), serde_json::json!("")),
    ])
}

fn changed(report: &HostReport) -> Vec<&str> {
    report.tasks.iter().filter(|t| t.status == TaskStatus::Changed).map(|t| t.task.as_str()).collect()
}

/// monit's rule on Docker's memory (the monit role) with a limit below what dockerd uses, for
/// one check, checking every 5 s: monit restarts Docker, and the container lives on. The role
/// with its own values puts the rule back.
fn monit_restarts_docker_above_its_memory_limit(key: &ClientKey, vm: &Vm) {
    let mut lowered = debian_variables();
    lowered.extend([
        (String::from("docker_memory_limit"), serde_json::json!("1 MB")),
        (String::from("docker_memory_cycles"), serde_json::json!(1)),
        (String::from("monit_cycle_seconds"), serde_json::json!(5)),
    ]);
    let lowered = Runner::new(key, &project_roles(), &["monit"], lowered);
    let (container, dockerd) = lowered.rt.block_on(async { (sleeper(vm, &lowered.login).await, main_pid(vm, &lowered.login, "docker").await) });
    let started = Instant::now();
    let report = &lowered.converge(&[vm], false)[0];
    assert_eq!(failures(report), Vec::<String>::new());
    assert_eq!(changed(report), ["monit cycle", "docker memory rule", "reload monit"]);
    lowered.rt.block_on(async {
        let login = &lowered.login;
        let deadline = started + Duration::from_secs(120);
        loop {
            let pid = main_pid(vm, login, "docker").await;
            if pid != dockerd && pid != "0" {
                eprintln!("monit restarted docker ({dockerd} became {pid}) {:.1} s after its limit was lowered", started.elapsed().as_secs_f64());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "monit did not restart docker within 120 s: {}",
                run(vm, login, "tail -n 20 /var/log/monit.log").await
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let log = run(vm, login, "grep \"'docker'\" /var/log/monit.log").await;
        eprintln!("{log}");
        assert!(log.contains("total mem amount") && log.contains("trying to restart"), "{log}");
    });

    let restored = Runner::new(key, &project_roles(), &["monit"], debian_variables());
    assert_eq!(changed(&restored.converge(&[vm], false)[0]), ["monit cycle", "docker memory rule", "reload monit"]);
    restored.rt.block_on(async {
        let login = &restored.login;
        let deadline = Instant::now() + Duration::from_secs(60);
        while run(vm, login, "systemctl is-active docker || true").await.trim() != "active" {
            assert!(Instant::now() < deadline, "docker is not back 60 s after the rule was restored");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(sleeper(vm, login).await, container, "the container kept its process across monit's restarts of docker");
    });
}

/// Writes the node's reboot slot file as `kstack reboots --assign` does.
async fn assign_slot(vm: &Vm, login: &Login, slot: u32, window_start: u32) {
    let window = RebootWindow {
        start: window_start,
        end: (window_start + 60) % 1440,
        days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map(String::from).to_vec(),
        time_zone: String::from("UTC"),
    };
    let policy = RebootPolicy { window, group_gap_minutes: 15, zone_gap_minutes: 0, max_down: 1, reboot_minutes: 5 };
    let file = node_config::apt_config("vm", "i-vm", slot, &policy, &[]);
    let connection = Connection::open(&vm.address, login).await.unwrap();
    connection.write_file(node_config::PATH, file.as_bytes(), 0o644, "root", "root").await.unwrap();
    connection.close().await;
}

async fn epoch_seconds(vm: &Vm, login: &Login, command: &str) -> u64 {
    let output = run(vm, login, command).await;
    output.trim().parse().unwrap_or_else(|_| panic!("`{command}` gave {output:?}"))
}

/// The reboot guard (the unattended-upgrades role) on a VM whose updates need a reboot, its
/// slot written as `kstack reboots --assign` writes it (in UTC, as the guest's clock): with its
/// window two hours away it stays up through the guard's next run; with its slot the minute
/// after next it reboots in that minute.
async fn reboots_in_its_slot_and_not_outside_its_window(vm: &Vm, login: &Login) {
    let minute_of_day = |epoch: u64| (epoch / 60 % 1440) as u32;
    let boot = boot_id(vm, login).await;
    let now = epoch_seconds(vm, login, "date +%s").await;
    let later = (minute_of_day(now) + 120) % 1440;
    assign_slot(vm, login, later, later).await;
    run(vm, login, "touch /var/run/reboot-required").await;
    let deadline = Instant::now() + Duration::from_secs(150);
    let decided = loop {
        let said = run(vm, login, &format!("journalctl -q -o cat -u kstack-reboot.service --since @{now} | grep 'waiting for' || true")).await;
        if !said.is_empty() {
            break said;
        }
        assert!(Instant::now() < deadline, "the guard did not run within 150 s");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert_eq!(boot_id(vm, login).await, boot, "no reboot outside the window");
    eprintln!("outside its window the guard said: {}", decided.trim());

    let now = epoch_seconds(vm, login, "date +%s").await;
    let slot_start = (now / 60 + 2) * 60;
    let slot = minute_of_day(slot_start);
    assign_slot(vm, login, slot, (slot + 1440 - 10) % 1440).await;
    let waited = Instant::now();
    next_boot(vm, login, &boot, waited + Duration::from_secs(slot_start - now) + Duration::from_secs(60) + vm::BOOT_TIMEOUT).await;
    let booted = epoch_seconds(vm, login, "awk '/^btime/ { print $2 }' /proc/stat").await;
    let rebooted_for = epoch_seconds(vm, login, "cat /var/lib/kstack/reboot-guard.last").await;
    eprintln!(
        "rebooted for its slot at {slot_start} (minute {slot}): booted at {booted}, back on SSH {:.1} s after the slot was written",
        waited.elapsed().as_secs_f64()
    );
    // The guard records the slot it reboots for, at that minute, just before `systemctl reboot`;
    // the new kernel starts once the old system has stopped (over a minute under emulation).
    assert_eq!(rebooted_for, slot_start, "the guard rebooted for this slot");
    assert!((slot_start..slot_start + 300).contains(&booted), "booted at {booted}, the slot began at {slot_start}");
}

async fn main_pid(vm: &Vm, login: &Login, unit: &str) -> String {
    run(vm, login, &format!("systemctl show -p MainPID --value {unit}")).await.trim().to_owned()
}

/// Whether the container `sleeper` runs, and its process id.
async fn sleeper(vm: &Vm, login: &Login) -> String {
    run(vm, login, "docker inspect -f '{{.State.Running}} {{.State.Pid}}' sleeper").await.trim().to_owned()
}

/// Kills `unit`'s main process with SIGKILL and waits until systemd has it active again with
/// another main process.
async fn kill_and_see_restarted(vm: &Vm, login: &Login, unit: &str) {
    let killed = main_pid(vm, login, unit).await;
    assert_ne!(killed, "0", "{unit} runs");
    let started = Instant::now();
    run(vm, login, &format!("kill -9 {killed}")).await;
    let deadline = started + Duration::from_secs(120);
    loop {
        let state = run(vm, login, &format!("systemctl is-active {unit} || true")).await;
        let pid = main_pid(vm, login, unit).await;
        if state.trim() == "active" && pid != "0" && pid != killed {
            eprintln!("{unit}: main process {killed} killed, active again as {pid} after {:.1} s", started.elapsed().as_secs_f64());
            return;
        }
        assert!(Instant::now() < deadline, "{unit} is {} with main pid {pid} 120 s after its main process {killed} was killed", state.trim());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the roles' service settings promise, on the converged VM: a container keeps running
/// while docker restarts (live-restore) and after dockerd was killed, and systemd brings back
/// dockerd and the kubelet when they are killed (the roles' `Restart=always` drop-ins; the
/// kubelet stand-in's own unit has no Restart, Debian's docker.service has one of its own).
async fn containers_and_services_outlive_restarts_and_kills(vm: &Vm, login: &Login) {
    // An image of `sleep` and what it needs (the C library and the loader), made on the VM:
    // nothing is pulled. Unconfined: the kernel has AppArmor, but apparmor_parser (which
    // Debian's docker.io only recommends) is not installed, and docker refuses to start a
    // container under its default profile without it.
    run(
        vm,
        login,
        "tar -C / -ch usr/bin/sleep lib64/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/libc.so.6 | docker import - sleeper >/dev/null \
         && docker run -d --name sleeper --network none --security-opt apparmor=unconfined sleeper /usr/bin/sleep infinity >/dev/null",
    )
    .await;
    let running = sleeper(vm, login).await;
    assert!(running.starts_with("true ") && !running.ends_with(" 0"), "{running}");

    let dockerd = main_pid(vm, login, "docker").await;
    let started = Instant::now();
    run(vm, login, "systemctl restart docker").await;
    eprintln!("docker restarted in {:.1} s", started.elapsed().as_secs_f64());
    assert_ne!(main_pid(vm, login, "docker").await, dockerd);
    assert_eq!(sleeper(vm, login).await, running, "the container kept its process across docker's restart");

    kill_and_see_restarted(vm, login, "docker").await;
    assert_eq!(sleeper(vm, login).await, running, "the container kept its process across dockerd's death");
    kill_and_see_restarted(vm, login, "kubelet").await;
}

/// The shipped `node` image (images/node.yaml and the roles in roles/) baked by `kstack bake`
/// onto a VM builder, then run by a fleet: its instance's VM boots from the builder's disk with
/// cloud-init reading the instance's user data, and `kstack verify` passes every check on the
/// running kernel, none skipped, with no role run on that node. The image differs from the
/// shipped file only in the builder's place (the test fleet's network) and in Debian 12's
/// variables (see the README's table of what differs from Ubuntu 16.04).
#[test]
fn the_shipped_node_image_baked_on_a_vm_boots_fleet_nodes_that_pass_every_check_on_their_kernel() {
    let _vm_tests = vm::exclusive();
    use kstack_testkit::{Moto, Project};
    const FLEET: &str = "environments/fleet.yaml";
    let moto = Moto::start();
    let rt = kstack_testkit::runtime();
    let key = ClientKey::new();
    let project = Project::copy();
    std::fs::copy(kstack_testkit::repo().join("tests/fixtures/project/environments/fleet.yaml"), project.path().join(FLEET)).unwrap();
    let prefix = project.loopback_fleet(44);
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 0\n    max: 1\n    key_name: kstack-vm-test\n");
    let shipped = std::fs::read_to_string(kstack_testkit::repo().join("images/node.yaml")).unwrap();
    let image = shipped.replace("  environment: dev\n  subnet_tier: public\n", "  environment: fleet\n  subnet_tier: nodes\n");
    assert_ne!(image, shipped, "the builder's place was replaced");
    // JSON's strings are YAML's.
    let debian: String = debian_variables().iter().map(|(name, value)| format!("  {name}: {value}\n")).collect();
    project.write("images/node.yaml", &format!("{image}variables:\n{debian}"));

    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    rt.block_on(aws.ec2.import_key_pair().key_name("kstack-vm-test").public_key_material(aws_smithy_types::Blob::new(key.public())).send()).unwrap();
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let cloud = vm_cloud::VmCloud::watch(&moto.endpoint, &prefix, &key.public());

    // Emulator gap: moto's GetConsoleOutput never shows an instance's console, so this proxy
    // answers it with what the instance's VM printed, as EC2 posts it.
    let proxy = kstack_testkit::faults::FaultProxy::start(&moto.endpoint, 1, 0);
    proxy.set_console_source(Some(std::sync::Arc::new(cloud.consoles())));

    // The builder is a VM: its roles install from the VMs' repository under emulation.
    let started = Instant::now();
    let baked = project
        .kstack(&moto)
        .args(["bake", "node", "--ssh-timeout", "900", "--host-key-wait", "900", "--json"])
        .envs(proxy.env())
        .timeout(Duration::from_secs(2400))
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&baked.stderr);
    eprintln!("{progress}\nbaked in {:.0} s; {:#?}", started.elapsed().as_secs_f64(), cloud.events());
    assert!(baked.status.success(), "{progress}");
    assert!(progress.contains("rebooting the builder: the roles changed what takes effect at boot"), "{progress}");
    assert!(progress.contains("host keys taken from its console output"), "{progress}");
    let manifest: serde_json::Value = serde_json::from_slice(&baked.stdout).unwrap();
    assert_eq!(manifest["host_key"], "verified-from-console", "{manifest:#}");
    let ami = manifest["amis"]["eu-west-1"].as_str().unwrap_or_else(|| panic!("{manifest:#}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !cloud.images().contains(&ami) {
        assert!(Instant::now() < deadline, "the builder's disk became no image: {:#?}", cloud.events());
        std::thread::sleep(Duration::from_millis(500));
    }

    // A fleet node from the baked image: nothing is run on it before it is verified.
    project.edit(FLEET, "    min: 0\n", "    min: 1\n");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let instance = rt.block_on(async {
        let described = aws.ec2.describe_instances().filters(kstack_testkit::env_filter("fleet")).send().await.unwrap();
        let running: Vec<_> = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.state().and_then(|s| s.name()) == Some(&aws_sdk_ec2::types::InstanceStateName::Running))
            .cloned()
            .collect();
        assert_eq!(running.len(), 1, "{running:?}");
        assert_eq!(running[0].image_id(), Some(ami.as_str()));
        running[0].instance_id().unwrap().to_owned()
    });
    // Nothing is recorded for the node: verify takes its host keys from its console output,
    // as the proxy serves what the VM printed, waiting until cloud-init has printed them (at
    // the end of its boot, after sshd has started).
    let known_hosts = key.dir.path().join("known_hosts");
    assert!(!known_hosts.exists());
    let private_key = key.private();
    let ssh = ["--ssh-key", private_key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap(), "--host-key-wait", "900"];
    let verified = project.kstack(&moto).args(["verify", "fleet"]).args(ssh).envs(proxy.env()).timeout(Duration::from_secs(1200)).output().unwrap();
    let progress = String::from_utf8_lossy(&verified.stderr);
    assert!(progress.contains(&format!("{instance} (")) && progress.contains("host key(s) taken from its console output"), "{progress}");
    let recorded: Vec<String> = std::fs::read_to_string(&known_hosts).unwrap().lines().map(str::to_owned).collect();
    let printed: Vec<String> = cloud
        .with_vm(&instance, Duration::ZERO, |vm| vm.console_host_keys())
        .into_iter()
        .map(|line| format!("{line} kstack-instance={instance}"))
        .collect();
    assert_eq!(recorded, printed, "the keys the VM printed, and only those, recorded with their instance");
    let report = String::from_utf8_lossy(&verified.stdout);
    eprintln!("{report}");
    assert!(verified.status.success(), "{report}{}", String::from_utf8_lossy(&verified.stderr));
    let checks: Vec<&str> = report.lines().filter(|l| l.starts_with("pass: ") || l.starts_with("skip: ") || l.starts_with("FAIL: ")).collect();
    assert!(checks.len() >= 30, "{report}");
    let not_passed: Vec<&&str> = checks.iter().filter(|l| !l.starts_with("pass: ")).collect();
    assert_eq!(not_passed, Vec::<&&str>::new(), "every check passed on the running kernel, none skipped");
    for expected in
        ["huge pages off", "kernel command line in effect", "jumbo frames", "storage driver in effect", "live restore in effect", "kubelet running"]
    {
        assert!(checks.iter().any(|c| c.ends_with(&format!("] {expected}"))), "{expected}: {report}");
    }

    // The kubelet got the group's labels from the user data, not from the image.
    let mut login = login(&key);
    login.user = String::from("ubuntu");
    login.host_keys.trust_on_first_use = false;
    let address = cloud.with_vm(&instance, Duration::ZERO, |vm| vm.address.clone());
    let args = rt.block_on(async {
        let connection = Connection::open(&address, &login).await.unwrap();
        let output = connection.run("cat /run/kubelet.args /etc/kstack/node.env", None).await.unwrap();
        connection.close().await;
        output.stdout
    });
    assert!(args.contains("--node-labels=kstack.io/environment=fleet,kstack.io/group=app"), "{args}");
    eprintln!("{:#?}", cloud.events());

    // One VM at a time: the fleet's powers off before the image's disk boots once more.
    let disk = cloud.image_disk(&ami);
    drop(cloud);
    the_roles_keep_their_promises_on_a_node_of(&disk, &key);
}

/// What the stack's roles promise, on a node booted from the baked image's disk (through its
/// GRUB command line, root's key from the seed): the roles change nothing there; every check
/// passes and the kernel reads the roles' sysctls; kernel settings that drifted on the running
/// node are brought back by the roles without a reboot; containers outlive Docker's restarts
/// (live restore) and systemd brings killed daemons back; monit restarts Docker above its
/// (lowered) memory limit; and the reboot guard leaves a node that needs a reboot up outside
/// its window and reboots it in its slot.
fn the_roles_keep_their_promises_on_a_node_of(disk: &Disk, key: &ClientKey) {
    let vm = Vm::boot(disk, key, &node::next_address());
    eprintln!("a node of the image: boot {:.1} s", vm.boot_time.as_secs_f64());
    let mut runner = Runner::new(key, &project_roles(), &STACK_ROLES, debian_variables());
    // Its own host key, known in advance: nothing is trusted on first use.
    let mut known_hosts = std::fs::OpenOptions::new().create(true).append(true).open(&runner.login.host_keys.path).unwrap();
    writeln!(known_hosts, "{}", vm.known_hosts_line()).unwrap();
    runner.login.host_keys.trust_on_first_use = false;
    runner.rt.block_on(async {
        let connection = Connection::open(&vm.address, &runner.login).await.unwrap();
        let facts = connection.facts().await.unwrap();
        connection.close().await;
        assert_eq!((facts.virtualization.as_str(), facts.container), ("qemu", false), "a qemu guest, not a container: {facts:?}");
        assert!(facts.kernel.ends_with("-cloud-amd64"), "Debian's cloud kernel, not the host's: {facts:?}");
        // The repository on the host's loopback is the guest's package source, and nothing else is.
        let sources = run(&vm, &runner.login, "cat /etc/apt/sources.list $(find /etc/apt/sources.list.d -type f)").await;
        assert_eq!(sources.trim(), vm::APT_SOURCE);
    });

    let started = Instant::now();
    let again = &runner.converge(&[&vm], false)[0];
    eprintln!("the roles on a node of their image: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(failures(again), Vec::<String>::new());
    assert_eq!(changed(again), Vec::<&str>::new(), "the image's node is converged");
    let skipped: Vec<&str> = again.tasks.iter().filter(|t| t.status == TaskStatus::Skipped).map(|t| t.task.as_str()).collect();
    // No aufs with overlay2; no archive of Docker's or Kubernetes' (the VMs' repository stands for them).
    assert_eq!(skipped, ["docker repository", "aufs tools", "kubernetes repository"], "only what Debian's values leave out is skipped");
    let checks = verify_all(&runner, &vm, "booted from the image");
    let expected: Vec<&str> = runner.roles.iter().flat_map(|r| r.checks.iter().map(|c| c.name.as_str())).filter(|c| !AUFS_ONLY.contains(c)).collect();
    assert_eq!(checks, expected, "every role's checks ran");
    assert_sysctls_in_effect(&runner, &vm, "booted from the image");

    let drifted = runner.rt.block_on(drift_kernel_settings(&runner, &vm));
    let started = Instant::now();
    let restored = &runner.converge(&[&vm], false)[0];
    eprintln!("the roles after the kernel settings drifted: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(failures(restored), Vec::<String>::new());
    assert_eq!(changed(restored), drifted.iter().map(String::as_str).collect::<Vec<_>>(), "the roles set again, now, what drifted");
    verify_all(&runner, &vm, "after the roles ran on the drifted node");
    assert_sysctls_in_effect(&runner, &vm, "after the roles ran on the drifted node");

    runner.rt.block_on(containers_and_services_outlive_restarts_and_kills(&vm, &runner.login));
    monit_restarts_docker_above_its_memory_limit(key, &vm);
    runner.rt.block_on(reboots_in_its_slot_and_not_outside_its_window(&vm, &runner.login));
    runner.rt.block_on(jumbo_frames_hold_across_boots(&vm, &runner.login));
}

/// The primary interface's MTU after the guard's reboot and two more: the value the roles set
/// each time, set by systemd-networkd itself (the role's drop-in of the interface's .network
/// file), whatever order the boot ran in.
async fn jumbo_frames_hold_across_boots(vm: &Vm, login: &Login) {
    let primary = "$(awk '$2 == \"00000000\" { print $1; exit }' /proc/net/route)";
    let seen = format!("cat /sys/class/net/{primary}/mtu; networkctl status --no-pager {primary} | sed -n 's/^ *MTU: //p'; cat /etc/systemd/network/*.network.d/50-kstack-mtu.conf");
    for boot in 1..=3 {
        if boot > 1 {
            let before = boot_id(vm, login).await;
            run(vm, login, "systemd-run --on-active=1 systemctl reboot").await;
            next_boot(vm, login, &before, Instant::now() + vm::BOOT_TIMEOUT + Duration::from_secs(60)).await;
        }
        let found = run(vm, login, &seen).await;
        let mut lines = found.lines().map(str::trim);
        assert_eq!(lines.next(), Some("9001"), "boot {boot}: the primary interface at MTU 9001: {found}");
        assert!(found.contains("MTUBytes=9001"), "boot {boot}: networkd holds it: {found}");
        eprintln!("boot {boot}: MTU 9001 ({})", found.lines().nth(1).unwrap_or_default().trim());
    }
}

/// Undoes on the running kernel what the roles set now (not at boot): every sysctl gets
/// another value, huge pages are on again and the primary interface is back at MTU 1500, with
/// the units that set them at boot stopped, as after an operator's experiment. Returns the
/// tasks that set them now, which must change them back.
async fn drift_kernel_settings(runner: &Runner, vm: &Vm) -> Vec<String> {
    let sysctls = role_sysctls(runner);
    let other = |value: &str| if value == "1" { String::from("0") } else { (value.parse::<u64>().unwrap() / 2).to_string() };
    let settings: Vec<String> = sysctls.iter().map(|(name, value)| format!("{name}={}", other(value))).collect();
    let primary = "$(awk '$2 == \"00000000\" { print $1; exit }' /proc/net/route)";
    let now = run(
        vm,
        &runner.login,
        &format!(
            "systemctl stop disable-thp.service kstack-mtu.service && sysctl -qw {} \
             && echo always > /sys/kernel/mm/transparent_hugepage/enabled && ip link set dev {primary} mtu 1500 \
             && cat /sys/kernel/mm/transparent_hugepage/enabled /sys/class/net/{primary}/mtu",
            settings.join(" ")
        ),
    )
    .await;
    assert_eq!(now.lines().map(str::trim).collect::<Vec<_>>(), ["[always] madvise never", "1500"], "drifted");
    eprintln!("drifted: {}, huge pages on, MTU 1500", settings.join(", "));
    let set_now = |task: &kstack::roles::Task| task.module == "sysctl" || ["jumbo frames now", "huge pages off now"].contains(&task.name.as_str());
    runner.roles.iter().flat_map(|r| r.tasks.iter()).filter(|t| set_now(t)).map(|t| t.name.clone()).collect()
}
