//! `kstack reboots` through the binary: a schedule for instances in a loopback VPC of the
//! emulator, tagged on the instances and written to the test nodes serving their addresses,
//! and the node-side guard that acts on it.

use std::time::Duration;

use kstack::ssh::{Connection, HostKeys, Login};
use kstack_testkit::node::{ClientKey, Node};
use kstack_testkit::{json, runtime, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";
const GUARD: &str = "roles/unattended-upgrades/files/kstack-reboot-guard";
const REBOOTS: &str =
    "reboots:\n  window: { start: \"03:00\", end: \"05:00\", days: [mon, tue, wed, thu, fri] }\n  group_gap_minutes: 15\n  zone_gap_minutes: 5\n";

/// Instance id → time of a schedule's slots.
fn slot_times(slots: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    slots.as_array().unwrap().iter().map(|s| (s["instance"].as_str().unwrap().to_owned(), s["time"].as_str().unwrap().to_owned())).collect()
}

fn minutes(time: &str) -> u32 {
    let (h, m) = time.split_once(':').unwrap();
    h.parse::<u32>().unwrap() * 60 + m.parse::<u32>().unwrap()
}

/// The environment's instances as EC2 describes them.
fn described(rt: &tokio::runtime::Runtime, aws: &kstack_testkit::Clients) -> Vec<aws_sdk_ec2::types::Instance> {
    rt.block_on(async {
        let described = aws.ec2.describe_instances().filters(kstack_testkit::env_filter("fleet")).send().await.unwrap();
        described.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    })
}

/// Runs `command` on the node as root and returns its stdout.
fn on_node(rt: &tokio::runtime::Runtime, key: &ClientKey, node: &Node, command: &str) -> String {
    let known_hosts = node.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, node.known_hosts_line()).unwrap();
    let login = Login {
        user: String::from("root"),
        key: kstack::ssh::LoginKey::File(key.private()),
        port: 22,
        host_keys: HostKeys { path: known_hosts, trust_on_first_use: false },
        connect_timeout: Duration::from_secs(10),
        bastion: None,
    };
    rt.block_on(async {
        let connection = Connection::open(&node.address, &login).await.unwrap();
        let output = connection.run(command, None).await.unwrap();
        assert_eq!(output.status, 0, "{command}: {}", output.stderr);
        output.stdout
    })
}

