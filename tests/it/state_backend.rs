//! The S3 state backend on the emulator: applies keep state in the bucket, a second run is
//! locked out with the holder named, a stale lock is removed only by its id, a writer that
//! lost a race does not overwrite, and state migrates local → S3 → local byte for byte. A run
//! whose lock is taken over stops before its next change; leases are judged on S3's clock.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, VersioningConfiguration};
use kstack_testkit::{runtime, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";
const BUCKET: &str = "kstack-state";
const KEY: &str = "teams/fleet.json";

fn bucket(rt: &tokio::runtime::Runtime, aws: &Clients, name: &str, versioned: bool) {
    rt.block_on(async {
        let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build();
        aws.s3.create_bucket().bucket(name).create_bucket_configuration(location).send().await.unwrap();
        if versioned {
            let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
            aws.s3.put_bucket_versioning().bucket(name).versioning_configuration(versioning).send().await.unwrap();
        }
    });
}

fn object(rt: &tokio::runtime::Runtime, aws: &Clients, key: &str) -> Option<Vec<u8>> {
    rt.block_on(async {
        let got = aws.s3.get_object().bucket(BUCKET).key(key).send().await.ok()?;
        Some(got.body.collect().await.unwrap().into_bytes().to_vec())
    })
}

/// The fixture fleet in `10.<octet>.0.0/16` with `state` appended, and a seeded image.
fn fleet(moto: &Moto, rt: &tokio::runtime::Runtime, octet: u8, state: &str) -> (Project, Clients) {
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", &format!("10.{octet}.0.0/16"));
    project.edit(FLEET, "SUBNET_CIDR", &format!("10.{octet}.1.0/24"));
    let text = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{text}{state}"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    (project, aws)
}

fn s3_state(extra: &str) -> String {
    format!("state: {{ backend: s3, bucket: {BUCKET}, key: {KEY}{extra} }}\n")
}

/// Writes the lock object as another holder would (unconditionally, as a run that broke in).
fn put_lock(rt: &tokio::runtime::Runtime, aws: &Clients, holder: &serde_json::Value) {
    let put = aws.s3.put_object().bucket(BUCKET).key(format!("{KEY}.lock")).body(ByteStream::from(holder.to_string().into_bytes()));
    rt.block_on(put.send()).unwrap();
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn applies_share_state_in_s3_and_a_second_run_is_locked_out_until_an_explicit_unlock() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt, 50, &s3_state(", kms_key_id: alias/kstack-state"));
    bucket(&rt, &aws, BUCKET, true);

    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let stored: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).expect("state in the bucket")).unwrap();
    assert!(stored["resources"].as_object().unwrap().len() >= 5, "{stored}");
    assert!(!project.path().join(".kstack/state/fleet.json").exists(), "nothing local");
    assert!(object(&rt, &aws, &format!("{KEY}.lock")).is_none(), "the lock is released");
    let head = rt.block_on(aws.s3.head_object().bucket(BUCKET).key(KEY).send()).unwrap();
    assert_eq!(head.ssekms_key_id(), Some("alias/kstack-state"), "written with the configured KMS key");
    project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);

    // Two applies at once: the second is refused with the first named, the first finishes.
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    let mut first = project.kstack_process(&moto).args(["apply", "fleet", "--auto-approve"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while object(&rt, &aws, &format!("{KEY}.lock")).is_none() {
        assert!(Instant::now() < deadline, "the first apply never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let refused = stderr(&second);
    assert!(refused.contains("environment `fleet` is locked by") && refused.contains("`kstack apply fleet`"), "{refused}");
    assert!(refused.contains("lease until"), "{refused}");
    assert!(first.wait().unwrap().success());
    let after: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).unwrap()).unwrap();
    assert!(after["serial"].as_u64() > stored["serial"].as_u64());
    project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);

    // A live holder on a machine whose clock is years behind: the `expires` it writes is long
    // past, but S3 dates its last renewal just now, so it is not taken for gone.
    let skewed = serde_json::json!({
        "id": "5ca1ab1e", "holder": "ci", "host": "runner-3", "pid": 4241, "command": "kstack apply fleet",
        "started": "2020-01-01T00:00:00Z", "expires": "2020-01-01T00:01:00Z", "lease_seconds": 60
    });
    put_lock(&rt, &aws, &skewed);
    let live = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(live.status.code(), Some(1));
    let message = stderr(&live);
    assert!(message.contains("locked by ci@runner-3") && message.contains("wait for it to finish"), "{message}");
    assert!(!message.contains("its lease ran out"), "a renewed lock is judged on S3's clock, not its holder's: {message}");

    // A holder that crashed on another machine: S3 shows no renewal for longer than its lease
    // (S3 dates objects to the second), but only its id unlocks.
    let crashed = serde_json::json!({
        "id": "0badc0de", "holder": "ci", "host": "runner-7", "pid": 4242,
        "command": "kstack apply fleet", "started": "2099-01-01T00:00:00Z", "expires": "2099-01-01T00:01:00Z", "lease_seconds": 1
    });
    put_lock(&rt, &aws, &crashed);
    std::thread::sleep(Duration::from_millis(3500));
    let locked = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(locked.status.code(), Some(1));
    let message = stderr(&locked);
    assert!(message.contains("locked by ci@runner-7 (pid 4242, `kstack apply fleet`)") && message.contains("[lock 0badc0de]"), "{message}");
    assert!(message.contains("its lease ran out") && message.contains("kstack state unlock fleet 0badc0de"), "{message}");
    let no_id = project.kstack(&moto).args(["state", "unlock", "fleet"]).output().unwrap();
    assert!(stderr(&no_id).contains("needs the lock's id"), "{}", stderr(&no_id));
    let wrong = project.kstack(&moto).args(["state", "unlock", "fleet", "12345678"]).output().unwrap();
    assert!(stderr(&wrong).contains("nothing was removed"), "{}", stderr(&wrong));
    assert!(object(&rt, &aws, &format!("{KEY}.lock")).is_some());
    let unlocked = project.kstack(&moto).args(["state", "unlock", "fleet", "0badc0de"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unlocked.stdout).contains("removed the lock of `fleet` [lock 0badc0de] held by ci@runner-7"));
    project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);
}

