//! The same 20-task role applied to 10 test nodes by kstack and by ansible-playbook (forks=10,
//! pipelining on), a first run and a no-change run each; prints wall times and ratios.
//! Figures, not assertions. Needs root, `scripts/setup`, and PyPI for ansible-core, which is
//! installed on first use into `.venv/ansible`.
//!
//! Run with `cargo bench --bench roles`.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kstack::roles::{run, RunOptions, TaskStatus, Variables};
use kstack_testkit::node::{ClientKey, Node};
use kstack_testkit::runner::{load, login};

const NODES: usize = 10;
const ANSIBLE_VERSION: &str = "2.17.7";

/// Twenty tasks: directories, files with content, and lines in files.
fn tasks() -> Vec<(String, String, String)> {
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push((
            format!("directory {i}"),
            format!("file: {{ path: /srv/bench/d{i}, state: directory, mode: \"0755\" }}"),
            format!("ansible.builtin.file: {{ path: /srv/bench/d{i}, state: directory, mode: \"0755\" }}"),
        ));
    }
    for i in 0..10 {
        tasks.push((
            format!("file {i}"),
            format!("copy: {{ dest: /srv/bench/d{}/f{i}.conf, content: \"setting_{i} = {{{{ env }}}}\\n\", mode: \"0644\" }}", i % 5),
            format!("ansible.builtin.copy: {{ dest: /srv/bench/d{}/f{i}.conf, content: \"setting_{i} = {{{{ env }}}}\\n\", mode: \"0644\" }}", i % 5),
        ));
    }
    for i in 0..5 {
        tasks.push((
            format!("line {i}"),
            format!("line: {{ path: /srv/bench/lines, line: \"key{i}=value{i}\", regexp: \"^key{i}=\" }}"),
            format!("ansible.builtin.lineinfile: {{ path: /srv/bench/lines, line: \"key{i}=value{i}\", regexp: \"^key{i}=\", create: true }}"),
        ));
    }
    tasks
}

fn write_role(dir: &Path) {
    let mut text = String::from("tasks:\n");
    for (name, kstack, _) in tasks() {
        let _ = writeln!(text, "  - name: {name}\n    {kstack}");
    }
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    std::fs::write(dir.join("bench/tasks.yaml"), text).unwrap();
}

fn write_playbook(dir: &Path, nodes: &[Node], key: &Path) {
    let mut inventory = String::from("[bench]\n");
    for node in nodes {
        let _ = writeln!(inventory, "{} ansible_user=root ansible_ssh_private_key_file={}", node.address, key.display());
    }
    std::fs::write(dir.join("inventory"), inventory).unwrap();
    std::fs::write(
        dir.join("ansible.cfg"),
        "[defaults]\nforks = 10\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\n\n[ssh_connection]\npipelining = True\n",
    )
    .unwrap();
    let mut playbook = String::from("- hosts: bench\n  vars:\n    env: bench\n  tasks:\n");
    for (name, _, ansible) in tasks() {
        let _ = writeln!(playbook, "    - name: {name}\n      {ansible}");
    }
    std::fs::write(dir.join("playbook.yaml"), playbook).unwrap();
}

fn ansible() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/ansible");
    let playbook = venv.join("bin/ansible-playbook");
    if !playbook.exists() {
        eprintln!("installing ansible-core {ANSIBLE_VERSION} into {}", venv.display());
        assert!(Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", &format!("ansible-core=={ANSIBLE_VERSION}")])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install ansible-core failed");
    }
    playbook
}

fn time_ansible(playbook: &Path, dir: &Path) -> (Duration, String) {
    let started = Instant::now();
    let output = Command::new(playbook)
        .current_dir(dir)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .args(["-i", "inventory", "playbook.yaml"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "ansible-playbook failed:\n{text}");
    let recap = text.lines().skip_while(|l| !l.starts_with("PLAY RECAP")).nth(1).unwrap_or_default().to_owned();
    (elapsed, recap)
}

fn main() {
    let key = ClientKey::new();
    let work = tempfile::tempdir().unwrap();
    write_role(&work.path().join("roles"));
    // One fleet at a time: about ten nodes is what this machine runs side by side.
    let kstack_nodes: Vec<Node> = (0..NODES).map(|_| Node::boot(&key)).collect();

    let roles = load(&work.path().join("roles"), &["bench"]);
    let login = login(&key);
    let hosts: Vec<String> = kstack_nodes.iter().map(|n| n.address.clone()).collect();
    let variables = Variables::from([(String::from("env"), serde_json::json!("bench"))]);
    let options = RunOptions { check: false, forks: 10, max_fail: None };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut kstack_times = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let reports = rt.block_on(run(&hosts, &login, &roles, &variables, &options, Arc::new(|_| {})));
        kstack_times.push(started.elapsed());
        let changed: usize = reports.iter().map(|r| r.count(TaskStatus::Changed)).sum();
        let failed: usize = reports.iter().map(|r| usize::from(r.failed())).sum();
        assert_eq!(failed, 0, "kstack run failed: {reports:?}");
        eprintln!("kstack: {changed} changes");
    }
    drop(kstack_nodes);

    let ansible_nodes: Vec<Node> = (0..NODES).map(|_| Node::boot(&key)).collect();
    write_playbook(work.path(), &ansible_nodes, &key.private());
    let playbook = ansible();
    let mut ansible_times = Vec::new();
    for _ in 0..2 {
        let (elapsed, recap) = time_ansible(&playbook, work.path());
        ansible_times.push(elapsed);
        eprintln!("ansible: {recap}");
    }

    println!("20 tasks on {NODES} test nodes (forks 10; ansible with pipelining)");
    println!("{:<12} {:>12} {:>12}", "", "first run s", "no-change s");
    println!("{:<12} {:>12.2} {:>12.2}", "kstack", kstack_times[0].as_secs_f64(), kstack_times[1].as_secs_f64());
    println!("{:<12} {:>12.2} {:>12.2}", "ansible", ansible_times[0].as_secs_f64(), ansible_times[1].as_secs_f64());
    println!(
        "{:<12} {:>11.1}x {:>11.1}x",
        "speed-up",
        ansible_times[0].as_secs_f64() / kstack_times[0].as_secs_f64(),
        ansible_times[1].as_secs_f64() / kstack_times[1].as_secs_f64()
    );
}
