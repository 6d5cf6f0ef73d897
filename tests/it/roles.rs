//! The role engine on booted test nodes: converge, idempotence, check mode, handlers,
//! failures confined to their host, and verify.

use std::sync::Arc;

use kstack::roles::{run, HostReport, RunOptions, TaskStatus, Variables};
use kstack_testkit::node::{ClientKey, Node};
use kstack_testkit::runner::{fixture_roles, Runner};

fn runner(key: &ClientKey) -> Runner {
    let variables = Variables::from([(String::from("env"), serde_json::json!("test"))]);
    Runner::new(key, &fixture_roles(), &["everything"], variables)
}

fn statuses(report: &HostReport) -> Vec<(String, TaskStatus)> {
    report.tasks.iter().map(|t| (t.task.clone(), t.status)).collect()
}

fn failures(report: &HostReport) -> Vec<String> {
    report.tasks.iter().filter(|t| t.status == TaskStatus::Failed).map(|t| format!("{}: {}", t.task, t.error.clone().unwrap_or_default())).collect()
}

#[test]
fn a_role_using_every_module_converges_once_then_reports_no_change_and_verifies() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let runner = runner(&key);

    let first = &runner.converge(&[&node], false)[0];
    assert!(first.unreachable.is_none(), "{:?}", first.unreachable);
    assert_eq!(failures(first), Vec::<String>::new());
    assert!(first.count(TaskStatus::Changed) >= 15, "{:?}", statuses(first));
    let handlers: Vec<_> = first.tasks.iter().filter(|t| t.handler).collect();
    assert_eq!(handlers.len(), 1, "notified three times, the handler runs once");
    let sysctl = first.tasks.iter().find(|t| t.task == "swappiness").unwrap();
    assert!(sysctl.outcome.notes.iter().any(|n| n.contains("container")), "{:?}", sysctl.outcome.notes);

    let second = &runner.converge(&[&node], false)[0];
    let changed: Vec<_> = statuses(second).into_iter().filter(|(_, s)| *s != TaskStatus::Ok).collect();
    assert_eq!(changed, [], "a converged host reports no change");
    assert!(second.tasks.iter().all(|t| !t.handler), "no change, no handler");
    let restarts = std::fs::read_to_string(node.file("/var/lib/app/restarts")).unwrap();
    assert_eq!(restarts.lines().count(), 1);

    // What the modules did, seen from the node's own filesystem.
    let config = std::fs::read_to_string(node.file("/etc/app/app.conf")).unwrap();
    assert_eq!(config, "# test on debian 12\nname = app\n");
    assert_eq!(
        std::fs::read_to_string(node.file("/etc/app/banner.txt")).unwrap(),
        "Written by kstack: {{ not a template }}\n",
        "files/ are copied as they are"
    );
    assert!(std::fs::read_to_string(node.file("/etc/environment")).unwrap().contains("APP_ENV=test\n"));
    assert_eq!(std::fs::read_to_string(node.file("/etc/sysctl.d/60-kstack-vm-swappiness.conf")).unwrap(), "vm.swappiness = 1\n");
    assert!(std::fs::read_to_string(node.file("/etc/default/grub")).unwrap().contains("transparent_hugepage=never"));
    assert!(std::fs::read_to_string(node.file("/etc/systemd/system/app.service.d/limits.conf")).unwrap().contains("LimitNOFILE=65536"));

    let verified = runner.verify(&node);
    let failed: Vec<_> = verified.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert_eq!(failed, Vec::<String>::new());
    let skipped: Vec<&str> = verified.checks.iter().filter(|c| c.skipped.is_some()).map(|c| c.name.as_str()).collect();
    assert_eq!(skipped, ["swappiness", "huge pages off"], "kernel checks are skipped, not faked, in a container");
}

