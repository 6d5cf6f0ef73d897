//! Accounts: an environment in an assumed role's (or a profile's) account with its state in a
//! bucket of another account; sessions that end during a run renewed; credentials of the
//! wrong account refused before anything changes. The emulator keeps accounts apart by the
//! credentials that sign a request, as AWS does, and refuses an ended session.

use aws_sdk_ec2::types::Filter;
use aws_sdk_s3::types::{BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, VersioningConfiguration};
use kstack_testkit::{runtime, said, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";
const DEPLOY: &str = "arn:aws:iam::111111111111:role/deploy";
const STATE: &str = "arn:aws:iam::222222222222:role/state";
const BUCKET: &str = "kstack-state-accounts";

/// The fixture fleet in `10.<octet>.0.0/16`, with `extra` appended.
fn fleet(octet: u8, extra: &str) -> Project {
    let project = Project::fixture("project");
    project.edit(FLEET, "VPC_CIDR", &format!("10.{octet}.0.0/16"));
    project.edit(FLEET, "SUBNET_CIDR", &format!("10.{octet}.1.0/24"));
    let text = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{text}{extra}"));
    project
}

/// VPCs of the environment `fleet` the clients' account holds.
fn fleet_vpcs(rt: &tokio::runtime::Runtime, aws: &Clients) -> usize {
    let mine = Filter::builder().name("tag:kstack:environment").values("fleet").build();
    rt.block_on(aws.ec2.describe_vpcs().filters(mine).send()).unwrap().vpcs().len()
}

#[test]
fn an_environment_reached_through_a_profile_keeps_its_state_in_another_accounts_bucket() {
    let moto = Moto::start();
    let rt = runtime();
    let (deploy, state_account, home) = rt.block_on(async { (moto.clients_in(DEPLOY).await, moto.clients_in(STATE).await, moto.clients().await) });
    rt.block_on(async {
        let location = CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::EuWest1).build();
        state_account.s3.create_bucket().bucket(BUCKET).create_bucket_configuration(location).send().await.unwrap();
        let versioning = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
        state_account.s3.put_bucket_versioning().bucket(BUCKET).versioning_configuration(versioning).send().await.unwrap();
        deploy.seed_image("node").await;
    });
    // The profile `ops` assumes the deploy role with the `base` profile's keys, as a team's
    // shared config file does.
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("config");
    std::fs::write(&config, format!("[profile ops]\nrole_arn = {DEPLOY}\nsource_profile = base\n\n[profile base]\nregion = eu-west-1\n")).unwrap();
    let credentials = files.path().join("credentials");
    std::fs::write(&credentials, "[base]\naws_access_key_id = testing\naws_secret_access_key = testing\n").unwrap();
    let project = fleet(
        81,
        &format!(
            "aws: {{ profile: ops, account_id: '111111111111' }}\n\
             state: {{ backend: s3, bucket: {BUCKET}, key: fleet.json, aws: {{ assume_role: {{ arn: '{STATE}', external_id: kstack-tests, duration: 1h }} }} }}\n"
        ),
    );
    let kstack = |args: &[&str]| {
        let mut command = project.kstack(&moto);
        command.env("AWS_CONFIG_FILE", &config).env("AWS_SHARED_CREDENTIALS_FILE", &credentials).args(args);
        command.output().unwrap()
    };

    let applied = kstack(&["apply", "fleet", "--auto-approve"]);
    assert!(applied.status.success(), "{}", said(&applied));
    assert!(said(&applied).contains("account = 111111111111"), "outputs name the account: {}", said(&applied));
    assert_eq!((fleet_vpcs(&rt, &deploy), fleet_vpcs(&rt, &home), fleet_vpcs(&rt, &state_account)), (1, 0, 0), "made in the deploy account only");
    let stored = rt.block_on(async {
        let object = state_account.s3.get_object().bucket(BUCKET).key("fleet.json").send().await.expect("the state is in the state account's bucket");
        object.body.collect().await.unwrap().into_bytes()
    });
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["account"], "111111111111", "the state records the environment's account");
    assert!(rt.block_on(home.s3.get_object().bucket(BUCKET).key("fleet.json").send()).is_err(), "another account cannot read it");
    assert!(!project.path().join(".kstack/state/fleet.json").exists());

    let identity = kstack(&["state", "identity", "fleet"]);
    assert!(String::from_utf8_lossy(&identity.stderr).contains("in AWS account 111111111111, region eu-west-1"), "{}", said(&identity));
    kstack(&["plan", "fleet", "--detailed-exitcode"]).status.code().filter(|code| *code == 0).expect("nothing to change");
    let destroyed = kstack(&["destroy", "fleet", "--auto-approve"]);
    assert!(destroyed.status.success(), "{}", said(&destroyed));
    assert_eq!(fleet_vpcs(&rt, &deploy), 0);
}

