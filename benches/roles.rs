//! A realistic role (`benches/roles/app`: 21 tasks, with an account, directories, files,
//! templates, lines, a link, an installed package, two systemd units, a command and a handler)
//! applied by kstack, by ansible-playbook (`benches/roles/playbook.yaml`, the same tasks, facts
//! gathered, pipelining and ControlPersist on) and by pyinfra (`benches/roles/deploy.py`, the
//! same tasks in pyinfra's own operations) to fleets of test nodes: a first run and a no-change
//! run each, at each fleet size given (default 10 and 100). Prints wall times, kstack's ratios
//! against each peer, kstack's commands per host, and per host the CPU each tool spent and the
//! CPU the whole machine spent (the nodes' sshd and commands too), first run / no-change run.
//! Each timed run starts once the machine is quiet (`settle`).
//! Then `kstack verify` of the shipped image's checks on 10 nodes, one command per host beside
//! one command per check. Figures, not assertions.
//!
//! Needs root and `scripts/setup` (which installs ansible-core into `.venv/ansible` and pyinfra
//! into `.venv/pyinfra`). Each fleet is booted for one tool and removed after it: no tool sees a
//! node another configured.
//!
//! Run with `cargo bench --bench roles` or `cargo bench --bench roles -- 10`; `--kstack-only`
//! leaves the peers out.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstack::roles::checks::{run_all, Answers};
use kstack::roles::{host_checks, run, verify, RunOptions, TaskStatus, Variables};
use kstack::ssh::Connection;
use kstack_testkit::node::{ClientKey, Node};
use kstack_testkit::runner::{load, login};

/// Hosts worked on at once, by every tool.
fn forks(hosts: usize) -> usize {
    hosts.min(25)
}

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/roles")
}

/// One tool's two runs on one fleet.
#[derive(Default)]
struct Runs {
    wall: [Duration; 2],
    /// CPU time the tool itself spent (kstack's process, or the peer and its children).
    cpu: [Duration; 2],
    /// CPU time the whole machine spent: the tool, the nodes' sshd and commands, everything.
    machine: [Duration; 2],
    /// Commands per host (kstack's count; the peers do not say).
    commands: Option<[f64; 2]>,
}

/// CPU time the machine has spent busy, all cores (`/proc/stat`'s first line but idle and
/// iowait, in clock ticks of 1/100 s).
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    let busy: u64 = ticks.iter().enumerate().filter(|(index, _)| ![3, 4].contains(index)).map(|(_, t)| t).sum();
    Duration::from_millis(busy * 10)
}

/// Waits for the machine to be quiet before a run is timed: what the fleet's boot or the run
/// before left in flight (dirty pages still to write back, systemd finishing its jobs, memory
/// being freed) belongs to that, not to the next run, whose machine CPU would otherwise count
/// it (on a real fleet each node has CPUs of its own). `sync`, then until half a second passes
/// with the machine busy less than a tenth of one core, for at most 10 s. Every tool's runs wait
/// alike.
fn settle() {
    let _ = Command::new("sync").status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = machine_busy();
        std::thread::sleep(Duration::from_millis(500));
        if machine_busy() - before < Duration::from_millis(50) || Instant::now() > deadline {
            return;
        }
    }
}

/// CPU time so far of this process (`self`) or of its waited-for children, from
/// `/proc/self/stat` (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_time(children: bool) -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<u64> = stat.rsplit_once(')').unwrap().1.split_whitespace().skip(11).take(4).map(|f| f.parse().unwrap()).collect();
    let ticks = if children { fields[2] + fields[3] } else { fields[0] + fields[1] };
    Duration::from_millis(ticks * 10)
}

/// Boots `count` nodes, ten at a time.
fn fleet(key: &ClientKey, count: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(10) {
        nodes.extend(std::thread::scope(|scope| {
            let booting: Vec<_> = chunk.iter().map(|_| scope.spawn(|| Node::boot(key))).collect();
            booting.into_iter().map(|b| b.join().unwrap()).collect::<Vec<_>>()
        }));
    }
    nodes
}