#[test]
fn check_mode_reports_drift_without_changing_it_and_verify_names_the_failing_check() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let runner = runner(&key);
    assert_eq!(failures(&runner.converge(&[&node], false)[0]), Vec::<String>::new());

    // Drift: someone edits the config and stops the service.
    std::fs::write(node.file("/etc/app/app.conf"), "name = hand-edited\n").unwrap();
    runner.rt.block_on(async {
        let connection = kstack::ssh::Connection::open(&node.address, &runner.login).await.unwrap();
        assert!(connection.run("systemctl stop app.service", None).await.unwrap().success());
    });

    let checked = &runner.converge(&[&node], true)[0];
    let drifted: Vec<_> = statuses(checked).into_iter().filter(|(_, s)| *s == TaskStatus::Changed).map(|(t, _)| t).collect();
    assert!(drifted.contains(&String::from("config file")), "{drifted:?}");
    assert!(drifted.contains(&String::from("app unit")), "{drifted:?}");
    let config = checked.tasks.iter().find(|t| t.task == "config file").unwrap();
    let diff = config.outcome.content_diff.as_deref().unwrap();
    assert!(diff.contains("-name = hand-edited") && diff.contains("+name = app"), "{diff}");
    assert_eq!(std::fs::read_to_string(node.file("/etc/app/app.conf")).unwrap(), "name = hand-edited\n", "check mode changed nothing");

    let verified = runner.verify(&node);
    let failed: Vec<&str> = verified.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, ["config present", "service running"]);
    assert!(verified.failed());
}

#[test]
fn a_failing_task_stops_only_its_own_host() {
    let key = ClientKey::new();
    let good = Node::boot(&key);
    let bad = Node::boot(&key);
    // On the bad node, a file stands where the role wants a directory.
    std::fs::create_dir_all(bad.file("/etc")).unwrap();
    std::fs::write(bad.file("/etc/app"), "not a directory\n").unwrap();
    let runner = runner(&key);

    let reports = runner.converge(&[&good, &bad], false);
    assert_eq!(failures(&reports[0]), Vec::<String>::new());
    assert!(!reports[0].failed());
    let failed = failures(&reports[1]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("config directory: "), "{failed:?}");
    assert_eq!(reports[1].tasks.last().unwrap().task, "config directory", "nothing ran after the failure");
}

#[test]
fn max_fail_stops_starting_hosts_once_too_many_have_failed() {
    let key = ClientKey::new();
    let runner = runner(&key);
    // Nothing listens on these addresses: each host fails at once.
    let hosts: Vec<String> = (1..=3).map(|i| format!("127.254.254.{i}")).collect();
    let options = RunOptions { check: false, forks: 1, max_fail: Some(0) };
    let reports = runner.rt.block_on(run(&hosts, &runner.login, &runner.roles, &runner.variables, &options, Arc::new(kstack::events::Unwatched)));
    let reasons: Vec<&str> = reports.iter().map(|r| r.unreachable.as_deref().unwrap_or_default()).collect();
    assert!(reasons[0].starts_with("cannot reach 127.254.254.1"), "{reasons:?}");
    for reason in &reasons[1..] {
        assert!(reason.starts_with("not started: more hosts failed than --max-fail allows"), "{reasons:?}");
    }
}

/// A directory of roles holding one role, `name`, with these tasks.
fn role_dir(name: &str, tasks: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(name)).unwrap();
    std::fs::write(dir.path().join(name).join("tasks.yaml"), tasks).unwrap();
    dir
}

#[test]
fn a_connection_dropped_mid_role_is_retried_on_that_host_and_keeps_its_handlers() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    // The second task kills the sshd process serving its connection, once: the connection
    // drops after the first task changed a file and notified a handler.
    let dir = role_dir(
        "dropper",
        r#"tasks:
  - name: config
    copy: { content: "v1\n", dest: /etc/dropper.conf }
    notify: reload
  - name: drop the connection once
    command: { run: "test -e /root/dropped || { touch /root/dropped; kill -9 $PPID; }" }
  - name: after the drop
    copy: { content: "done\n", dest: /etc/dropper.done }
"#,
    );
    std::fs::write(dir.path().join("dropper/handlers.yaml"), "reload:\n  command: { run: \"echo reloaded >> /root/reloads\" }\n").unwrap();
    let runner = Runner::new(&key, dir.path(), &["dropper"], Variables::new());

    let report = &runner.converge(&[&node], false)[0];
    assert_eq!(report.reconnects, 1, "{:?}", statuses(report));
    assert!(report.unreachable.is_none() && failures(report).is_empty(), "{:?} {:?}", report.unreachable, failures(report));
    assert_eq!(std::fs::read_to_string(node.file("/etc/dropper.done")).unwrap(), "done\n");
    assert_eq!(std::fs::read_to_string(node.file("/root/reloads")).unwrap(), "reloaded\n", "the handler ran once, after the retry");
    assert!(node.file("/root/dropped").exists(), "the connection was dropped");
}

