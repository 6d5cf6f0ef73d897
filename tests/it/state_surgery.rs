//! State surgery through the binary on the emulator: a node group renamed in the model moves
//! with `kstack state mv` without a replacement; `kstack state rm` forgets a resource and
//! leaves it in AWS without kstack's tags.

use std::collections::BTreeMap;

use kstack_testkit::{json, plan_changes, said, Emulated, Project};

/// Running instances of a group by AWS name: their ids and their `kstack:address` tags.
async fn instances_of(aws: &kstack_testkit::Clients, group: &str) -> BTreeMap<String, String> {
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:aws:autoscaling:groupName").values(group).build();
    let described = aws.ec2.describe_instances().filters(filter).send().await.unwrap();
    described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| n.as_str() == "running"))
        .map(|i| {
            let address = i.tags().iter().find(|t| t.key() == Some("kstack:address")).and_then(|t| t.value()).unwrap_or_default();
            (i.instance_id().unwrap().to_owned(), address.to_owned())
        })
        .collect()
}

/// The model renames the node group `ingress` to `edge`.
fn rename_ingress_to_edge(project: &Project) {
    project.edit("environments/base.yaml", "  ingress:\n    min: 2\n    max: 6\n", "  edge:\n    min: 2\n    max: 6\n");
    project.edit("environments/base.yaml", "node_groups: [ingress]", "node_groups: [edge]");
    project.edit("environments/dev.yaml", "  ingress:\n    instance_type: t3.medium\n", "  edge:\n    instance_type: t3.medium\n");
}

