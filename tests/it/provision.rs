//! `kstack provision` and `kstack verify` through the binary: instances found through the AWS
//! emulator, served by booted test nodes at the loopback addresses the emulator gave them.

use kstack_testkit::node::{self, ClientKey, Node};
use kstack_testkit::{Emulated, Moto, Project};

/// A fleet applied to the emulator, with a booted node behind each instance address.
struct Fleet {
    moto: Moto,
    project: Project,
    key: ClientKey,
    nodes: Vec<Node>,
    /// Each node's instance id, in the order of `nodes`.
    instances: Vec<String>,
}

impl Fleet {
    fn start() -> Fleet {
        let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
        let project = Project::fixture("project");
        let subnet = project.loopback_fleet(0);
        project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
        let addressed = rt.block_on(async {
            let described = aws.ec2.describe_instances().filters(kstack_testkit::env_filter("fleet")).send().await.unwrap();
            let mut addressed: Vec<(String, String)> = described
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| Some((i.private_ip_address()?.to_owned(), i.instance_id()?.to_owned())))
                .collect();
            addressed.sort();
            addressed
        });
        assert_eq!(addressed.len(), 2, "{addressed:?}");
        assert!(addressed.iter().all(|(a, _)| a.starts_with(&subnet)), "{addressed:?}");
        let key = ClientKey::new();
        let nodes = addressed.iter().map(|(a, _)| Node::boot_at(&key, a)).collect();
        let instances = addressed.into_iter().map(|(_, id)| id).collect();
        Fleet { moto, project, key, nodes, instances }
    }

    fn kstack(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().unwrap()
    }

    fn command(&self, args: &[&str]) -> assert_cmd::Command {
        let key = self.key.private();
        let known_hosts = self.key.dir.path().join("known_hosts");
        let mut command = self.project.kstack(&self.moto);
        command.args(args).args(["--ssh-key", key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap()]);
        command
    }
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn provision_converges_the_fleet_then_changes_nothing_and_verify_catches_drift() {
    let fleet = Fleet::start();
    let first = fleet.kstack(&["provision", "fleet", "--trust-new-hosts"]);
    let text = stdout(&first);
    assert!(first.status.success(), "{text}\n{}", String::from_utf8_lossy(&first.stderr));
    for node in &fleet.nodes {
        assert!(text.contains(&format!("changed: [{}] everything / config file", node.address)), "{text}");
        assert!(text.lines().any(|l| l.starts_with(&node.address) && l.contains("failed=0 skipped=0 unreachable=0")), "{text}");
    }

    let config = std::fs::read_to_string(fleet.nodes[0].file("/etc/app/app.conf")).unwrap();
    assert_eq!(config, "# fleet on debian 12\nname = app\nnote = from the group\n", "environment and group variables reach the roles");

    let second = fleet.kstack(&["provision", "fleet"]);
    let text = stdout(&second);
    assert!(second.status.success(), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" changed=0 failed=0")).count(), 2, "{text}");

    let verified = fleet.kstack(&["verify", "fleet"]);
    assert!(verified.status.success(), "{}", stdout(&verified));

    // Drift on one node: --check shows it with a diff and changes nothing.
    let drifted = &fleet.nodes[1];
    std::fs::write(drifted.file("/etc/app/app.conf"), "name = hand-edited\n").unwrap();
    let checked = fleet.kstack(&["provision", "fleet", "--check", "--diff", "--limit", &drifted.address]);
    let text = stdout(&checked);
    assert!(checked.status.success(), "{text}");
    assert!(text.contains(&format!("changed: [{}] everything / config file", drifted.address)), "{text}");
    assert!(text.contains("-name = hand-edited") && text.contains("+name = app"), "{text}");
    assert!(!text.contains(&fleet.nodes[0].address), "--limit keeps the other node out: {text}");
    assert_eq!(std::fs::read_to_string(drifted.file("/etc/app/app.conf")).unwrap(), "name = hand-edited\n");

    let verified = fleet.kstack(&["verify", "fleet"]);
    let text = stdout(&verified);
    assert_eq!(verified.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("FAIL: [{}] config present", drifted.address)), "{text}");
    assert!(text.contains(&format!("pass: [{}] config present", fleet.nodes[0].address)), "{text}");
}