#[test]
fn sessions_that_end_during_a_roll_are_renewed_and_the_roll_finishes() {
    // Every session of an assumed role lasts 20 s here (see scripts/moto-server): a roll of
    // three nodes, a readiness hook of 8 s on each, outlives a few of them.
    let moto = Moto::start_with(&[("KSTACK_EMULATOR_SESSION_SECONDS", "20")]);
    let rt = runtime();
    let deploy = rt.block_on(moto.clients_in(DEPLOY));
    rt.block_on(deploy.seed_image("node"));
    let project = fleet(82, &format!("aws: {{ assume_role: {{ arn: '{DEPLOY}', duration: 15m }} }}\nroll_hooks:\n  readiness: sleep 8\n"));
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 3\n    max: 4\n");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    project.edit(FLEET, "instance_type: t3.small", "instance_type: t3.medium");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    let started = std::time::Instant::now();
    let rolled = project.kstack(&moto).args(["-v", "roll", "fleet", "--timeout", "120"]).output().unwrap();
    assert!(rolled.status.success(), "{}", said(&rolled));
    assert!(started.elapsed().as_secs() > 20, "the roll outlived a session");
    let log = String::from_utf8_lossy(&rolled.stderr);
    let sessions = log.matches(&format!("assumed role {DEPLOY}: a session until")).count();
    assert!(sessions >= 2, "a new session before the first ended: {log}");
    assert!(!log.contains("ExpiredToken"), "{log}");
    assert_eq!(String::from_utf8_lossy(&rolled.stdout).trim(), "app: 3 replaced");
}

#[test]
fn credentials_of_another_account_are_refused_before_anything_changes() {
    let moto = Moto::start();
    let rt = runtime();
    let (home, deploy) = rt.block_on(async { (moto.clients().await, moto.clients_in(DEPLOY).await) });
    rt.block_on(async {
        home.seed_image("node").await;
        deploy.seed_image("node").await;
    });

    // The file names the account; the credentials act in another.
    let project = fleet(83, "aws: { account_id: '111111111111' }\n");
    let refused = project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", said(&refused));
    assert!(
        said(&refused).contains("`fleet` is in AWS account 111111111111 (`aws.account_id`), but the credentials act in account 123456789012"),
        "{}",
        said(&refused)
    );
    assert_eq!(fleet_vpcs(&rt, &home), 0, "nothing made");
    assert!(!project.path().join(".kstack/state/fleet.json").exists(), "no state written");

    // Applied in one account, then pointed at another: its state's account wins.
    project.edit(FLEET, "aws: { account_id: '111111111111' }\n", "");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let state_before = std::fs::read(project.path().join(".kstack/state/fleet.json")).unwrap();
    let text = std::fs::read_to_string(project.path().join(FLEET)).unwrap();
    project.write(FLEET, &format!("{text}aws: {{ assume_role: {{ arn: '{DEPLOY}' }} }}\n"));
    for command in [&["apply", "fleet", "--auto-approve"][..], &["destroy", "fleet", "--auto-approve"], &["roll", "fleet"]] {
        let refused = project.kstack(&moto).args(command).output().unwrap();
        assert_eq!(refused.status.code(), Some(1), "{command:?}: {}", said(&refused));
        assert!(
            said(&refused).contains(&format!("was written in AWS account 123456789012, but role {DEPLOY} acts in account 111111111111")),
            "{command:?}: {}",
            said(&refused)
        );
    }
    assert_eq!((fleet_vpcs(&rt, &home), fleet_vpcs(&rt, &deploy)), (1, 0), "nothing made or removed in either");
    assert_eq!(std::fs::read(project.path().join(".kstack/state/fleet.json")).unwrap(), state_before, "state untouched");
}