/// The queries of a role's tasks go to the host together, in one round trip, so a run that
/// changes nothing is the facts and one batch. A task after one that changed the host still
/// judges the host as that change left it, and check mode changes nothing.
#[test]
fn tasks_query_together_yet_each_sees_what_an_earlier_task_changed_and_check_mode_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let key = ClientKey::new();
    let node = Node::boot(&key);
    // The line reads the file the first task makes: judged on the host as it was before that
    // task, it would create the file itself, with the default mode.
    let dir = role_dir(
        "layered",
        r#"tasks:
  - name: settings file
    file: { path: /etc/layered.conf, state: file, mode: "0600" }
  - name: setting
    line: { path: /etc/layered.conf, line: "b=2", regexp: "^b=" }
  - name: copy of the settings
    command: { run: "cp -p /etc/layered.conf /etc/layered.copy", creates: /etc/layered.copy }
  - name: drop-in directory
    file: { path: /etc/layered.d, state: directory }
"#,
    );
    let runner = Runner::new(&key, dir.path(), &["layered"], Variables::new());
    let all = |status| ["settings file", "setting", "copy of the settings", "drop-in directory"].map(|t| (t.to_owned(), status)).to_vec();

    let checked = &runner.converge(&[&node], true)[0];
    assert_eq!(statuses(checked), all(TaskStatus::Changed));
    assert!(!node.file("/etc/layered.conf").exists() && !node.file("/etc/layered.d").exists(), "check mode changed nothing");

    let first = &runner.converge(&[&node], false)[0];
    assert_eq!(statuses(first), all(TaskStatus::Changed), "{:?}", failures(first));
    assert_eq!(std::fs::read_to_string(node.file("/etc/layered.conf")).unwrap(), "b=2\n");
    let mode = std::fs::metadata(node.file("/etc/layered.conf")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the line was added to the file the first task made, not to a file of its own");
    assert_eq!(std::fs::read_to_string(node.file("/etc/layered.copy")).unwrap(), "b=2\n", "the command ran after the line");

    let second = &runner.converge(&[&node], false)[0];
    assert_eq!(statuses(second), all(TaskStatus::Ok));
    assert_eq!(second.commands, 1, "the facts and the four tasks' queries in one command");
    // The facts with the queries; the file made before the line reads it, with the queries
    // after it; the line and the command made before the directory is read (a command may
    // touch anything); the directory made at the role's end.
    assert_eq!(first.commands, 4, "changes are made together until a later task reads what they touch");
    eprintln!("commands: check run {}, first run {}, no-change run {}", checked.commands, first.commands, second.commands);
}

/// Changes made together still fail one task at a time: what came before the failing change is
/// made, the failing task says why, and nothing after it runs, as one by one.
#[test]
fn a_change_that_fails_among_others_stops_the_host_at_its_own_task() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let dir = role_dir(
        "halting",
        r#"tasks:
  - name: before
    copy: { content: "made\n", dest: /etc/halting/before }
  - name: failing
    command: { run: "echo broken >&2; exit 3" }
  - name: after
    copy: { content: "never\n", dest: /etc/halting/after }
"#,
    );
    let runner = Runner::new(&key, dir.path(), &["halting"], Variables::new());
    let report = &runner.converge(&[&node], false)[0];
    assert_eq!(statuses(report), [("before".to_owned(), TaskStatus::Changed), ("failing".to_owned(), TaskStatus::Failed)]);
    assert_eq!(failures(report), ["failing: the command failed (exit 3): broken"]);
    assert_eq!(std::fs::read_to_string(node.file("/etc/halting/before")).unwrap(), "made\n");
    assert!(!node.file("/etc/halting/after").exists(), "nothing ran after the failure");
}