fn kstack_runs(key: &ClientKey, hosts: usize) -> Runs {
    let nodes = fleet(key, hosts);
    let roles = load(&bench_dir(), &["app"]);
    let login = login(key);
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let options = RunOptions { check: false, forks: forks(hosts), max_fail: None };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runs = Runs { commands: Some([0.0; 2]), ..Runs::default() };
    for run_index in 0..2 {
        settle();
        let (started, cpu, machine) = (Instant::now(), cpu_time(false), machine_busy());
        let reports = rt.block_on(run(&addresses, &login, &roles, &Variables::new(), &options, Arc::new(kstack::events::Unwatched)));
        runs.wall[run_index] = started.elapsed();
        runs.cpu[run_index] = cpu_time(false) - cpu;
        runs.machine[run_index] = machine_busy() - machine;
        let changed: usize = reports.iter().map(|r| r.count(TaskStatus::Changed)).sum();
        let commands: usize = reports.iter().map(|r| r.commands).sum();
        let failed: Vec<_> = reports.iter().filter(|r| r.failed()).collect();
        assert!(failed.is_empty(), "kstack run failed: {failed:?}");
        let per_host = commands as f64 / hosts as f64;
        runs.commands.as_mut().unwrap()[run_index] = per_host;
        eprintln!("kstack, {hosts} hosts: {changed} changes, {per_host:.1} commands per host");
    }
    runs
}

/// A peer's program in its virtualenv, which `scripts/setup` installs.
fn peer(need: kstack_testkit::Need, venv: &str, program: &str) -> PathBuf {
    kstack_testkit::require(need);
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv").join(venv).join("bin").join(program)
}

/// Runs a peer's `command` twice on a fleet, timing each run and checking it succeeded;
/// `summary` picks the lines of its output worth showing.
fn peer_runs(tool: &str, hosts: usize, mut command: impl FnMut() -> Command, summary: impl Fn(&str) -> String) -> Runs {
    let mut runs = Runs::default();
    for run_index in 0..2 {
        settle();
        let (started, cpu, machine) = (Instant::now(), cpu_time(true), machine_busy());
        let output = command().current_dir(bench_dir()).output().unwrap();
        runs.wall[run_index] = started.elapsed();
        runs.cpu[run_index] = cpu_time(true) - cpu;
        runs.machine[run_index] = machine_busy() - machine;
        // pyinfra reports on stderr, Ansible on stdout.
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{tool} failed:\n{text}");
        eprintln!("{tool}, {hosts} hosts: {}", summary(&text));
    }
    runs
}

fn ansible_runs(key: &ClientKey, hosts: usize) -> Runs {
    let nodes = fleet(key, hosts);
    let work = tempfile::tempdir().unwrap();
    let mut inventory = String::from("[bench]\n");
    for node in &nodes {
        let _ = writeln!(inventory, "{} ansible_user=root ansible_ssh_private_key_file={}", node.address, key.private().display());
    }
    std::fs::write(work.path().join("inventory"), inventory).unwrap();
    let config = format!(
        "[defaults]\nforks = {}\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\n\n\
         [ssh_connection]\npipelining = True\n\
         ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null\n\
         control_path_dir = {}\n",
        forks(hosts),
        work.path().join("cp").display()
    );
    std::fs::write(work.path().join("ansible.cfg"), config).unwrap();
    let playbook = peer(kstack_testkit::Need::Ansible, "ansible", "ansible-playbook");
    let command = || {
        let mut command = Command::new(&playbook);
        command.env("ANSIBLE_CONFIG", work.path().join("ansible.cfg")).arg("-i").arg(work.path().join("inventory")).arg("playbook.yaml");
        command
    };
    // The recap's first host line: its ok, changed and failed counts.
    peer_runs("ansible", hosts, command, |text| text.lines().skip_while(|l| !l.starts_with("PLAY RECAP")).nth(1).unwrap_or_default().to_owned())
}