#[test]
fn an_assigned_schedule_is_in_the_tags_and_on_the_nodes_and_the_guard_acts_on_it() {
    let moto = Moto::start();
    let rt = runtime();
    let project = Project::fixture("project");
    project.loopback_fleet(11);
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 4\n    max: 4\n");
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}{REBOOTS}"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let key = ClientKey::new();
    let scratch = tempfile::tempdir().unwrap();
    let known_hosts = scratch.path().join("known_hosts");
    let private_key = key.private();
    let ssh = ["--ssh-user", "root", "--ssh-key", private_key.to_str().unwrap(), "--known-hosts", known_hosts.to_str().unwrap(), "--trust-new-hosts"];
    // The apply that launches the instances gives them their slots (tags); their nodes are
    // not up yet, so their files wait for `--assign`.
    let applied = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--write-reboot-slots"]).args(ssh).output().unwrap();
    let warned = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success(), "{warned}");
    assert!(warned.contains("reboot schedule: 4 new node(s) folded in, but 4 of 4 nodes were not written"), "{warned}");
    let instances: Vec<(String, String)> =
        described(&rt, &aws).iter().map(|i| (i.instance_id().unwrap().to_owned(), i.private_ip_address().unwrap().to_owned())).collect();
    assert_eq!(instances.len(), 4);
    let guard = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GUARD)).unwrap();
    let nodes: Vec<Node> = instances
        .iter()
        .map(|(_, address)| {
            Node::boot_with(&key, address, |root| {
                std::fs::create_dir_all(root.join("usr/local/sbin")).unwrap();
                let path = root.join("usr/local/sbin/kstack-reboot-guard");
                std::fs::write(&path, &guard).unwrap();
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            })
        })
        .collect();

    // The schedule: every node in the window, 15 minutes apart, as tagged.
    let shown = project.kstack(&moto).args(["reboots", "fleet", "--json"]).output().unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let schedule = json(&shown);
    let slots = schedule["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 4);
    let mut times: Vec<u32> = slots.iter().map(|s| minutes(s["time"].as_str().unwrap())).collect();
    times.sort();
    assert!(times.iter().all(|t| (180..300).contains(t)), "{times:?}");
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 15), "{times:?}");
    assert!(slots.iter().all(|s| s["changed"] == false));
    let figures = &schedule["groups"][0];
    assert_eq!(figures["worst_within_gap"], 1);
    let expected = 1.0 - (0..4).map(|k| 1.0 - f64::from(k) / 120.0).product::<f64>();
    assert!((figures["random_shared_minute"].as_f64().unwrap() - expected).abs() < 1e-9, "{figures}");
    let spread = |seed: &str| json(&project.kstack(&moto).args(["reboots", "fleet", "--reshuffle", "--seed", seed, "--json"]).output().unwrap());
    assert_eq!(spread("7")["slots"], spread("7")["slots"], "the same seed, the same spread");
    assert_ne!(slot_times(&spread("7")["slots"]), slot_times(&spread("8")["slots"]));

    let assigned = project.kstack(&moto).args(["reboots", "fleet", "--assign"]).args(ssh).output().unwrap();
    let stdout = String::from_utf8_lossy(&assigned.stdout);
    assert!(assigned.status.success(), "{}{}", stdout, String::from_utf8_lossy(&assigned.stderr));
    assert!(stdout.contains("random minutes instead: P(two share a minute) = 0.0492"), "{stdout}");
    assert!(stdout.contains("Assigned: 4 nodes tagged (kstack:reboot-time); 4 written (/etc/apt/apt.conf.d/51kstack-reboot)."), "{stdout}");

    // Each instance's tag and its node's configuration hold the same, scheduled time.
    let tags: std::collections::BTreeMap<String, Option<String>> = described(&rt, &aws)
        .iter()
        .map(|i| {
            let tag = i.tags().iter().find(|t| t.key() == Some("kstack:reboot-time")).and_then(|t| t.value()).map(str::to_owned);
            (i.instance_id().unwrap().to_owned(), tag)
        })
        .collect();
    for ((id, _), node) in instances.iter().zip(&nodes) {
        let slot = slots.iter().find(|s| s["instance"] == id.as_str()).unwrap();
        let time = slot["time"].as_str().unwrap();
        assert_eq!(tags[id].as_deref(), Some(time), "{id}");
        let config = std::fs::read_to_string(node.file("/etc/apt/apt.conf.d/51kstack-reboot")).unwrap();
        assert!(config.contains(&format!("Kstack::Reboot::Time \"{time}\";")), "{config}");
        assert!(config.contains("Unattended-Upgrade::Automatic-Reboot \"false\";"), "{config}");
        assert_eq!(config.matches('@').count(), 3, "its three peers: {config}");
        // The guard, reading that configuration through apt: reboot at the slot only.
        let at = |now: &str| on_node(&rt, &key, node, &format!("KSTACK_REBOOT_NOW='{now}' kstack-reboot-guard --dry-run")).trim().to_owned();
        assert_eq!(at(&format!("2026-12-01 {time}")), format!("reboot now at {time}"));
        assert_eq!(at("2026-12-01 02:00"), format!("waiting for {time}"));
        assert_eq!(at(&format!("2026-12-06 {time}")), "no reboot on sun");
    }

    // Another schedule keeps every time, whatever the seed.
    let kept = project.kstack(&moto).args(["reboots", "fleet", "--seed", "99", "--json"]).output().unwrap();
    assert_eq!(slot_times(&json(&kept)["slots"]), slot_times(&schedule["slots"]));

    // A new instance (the group grew) is folded in by the apply that made it, keeping
    // everyone else's time; its node is not up yet, so writing its slot waits for --assign.
    project.edit(FLEET, "    min: 4\n    max: 4\n", "    min: 5\n    max: 5\n");
    let grown = project.kstack(&moto).args(["apply", "fleet", "--auto-approve", "--write-reboot-slots"]).args(ssh).output().unwrap();
    let warned = String::from_utf8_lossy(&grown.stderr);
    assert!(grown.status.success(), "{warned}");
    assert!(warned.contains("reboot schedule: 1 new node(s) folded in, but 1 of 5 nodes were not written"), "{warned}");
    assert!(warned.contains("run `kstack reboots fleet --assign` once SSH reaches them"), "{warned}");
    let folded = json(&project.kstack(&moto).args(["reboots", "fleet", "--json"]).output().unwrap());
    let before = slot_times(&schedule["slots"]);
    let after = slot_times(&folded["slots"]);
    assert!(before.iter().all(|(id, time)| after.get(id) == Some(time)), "old times kept: {before:?} -> {after:?}");
    let folded = folded["slots"].as_array().unwrap().clone();
    assert!(folded.iter().all(|s| s["changed"] == false), "every instance tagged: {folded:?}");
    let new_slot = folded.iter().find(|s| !instances.iter().any(|(id, _)| s["instance"] == id.as_str())).unwrap();
    // Before its node is up, --assign writes the others and names the one it could not reach.
    let short = project.kstack(&moto).args(["reboots", "fleet", "--assign"]).args(ssh).output().unwrap();
    let stdout = String::from_utf8_lossy(&short.stdout);
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(1), "{stdout}{stderr}");
    let unreached = format!("{} ({})", new_slot["instance"].as_str().unwrap(), new_slot["address"].as_str().unwrap());
    assert!(
        stdout.contains(&format!(
            "Assigned: 5 nodes tagged (kstack:reboot-time); 4 written (/etc/apt/apt.conf.d/51kstack-reboot); 1 not reached: {unreached}."
        )),
        "{stdout}"
    );
    assert!(stderr.contains(&format!("{unreached}: could not write the reboot slot")), "{stderr}");
    assert!(stderr.contains("1 of 5 nodes were not written; their tags are set"), "{stderr}");
    let new_node = Node::boot_at(&key, new_slot["address"].as_str().unwrap());
    let assigned = project.kstack(&moto).args(["reboots", "fleet", "--assign"]).args(ssh).output().unwrap();
    assert!(assigned.status.success(), "{}", String::from_utf8_lossy(&assigned.stderr));
    let config = std::fs::read_to_string(new_node.file("/etc/apt/apt.conf.d/51kstack-reboot")).unwrap();
    assert!(config.contains(&format!("Kstack::Reboot::Time \"{}\";", new_slot["time"].as_str().unwrap())), "{config}");
    let peers = std::fs::read_to_string(nodes[1].file("/etc/apt/apt.conf.d/51kstack-reboot")).unwrap();
    assert!(peers.contains(&format!("{}@{}", new_slot["instance"].as_str().unwrap(), new_slot["time"].as_str().unwrap())), "{peers}");

    // A node whose slot collides with a peer's (a stale or random pick) waits the gap out.
    let node = &nodes[0];
    on_node(
        &rt,
        &key,
        node,
        "printf 'Kstack::Reboot::Time \"03:20\";\\nKstack::Reboot::Peers \"i-early@03:10 i-late@04:30\";\\n' > /etc/apt/apt.conf.d/52test",
    );
    let deferred = on_node(&rt, &key, node, "KSTACK_REBOOT_NOW='2026-12-02 03:20' kstack-reboot-guard --dry-run");
    assert_eq!(deferred.trim(), "waiting for 03:25 (i-early reboots at 03:10, within 15 minutes)");
    let now = on_node(&rt, &key, node, "KSTACK_REBOOT_NOW='2026-12-02 03:25' kstack-reboot-guard --dry-run");
    assert_eq!(now.trim(), "reboot now at 03:25 (i-early reboots at 03:10, within 15 minutes)");

    // A node without a slot picks a random minute of the window.
    on_node(&rt, &key, node, "rm /etc/apt/apt.conf.d/51kstack-reboot /etc/apt/apt.conf.d/52test");
    let random = on_node(&rt, &key, node, "KSTACK_REBOOT_NOW='2026-11-30 12:00' kstack-reboot-guard --dry-run");
    let picked = random.trim().strip_prefix("waiting for ").unwrap_or_else(|| panic!("{random}"));
    assert!((180..300).contains(&minutes(picked)), "{picked}");
    // Run by its timer (no update pending), it keeps a picked minute for good.
    on_node(&rt, &key, node, "kstack-reboot-guard");
    let kept = std::fs::read_to_string(node.file("/etc/apt/apt.conf.d/51kstack-reboot")).unwrap();
    let time = kept.split('"').nth(1).unwrap_or_else(|| panic!("{kept}"));
    assert!((180..300).contains(&minutes(time)), "{kept}");
    let later = on_node(&rt, &key, node, "KSTACK_REBOOT_NOW='2026-11-30 12:00' kstack-reboot-guard --dry-run");
    assert_eq!(later.trim(), format!("waiting for {time}"));
}