/// A unit systemd never had is loaded from its new file when started, so no daemon-reload is
/// spent on it; a changed unit file is reloaded and the unit restarted on the new one.
#[test]
fn a_new_unit_starts_without_a_reload_and_a_changed_one_runs_its_new_file() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let role = |version: &str| {
        let unit = format!(
            "[Service]\\nExecStart=/bin/sh -c 'echo {version} > /run/probe-version; exec sleep infinity'\\n[Install]\\nWantedBy=multi-user.target\\n"
        );
        role_dir(
            "probe",
            &format!(
                "tasks:\n  - name: probe unit\n    systemd_unit: {{ name: probe.service, content: \"{unit}\", enabled: true, state: started }}\n"
            ),
        )
    };
    let reloads = || node.exec("journalctl -q -o cat -u init.scope 2>/dev/null | grep -c 'Reloading' || true");
    let count = |output: std::process::Output| String::from_utf8_lossy(&output.stdout).trim().parse::<u32>().unwrap_or(0);
    let before = count(reloads());
    let first = Runner::new(&key, role("v1").path(), &["probe"], Variables::new());
    assert_eq!(failures(&first.converge(&[&node], false)[0]), Vec::<String>::new());
    assert_eq!(probe_version(&node, "v1\n"), "v1\n");
    assert_eq!(count(reloads()), before, "no daemon-reload for a unit systemd never had");

    let second = Runner::new(&key, role("v2").path(), &["probe"], Variables::new());
    let report = &second.converge(&[&node], false)[0];
    assert_eq!(statuses(report), [("probe unit".to_owned(), TaskStatus::Changed)]);
    assert_eq!(probe_version(&node, "v2\n"), "v2\n", "restarted on the new file");
    assert!(count(reloads()) > before, "a changed unit file is reloaded");
    let stale = node.exec("systemctl show -p NeedDaemonReload --value probe.service");
    assert_eq!(String::from_utf8_lossy(&stale.stdout).trim(), "no");
}

