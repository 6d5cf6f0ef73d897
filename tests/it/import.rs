//! Taking over a cluster another tool made, through the binary on the emulator: its resources
//! carry no kstack tag and no kstack state knows them; a Terraform state (format 4) names
//! them. `kstack import` adopts every one with nothing to replace, then the cluster is
//! kstack's: instances and the balancer's registrations untouched, the model applied in place.

use std::collections::BTreeMap;

use kstack_testkit::{json, plan_changes, said, Emulated, Project};
use serde_json::{json, Value};

/// Terraform's type for a kstack kind, and the attribute its id is in.
fn terraform_type(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "vpc" => ("aws_vpc", "id"),
        "subnet" => ("aws_subnet", "id"),
        "internet_gateway" => ("aws_internet_gateway", "id"),
        "elastic_ip" => ("aws_eip", "allocation_id"),
        "nat_gateway" => ("aws_nat_gateway", "id"),
        "route_table" => ("aws_route_table", "id"),
        "security_group" => ("aws_security_group", "id"),
        "iam_role" => ("aws_iam_role", "arn"),
        "instance_profile" => ("aws_iam_instance_profile", "arn"),
        "launch_template" => ("aws_launch_template", "id"),
        "auto_scaling_group" => ("aws_autoscaling_group", "name"),
        "load_balancer" => ("aws_elb", "name"),
        _ => return None,
    })
}

/// The Terraform state a team's own configuration would hold for these resources: names of
/// their choosing for the network (`this`, `private[0]`), the model's for the rest, route
/// table associations and rules as resources of their own, and a bucket kstack does not model.
fn terraform_state(records: &BTreeMap<String, Value>) -> Value {
    let id_of = |address: &str| records[address]["id"].clone();
    let mut resources = Vec::new();
    let mut counters: BTreeMap<&str, usize> = BTreeMap::new();
    for (address, record) in records {
        let kind = record["kind"].as_str().unwrap();
        let Some((resource_type, id_attribute)) = terraform_type(kind) else { continue };
        let id = record["id"].as_str().unwrap();
        let attributes = &record["attributes"];
        let mut attrs = json!({ "id": id, id_attribute: id, "tags": { "Name": format!("tf-{}", address.replace('.', "-")) } });
        let name = match kind {
            "vpc" | "internet_gateway" => String::from("this"),
            "subnet" => {
                attrs["cidr_block"] = attributes["cidr"].clone();
                let tier = address.split('.').nth(1).unwrap();
                let index = counters.entry(if tier == "public" { "public" } else { "private" }).or_default();
                *index += 1;
                format!("{tier}#{}", *index - 1)
            }
            "nat_gateway" => {
                attrs["subnet_id"] = id_of(attributes["subnet"].as_str().unwrap());
                attrs["allocation_id"] = id_of(attributes["elastic_ip"].as_str().unwrap());
                String::from("this")
            }
            "elastic_ip" => String::from("nat"),
            "route_table" => address.split('.').nth(1).unwrap().to_owned(),
            _ => address.split_once('.').unwrap().1.to_owned(),
        };
        let (name, index_key) = match name.split_once('#') {
            Some((name, index)) => (name.to_owned(), Some(json!(index.parse::<u32>().unwrap()))),
            None => (name, None),
        };
        let mut instance = json!({ "schema_version": 1, "attributes": attrs, "sensitive_attributes": [] });
        if let Some(key) = index_key {
            instance["index_key"] = key;
        }
        resources.push(json!({ "mode": "managed", "type": resource_type, "name": name, "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]", "instances": [instance] }));
        if kind == "subnet" {
            let table = id_of(attributes["route_table"].as_str().unwrap());
            let association =
                json!({ "schema_version": 0, "attributes": { "id": format!("rtbassoc-{id}"), "subnet_id": id, "route_table_id": table } });
            resources.push(json!({ "mode": "managed", "type": "aws_route_table_association", "name": format!("{}", address.replace('.', "_")), "provider": "p", "instances": [association] }));
        }
    }
    resources.push(json!({ "mode": "managed", "type": "aws_s3_bucket", "name": "logs", "provider": "p", "instances": [{ "schema_version": 0, "attributes": { "id": "team-logs" } }] }));
    json!({ "version": 4, "terraform_version": "1.5.7", "serial": 42, "lineage": "5b9f0c1e-3c2a-4b7e-9d41-0a6f2d1c7e88", "outputs": {}, "resources": resources, "check_results": null })
}