#[test]
fn a_fleet_too_big_for_its_window_is_refused_with_the_reason_and_nothing_is_tagged() {
    let moto = Moto::start();
    let rt = runtime();
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", "10.40.0.0/16");
    project.edit(FLEET, "SUBNET_CIDR", "10.40.1.0/24");
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 3\n    max: 3\n");
    let fleet = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{fleet}{}", REBOOTS.replace("group_gap_minutes: 15", "group_gap_minutes: 60")));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    let refused = project.kstack(&moto).args(["reboots", "fleet", "--assign"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no reboot schedule for `fleet`: group `app` has 3 nodes but its 120-minute window fits only 2 reboots 60 minutes apart"),
        "{stderr}"
    );
    assert!(stderr.contains("widen the window"), "{stderr}");
    let tagged = rt.block_on(async {
        let filter = aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:reboot-time").build();
        aws.ec2.describe_instances().filters(filter).send().await.unwrap().reservations().len()
    });
    assert_eq!(tagged, 0);
}

/// SSH options only serve `--write-reboot-slots` in apply and roll: alone, they are refused
/// before anything runs instead of being silently ignored.
#[test]
fn ssh_options_without_write_reboot_slots_are_refused() {
    for args in [["apply", "dev", "--ssh-user", "admin"], ["roll", "dev", "--bastion", "jump.internal"]] {
        let output = assert_cmd::Command::cargo_bin("kstack").unwrap().args(args).env_remove("KSTACK_PROJECT").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("required arguments were not provided:\n  --write-reboot-slots"), "{args:?}: {stderr}");
    }
}