/// A file of the node as the node sees it (`/run` is the node's own tmpfs, not its layer).
/// What the probe unit wrote once it shows `expected`, or after 10 s: a simple service is
/// started once its process is, before its shell has written the file.
fn probe_version(node: &Node, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let version = String::from_utf8_lossy(&node.exec("cat /run/probe-version").stdout).into_owned();
        if version == expected || std::time::Instant::now() > deadline {
            return version;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn verify_makes_every_check_in_one_command_and_judges_each_as_if_alone() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let dir = role_dir("checked", "tasks: []\n");
    std::fs::write(
        dir.path().join("checked/checks.yaml"),
        "sshd installed:\n  package: { name: openssh-server }\n\
         a missing file:\n  file: { path: /etc/kstack-nothing-here }\n\
         a failing command keeps its output:\n  command: { run: 'echo partial-output; exit 3' }\n\
         a hung probe:\n  command: { run: sleep 3600 }\n  timeout_seconds: 2\n\
         hostname readable:\n  file: { path: /etc/hostname }\n\
         a command printing like a boundary:\n  command: { run: \"printf 'kstack-check-0000 end 5 0\\\\n'\", output_contains: kstack-check }\n\
         ssh listens:\n  port: { port: 22 }\n\
         skipped in a container:\n  sysctl: { name: vm.swappiness, value: '1' }\n\
         not rendered:\n  file: { path: '{{ nowhere }}' }\n",
    )
    .unwrap();
    let runner = Runner::new(&key, dir.path(), &["checked"], Variables::new());
    let started = std::time::Instant::now();
    let verified = runner.verify(&node);
    let took = started.elapsed();
    let results: Vec<(&str, bool)> = verified.checks.iter().map(|c| (c.name.as_str(), c.passed)).collect();
    assert_eq!(
        results,
        [
            ("sshd installed", true),
            ("a missing file", false),
            ("a failing command keeps its output", false),
            ("a hung probe", false),
            ("hostname readable", true),
            ("a command printing like a boundary", true),
            ("ssh listens", true),
            ("skipped in a container", true),
            ("not rendered", false),
        ],
        "{:#?}",
        verified.checks
    );
    let detail = |name: &str| verified.checks.iter().find(|c| c.name == name).unwrap().detail.clone();
    assert!(detail("a failing command keeps its output").contains("exited 3 (expected 0); output: partial-output"), "{verified:#?}");
    assert_eq!(detail("a hung probe"), "did not finish within 2 s (timeout_seconds)");
    assert!(verified.checks.iter().any(|c| c.skipped.is_some()));
    assert!(took < std::time::Duration::from_secs(30), "the hung probe was cut at its timeout: {took:?}");
    // The facts and every check: one command on the host however many checks.
    assert_eq!(verified.commands, 1, "{verified:#?}");
    assert!(verified.unreachable.is_none());

    // Checks are judged on this host's facts, never the stand-ins' they were first rendered
    // with: one whose probe the facts decide is made once they are known, in one more
    // command; one whose probe reads the same whatever the facts (a file's content, judged
    // against the facts) is made with them.
    std::fs::write(
        dir.path().join("checked/checks.yaml"),
        "sshd installed:\n  package: { name: openssh-server }\n\
         probe from the facts:\n  command: { run: \"test \\\"$(cat /proc/sys/kernel/hostname)\\\" = '{{ facts.hostname }}'\" }\n\
         judged on the facts:\n  file: { path: /proc/sys/kernel/hostname, contains: ['{{ facts.hostname }}'] }\n\
         only outside containers:\n  file: { path: /etc/kstack-nothing-here }\n  when: not facts.container\n",
    )
    .unwrap();
    let runner = Runner::new(&key, dir.path(), &["checked"], Variables::new());
    let verified = runner.verify(&node);
    let results: Vec<(&str, bool)> = verified.checks.iter().map(|c| (c.name.as_str(), c.passed)).collect();
    assert_eq!(results, [("sshd installed", true), ("probe from the facts", true), ("judged on the facts", true)], "{:#?}", verified.checks);
    assert_eq!(verified.commands, 2, "{verified:#?}");
}

/// The round trips a first run saves keep their meaning: a line after a copy of the same file
/// is judged against the copy still queued (so it keeps the copy's content and mode), and a
/// unit started alone leaves the next unit's task judged as fetched, while a later task that
/// needs the started unit still runs after it, in the same batch.
#[test]
fn a_read_after_a_queued_write_sees_it_and_a_service_started_in_a_batch_runs_before_a_task_needing_it() {
    use std::os::unix::fs::PermissionsExt;
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let dir = role_dir(
        "batched",
        r#"tasks:
  - name: settings
    copy: { content: "a=1\n", dest: /etc/batched.conf, mode: "0600" }
  - name: setting
    line: { path: /etc/batched.conf, line: "b=2", regexp: "^b=" }
  - name: first unit
    systemd_unit: { name: first.service, content: "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/cp /etc/batched.conf /run/first.seen\n", state: started }
  - name: second unit
    systemd_unit: { name: second.service, content: "[Service]\nExecStart=/bin/sleep infinity\n", state: started }
  - name: needs the first unit
    command: { run: "systemctl is-active --quiet first.service && cp /run/first.seen /etc/batched.seen" }
"#,
    );
    let runner = Runner::new(&key, dir.path(), &["batched"], Variables::new());
    let first = &runner.converge(&[&node], false)[0];
    assert!(failures(first).is_empty(), "{:?}", failures(first));
    assert_eq!(std::fs::read_to_string(node.file("/etc/batched.conf")).unwrap(), "a=1\nb=2\n", "the line was judged on the copy's content");
    let mode = std::fs::metadata(node.file("/etc/batched.conf")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the line kept the copy's mode");
    assert_eq!(std::fs::read_to_string(node.file("/etc/batched.seen")).unwrap(), "a=1\nb=2\n", "the unit ran before the task needing it");
    assert_eq!(String::from_utf8_lossy(&node.exec("systemctl is-active second.service").stdout).trim(), "active");
    // The facts with the queries, and every change in one batch at the role's end.
    assert_eq!(first.commands, 2, "{:?}", statuses(first));

    // The copy's content lacks the line, so each run writes both again; the line is still
    // judged on the copy's content, and the file ends the same.
    let again = &runner.converge(&[&node], false)[0];
    let unchanged: Vec<_> = statuses(again).into_iter().filter(|(_, status)| *status == TaskStatus::Ok).map(|(task, _)| task).collect();
    assert_eq!(unchanged, ["first unit", "second unit"]);
    assert_eq!(std::fs::read_to_string(node.file("/etc/batched.conf")).unwrap(), "a=1\nb=2\n");
}

/// Unit files changed one after another share one daemon-reload.
#[test]
fn unit_files_changed_one_after_another_share_one_reload() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let role = |version: &str| {
        let unit = |name: &str| {
            format!("  - name: {name}\n    systemd_unit: {{ name: {name}.service, content: \"[Service]\\nExecStart=/bin/echo {version}\\n[Install]\\nWantedBy=multi-user.target\\n\", enabled: true }}\n")
        };
        role_dir("pair", &format!("tasks:\n{}{}", unit("left"), unit("right")))
    };
    let reloads = || {
        let output = node.exec("journalctl -q -o cat -u init.scope 2>/dev/null | grep -c 'Reloading' || true");
        String::from_utf8_lossy(&output.stdout).trim().parse::<u32>().unwrap_or(0)
    };
    let first = Runner::new(&key, role("v1").path(), &["pair"], Variables::new());
    assert!(failures(&first.converge(&[&node], false)[0]).is_empty());
    let before = reloads();
    let second = Runner::new(&key, role("v2").path(), &["pair"], Variables::new());
    let report = &second.converge(&[&node], false)[0];
    assert!(failures(report).is_empty(), "{:?}", failures(report));
    assert_eq!(statuses(report), [("left".to_owned(), TaskStatus::Changed), ("right".to_owned(), TaskStatus::Changed)]);
    assert_eq!(reloads(), before + 1, "one reload for both files");
    for unit in ["left", "right"] {
        let stale = node.exec(&format!("systemctl show -p NeedDaemonReload --value {unit}.service"));
        assert_eq!(String::from_utf8_lossy(&stale.stdout).trim(), "no", "{unit} runs its new file");
    }
}

/// A service that is only a SysV init script (systemd generates its unit, as for Debian's
/// monit) is started and enabled once, then judged converged: its enablement is its init links.
#[test]
fn a_sysv_service_is_enabled_and_started_once() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let script = "#!/bin/sh\n### BEGIN INIT INFO\n# Provides: legacy\n# Required-Start:\n# Required-Stop:\n# Default-Start: 2 3 4 5\n# Default-Stop: 0 1 6\n### END INIT INFO\ncase \"$1\" in start) touch /run/legacy.started ;; esac\nexit 0\n";
    let dir = role_dir(
        "legacy",
        &format!(
            "tasks:\n  - name: init script\n    copy: {{ dest: /etc/init.d/legacy, mode: \"0755\", content: {} }}\n  - name: reload for the generator\n    command: {{ run: systemctl daemon-reload, creates: /run/systemd/generator.late/legacy.service }}\n  - name: legacy running\n    service: {{ name: legacy.service, enabled: true, state: started }}\n",
            serde_json::to_string(script).unwrap()
        ),
    );
    let runner = Runner::new(&key, dir.path(), &["legacy"], Variables::new());
    let first = &runner.converge(&[&node], false)[0];
    assert!(failures(first).is_empty(), "{:?}", failures(first));
    assert!(node.exec("test -e /run/legacy.started").status.success(), "started");
    assert!(node.exec("ls /etc/rc2.d | grep -q legacy").status.success(), "enabled through its init links");
    let again = &runner.converge(&[&node], false)[0];
    assert_eq!(statuses(again), ["init script", "reload for the generator", "legacy running"].map(|t| (t.to_owned(), TaskStatus::Ok)));
}