fn pyinfra_runs(key: &ClientKey, hosts: usize, defaults: &serde_json::Map<String, serde_json::Value>) -> Runs {
    let nodes = fleet(key, hosts);
    let work = tempfile::tempdir().unwrap();
    let addresses: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
    let data = serde_json::json!({
        "ssh_user": "root",
        "ssh_key": key.private(),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "bench_vars": defaults,
    });
    let inventory = format!("import json\n\nbench = ({}, json.loads({:?}))\n", serde_json::to_string(&addresses).unwrap(), data.to_string());
    std::fs::write(work.path().join("inventory.py"), inventory).unwrap();
    let program = peer(kstack_testkit::Need::Pyinfra, "pyinfra", "pyinfra");
    let command = || {
        let mut command = Command::new(&program);
        command.args(["-y", "--parallel", &forks(hosts).to_string()]).arg(work.path().join("inventory.py")).arg("deploy.py");
        command
    };
    // pyinfra's results table ends with its operations' totals: success, error, no change.
    peer_runs("pyinfra", hosts, command, |text| {
        text.lines().find(|l| l.trim_start().starts_with("Grand total")).unwrap_or_default().trim().to_owned()
    })
}

/// The shipped image's roles, whose checks `kstack verify` makes.
const IMAGE_ROLES: [&str; 6] = ["base", "thp", "docker", "monit", "unattended-upgrades", "kubelet"];

/// `kstack verify` of the shipped image's checks on a fresh fleet, all of a host's checks in one
/// command, beside the same checks made one command each (as verify made them before); both
/// must judge every check of every host alike. Prints the times and commands per host.
fn verify_side_by_side(key: &ClientKey, hosts: usize) {
    let nodes = fleet(key, hosts);
    let roles = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("roles"), &IMAGE_ROLES);
    let login = login(key);
    let addresses: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let options = RunOptions { check: false, forks: forks(hosts), max_fail: None };
    let rt = tokio::runtime::Runtime::new().unwrap();
    settle();
    let started = Instant::now();
    let batched = rt.block_on(verify(&addresses, &login, &roles, &Variables::new(), &options, Arc::new(kstack::events::Unwatched)));
    let batched_time = started.elapsed();
    settle();
    let started = Instant::now();
    let one_by_one = rt.block_on(async {
        let mut running = tokio::task::JoinSet::new();
        for (index, address) in addresses.iter().enumerate() {
            let (address, login, roles) = (address.clone(), login.clone(), roles.clone());
            running.spawn(async move {
                let connection = Connection::open(&address, &login).await.unwrap();
                let facts = connection.facts().await.unwrap();
                let mut results = Vec::new();
                for check in host_checks(&roles, &Variables::new(), &facts, &address) {
                    let result = match check {
                        Ok(pending) => run_all(&[&pending], &connection, &facts, Answers::default()).await.unwrap().remove(0),
                        Err(failed) => failed,
                    };
                    results.push((result.name, result.passed));
                }
                (index, results, connection.commands_run())
            });
        }
        let mut all = Vec::new();
        while let Some(done) = running.join_next().await {
            all.push(done.unwrap());
        }
        all.sort_by_key(|(index, _, _)| *index);
        all
    });
    let one_by_one_time = started.elapsed();
    for (report, (_, alone, _)) in batched.iter().zip(&one_by_one) {
        let together: Vec<(String, bool)> = report.checks.iter().map(|c| (c.name.clone(), c.passed)).collect();
        assert_eq!(&together, alone, "{}: the batched verify and the checks one by one disagree", report.host);
    }
    let per_host = |commands: usize| commands as f64 / hosts as f64;
    let checks = batched[0].checks.len();
    let passed = batched[0].checks.iter().filter(|c| c.passed).count();
    println!("kstack verify, the shipped image's {checks} checks ({passed} passing on a fresh node) on {hosts} test nodes:");
    println!(
        "  one command per host   {:>6.2} s  {:>5.1} commands/host",
        batched_time.as_secs_f64(),
        per_host(batched.iter().map(|r| r.commands).sum())
    );
    println!(
        "  one command per check  {:>6.2} s  {:>5.1} commands/host  ({:.1}x the time)",
        one_by_one_time.as_secs_f64(),
        per_host(one_by_one.iter().map(|(_, _, commands)| commands).sum()),
        one_by_one_time.as_secs_f64() / batched_time.as_secs_f64()
    );
}