#[test]
fn a_writer_that_lost_the_race_does_not_overwrite() {
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let aws = rt.block_on(moto.clients());
    bucket(&rt, &aws, BUCKET, true);
    for (key, value) in moto.env() {
        std::env::set_var(key, value);
    }
    let root = tempfile::tempdir().unwrap();
    let backend = kstack::model::StateBackend::S3(kstack::model::S3State {
        bucket: BUCKET.into(),
        key: KEY.into(),
        legacy_key: None,
        region: "eu-west-1".into(),
        kms_key_id: None,
        lease_seconds: 60,
        access: None,
    });
    let ours = kstack::state::StateStore::open(root.path(), "fleet", None, &backend, &Default::default()).unwrap();
    let mut state = ours.load().unwrap();
    ours.save(&mut state).unwrap();
    let mut state = ours.load().unwrap();
    // Another writer gets in between our read and our write.
    let theirs = kstack::state::StateStore::open(root.path(), "fleet", None, &backend, &Default::default()).unwrap();
    let mut their_state = theirs.load().unwrap();
    their_state.serial = 41;
    theirs.save(&mut their_state).unwrap();
    let error = ours.save(&mut state).unwrap_err();
    assert!(error.to_string().contains("changed since kstack read it; nothing was overwritten"), "{error}");
    let stored: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).unwrap()).unwrap();
    assert_eq!(stored["serial"], 42, "the winner's write stands");
}