#[test]
fn a_host_whose_key_changed_is_refused_and_the_others_still_converge() {
    let fleet = Fleet::start();
    let known_hosts = fleet.key.dir.path().join("known_hosts");
    // A stale key recorded for the first node, as after a rebuild or an attack.
    std::fs::write(&known_hosts, node::stale_known_hosts_line(&fleet.nodes[0].address)).unwrap();

    // While another run holds the environment (an apply replacing nodes), provision and verify
    // wait their turn: refused, naming the holder, with nothing done.
    let lock = fleet.project.path().join(".kstack/state/fleet.lock");
    let holder = r#"{"id":"0badc0de","holder":"ci","host":"runner-7","pid":4242,"command":"kstack apply fleet","started":"2026-12-06T00:00:00Z"}"#;
    std::fs::write(&lock, holder).unwrap();
    for command in ["provision", "verify"] {
        let locked = fleet.kstack(&[command, "fleet", "--trust-new-hosts"]);
        let said = String::from_utf8_lossy(&locked.stderr);
        assert_eq!(locked.status.code(), Some(1), "{said}");
        assert!(said.contains("environment `fleet` is locked by ci@runner-7 (pid 4242, `kstack apply fleet`)"), "{command}: {said}");
    }
    assert!(!fleet.nodes[1].file("/etc/app").exists(), "nothing ran while the lock was held");
    std::fs::remove_file(&lock).unwrap();

    let output = fleet.kstack(&["provision", "fleet", "--trust-new-hosts"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("unreachable: [{}] the host key of {} has changed", fleet.nodes[0].address, fleet.nodes[0].address)), "{text}");
    assert!(text.lines().any(|l| l.starts_with(&fleet.nodes[1].address) && l.contains("failed=0 skipped=0 unreachable=0")), "{text}");
}

#[test]
fn new_nodes_are_checked_against_the_host_keys_their_console_shows_and_never_trusted_blindly() {
    let fleet = Fleet::start();
    let known_hosts = fleet.key.dir.path().join("known_hosts");
    let (shown, mismatched) = (&fleet.nodes[0], &fleet.nodes[1]);
    // Emulator gap: moto's GetConsoleOutput never shows host keys, so this proxy answers it
    // as EC2 does once cloud-init has printed them: the first node's own key; nothing yet for
    // the second.
    let proxy = kstack_testkit::faults::FaultProxy::start(&fleet.moto.endpoint, 1, 0);
    let own_key = std::fs::read_to_string(shown.file("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let consoles = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::from([(
        fleet.instances[0].clone(),
        kstack_testkit::faults::cloud_init_console(&own_key),
    )])));
    let source = std::sync::Arc::clone(&consoles);
    proxy.set_console_source(Some(std::sync::Arc::new(move |instance: &str| source.lock().unwrap().get(instance).cloned())));

    let first = fleet.command(&["provision", "fleet"]).envs(proxy.env()).output().unwrap();
    let (text, progress) = (stdout(&first), String::from_utf8_lossy(&first.stderr).into_owned());
    assert_eq!(first.status.code(), Some(1), "{text}{progress}");
    assert!(progress.contains(&format!("{} ({}): 1 host key(s) taken from its console output", fleet.instances[0], shown.address)), "{progress}");
    assert!(
        progress.contains(&format!("{} ({}): its console output shows no SSH host keys, so it is refused", fleet.instances[1], mismatched.address)),
        "{progress}"
    );
    assert!(text.lines().any(|l| l.starts_with(&shown.address) && l.contains("failed=0 skipped=0 unreachable=0")), "{text}");
    assert!(text.contains(&format!("unreachable: [{}]", mismatched.address)), "without --trust-new-hosts it is refused: {text}");
    assert!(!mismatched.file("/etc/app").exists(), "nothing ran on the refused node");
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    let key = own_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(recorded, format!("{} {key} kstack-instance={}\n", shown.address, fleet.instances[0]), "recorded with its instance");

    // The second node's console now shows a key it does not offer: it is refused even with
    // --trust-new-hosts, and only its console was read, the known node's not again.
    let stale = node::stale_known_hosts_line(&mismatched.address);
    consoles.lock().unwrap().insert(fleet.instances[1].clone(), kstack_testkit::faults::cloud_init_console(stale.split_once(' ').unwrap().1));
    let reads = proxy.console_reads();
    let second = fleet.command(&["provision", "fleet", "--trust-new-hosts"]).envs(proxy.env()).output().unwrap();
    let (text, progress) = (stdout(&second), String::from_utf8_lossy(&second.stderr).into_owned());
    assert_eq!(second.status.code(), Some(1), "{text}{progress}");
    assert_eq!(proxy.console_reads() - reads, 1, "{progress}");
    assert!(text.contains(&format!("unreachable: [{}] the host key of {} has changed", mismatched.address, mismatched.address)), "{text}");
    assert!(!mismatched.file("/etc/app").exists(), "nothing ran on the refused node");
    assert!(text.lines().any(|l| l.starts_with(&shown.address) && l.contains("changed=0 failed=0")), "{text}");
}