/// The guard as its timer runs it, on this machine under a faked clock (libfaketime, Debian's
/// `faketime`): its settings through apt-config (`APT_CONFIG`), its files under a scratch root
/// (`KSTACK_REBOOT_ROOT`), and a `systemctl` first on PATH that records each reboot with the
/// faked local time instead of rebooting.
struct Guard {
    dir: tempfile::TempDir,
}

impl Guard {
    fn new(zone: &str, window: (&str, &str), days: &str, time: &str) -> Guard {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("var/run")).unwrap();
        std::fs::create_dir_all(root.join("etc/apt/apt.conf.d")).unwrap();
        std::fs::write(root.join("var/run/reboot-required"), "").unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let reboots = dir.path().join("reboots");
        for (name, script) in
            [("systemctl", format!("#!/bin/sh\ndate '+%F %H:%M %Z' >> '{}'\n", reboots.display())), ("logger", String::from("#!/bin/sh\n"))]
        {
            std::fs::write(bin.join(name), script).unwrap();
            std::fs::set_permissions(bin.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let (start, end) = window;
        std::fs::write(
            dir.path().join("apt.conf"),
            format!(
                "Kstack::Reboot::Time \"{time}\";\nKstack::Reboot::TimeZone \"{zone}\";\nKstack::Reboot::WindowStart \"{start}\";\n\
                 Kstack::Reboot::WindowEnd \"{end}\";\nKstack::Reboot::Days \"{days}\";\n"
            ),
        )
        .unwrap();
        Guard { dir }
    }

    /// Runs the guard once at `instant` (seconds since the epoch); its exit status and output.
    fn run_at(&self, instant: i64, env: &[(&str, String)]) -> (bool, String) {
        let guard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GUARD);
        let path = format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap());
        let output = std::process::Command::new("faketime")
            .arg(format!("@{instant}"))
            .arg("sh")
            .arg(guard)
            .env("PATH", path)
            .env("APT_CONFIG", self.dir.path().join("apt.conf"))
            .env("KSTACK_REBOOT_ROOT", self.dir.path().join("root"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("faketime (Debian package `faketime`, installed by scripts/setup)");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text.trim().to_owned())
    }