#[test]
fn state_migrates_local_to_s3_and_back_byte_for_byte_and_an_unversioned_bucket_is_refused() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt, 51, "");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let local = project.path().join(".kstack/state/fleet.json");
    let original = std::fs::read(&local).unwrap();

    // Without versioning, the bucket is refused.
    let text = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{text}state: {{ backend: s3, bucket: unversioned, key: {KEY} }}\n"));
    bucket(&rt, &aws, "unversioned", false);
    let refused = project.kstack(&moto).args(["state", "migrate", "fleet", "--to", "s3"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("bucket unversioned has versioning off"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("put-bucket-versioning --bucket unversioned"), "{}", stderr(&refused));

    project.edit(FLEET, "bucket: unversioned", &format!("bucket: {BUCKET}"));
    bucket(&rt, &aws, BUCKET, true);
    let moved = project.kstack(&moto).args(["state", "migrate", "fleet", "--to", "s3"]).output().unwrap();
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert_eq!(object(&rt, &aws, KEY).as_deref(), Some(original.as_slice()), "byte for byte in S3");
    assert!(!local.exists() && project.path().join(".kstack/state/fleet.json.migrated").exists());
    project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);

    let back = project.kstack(&moto).args(["state", "migrate", "fleet", "--to", "local"]).output().unwrap();
    assert!(back.status.success(), "{}", stderr(&back));
    assert_eq!(std::fs::read(&local).unwrap(), original, "local → S3 → local is byte-identical");
    assert!(object(&rt, &aws, KEY).is_none(), "retired from the bucket");
    let versions = rt.block_on(aws.s3.list_object_versions().bucket(BUCKET).prefix(KEY).send()).unwrap();
    assert!(!versions.versions().is_empty(), "versioning keeps the retired copy");

    // The environment still names S3, which is empty now: kstack says where the state is.
    let elsewhere = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(stderr(&elsewhere).contains("which has none, but") && stderr(&elsewhere).contains("fleet.json exists"), "{}", stderr(&elsewhere));
}

#[test]
fn a_long_run_renews_its_lease_and_keeps_its_roll_journal_in_s3() {
    let moto = Moto::start();
    let rt = runtime();
    let hooks = "roll_hooks:\n  readiness: sleep 5\n";
    let (project, aws) = fleet(&moto, &rt, 52, &format!("{hooks}{}", s3_state(", lock_lease_seconds: 3")));
    bucket(&rt, &aws, BUCKET, true);
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    let roll = project.kstack_process(&moto).args(["roll", "fleet"]).spawn().unwrap();
    let lock = format!("{KEY}.lock");
    let expiry = || object(&rt, &aws, &lock).map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()["expires"].clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(expires) = expiry() {
            break expires;
        }
        assert!(Instant::now() < deadline, "the roll never took the lock");
        std::thread::sleep(Duration::from_millis(50));
    };
    // While the roll waits on its hook, its lease is extended (every second for a 3 s lease).
    let mut renewed = false;
    while Instant::now() < deadline && !renewed {
        std::thread::sleep(Duration::from_millis(500));
        renewed = expiry().is_some_and(|now| now != first);
    }
    assert!(renewed, "the lease was renewed past {first}");
    let journal: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).unwrap()).unwrap();
    assert!(
        journal["roll"]["group"]["auto_scaling_group"].as_str().is_some_and(|g| g.starts_with("fleet-app-")),
        "the roll's journal is in the bucket: {journal}"
    );
    let rolled = roll.wait_with_output().unwrap();
    assert!(rolled.status.success(), "{}", stderr(&rolled));
    assert!(object(&rt, &aws, &lock).is_none(), "released at the end");
    let done: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).unwrap()).unwrap();
    assert!(done.get("roll").is_none(), "the finished roll is forgotten: {done}");
}