/// Removes every `kstack:*` tag from the recorded resources, as if another tool made them.
async fn strip_kstack_tags(aws: &kstack_testkit::Clients, records: &BTreeMap<String, Value>) {
    use aws_sdk_ec2::types::Tag;
    let keys = ["kstack:environment", "kstack:address", "kstack:id", "kstack:project"];
    for record in records.values() {
        let (kind, id) = (record["kind"].as_str().unwrap(), record["id"].as_str().unwrap());
        let name = id.rsplit('/').next().unwrap();
        match kind {
            "auto_scaling_group" => {
                let tags =
                    keys.map(|k| aws_sdk_autoscaling::types::Tag::builder().resource_id(id).resource_type("auto-scaling-group").key(k).build());
                aws.autoscaling.delete_tags().set_tags(Some(tags.to_vec())).send().await.unwrap();
            }
            "load_balancer" => {
                let tags = keys.map(|k| aws_sdk_elasticloadbalancing::types::TagKeyOnly::builder().key(k).build());
                aws.elb.remove_tags().load_balancer_names(id).set_tags(Some(tags.to_vec())).send().await.unwrap();
            }
            "iam_role" => drop(aws.iam.untag_role().role_name(name).set_tag_keys(Some(keys.map(String::from).to_vec())).send().await.unwrap()),
            "instance_profile" => {
                aws.iam
                    .untag_instance_profile()
                    .instance_profile_name(name)
                    .set_tag_keys(Some(keys.map(String::from).to_vec()))
                    .send()
                    .await
                    .unwrap();
            }
            "security_group_rules" | "launch_configuration" | "dns_record" => {}
            _ => drop(aws.ec2.delete_tags().resources(id).set_tags(Some(keys.map(|k| Tag::builder().key(k).build()).to_vec())).send().await.unwrap()),
        }
    }
}

/// Running instance ids per group name, and the balancer's registered instances.
async fn fleet(aws: &kstack_testkit::Clients, balancer: &str) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let groups = aws.autoscaling.describe_auto_scaling_groups().send().await.unwrap();
    let mut by_group = BTreeMap::new();
    for group in groups.auto_scaling_groups() {
        let mut ids: Vec<String> = group.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
        ids.sort();
        by_group.insert(group.auto_scaling_group_name().unwrap().to_owned(), ids);
    }
    let described = aws.elb.describe_load_balancers().load_balancer_names(balancer).send().await.unwrap();
    let mut registered: Vec<String> =
        described.load_balancer_descriptions()[0].instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    registered.sort();
    (by_group, registered)
}

/// A cluster of `dev`'s shape that kstack knows nothing of: made, then stripped of every
/// kstack tag and of its state, AWS cannot tell it from one another tool made.
struct Elsewhere {
    /// What state recorded of it, by address.
    records: BTreeMap<String, Value>,
    balancer: String,
    vpc: String,
    /// Its nodes by group, and the balancer's registrations, before anything took it over.
    fleet: (BTreeMap<String, Vec<String>>, Vec<String>),
}

