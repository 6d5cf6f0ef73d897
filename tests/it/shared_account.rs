//! Living in a team's real account, through the binary on the emulator: resources that only
//! wear kstack's tags are never taken, changed or deleted; two resources claiming one address
//! leave the recorded one in charge; adoption is a person's explicit command.

use kstack_testkit::{json, Emulated, Project};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A hand-made VPC wearing `dev`'s environment, identity and an address (`vpc.legacy`, which
/// the model lacks, and `vpc.main`, which the recorded VPC holds) is left alone by plan, apply
/// and destroy, and reported; a classic load balancer of another environment named `dev` is
/// reported too. `kstack state adopt` takes one explicitly.
#[test]
fn resources_wearing_the_environments_tags_are_reported_and_left_alone_until_adopted() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let identity = project.identity("dev");
    let recorded_vpc = rt.block_on(aws.vpcs_of("dev"))[0].clone();
    let legacy = rt.block_on(aws.create_tagged_vpc("dev", Some(&identity), "vpc.legacy"));
    let twin = rt.block_on(aws.create_tagged_vpc("dev", Some(&identity), "vpc.main"));
    rt.block_on(async {
        use aws_sdk_elasticloadbalancing::types::{Listener, Tag};
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
        aws.elb
            .create_load_balancer()
            .load_balancer_name("dev-ingress-0badc0de")
            .listeners(Listener::builder().protocol("TCP").load_balancer_port(80).instance_port(30080).build().unwrap())
            .availability_zones("eu-west-1a")
            .tags(tag("kstack:environment", "dev"))
            .tags(tag("kstack:address", "elb.ingress"))
            .tags(tag("kstack:id", "0badc0de0badc0de0badc0de0badc0de"))
            .send()
            .await
            .unwrap();
    });

    let planned = project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).output().unwrap();
    assert_eq!(planned.status.code(), Some(0), "nothing to do: {}", stdout(&planned));
    let text = stdout(&planned);
    assert!(text.contains("2 resources carry the tags of `dev` but kstack never recorded making them"), "{text}");
    assert!(text.contains(&format!("vpc.legacy {legacy}")) && text.contains(&format!("vpc.main {twin}")), "{text}");
    assert!(text.contains("dev-ingress-0badc0de (identity 0badc0de0badc0de0badc0de0badc0de)"), "load balancers are listed: {text}");
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let left_alone = plan["plan"]["left_alone"].as_array().unwrap();
    assert!(left_alone.iter().any(|f| f["id"] == legacy.as_str() && f["unrecorded"] == true), "{plan:#}");
    let main = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "vpc.main").unwrap();
    assert_eq!(main["id"], recorded_vpc.as_str(), "the recorded VPC holds its address");

    project.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    let mut left = rt.block_on(aws.vpcs_of("dev"));
    left.sort();
    let mut expected = vec![legacy.clone(), twin.clone()];
    expected.sort();
    assert_eq!(left, expected, "destroy took the recorded VPC only");
    let balancers = rt.block_on(aws.elb.describe_load_balancers().send()).unwrap();
    assert_eq!(balancers.load_balancer_descriptions().len(), 1, "the other environment's balancer stays");

    // A person adopts one: from then on it is the environment's, and its plan destroys it (the
    // model has no `vpc.legacy`).
    let refused = project.kstack(&moto).args(["state", "adopt", "dev", "vpc.legacy", "vpc-00000000"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("has no resource vpc-00000000 tagged as vpc.legacy"), "{refused:?}");
    project.kstack(&moto).args(["state", "adopt", "dev", "vpc.legacy", &legacy]).assert().success();
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let legacy_action = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "vpc.legacy").unwrap();
    assert_eq!((legacy_action["action"].as_str(), legacy_action["id"].as_str()), (Some("delete"), Some(legacy.as_str())));

    // A state records its account: credentials of another account are refused, never taken
    // for an environment with nothing in it.
    let path = project.path().join(".kstack/state/dev.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["account"], "123456789012", "the emulator's account");
    state["account"] = serde_json::json!("111111111111");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let refused = project.kstack(&moto).args(["plan", "dev"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("was written in AWS account 111111111111, but the credentials act in account 123456789012"), "{said}");
}