#[test]
fn a_host_whose_recorded_key_is_of_another_type_is_refused_with_trust_new_hosts_and_gets_nothing_written() {
    let fleet = Fleet::start();
    let known_hosts = fleet.key.dir.path().join("known_hosts");
    let refused = &fleet.nodes[0];
    // The node offers ed25519; an ecdsa key is recorded for it. Trust on first use must not
    // take the ed25519 key as a new host's.
    let recorded = node::stale_known_hosts_line_of_type("ecdsa", &refused.address);
    std::fs::write(&known_hosts, &recorded).unwrap();

    let output = fleet.kstack(&["provision", "fleet", "--trust-new-hosts"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let offered = std::fs::read_to_string(refused.file("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let fingerprint = std::process::Command::new("ssh-keygen").arg("-lf").arg(refused.file("/etc/ssh/ssh_host_ed25519_key.pub")).output().unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).split_whitespace().nth(1).unwrap().to_owned();
    assert!(offered.starts_with("ssh-ed25519 ") && fingerprint.starts_with("SHA256:"), "{offered} {fingerprint}");
    let line = text.lines().find(|l| l.starts_with(&format!("unreachable: [{}]", refused.address))).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("the host key of {} has changed: it offers ssh-ed25519 {fingerprint}", refused.address)), "{line}");
    assert!(line.contains(&format!("line 1 of {}", known_hosts.display())) && line.contains(recorded.trim()), "{line}");
    assert!(line.contains(&format!("ssh-keygen -R {} -f {}", refused.address, known_hosts.display())), "{line}");
    // Nothing reached the refused node; the other one converged and its key was recorded.
    assert!(!refused.file("/etc/app").exists(), "no file was written on the refused node");
    assert!(fleet.nodes[1].file("/etc/app/app.conf").exists(), "{text}");
    let now = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(now.starts_with(&recorded) && !now[recorded.len()..].contains(&refused.address), "the recorded key stays alone: {now}");
    assert!(now.contains(&format!("{} ssh-ed25519 ", fleet.nodes[1].address)), "{now}");
}

#[test]
fn secrets_reach_the_nodes_but_never_the_output_the_plan_or_the_state() {
    let fleet = Fleet::start();
    const TOKEN: &str = "s3cr3t-t0ken-value";
    let fleet_file = fleet.project.path().join("environments/fleet.yaml");
    let text = std::fs::read_to_string(&fleet_file).unwrap();
    std::fs::write(&fleet_file, format!("{text}secrets:\n  api_token: KSTACK_TEST_API_TOKEN\n")).unwrap();

    // Unset, the secret is a problem at its line, and nothing runs.
    let unset = fleet.project.kstack(&fleet.moto).args(["validate", "fleet"]).env_remove("KSTACK_TEST_API_TOKEN").output().unwrap();
    assert_eq!(unset.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("secret `api_token` reads $KSTACK_TEST_API_TOKEN, which is not set"));

    let with_secret_value = |args: &[&str], value: &str| {
        let key = fleet.key.private();
        let known_hosts = fleet.key.dir.path().join("known_hosts");
        let mut command = fleet.project.kstack(&fleet.moto);
        command.args(args).env("KSTACK_TEST_API_TOKEN", value);
        if args[0] != "plan" {
            command.args(["--ssh-key", key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap(), "--trust-new-hosts"]);
        }
        command.output().unwrap()
    };
    let with_secret = |args: &[&str]| with_secret_value(args, TOKEN);
    let provisioned = with_secret(&["provision", "fleet", "--diff"]);
    let shown = format!("{}{}", stdout(&provisioned), String::from_utf8_lossy(&provisioned.stderr));
    assert!(provisioned.status.success(), "{shown}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("(diff withheld: the file is rendered from a secret)"), "{shown}");
    let config = std::fs::read_to_string(fleet.nodes[0].file("/etc/app/app.conf")).unwrap();
    assert!(config.contains(&format!("token = {TOKEN}")), "the node has it: {config}");
    // Rotated: the file on the node still holds the old value, which the redactor no longer
    // knows; its diff is withheld whole, in text and JSON.
    for args in [&["provision", "fleet", "--check", "--diff"][..], &["provision", "fleet", "--check", "--diff", "--json"][..]] {
        let rotated = with_secret_value(args, "r0tat3d-t0ken-value");
        let shown = format!("{}{}", stdout(&rotated), String::from_utf8_lossy(&rotated.stderr));
        assert!(rotated.status.success(), "{shown}");
        assert!(!shown.contains(TOKEN) && !shown.contains("r0tat3d-t0ken-value"), "{shown}");
        assert!(shown.contains("(diff withheld: the file is rendered from a secret)"), "{shown}");
    }

    // Used in user data too: the plan and its JSON show a hash.
    let text = std::fs::read_to_string(&fleet_file).unwrap();
    std::fs::write(
        &fleet_file,
        text.replace("    image: node\n", "    image: node\n    user_data: \"#!/bin/sh\\necho {{ api_token }} > /etc/token\\n\"\n"),
    )
    .unwrap();
    for args in [&["plan", "fleet"][..], &["plan", "fleet", "--json"][..]] {
        let planned = with_secret(args);
        let shown = format!("{}{}", stdout(&planned), String::from_utf8_lossy(&planned.stderr));
        assert!(shown.contains("user_data") && !shown.contains(TOKEN), "{shown}");
    }
    // A drifted file's diff in JSON: redacted as well.
    std::fs::write(fleet.nodes[0].file("/etc/app/app.conf"), "drift\n").unwrap();
    let json = with_secret(&["provision", "fleet", "--json", "--check", "--diff"]);
    assert!(!stdout(&json).contains(TOKEN) && stdout(&json).contains("(diff withheld"), "{}", stdout(&json));
}

/// Every process's command line on this machine, read from `/proc` every 20 ms until stopped:
/// the test nodes' processes are among them (a container's processes are the host's).
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Sampler {
    /// Keeps every distinct command line that contains one of `words`.
    fn start(words: &[&str]) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
                    if words.iter().any(|w| line.contains(w.as_str())) {
                        seen.insert(line);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            seen.into_iter().collect()
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_secret_never_reaches_a_command_line_sudo_s_log_or_any_output_even_traced() {
    // A quote, a backslash and a second line: escaped in JSON, shown line by line in diffs.
    const SECRET: &str = "s3cr3t\"t0k\\en-q7Zx\nsecond-line-w9Kv";
    // Every piece of it that a partial redaction could leave behind.
    const PIECES: [&str; 3] = ["s3cr3t", "en-q7Zx", "second-line-w9Kv"];
    const MARKER: &str = "kstack-sampler-marker";
    let fleet = Fleet::start();
    let fleet_file = fleet.project.path().join("environments/fleet.yaml");
    let text = std::fs::read_to_string(&fleet_file).unwrap();
    std::fs::write(&fleet_file, format!("{text}secrets:\n  api_token: KSTACK_TEST_API_TOKEN\n")).unwrap();
    // The template of `everything` writes the token to app.conf; this role's command puts it
    // in a script, next to a command that stays long enough (1 s) for the sampler to see it.
    std::fs::create_dir_all(fleet.project.path().join("roles/secretive")).unwrap();
    fleet.project.write(
        "roles/secretive/tasks.yaml",
        &format!(
            "tasks:\n  - name: token by command\n    command:\n      run: |\n        umask 077; printf '%s\\n' '{{{{ api_token }}}}' > /root/api-token\n        sh -c 'sleep 1; :' {MARKER}\n"
        ),
    );
    fleet.project.edit("images/node.yaml", "roles: [everything]", "roles: [everything, secretive]");
    // The first node is reached as a user other than root, so every script goes through sudo.
    let (sudo_node, root_node) = (&fleet.nodes[0], &fleet.nodes[1]);
    let setup = sudo_node.exec(
        "useradd --create-home admin && mkdir -p ~admin/.ssh && cp /root/.ssh/authorized_keys ~admin/.ssh/ \
         && chown -R admin: ~admin/.ssh && echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/admin \
         && while [ -e /run/nologin ]; do sleep 0.1; done",
    );
    assert!(setup.status.success(), "{}", String::from_utf8_lossy(&setup.stderr));

    let key = fleet.key.private();
    let known_hosts = fleet.key.dir.path().join("known_hosts");
    let provision = |extra: &[&str]| {
        let mut command = fleet.project.kstack(&fleet.moto);
        command
            .args(["provision", "fleet", "--trust-new-hosts", "--ssh-key", key.to_str().unwrap()])
            .args(["--known-hosts", known_hosts.to_str().unwrap()])
            .args(extra)
            .env("KSTACK_TEST_API_TOKEN", SECRET)
            .env("RUST_LOG", "trace");
        command.output().unwrap()
    };
    let sampler = Sampler::start(&[MARKER, PIECES[0], PIECES[1], PIECES[2]]);
    let diffed = provision(&["--diff", "--ssh-user", "admin", "--limit", &sudo_node.address]);
    let json = provision(&["--json", "--diff", "--limit", &root_node.address]);
    let sampled = sampler.stop();

    for output in [&diffed, &json] {
        let (out, err) = (stdout(output), String::from_utf8_lossy(&output.stderr).into_owned());
        assert!(output.status.success(), "{out}\n{err}");
        for piece in PIECES {
            assert!(!out.contains(piece) && !err.contains(piece), "`{piece}` shown:\n{out}\n{err}");
        }
        assert!(out.contains("(diff withheld: the file is rendered from a secret)"), "the output says where a secret is: {out}");
        // Traced: the SDK's own logs are there (DEBUG), its body-carrying TRACE events are not.
        assert!(err.contains("beginning attempt #1"), "{err}");
        assert!(!err.contains("transmitting request") && !err.contains("received response from service"), "{err}");
    }
    assert!(stdout(&diffed).contains("(diff withheld: the file is rendered from a secret)"), "{}", stdout(&diffed));
    assert!(stdout(&json).contains("(diff withheld: the file is rendered from a secret)"), "{}", stdout(&json));
    for node in &fleet.nodes {
        let token = std::fs::read_to_string(node.file("/root/api-token")).unwrap();
        assert_eq!(token, format!("{SECRET}\n"), "the node got it");
        let config = std::fs::read_to_string(node.file("/etc/app/app.conf")).unwrap();
        assert!(config.contains(&format!("token = {SECRET}\n")), "{config}");
    }

    // The sampler saw the task's command line (so it could see a leak) and nothing secret.
    assert!(sampled.iter().any(|l| l.contains(MARKER)), "the sampler never saw the task: {sampled:#?}");
    let leaks: Vec<&String> = sampled.iter().filter(|l| PIECES.iter().any(|p| l.contains(p))).collect();
    assert!(leaks.is_empty(), "secret on a command line: {leaks:#?}");

    // sudo logs each command it runs: the fixed reader, never a script.
    let journal = sudo_node.exec("journalctl -q --no-pager SYSLOG_IDENTIFIER=sudo");
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(journal.contains("COMMAND=") && journal.contains("sh -c"), "sudo's log has the commands: {journal}");
    for piece in PIECES {
        assert!(!journal.contains(piece), "`{piece}` in sudo's log: {journal}");
    }
}

#[test]
fn secrets_from_ssm_and_secrets_manager_reach_the_roles_and_never_any_output_state_user_data_or_command_line() {
    const TOKEN: &str = "ssm-t0ken-Hq3v";
    const PASSWORD: &str = "sm-p4ss-Zr8k";
    let fleet = Fleet::start();
    let rt = kstack_testkit::runtime();
    let aws = rt.block_on(fleet.moto.clients());
    rt.block_on(async {
        let secure = aws_sdk_ssm::types::ParameterType::SecureString;
        aws.ssm.put_parameter().name("/fleet/api-token").value(TOKEN).r#type(secure).key_id("alias/fleet").send().await.unwrap();
        let json = format!(r#"{{"user":"app","password":"{PASSWORD}"}}"#);
        aws.secrets_manager.create_secret().name("fleet/db").secret_string(json).send().await.unwrap();
    });
    let fleet_file = fleet.project.path().join("environments/fleet.yaml");
    let text = std::fs::read_to_string(&fleet_file).unwrap();
    std::fs::write(
        &fleet_file,
        format!("{text}secrets:\n  api_token: {{ ssm: /fleet/api-token }}\n  db_password: {{ secrets_manager: fleet/db, key: password }}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(fleet.project.path().join("roles/secretive")).unwrap();
    fleet.project.write(
        "roles/secretive/tasks.yaml",
        "tasks:\n  - name: password by command\n    command:\n      run: umask 077; printf '%s\\n' '{{ db_password }}' > /root/db-password\n",
    );
    fleet.project.edit("images/node.yaml", "roles: [everything]", "roles: [everything, secretive]");

    let sampler = Sampler::start(&[TOKEN, PASSWORD]);
    let provisioned = fleet.command(&["provision", "fleet", "--diff", "--trust-new-hosts"]).env("RUST_LOG", "trace").output().unwrap();
    let sampled = sampler.stop();
    let shown = format!("{}{}", stdout(&provisioned), String::from_utf8_lossy(&provisioned.stderr));
    assert!(provisioned.status.success(), "{shown}");
    assert!(!shown.contains(TOKEN) && !shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("(diff withheld: the file is rendered from a secret)"), "{shown}");
    for node in &fleet.nodes {
        let config = std::fs::read_to_string(node.file("/etc/app/app.conf")).unwrap();
        assert!(config.contains(&format!("token = {TOKEN}")), "the SSM parameter reached the template: {config}");
        assert_eq!(std::fs::read_to_string(node.file("/root/db-password")).unwrap(), format!("{PASSWORD}\n"), "the secret's field reached the task");
    }
    assert!(sampled.is_empty(), "a secret on a command line: {sampled:#?}");

    // User data refers to a store's secret, never holds it: its value is a problem, its
    // reference a command the node runs.
    let text = std::fs::read_to_string(&fleet_file).unwrap();
    let with_user_data = |line: &str| {
        let user_data = format!("    image: node\n    user_data: \"#!/bin/sh\\n{line}\\n\"\n");
        std::fs::write(&fleet_file, text.replace("    image: node\n", &user_data)).unwrap();
    };
    with_user_data("echo {{ api_token }} > /etc/token");
    let refused = fleet.project.kstack(&fleet.moto).args(["validate", "fleet"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("user data never holds secret `api_token`: it comes from SSM parameter /fleet/api-token"), "{said}");
    with_user_data("{{ secret_ref.api_token }} > /etc/token");
    let applied = fleet.project.kstack(&fleet.moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert!(applied.status.success(), "{}", kstack_testkit::said(&applied));
    let user_data = rt.block_on(async {
        let templates = aws.ec2.describe_launch_templates().filters(kstack_testkit::env_filter("fleet")).send().await.unwrap();
        let template = templates.launch_templates()[0].launch_template_id().unwrap().to_owned();
        let versions = aws.ec2.describe_launch_template_versions().launch_template_id(template).versions("$Latest").send().await.unwrap();
        let data = versions.launch_template_versions()[0].launch_template_data().unwrap().user_data().unwrap().to_owned();
        String::from_utf8(aws_smithy_types::base64::decode(&data).unwrap()).unwrap()
    });
    assert!(user_data.contains("aws ssm get-parameter --region eu-west-1 --name '/fleet/api-token' --with-decryption"), "{user_data}");
    assert!(!user_data.contains(TOKEN), "{user_data}");
    let state = std::fs::read_to_string(fleet.project.path().join(".kstack/state/fleet.json")).unwrap();
    assert!(!state.contains(TOKEN) && !state.contains(PASSWORD));

    // A missing parameter: one line naming the secret and the parameter; nothing runs.
    rt.block_on(aws.ssm.delete_parameter().name("/fleet/api-token").send()).unwrap();
    let missing = fleet.kstack(&["provision", "fleet"]);
    assert_eq!(missing.status.code(), Some(1));
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("secret `api_token`: SSM parameter /fleet/api-token does not exist"), "{said}");
    assert!(!said.contains("db_password"), "the readable one is not reported: {said}");
}

/// What a node holds that the benchapp role makes: each path's type, mode, owner and content
/// (its hostname written as `<host>`), the account, the units and the package.
fn benchapp_state(node: &Node) -> String {
    let script = r#"
h=$(hostname)
for p in /srv/app /srv/app/conf /srv/app/data /srv/app/spool /srv/app/run /var/log/benchapp /var/cache/benchapp \
         /srv/app/conf/app.conf /srv/app/conf/logging.conf /srv/app/conf/worker.conf /srv/app/conf/upstreams.conf \
         /srv/app/conf/features.conf /srv/app/about.txt /etc/logrotate.d/benchapp /usr/local/bin/benchapp-healthcheck \
         /etc/default/benchapp /srv/app/current /etc/motd /etc/systemd/system/benchapp.service \
         /etc/systemd/system/benchapp-worker.service /srv/app/data/.initialised; do
    if [ -L "$p" ]; then echo "$p link -> $(readlink "$p")"
    elif [ -d "$p" ]; then echo "$p dir $(stat -c '%a %U:%G' "$p")"
    elif [ -f "$p" ]; then echo "$p file $(stat -c '%a %U:%G' "$p")"; [ "$p" = /srv/app/data/.initialised ] || sed "s/$h/<host>/g; s/^/  | /" "$p"
    else echo "$p missing"; fi
done
getent passwd benchapp | cut -d: -f1,6,7
getent group benchapp | cut -d: -f1,4
id -nG benchapp
for u in benchapp.service benchapp-worker.service; do echo "$u $(systemctl is-enabled $u) $(systemctl is-active $u)"; done
dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' openssh-server
"#;
    let output = node.exec(script);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_ansible_role_imported_provisions_what_ansible_itself_makes_and_then_changes_nothing() {
    kstack_testkit::require(kstack_testkit::Need::Ansible);
    let fleet = Fleet::start();
    let ansible_dir = kstack_testkit::repo().join("tests/fixtures/ansible");
    let imported = fleet.project.kstack(&fleet.moto).args(["roles", "import"]).arg(ansible_dir.join("site.yml")).output().unwrap();
    let said = kstack_testkit::said(&imported);
    assert!(imported.status.success(), "{said}");
    // The play: an image with its roles, a node group with its variables.
    assert!(said.contains("Play for hosts `web`") && said.contains("roles: [\"benchapp\"]") && said.contains("variables: {\"workers\":8}"), "{said}");
    assert!(said.contains("Converted ") && said.contains("into roles/benchapp: 26 tasks, 2 handlers"), "{said}");
    // The one task with nothing to do on a node is kept as a comment and listed at its line.
    assert!(
        said.contains("Left for you (1;") && said.contains("tasks/main.yml:126  show what was done: `debug` changes nothing on a node"),
        "{said}"
    );
    assert!(said.contains("benchapp.service: its file and its service task became one `systemd_unit`"), "{said}");
    let tasks = std::fs::read_to_string(fleet.project.path().join("roles/benchapp/tasks.yaml")).unwrap();
    assert!(tasks.contains("# not converted: show what was done"), "{tasks}");
    fleet.project.edit("images/node.yaml", "roles: [everything]", "roles: [benchapp]");
    fleet.project.edit("environments/fleet.yaml", "      group_note: from the group\n", "      group_note: from the group\n      workers: 8\n");

    let first = fleet.kstack(&["provision", "fleet", "--trust-new-hosts"]);
    assert!(first.status.success(), "{}", kstack_testkit::said(&first));
    let again = fleet.kstack(&["provision", "fleet"]);
    assert!(again.status.success(), "{}", kstack_testkit::said(&again));
    for node in &fleet.nodes {
        assert!(
            stdout(&again).lines().any(|l| l.starts_with(&node.address) && l.contains(" changed=0 ")),
            "a second run changes nothing: {}",
            stdout(&again)
        );
    }

    // Ansible runs the original on a fresh node.
    let theirs = Node::boot(&fleet.key);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("inventory"),
        format!("[web]\n{} ansible_user=root ansible_ssh_private_key_file={}\n", theirs.address, fleet.key.private().display()),
    )
    .unwrap();
    std::fs::write(
        work.path().join("ansible.cfg"),
        format!(
            "[defaults]\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\nroles_path = {}\n\n[ssh_connection]\npipelining = True\n\
             ssh_args = -o UserKnownHostsFile=/dev/null\n",
            ansible_dir.join("roles").display()
        ),
    )
    .unwrap();
    let ansible = std::process::Command::new(kstack_testkit::repo().join(".venv/ansible/bin/ansible-playbook"))
        .current_dir(work.path())
        .env("ANSIBLE_CONFIG", work.path().join("ansible.cfg"))
        .args(["-i", "inventory"])
        .arg(ansible_dir.join("site.yml"))
        .output()
        .unwrap();
    assert!(ansible.status.success(), "{}", kstack_testkit::said(&ansible));

    let ours = benchapp_state(&fleet.nodes[0]);
    assert!(ours.contains("/srv/app/spool dir 750 benchapp:benchapp") && ours.contains("benchapp.service enabled active"), "{ours}");
    assert!(ours.contains("  | family debian") && ours.contains("  | host <host>") && ours.contains("  | level = warning"), "{ours}");
    assert!(ours.contains("  | threads = 8"), "the play's variable, as the node group's: {ours}");
    assert_eq!(ours, benchapp_state(&theirs), "the same files, accounts, units and packages as Ansible made");
}