fn made_elsewhere(project: &Project, moto: &kstack_testkit::Moto, rt: &tokio::runtime::Runtime, aws: &kstack_testkit::Clients) -> Elsewhere {
    project.kstack(moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let state_path = project.path().join(".kstack/state/dev.json");
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let records: BTreeMap<String, Value> = state["resources"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    rt.block_on(strip_kstack_tags(aws, &records));
    std::fs::remove_file(&state_path).unwrap();
    let balancer = records["elb.ingress"]["id"].as_str().unwrap().to_owned();
    let vpc = records["vpc.main"]["id"].as_str().unwrap().to_owned();
    let fleet = rt.block_on(fleet(aws, &balancer));
    assert!(fleet.1.len() >= 2, "the balancer serves the ingress nodes: {fleet:?}");
    Elsewhere { records, balancer, vpc, fleet }
}

#[test]
fn a_cluster_terraform_made_is_adopted_from_its_state_with_nothing_replaced() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let Elsewhere { records, balancer, fleet: before, .. } = made_elsewhere(&project, &moto, &rt, &aws);
    let tfstate = project.path().join("terraform.tfstate");
    std::fs::write(&tfstate, serde_json::to_vec_pretty(&terraform_state(&records)).unwrap()).unwrap();

    // Nothing of it is kstack's: a plan would make a second cluster.
    let fresh = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&fresh).iter().all(|c| c.starts_with("create ")), "{:?}", plan_changes(&fresh));

    // A typo is refused before anything is read or locked.
    let typo = project.kstack(&moto).args(["import", "dev", "vpc.mian=vpc-0abc"]).output().unwrap();
    assert_eq!(typo.status.code(), Some(2), "{}", said(&typo));
    assert!(said(&typo).contains("`vpc.mian` is not an address of the model") && said(&typo).contains("did you mean `vpc.main`?"), "{}", said(&typo));

    let imported = project.kstack(&moto).args(["import", "dev", "--from-terraform"]).arg(&tfstate).arg("--auto-approve").output().unwrap();
    let text = said(&imported);
    assert!(imported.status.success(), "{text}");
    let adopted = records.values().filter(|r| r["kind"] != "launch_configuration").count();
    assert!(text.contains(&format!("Import: {adopted} to adopt, ")) && text.contains(", 0 to replace."), "{text}");
    assert!(text.contains("# vpc.main adopts") && text.contains("(from aws_vpc.this)"), "{text}");
    assert!(text.contains("# subnet.private.eu-west-1a adopts") && text.contains("(from aws_subnet.private[0])"), "{text}");
    assert!(text.contains("Terraform keeps what kstack does not model: aws_s3_bucket.logs"), "{text}");
    assert!(text.contains("terraform state rm 'aws_vpc.this'") && text.contains("terraform state rm 'aws_route_table_association."), "{text}");
    assert!(text.contains(&format!("Import complete! {adopted} resources adopted into `dev`")), "{text}");

    // kstack's now: nothing to create, delete or replace; the rest is in place.
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let planned = plan_changes(&plan);
    assert!(planned.iter().all(|c| c.starts_with("update ")), "{planned:?}");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let settled = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&settled).is_empty(), "{:#}", settled["plan"]["actions"]);
    assert_eq!(rt.block_on(fleet(&aws, &balancer)), before, "the same instances, the same registrations");

    // A change to the model applies in place.
    project.edit("environments/dev.yaml", "    max: 30\n", "    max: 40\n");
    let changed = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(plan_changes(&changed), ["update asg.workers"]);
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    assert_eq!(rt.block_on(fleet(&aws, &balancer)), before);
}

/// Without a state file: everything in the VPC, found by what it is and by name.
#[test]
fn a_vpc_is_taken_over_with_what_is_in_it_without_a_state_file() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let Elsewhere { records, balancer, vpc, fleet: before } = made_elsewhere(&project, &moto, &rt, &aws);
    let vpc = vpc.as_str();
    let imported = project.kstack(&moto).args(["import", "dev", "--vpc", vpc, "--auto-approve"]).output().unwrap();
    let text = said(&imported);
    assert!(imported.status.success(), "{text}");
    assert!(text.contains(&format!("Import: {} to adopt, ", records.len())) && text.contains(", 0 to replace."), "{text}");
    assert!(text.contains(&format!("(from found in {vpc})")) && !text.contains("terraform state rm"), "{text}");
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&plan).iter().all(|c| c.starts_with("update ")), "{:?}", plan_changes(&plan));
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    assert_eq!(rt.block_on(fleet(&aws, &balancer)), before, "the same instances, the same registrations");
}

/// A project without an environment for the cluster writes one from what runs, which then
/// imports with nothing to replace and plans no change at all.
#[test]
fn an_environment_file_is_written_from_what_runs_and_imports_without_a_change() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let Elsewhere { records, balancer, vpc, fleet: before } = made_elsewhere(&project, &moto, &rt, &aws);
    let vpc = vpc.as_str();
    std::fs::remove_file(project.path().join("environments/dev.yaml")).unwrap();

    let generated = project.kstack(&moto).args(["generate", "dev", "--vpc", vpc, "--region", "eu-west-1"]).output().unwrap();
    assert!(generated.status.success(), "{}", said(&generated));
    let written = std::fs::read_to_string(project.path().join("environments/dev.yaml")).unwrap();
    assert!(written.contains("      prefix_length: 22\n") && written.contains("      prefix_length: 19\n"), "carved as dev's are: {written}");
    let again = project.kstack(&moto).args(["generate", "dev", "--vpc", vpc, "--region", "eu-west-1"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "an existing file is never written over without --force: {}", said(&again));
    let validated = project.kstack(&moto).args(["validate", "dev"]).output().unwrap();
    assert!(validated.status.success(), "{}\n{written}", said(&validated));

    let imported = project.kstack(&moto).args(["import", "dev", "--vpc", vpc, "--auto-approve"]).output().unwrap();
    let text = said(&imported);
    assert!(imported.status.success(), "{text}\n{written}");
    assert!(text.contains(&format!("Import: {} to adopt, ", records.len())) && text.contains(", 0 to replace."), "{text}\n{written}");
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert!(plan_changes(&plan).is_empty(), "{:#}\n{written}", plan["plan"]["actions"]);
    assert_eq!(rt.block_on(fleet(&aws, &balancer)), before);
}