#[test]
fn a_roll_whose_lock_is_taken_over_stops_before_its_next_batch_and_leaves_the_new_lock() {
    let moto = Moto::start();
    let rt = runtime();
    let hooks = "roll_hooks:\n  readiness: sleep 4\n";
    let (project, aws) = fleet(&moto, &rt, 53, &format!("{hooks}{}", s3_state(", lock_lease_seconds: 3")));
    bucket(&rt, &aws, BUCKET, true);
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let members = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        rt.block_on(aws.group("fleet-app")).instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect()
    };
    let before = members(&rt);
    assert_eq!(before.len(), 2);
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    // Two batches of one; once the first has started, another run takes the lock.
    let mut roll = project.kstack_process(&moto).args(["roll", "fleet", "--timeout", "60"]).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(roll.stderr.take().unwrap()));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("batch 1/2") {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("batch 1/2")), "the roll never started its first batch: {seen:?}");
    let theirs = serde_json::json!({
        "id": "7a6e0e7e", "holder": "ops", "host": "runner-9", "pid": 4343,
        "command": "kstack apply fleet", "started": "2026-12-01T00:00:00Z", "lease_seconds": 60
    });
    put_lock(&rt, &aws, &theirs);
    let taken = Instant::now();
    seen.extend(lines.map(Result::unwrap));
    let status = roll.wait().unwrap();
    let output = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(taken.elapsed() < Duration::from_secs(30), "stopped within the batch in flight");
    assert!(
        output.contains(
            "roll of `app` in eu-west-1 stopped: the lock of `fleet` was taken over by ops@runner-9 (pid 4343, `kstack apply fleet`) [lock 7a6e0e7e]"
        ),
        "{output}"
    );
    assert!(output.contains("another run may be working on `fleet` now"), "{output}");
    assert!(!output.contains("batch 2/2"), "no batch starts after the takeover: {output}");

    // In AWS: the second batch never started (an old instance still serves), and the group is
    // at its size (the first batch finished, or undid its surge).
    let group = rt.block_on(aws.group("fleet-app"));
    let after = members(&rt);
    assert!(before.iter().any(|id| after.contains(id)), "an old instance the second batch would replace is still there: {before:?} → {after:?}");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(group.desired_capacity(), Some(2));
    // The new holder's lock stays: the stopped run's release removed nothing of theirs.
    let lock: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, &format!("{KEY}.lock")).expect("their lock stays")).unwrap();
    assert_eq!(lock["id"], "7a6e0e7e");
    let state: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, KEY).unwrap()).unwrap();
    assert!(state["roll"]["stopped"].as_str().is_some_and(|s| s.contains("taken over by ops@runner-9")), "recorded for --resume: {state}");
}

#[test]
fn traced_applies_and_plans_log_no_request_or_response_body() {
    const SECRET: &str = "us3r-d4ta-s3cret-9157";
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt, 51, &format!("{}secrets:\n  api_token: KSTACK_TEST_API_TOKEN\n", s3_state("")));
    bucket(&rt, &aws, BUCKET, true);
    project.edit(FLEET, "    image: node\n", "    image: node\n    user_data: \"#!/bin/sh\\necho {{ api_token }} > /etc/token\\n\"\n");
    let script = format!("#!/bin/sh\necho {SECRET} > /etc/token\n");
    // The group runs a kstack image: its user data is its own script plus the node part.
    let user_data = kstack::user_data::compose(&kstack::user_data::node_part("fleet", "app"), Some(&script));
    let encoded = aws_smithy_types::base64::encode(&user_data);
    let url_encoded = encoded.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    let traced = |args: &[&str]| {
        let mut command = project.kstack(&moto);
        command.args(args).env("KSTACK_TEST_API_TOKEN", SECRET).env("RUST_LOG", "trace");
        // The SDK's signer then logs request bodies too (at TRACE), not only response bodies.
        let output = command.env("LOG_SIGNABLE_BODY", "true").output().unwrap();
        stderr(&output)
    };
    // The plan reads the state back from S3 (the state in a response body).
    let applied = traced(&["apply", "fleet", "--auto-approve"]);
    let stored = String::from_utf8(object(&rt, &aws, KEY).expect("state in the bucket")).unwrap();
    let template = rt.block_on(aws.ec2.describe_launch_templates().send()).unwrap();
    assert_eq!(template.launch_templates().len(), 1, "the apply sent the user data: {applied}");
    let planned = traced(&["plan", "fleet"]);
    // The state holds the user data's hash; only a body would bring it into the log.
    let hash = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(user_data.as_bytes()));
    assert!(stored.contains(&hash), "{stored}");
    // The SDK logs bodies as text, or as `{:?}` of their bytes: `[73, 121, ...]`.
    let byte_list = |text: &str| text.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
    let bodies = [SECRET, &encoded, &url_encoded, &hash, &byte_list(&url_encoded), &byte_list(&hash)];
    for log in [&applied, &planned] {
        assert!(log.contains("beginning attempt #1"), "the SDK's logs are on: {log}");
        for body in bodies {
            assert!(!log.contains(body), "`{body}` in the log:\n{log}");
        }
        assert!(!log.contains("transmitting request") && !log.contains("received response from service"), "{log}");
    }
}