/// Puts a shell script of `body` in front of `program` on a node whose root is `root` (root's
/// PATH has /usr/local/bin first).
fn wrap(root: &std::path::Path, program: &str, body: &str) {
    let wrapper = root.join("usr/local/bin").join(program);
    std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    std::fs::write(&wrapper, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A batch asks systemd about all its units in one `systemctl show` (those with a file) and
/// one `is-active` (the others), yet each unit is judged as if asked alone: an enabled running
/// unit, a disabled stopped one, one with no file, and an alias.
#[test]
fn units_asked_together_are_each_judged_as_if_asked_alone() {
    let key = ClientKey::new();
    let node = Node::boot_with(&key, &kstack_testkit::node::next_address(), |root| {
        let units = root.join("etc/systemd/system");
        std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
        let unit = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n";
        for name in ["up.service", "down.service"] {
            std::fs::write(units.join(name), unit).unwrap();
        }
        std::os::unix::fs::symlink("/etc/systemd/system/up.service", units.join("multi-user.target.wants/up.service")).unwrap();
        // Every systemctl the roles run, logged.
        wrap(root, "systemctl", "echo \"$*\" >> /run/systemctl.log\nexec /usr/bin/systemctl \"$@\"");
    });
    let tasks = "tasks:\n\
        \x20 - { name: up, service: { name: up.service, enabled: true, state: started } }\n\
        \x20 - { name: down, service: { name: down.service, enabled: true, state: started } }\n\
        \x20 - { name: ghost, service: { name: ghost.service, state: stopped } }\n\
        \x20 - { name: alias, service: { name: sshd.service, enabled: true, state: started } }\n\
        \x20 - { name: up stopped, service: { name: up.service, state: stopped } }\n";
    let dir = role_dir("units", tasks);
    let runner = Runner::new(&key, dir.path(), &["units"], Variables::new());
    node.exec("rm -f /run/systemctl.log");
    let report = &runner.converge(&[&node], true)[0];
    assert!(failures(report).is_empty(), "{:?}", failures(report));
    let diffs: Vec<(String, Vec<String>)> = report
        .tasks
        .iter()
        .map(|t| (t.task.clone(), t.outcome.diffs.iter().map(|d| format!("{}: {} -> {}", d.field, d.before, d.after)).collect()))
        .collect();
    let expected = [
        ("up", vec![]),
        ("down", vec!["enabled: false -> true", "state: inactive -> started"]),
        ("ghost", vec![]),
        ("alias", vec![]),
        ("up stopped", vec!["state: active -> stopped"]),
    ];
    assert_eq!(diffs, expected.map(|(task, diffs)| (task.to_owned(), diffs.into_iter().map(str::to_owned).collect::<Vec<_>>())));
    let log = String::from_utf8(node.exec("cat /run/systemctl.log").stdout).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["show -p UnitFileState -p ActiveState -- down.service sshd.service up.service", "is-active -- ghost.service"],
        "one systemctl for the units with a file, one for the rest"
    );
}

/// Queries that do not depend on the facts are read with them, in the first command; a task
/// rendered with the facts (its path, its content, its `when:`) is judged with the host's own.
#[test]
fn queries_without_facts_go_with_them_and_tasks_using_facts_see_the_hosts() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let dir = role_dir(
        "factual",
        r#"tasks:
  - name: plain
    copy: { dest: /etc/plain.conf, content: "x\n" }
  - name: content from facts
    copy: { dest: /etc/os.conf, content: "{{ facts.os_id }} {{ facts.hostname }}\n" }
  - name: path from facts
    file: { path: "/etc/{{ facts.os_codename }}.d", state: directory }
  - name: only on debian
    file: { path: /etc/debian-only.d, state: directory }
    when: facts.os_id == "debian"
"#,
    );
    let runner = Runner::new(&key, dir.path(), &["factual"], Variables::new());
    let first = &runner.converge(&[&node], false)[0];
    assert!(failures(first).is_empty(), "{:?}", failures(first));
    let hostname = String::from_utf8(node.exec("cat /proc/sys/kernel/hostname").stdout).unwrap();
    assert_eq!(std::fs::read_to_string(node.file("/etc/os.conf")).unwrap(), format!("debian {}", hostname));
    assert!(node.file("/etc/bookworm.d").is_dir() && node.file("/etc/debian-only.d").is_dir());
    let again = &runner.converge(&[&node], false)[0];
    assert!(statuses(again).iter().all(|(_, status)| *status == TaskStatus::Ok), "{:?}", statuses(again));
    // The facts with the queries of the plain and content tasks (a copy's query reads only
    // its path); then the two whose paths the facts decide.
    assert_eq!(again.commands, 2);
}