#[test]
fn a_group_renamed_in_the_model_moves_in_state_without_replacement_and_a_removed_record_stays_in_aws() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let group = rt.block_on(aws.group("dev-ingress"));
    let group_name = group.auto_scaling_group_name().unwrap().to_owned();
    let instances = rt.block_on(instances_of(&aws, &group_name));
    assert_eq!(instances.len(), 2, "the ingress group runs its two nodes: {instances:?}");

    rename_ingress_to_edge(&project);
    let before = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let planned = plan_changes(&before);
    assert!(planned.contains(&String::from("create asg.edge")) && planned.contains(&String::from("delete asg.ingress")), "{planned:?}");

    // Mistakes are refused with nothing changed: an address state lacks, another kind.
    let unknown = project.kstack(&moto).args(["state", "mv", "dev", "asg.ingres", "asg.edge"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2), "{}", said(&unknown));
    assert!(
        said(&unknown).contains("`asg.ingres` is not in the state of `dev`") && said(&unknown).contains("did you mean `asg.ingress`?"),
        "{}",
        said(&unknown)
    );
    let other_kind = project.kstack(&moto).args(["state", "mv", "dev", "asg.ingress", "elb.edge"]).output().unwrap();
    assert_eq!(other_kind.status.code(), Some(2), "{}", said(&other_kind));
    assert!(said(&other_kind).contains("`elb.edge` is not an address of a asg"), "{}", said(&other_kind));
    let taken = project.kstack(&moto).args(["state", "mv", "dev", "asg.ingress", "asg.workers"]).output().unwrap();
    assert_eq!(taken.status.code(), Some(1), "{}", said(&taken));
    assert!(said(&taken).contains("already records"), "{}", said(&taken));

    for (from, to) in [("asg.ingress", "asg.edge"), ("launch_template.ingress", "launch_template.edge")] {
        let moved = project.kstack(&moto).args(["state", "mv", "dev", from, to]).output().unwrap();
        assert!(moved.status.success(), "{}", said(&moved));
        assert!(said(&moved).contains(&format!("from {from} to {to}; its kstack:address tag follows")), "{}", said(&moved));
    }
    let group = rt.block_on(aws.group("dev-ingress"));
    let address_tag = group.tags().iter().find(|t| t.key() == Some("kstack:address")).and_then(|t| t.value());
    assert_eq!(address_tag, Some("asg.edge"), "the group's tag follows its record");
    let after = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let planned = plan_changes(&after);
    assert!(planned.iter().all(|c| c.starts_with("update ")), "nothing created, replaced or deleted: {planned:?}");
    assert_eq!(after["plan"]["summary"]["replace"], 0, "{:#}", after["plan"]["summary"]);

    // Applying the rename changes things in place: the same group and the same nodes.
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    assert_eq!(rt.block_on(aws.group("dev-ingress")).auto_scaling_group_name(), Some(group_name.as_str()));
    let still = rt.block_on(instances_of(&aws, &group_name));
    assert_eq!(still.keys().collect::<Vec<_>>(), instances.keys().collect::<Vec<_>>(), "no node was replaced");
    let settled = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&settled).is_empty(), "{:#}", settled["plan"]["actions"]);

    // `state rm` forgets the load balancer: it stays, without kstack's tags, and the plan
    // no longer knows it (it would make a new one for the model).
    let balancer = project.kstack(&moto).args(["state", "show", "dev", "elb.ingress"]).output().unwrap();
    let balancer_name = json(&balancer)["id"].as_str().unwrap().to_owned();
    let removed = project.kstack(&moto).args(["state", "rm", "dev", "elb.ingress"]).output().unwrap();
    assert!(removed.status.success(), "{}", said(&removed));
    let text = said(&removed);
    assert!(
        text.contains(&format!("Removed elb.ingress ({balancer_name}) from the state of `dev`: it stays in AWS, its kstack tags removed")),
        "{text}"
    );
    assert!(text.contains("asg.edge still refer to elb.ingress"), "the group attached to it is named: {text}");
    let listed = said(&project.kstack(&moto).args(["state", "list", "dev"]).output().unwrap());
    assert!(!listed.contains("elb.ingress"), "{listed}");
    rt.block_on(async {
        let described = aws.elb.describe_load_balancers().load_balancer_names(&balancer_name).send().await.unwrap();
        assert_eq!(described.load_balancer_descriptions().len(), 1, "the balancer stays in AWS");
        let tags = aws.elb.describe_tags().load_balancer_names(&balancer_name).send().await.unwrap();
        let keys: Vec<&str> = tags.tag_descriptions().iter().flat_map(|d| d.tags()).map(|t| t.key()).collect();
        assert!(keys.iter().all(|k| !k.starts_with("kstack:")), "no kstack tag is left: {keys:?}");
        assert!(keys.contains(&"Team"), "the model's other tags stay: {keys:?}");
    });
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&plan).contains(&String::from("create elb.ingress")), "{:?}", plan_changes(&plan));
    let left_alone = plan["plan"]["left_alone"].as_array().cloned().unwrap_or_default();
    assert!(left_alone.iter().all(|f| f["id"] != balancer_name.as_str()), "an untagged resource is not the environment's at all: {plan:#}");
}

/// A launch configuration cannot be tagged and its name keeps the group's old name: state's
/// record alone says where it is in the model. The group's name is in its nodes' user data,
/// so the immutable configuration is replaced (made before the old one goes, as any change to
/// it is); the group and its nodes stay.
#[test]
fn a_launch_configuration_moves_by_its_record_alone() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.edit("environments/base.yaml", "  image: node\n", "  image: node\n  launch: configuration\n");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let configuration = rt.block_on(aws.group("dev-ingress")).launch_configuration_name().unwrap().to_owned();
    rename_ingress_to_edge(&project);
    for (from, to) in [("asg.ingress", "asg.edge"), ("launch_configuration.ingress", "launch_configuration.edge")] {
        let moved = project.kstack(&moto).args(["state", "mv", "dev", from, to]).output().unwrap();
        assert!(moved.status.success(), "{}", said(&moved));
    }
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(plan_changes(&plan), ["update asg.edge", "replace launch_configuration.edge"], "{:#}", plan["plan"]["actions"]);
    let action = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "launch_configuration.edge").unwrap();
    assert_eq!(action["id"], configuration.as_str(), "the recorded configuration, at its new address: {action:#}");
    assert_eq!(action["forced_by"], serde_json::json!(["user_data.sha256"]), "{action:#}");
}