/// Fleets of more than about ten nodes need more inotify instances than Linux's default of 128
/// (each node's systemd takes several); the limit is raised for the bench and put back after.
struct InotifyLimit(Option<String>);

impl InotifyLimit {
    const PATH: &str = "/proc/sys/fs/inotify/max_user_instances";

    fn at_least(wanted: u64) -> InotifyLimit {
        let current = std::fs::read_to_string(Self::PATH).unwrap();
        if current.trim().parse::<u64>().unwrap() >= wanted {
            return InotifyLimit(None);
        }
        eprintln!("raising fs.inotify.max_user_instances from {} to {wanted} for the bench", current.trim());
        std::fs::write(Self::PATH, wanted.to_string()).unwrap();
        InotifyLimit(Some(current))
    }
}

impl Drop for InotifyLimit {
    fn drop(&mut self) {
        if let Some(previous) = &self.0 {
            let _ = std::fs::write(Self::PATH, previous);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    // While working on kstack's own speed, its figures alone.
    let peers = !args.iter().any(|a| a == "--kstack-only");
    let sizes = if sizes.is_empty() { vec![10, 100] } else { sizes };
    let _limit = InotifyLimit::at_least(sizes.iter().max().copied().unwrap_or(10) as u64 * 16);
    let key = ClientKey::new();
    let defaults = load(&bench_dir(), &["app"]).remove(0).defaults;
    let mut rows = Vec::new();
    for &hosts in &sizes {
        let mut tools = vec![("kstack", kstack_runs(&key, hosts))];
        if peers {
            tools.push(("ansible", ansible_runs(&key, hosts)));
            tools.push(("pyinfra", pyinfra_runs(&key, hosts, &defaults)));
        }
        rows.push((hosts, tools));
    }
    println!("benches/roles/app (21 tasks) on test nodes; every tool with forks = min(hosts, 25)");
    println!(
        "{:>6} {:<18} {:>8} {:>11} {:>16} {:>16} {:>14}",
        "hosts", "tool", "first s", "no-change s", "tool CPU/host", "all CPU/host", "commands/host"
    );
    let seconds = |d: Duration| d.as_secs_f64();
    for (hosts, tools) in &rows {
        for (tool, runs) in tools {
            let per_host = |d: Duration| format!("{:.0} ms", seconds(d) * 1000.0 / *hosts as f64);
            let commands = runs.commands.map(|[first, again]| format!("{first:.1} / {again:.1}")).unwrap_or_default();
            println!(
                "{hosts:>6} {tool:<18} {:>8.2} {:>11.2} {:>16} {:>16} {commands:>14}",
                seconds(runs.wall[0]),
                seconds(runs.wall[1]),
                format!("{} / {}", per_host(runs.cpu[0]), per_host(runs.cpu[1])),
                format!("{} / {}", per_host(runs.machine[0]), per_host(runs.machine[1])),
            );
        }
        let kstack = &tools[0].1;
        for (peer, runs) in &tools[1..] {
            println!(
                "{hosts:>6} {:<18} {:>7.1}x {:>10.1}x",
                format!("kstack vs {peer}"),
                seconds(runs.wall[0]) / seconds(kstack.wall[0]),
                seconds(runs.wall[1]) / seconds(kstack.wall[1])
            );
        }
    }
    verify_side_by_side(&key, 10);
}