/// kstack's own probes share one time limit; when one of them hangs, it and the probes it
/// left unanswered are made again, each under its own limit, and every check is judged as if
/// made alone.
#[test]
fn a_hung_probe_among_the_shared_ones_is_judged_alone_and_the_rest_still_answer() {
    let key = ClientKey::new();
    let node = Node::boot_with(&key, &kstack_testkit::node::next_address(), |root| {
        // dpkg-query stuck on one package.
        wrap(root, "dpkg-query", "case \"$*\" in *stuck-package*) exec sleep 3600 ;; esac\nexec /usr/bin/dpkg-query \"$@\"");
        std::fs::write(root.join("etc/probed.conf"), "probed = yes\n").unwrap();
        std::fs::set_permissions(root.join("etc/probed.conf"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    });
    let dir = role_dir("stuck", "tasks: []\n");
    std::fs::write(
        dir.path().join("stuck/checks.yaml"),
        "sshd installed:\n  package: { name: openssh-server }\n\
         stuck:\n  package: { name: stuck-package }\n  timeout_seconds: 2\n\
         settings:\n  file: { path: /etc/probed.conf, mode: '640', contains: [probed = yes] }\n\
         ssh running:\n  service: { name: ssh.service, running: true }\n",
    )
    .unwrap();
    let runner = Runner::new(&key, dir.path(), &["stuck"], Variables::new());
    let started = std::time::Instant::now();
    let verified = runner.verify(&node);
    let results: Vec<(&str, bool, &str)> = verified.checks.iter().map(|c| (c.name.as_str(), c.passed, c.detail.as_str())).collect();
    assert_eq!((results[0].0, results[0].1), ("sshd installed", true), "{results:?}");
    assert_eq!(results[1], ("stuck", false, "did not finish within 2 s (timeout_seconds)"));
    assert_eq!((results[2].0, results[2].1, results[3].0, results[3].1), ("settings", true, "ssh running", true), "{results:?}");
    // The facts with the checks, and the unanswered ones again.
    assert_eq!(verified.commands, 2);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
}

/// A unit on its way up when `verify` looks (just after boot) is judged where it settles.
#[test]
fn a_service_still_activating_is_judged_once_it_settles() {
    let key = ClientKey::new();
    let node = Node::boot_with(&key, &kstack_testkit::node::next_address(), |root| {
        let unit = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 3\n";
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::write(root.join("etc/systemd/system/slow.service"), unit).unwrap();
    });
    let dir = role_dir("slow", "tasks: []\n");
    std::fs::write(dir.path().join("slow/checks.yaml"), "slow running:\n  service: { name: slow.service, running: true }\n").unwrap();
    let runner = Runner::new(&key, dir.path(), &["slow"], Variables::new());
    assert!(node.exec("systemctl start --no-block slow.service").status.success());
    let verified = runner.verify(&node);
    let results: Vec<(&str, bool, &str)> = verified.checks.iter().map(|c| (c.name.as_str(), c.passed, c.detail.as_str())).collect();
    assert_eq!(results, [("slow running", true, "slow.service is static and active")]);
}