/// Recovery needs no valid project: with an unset secret, and then a YAML syntax error, in the
/// environment file, `state list`, `show` and `unlock` find the state from `state:` alone (the
/// local file and S3) and show the environment's problems as warnings, with their places.
#[test]
fn state_list_show_and_unlock_work_while_the_environment_file_is_broken() {
    let moto = Moto::start();
    let rt = runtime();
    for (octet, state) in [(61u8, String::new()), (62, s3_state(""))] {
        let backend = if state.is_empty() { "local" } else { "s3" };
        let (project, aws) = fleet(&moto, &rt, octet, &state);
        if backend == "s3" {
            bucket(&rt, &aws, BUCKET, true);
        }
        project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
        let listed = project.kstack(&moto).args(["state", "list", "fleet"]).output().unwrap();
        assert!(listed.status.success(), "{backend}: {}", stderr(&listed));
        let text = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
        let lines = text.lines().count();
        let breakages = [
            ("secrets:\n  token: KSTACK_TEST_UNSET_SECRET\n", lines + 2, "secret `token` reads $KSTACK_TEST_UNSET_SECRET, which is not set"),
            // The parser notices at the end of the file.
            ("node_defaults: [unclosed\n", lines + 4, "invalid YAML"),
        ];
        let mut broken = text.clone();
        for (addition, line, message) in breakages {
            broken.push_str(addition);
            project.write(FLEET, &broken);
            // A run that died holding the lock.
            let dead = serde_json::json!({
                "id": "0badc0de", "holder": "ci", "host": "runner-7", "pid": 4242, "command": "kstack apply fleet",
                "started": "2026-01-01T00:00:00Z", "expires": "2026-01-01T00:01:00Z", "lease_seconds": 1
            });
            let local_lock = project.path().join(".kstack/state/fleet.lock");
            match backend {
                "local" => std::fs::write(&local_lock, dead.to_string()).unwrap(),
                _ => put_lock(&rt, &aws, &dead),
            }
            let run = |args: &[&str]| project.kstack(&moto).args(args).env_remove("KSTACK_TEST_UNSET_SECRET").output().unwrap();
            let validated = run(&["validate", "fleet"]);
            assert_eq!(validated.status.code(), Some(2), "{backend}, line {line}: the environment is broken");
            for (args, out) in [(&["state", "list", "fleet"][..], listed.stdout.clone()), (&["state", "show", "fleet", "vpc.main"][..], Vec::new())] {
                let output = run(args);
                let warned = stderr(&output);
                assert!(output.status.success(), "{backend}, line {line}, {args:?}: {warned}");
                assert!(
                    warned.contains("warning: environment `fleet` has 1 problem(s) (`kstack validate fleet` shows them); going on from its state:"),
                    "{warned}"
                );
                assert!(warned.contains(&format!("environments/fleet.yaml:{line}:")) && warned.contains(message), "{backend}: {warned}");
                if !out.is_empty() {
                    assert_eq!(String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&out), "{backend}: the same resources");
                }
            }
            let unlocked = run(&["state", "unlock", "fleet", "0badc0de"]);
            assert!(unlocked.status.success(), "{backend}, line {line}: {}", stderr(&unlocked));
            assert!(String::from_utf8_lossy(&unlocked.stdout).contains("removed the lock of `fleet` [lock 0badc0de] held by ci@runner-7"));
            let gone = match backend {
                "local" => !local_lock.exists(),
                _ => object(&rt, &aws, &format!("{KEY}.lock")).is_none(),
            };
            assert!(gone, "{backend}, line {line}: the lock is removed");
        }
    }
}