    /// The local times at which it rebooted.
    fn reboots(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("reboots")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// Seconds since the epoch of a local time in `zone`, as GNU date reads it.
fn instant(zone: &str, local: &str) -> i64 {
    let output = std::process::Command::new("date").env("TZ", zone).args(["-d", local, "+%s"]).output().unwrap();
    assert!(output.status.success(), "{local} in {zone}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()
}

/// A German locale compiled into `dir` (from Debian's `locales` sources), for LOCPATH.
fn german_locale(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    let made = std::process::Command::new("localedef").args(["-i", "de_DE", "-f", "UTF-8"]).arg(dir.join("de_DE.UTF-8")).output().unwrap();
    assert!(made.status.success(), "localedef (Debian package `locales`): {}", String::from_utf8_lossy(&made.stderr));
    ["LANG", "LC_ALL", "LC_TIME"].into_iter().map(|k| (k, String::from("de_DE.UTF-8"))).chain([("LOCPATH", dir.display().to_string())]).collect()
}

/// The guard across the cases that broke it: a window spanning midnight, both DST changes of
/// Europe/Berlin and America/New_York (the timer's every minute through the change), a German
/// locale, a minute that comes round again, and an unknown zone.
#[test]
fn the_guard_reboots_once_at_its_slot_across_midnight_dst_and_locales() {
    struct Case {
        name: &'static str,
        zone: &'static str,
        window: (&'static str, &'static str),
        days: &'static str,
        slot: &'static str,
        /// The local time of the first run, and how many runs a minute apart.
        clock: (&'static str, i64),
        locale: bool,
        reboots: &'static [&'static str],
        said: &'static str,
    }
    let night = ("23:00", "01:00");
    let early = ("01:00", "05:00");
    let every = "mon tue wed thu fri sat sun";
    let cases = [
        Case {
            name: "midnight window, slot before midnight, on a window day (mon)",
            zone: "UTC",
            window: night,
            days: "mon",
            slot: "23:30",
            clock: ("2026-11-30 23:30", 1),
            locale: false,
            reboots: &["2026-11-30 23:30 UTC"],
            said: "",
        },
        Case {
            name: "midnight window, slot before midnight, on another day (tue)",
            zone: "UTC",
            window: night,
            days: "mon",
            slot: "23:30",
            clock: ("2026-12-01 23:30", 1),
            locale: false,
            reboots: &[],
            said: "no reboot on tue",
        },
        Case {
            name: "midnight window, slot after midnight of a window day (tue 00:30)",
            zone: "UTC",
            window: night,
            days: "mon",
            slot: "00:30",
            clock: ("2026-12-01 00:30", 1),
            locale: false,
            reboots: &["2026-12-01 00:30 UTC"],
            said: "",
        },
        Case {
            name: "midnight window, slot after midnight of another day (mon 00:30)",
            zone: "UTC",
            window: night,
            days: "mon",
            slot: "00:30",
            clock: ("2026-11-30 00:30", 1),
            locale: false,
            reboots: &[],
            said: "waiting for 00:30",
        },
        Case {
            name: "Berlin spring forward, slot in the skipped hour",
            zone: "Europe/Berlin",
            window: early,
            days: every,
            slot: "02:30",
            clock: ("2026-03-29 01:00", 150),
            locale: false,
            reboots: &["2026-03-29 03:00 CEST"],
            said: "",
        },
        Case {
            name: "Berlin fall back, slot in the repeated hour",
            zone: "Europe/Berlin",
            window: early,
            days: every,
            slot: "02:30",
            clock: ("2026-10-25 01:00", 240),
            locale: false,
            reboots: &["2026-10-25 02:30 CEST"],
            said: "waiting for 02:30",
        },
        Case {
            name: "New York spring forward, slot in the skipped hour",
            zone: "America/New_York",
            window: early,
            days: every,
            slot: "02:30",
            clock: ("2026-03-08 01:00", 150),
            locale: false,
            reboots: &["2026-03-08 03:00 EDT"],
            said: "",
        },
        Case {
            name: "New York fall back, slot in the repeated hour",
            zone: "America/New_York",
            window: early,
            days: every,
            slot: "01:30",
            clock: ("2026-11-01 01:00", 180),
            locale: false,
            reboots: &["2026-11-01 01:30 EDT"],
            said: "",
        },
        Case {
            name: "German locale (de_DE.UTF-8), tue at the slot",
            zone: "Europe/Berlin",
            window: ("03:00", "05:00"),
            days: "mon tue wed thu fri",
            slot: "03:10",
            clock: ("2026-12-01 03:10", 1),
            locale: true,
            reboots: &["2026-12-01 03:10 CET"],
            said: "",
        },
        Case {
            name: "the slot's minute run twice (clock set back)",
            zone: "UTC",
            window: early,
            days: every,
            slot: "03:10",
            clock: ("2026-12-01 03:10", 1),
            locale: false,
            reboots: &["2026-12-01 03:10 UTC"],
            said: "already rebooted for the slot at 03:10",
        },
        Case {
            name: "unknown time zone",
            zone: "Mars/Olympus",
            window: early,
            days: every,
            slot: "03:10",
            clock: ("2026-12-01 03:10", 1),
            locale: false,
            reboots: &[],
            said: "unknown time zone Mars/Olympus",
        },
    ];
    let locales = tempfile::tempdir().unwrap();
    let german = german_locale(locales.path());
    // The old guard matched `date +%a` against the window's days: in this locale it says `Di`.
    let old_day = std::process::Command::new("date")
        .env("TZ", "Europe/Berlin")
        .envs(german.iter().map(|(k, v)| (k, v)))
        .args(["-d", "2026-12-01 03:10", "+%a"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&old_day.stdout).trim(), "Di", "the locale is in force, so matching `%a` would never reboot");

    let outcomes: Vec<(Vec<String>, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|case| {
                let german = &german;
                scope.spawn(move || {
                    let guard = Guard::new(case.zone, case.window, case.days, case.slot);
                    let zone = if case.zone == "Mars/Olympus" { "UTC" } else { case.zone };
                    let first = instant(zone, case.clock.0);
                    let env: &[(&str, String)] = if case.locale { german } else { &[] };
                    let repeats = if case.name.contains("twice") { 2 } else { 1 };
                    let mut said = String::new();
                    for minute in 0..case.clock.1 {
                        for _ in 0..repeats {
                            let (_, text) = guard.run_at(first + minute * 60, env);
                            said = text;
                        }
                    }
                    (guard.reboots(), said)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });

    println!("{:<66} {:<17} {:<6} {:<5} {:<24} last said", "case", "zone", "slot", "runs", "reboots");
    for (case, (reboots, said)) in cases.iter().zip(&outcomes) {
        let shown = if reboots.is_empty() { String::from("none") } else { reboots.join(", ") };
        println!("{:<66} {:<17} {:<6} {:<5} {:<24} {said}", case.name, case.zone, case.slot, case.clock.1, shown);
    }
    // A node without a slot yet: the minute its instance id gives, as kstack computes it for
    // the node's peers.
    let fresh = Guard::new("UTC", early, every, "");
    std::fs::create_dir_all(fresh.dir.path().join("root/var/lib/cloud/data")).unwrap();
    std::fs::write(fresh.dir.path().join("root/var/lib/cloud/data/instance-id"), "i-0123456789abcdef0\n").unwrap();
    let window = kstack::model::reboots::RebootWindow { start: 60, end: 300, days: vec![], time_zone: String::from("UTC") };
    let expected = kstack::model::reboots::format_minute(kstack::reboots::node_config::fallback_minute(&window, "i-0123456789abcdef0"));
    let (_, fallback) = fresh.run_at(instant("UTC", "2026-12-01 00:10"), &[]);
    println!("{:<66} {:<17} {:<6} {:<5} {:<24} {fallback}", "no slot yet, instance id i-0123456789abcdef0", "UTC", "-", 1, "none");
    assert_eq!(fallback, format!("waiting for {expected}"));
    for (case, (reboots, said)) in cases.iter().zip(&outcomes) {
        assert_eq!(reboots, case.reboots, "{}: {said}", case.name);
        assert!(said.contains(case.said), "{}: said {said:?}", case.name);
    }
}