/// Two projects, each with a `fleet`, sharing one bucket with default settings (no `key:`):
/// each state lives under its project's name, and every order of applies and destroys leaves
/// the other project's fleet whole. A state another project wrote, one at the old default key,
/// and a project with neither a name nor a key are refused, each saying what to do.
#[test]
fn two_projects_sharing_a_bucket_by_default_never_share_a_state() {
    let moto = Moto::start();
    let rt = runtime();
    let default_state = format!("state: {{ backend: s3, bucket: {BUCKET} }}\n");
    let (platform, aws) = fleet(&moto, &rt, 60, &default_state);
    let (payments, _) = fleet(&moto, &rt, 61, &default_state);
    platform.write("kstack.yaml", "project: platform\n");
    payments.write("kstack.yaml", "project: payments\n");
    bucket(&rt, &aws, BUCKET, true);
    let vpcs = |rt: &tokio::runtime::Runtime| rt.block_on(aws.vpcs_of("fleet")).len();
    let identity = |project: &str| -> Option<String> {
        let state = object(&rt, &aws, &format!("kstack/{project}/fleet.json"))?;
        let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
        assert_eq!(state["project"], project, "{state}");
        Some(state["identity"].as_str().unwrap().to_owned())
    };
    for (first, second) in [(&platform, &payments), (&payments, &platform)] {
        first.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
        second.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
        assert_eq!(vpcs(&rt), 2, "one fleet each");
        let (a, b) = (identity("platform").unwrap(), identity("payments").unwrap());
        assert_ne!(a, b, "two environments, two identities");
        assert!(object(&rt, &aws, "kstack/fleet.json").is_none(), "nothing at a key both would share");
        for project in [first, second] {
            project.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);
        }
        // Destroyed in the order they were applied once, and in the other order the next time.
        let (going, staying) = if std::ptr::eq(first, &platform) { (first, second) } else { (second, first) };
        going.kstack(&moto).args(["destroy", "fleet", "--auto-approve"]).assert().success();
        assert_eq!(vpcs(&rt), 1, "the other project's fleet stays");
        staying.kstack(&moto).args(["plan", "fleet", "--detailed-exitcode"]).assert().code(0);
        staying.kstack(&moto).args(["destroy", "fleet", "--auto-approve"]).assert().success();
        assert_eq!(vpcs(&rt), 0);
    }

    // A key copied from another project's file: its state is refused, both projects named.
    platform.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    payments.edit(FLEET, &default_state, &format!("state: {{ backend: s3, bucket: {BUCKET}, key: kstack/platform/fleet.json }}\n"));
    let refused = payments.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(stderr(&refused).contains("belongs to project `platform`, not to this project `payments`"), "{}", stderr(&refused));

    // A state at the default key from before keys named the project is found, not ignored
    // (payments' own state, emptied by its destroy, is removed first: a project never applied).
    rt.block_on(aws.s3.delete_object().bucket(BUCKET).key("kstack/payments/fleet.json").send()).unwrap();
    // (written before states recorded their project; one naming another project is not this
    // one's, and does not stand in the way)
    let mut old: serde_json::Value = serde_json::from_slice(&object(&rt, &aws, "kstack/platform/fleet.json").unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("project");
    let old = serde_json::to_vec(&old).unwrap();
    rt.block_on(aws.s3.put_object().bucket(BUCKET).key("kstack/fleet.json").body(ByteStream::from(old)).send()).unwrap();
    payments.edit(FLEET, "key: kstack/platform/fleet.json", "key: kstack/payments/fleet.json");
    payments.edit(FLEET, ", key: kstack/payments/fleet.json", "");
    let legacy = payments.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(legacy.status.code(), Some(1), "{legacy:?}");
    assert!(stderr(&legacy).contains("kstack/fleet.json exists") && stderr(&legacy).contains("key: kstack/fleet.json"), "{}", stderr(&legacy));

    // No project name and no key: no default to share.
    std::fs::remove_file(payments.path().join("kstack.yaml")).unwrap();
    let nameless = payments.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    assert_eq!(nameless.status.code(), Some(2));
    assert!(stderr(&nameless).contains("S3 state needs a `key:`, or a project name"), "{}", stderr(&nameless));
}
