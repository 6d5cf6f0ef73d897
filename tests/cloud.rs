//! End-to-end tests of plan, apply and destroy through the binary, against a real AWS API
//! emulator, checked with real Describe calls.

mod support;

use std::io::{BufRead, BufReader, Write};

use support::{env_filter, json, runtime, Moto, Project};

const DEV: &str = "environments/dev.yaml";

fn actions(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] != "no_op")
        .map(|a| (a["address"].as_str().unwrap().to_owned(), a["action"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn dev_is_applied_from_nothing_changed_in_place_and_destroyed() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    let ami = rt.block_on(aws.seed_image("node"));

    let first = project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).output().unwrap();
    assert_eq!(first.status.code(), Some(2));
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(text.contains("Plan: 31 to add, 0 to change, 0 to destroy."), "{text}");
    assert!(text.contains("+ user_data.sha256 = \""), "user data is shown as its hash");
    assert!(!text.contains("systemctl restart kubelet"), "user data itself is never shown");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let state = std::fs::metadata(project.path().join(".kstack/state/dev.json")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&state.permissions()) & 0o777, 0o600, "state is the owner's only");

    rt.block_on(async {
        let vpcs = aws.ec2.describe_vpcs().filters(env_filter("dev")).send().await.unwrap();
        assert_eq!(vpcs.vpcs().len(), 1);
        assert_eq!(vpcs.vpcs()[0].cidr_block(), Some("10.20.0.0/16"));
        let tags = vpcs.vpcs()[0].tags();
        assert!(tags.iter().any(|t| t.key() == Some("kstack:address") && t.value() == Some("vpc.main")));
        assert!(tags.iter().any(|t| t.key() == Some("Team") && t.value() == Some("platform")));

        let subnets = aws.ec2.describe_subnets().filters(env_filter("dev")).send().await.unwrap();
        let mut layout: Vec<(String, String)> = subnets
            .subnets()
            .iter()
            .map(|s| (s.availability_zone().unwrap().to_owned(), s.cidr_block().unwrap().to_owned()))
            .collect();
        layout.sort();
        assert_eq!(layout.len(), 6, "a public and a private subnet in each of three zones");
        assert!(layout.iter().filter(|(_, cidr)| cidr.ends_with("/22")).count() == 3);
        assert!(layout.iter().filter(|(_, cidr)| cidr.ends_with("/19")).count() == 3);
        for zone in ["eu-west-1a", "eu-west-1b", "eu-west-1c"] {
            assert_eq!(layout.iter().filter(|(z, _)| z == zone).count(), 2, "{zone}");
        }

        let workers = aws.group("dev-workers").await;
        assert_eq!((workers.min_size(), workers.max_size(), workers.desired_capacity()), (Some(3), Some(30), Some(3)));
        assert_eq!(workers.vpc_zone_identifier().unwrap().split(',').count(), 3);
        let template = workers.launch_template().expect("launch template is the default");
        let versions = aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(template.launch_template_id().unwrap())
            .versions("$Latest")
            .send()
            .await
            .unwrap();
        let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
        assert_eq!(data.image_id(), Some(ami.as_str()));
        assert_eq!(data.instance_type().map(|t| t.as_str()), Some("m5.large"));
        assert_eq!(
            data.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str()),
            Some("required"),
            "IMDSv2 is required by default"
        );

        assert_eq!(aws.group("dev-ingress").await.load_balancer_names(), ["dev-ingress"]);

        let elbs = aws.elb.describe_load_balancers().load_balancer_names("dev-ingress").send().await.unwrap();
        let elb = &elbs.load_balancer_descriptions()[0];
        let mut ports: Vec<i32> = elb.listener_descriptions().iter().map(|l| l.listener().unwrap().load_balancer_port()).collect();
        ports.sort();
        assert_eq!(ports, [80, 443]);
        assert_eq!(elb.health_check().unwrap().target(), "TCP:30080");
        let attributes = aws.elb.describe_load_balancer_attributes().load_balancer_name("dev-ingress").send().await.unwrap();
        let draining = attributes.load_balancer_attributes().unwrap().connection_draining().unwrap();
        assert!(draining.enabled());
        assert_eq!(draining.timeout(), Some(300));

        // Least privilege as applied: the masters' cloud provider changes only what carries
        // the cluster tag their role carries, and only the masters reach the kubelet API.
        let roles = aws.iam.list_roles().path_prefix("/kstack/dev/").send().await.unwrap();
        let role = roles.roles().iter().find(|r| r.role_name().ends_with("masters")).expect("masters role");
        let tags = aws.iam.list_role_tags().role_name(role.role_name()).send().await.unwrap();
        assert!(tags.tags().iter().any(|t| t.key() == "KubernetesCluster" && t.value() == "dev"));
        let policy = aws.iam.get_role_policy().role_name(role.role_name()).policy_name("kubernetes-master").send().await.unwrap();
        // Real IAM returns the document URL-encoded; moto encodes only some characters.
        let document = ["%22", "%3A", "%2F", "%2A"].iter().zip(["\"", ":", "/", "*"]).fold(policy.policy_document().to_owned(), |text, (code, c)| text.replace(code, c));
        assert!(document.contains("\"aws:ResourceTag/KubernetesCluster\""), "{document}");
        assert!(!document.contains("\"ec2:*\"") && !document.contains("\"elasticloadbalancing:*\""), "{document}");
        let groups = aws.ec2.describe_security_groups().filters(env_filter("dev")).send().await.unwrap();
        let id_of = |suffix: &str| {
            let group = groups.security_groups().iter().find(|g| g.group_name().unwrap().ends_with(suffix)).unwrap();
            group.group_id().unwrap().to_owned()
        };
        let (workers, masters) = (id_of("-workers"), id_of("-masters"));
        let workers_group = groups.security_groups().iter().find(|g| g.group_id() == Some(workers.as_str())).unwrap();
        let kubelet_peers: Vec<&str> = workers_group
            .ip_permissions()
            .iter()
            .filter(|r| r.ip_protocol() == Some("-1") || (r.ip_protocol() == Some("tcp") && r.from_port() <= Some(10250) && r.to_port() >= Some(10250)))
            .flat_map(|r| r.user_id_group_pairs().iter().filter_map(|p| p.group_id()))
            .collect();
        assert_eq!(kubelet_peers, [masters.as_str()], "only the masters reach the workers' kubelet API");
    });

    // Applied: nothing left to do.
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);

    // A size change is one in-place update of one group.
    project.edit(DEV, "    desired: 3\n", "    desired: 5\n");
    let text = project.kstack(&moto).args(["plan", "dev"]).output().unwrap().stdout;
    insta::assert_snapshot!("plan_size_change", String::from_utf8_lossy(&text));
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(actions(&plan), [(String::from("asg.workers"), String::from("update"))]);
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    assert_eq!(rt.block_on(aws.group("dev-workers")).desired_capacity(), Some(5));

    // An instance type change is a new launch template version, not a new template.
    project.edit(DEV, "    instance_type: m5.large\n", "    instance_type: m5.xlarge\n");
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    assert_eq!(actions(&plan), [(String::from("launch_template.workers"), String::from("update"))]);
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    rt.block_on(async {
        let templates = aws.ec2.describe_launch_templates().launch_template_names("dev-workers").send().await.unwrap();
        let template = &templates.launch_templates()[0];
        assert_eq!(template.latest_version_number(), Some(2));
        assert_eq!(template.default_version_number(), Some(2));
        let versions = aws
            .ec2
            .describe_launch_template_versions()
            .launch_template_name("dev-workers")
            .versions("$Latest")
            .send()
            .await
            .unwrap();
        let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
        assert_eq!(data.instance_type().map(|t| t.as_str()), Some("m5.xlarge"));
    });
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);

    project.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    rt.block_on(async {
        assert!(aws.vpcs_of("dev").await.is_empty());
        let subnets = aws.ec2.describe_subnets().filters(env_filter("dev")).send().await.unwrap();
        assert!(subnets.subnets().is_empty());
        let groups = aws.ec2.describe_security_groups().filters(env_filter("dev")).send().await.unwrap();
        assert!(groups.security_groups().is_empty());
        let templates = aws.ec2.describe_launch_templates().filters(env_filter("dev")).send().await.unwrap();
        assert!(templates.launch_templates().is_empty());
        let asgs = aws.autoscaling.describe_auto_scaling_groups().send().await.unwrap();
        assert!(asgs.auto_scaling_groups().is_empty());
        let elbs = aws.elb.describe_load_balancers().send().await.unwrap();
        assert!(elbs.load_balancer_descriptions().is_empty());
        let roles = aws.iam.list_roles().path_prefix("/kstack/dev/").send().await.unwrap();
        assert!(roles.roles().is_empty());
        let profiles = aws.iam.list_instance_profiles().path_prefix("/kstack/dev/").send().await.unwrap();
        assert!(profiles.instance_profiles().is_empty());
    });
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(2);
}

#[test]
fn a_resource_created_but_missing_from_state_is_adopted_not_duplicated() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let orphan = rt.block_on(aws.create_tagged_vpc("dev", "vpc.main"));
    // And a security group whose rules were never written: its AWS default egress must go.
    rt.block_on(async {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::SecurityGroup)
            .tags(Tag::builder().key("kstack:environment").value("dev").build())
            .tags(Tag::builder().key("kstack:address").value("security_group.ingress-elb").build())
            .build();
        aws.ec2
            .create_security_group()
            .group_name("dev-ingress-elb")
            .description("The shared ingress load balancer")
            .vpc_id(&orphan)
            .tag_specifications(tags)
            .send()
            .await
            .unwrap();
    });
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let vpc = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "vpc.main").unwrap().clone();
    assert_eq!(vpc["action"], "update", "only its missing tags differ: {vpc:#}");
    assert_eq!(vpc["id"], orphan.as_str());

    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    assert_eq!(rt.block_on(aws.vpcs_of("dev")), vec![orphan.clone()]);
    let listed = project.kstack(&moto).args(["state", "list", "dev"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("vpc.main\t{orphan}")));

    // With state lost altogether, refresh still finds everything by tag.
    std::fs::remove_file(project.path().join(".kstack/state/dev.json")).unwrap();
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
}

#[test]
fn a_second_apply_on_a_locked_environment_fails_fast_naming_the_holder() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));

    // The first apply holds the lock while it waits at its confirmation prompt.
    let mut first = project.kstack_process(&moto).args(["apply", "dev"]).spawn().unwrap();
    let mut stderr = BufReader::new(first.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("Enter a value") {
        let mut chunk = Vec::new();
        let read = stderr.read_until(b':', &mut chunk).unwrap();
        assert!(read > 0, "first apply ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    let second = project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("environment `dev` is locked by"), "{message}");
    assert!(message.contains("`kstack apply dev`"), "{message}");
    assert!(message.contains("pid"), "{message}");

    first.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a declined apply exits 1");
    assert!(rt.block_on(aws.vpcs_of("dev")).is_empty(), "nothing was created");
    // The lock went with the first run.
    project.kstack(&moto).args(["plan", "dev"]).assert().success();
}

#[test]
fn a_saved_plan_is_applied_as_reviewed_or_refused_when_the_world_changed() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let plan_file = project.path().join("dev.plan.json");
    let plan_file = plan_file.to_str().unwrap();

    project.kstack(&moto).args(["plan", "dev", "--out", plan_file]).assert().success();
    // Someone creates a resource of the environment in the meantime.
    rt.block_on(aws.create_tagged_vpc("dev", "vpc.main"));
    let refused = project.kstack(&moto).args(["apply", plan_file]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("is stale: resources in AWS changed"), "{message}");

    project.kstack(&moto).args(["plan", "dev", "--out", plan_file]).assert().success();
    project.kstack(&moto).args(["apply", plan_file]).assert().success();
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
}

#[test]
fn a_launch_configuration_change_creates_the_new_one_before_deleting_the_old() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.edit(DEV, "    instance_type: m5.large\n", "    instance_type: m5.large\n    launch: configuration\n");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let first = rt.block_on(aws.group("dev-workers")).launch_configuration_name().unwrap().to_owned();
    assert!(first.starts_with("dev-workers-"), "{first}");

    project.edit(DEV, "    instance_type: m5.large\n", "    instance_type: m5.xlarge\n");
    let plan = json(&project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap());
    let actions = plan["plan"]["actions"].as_array().unwrap();
    let lc = actions.iter().find(|a| a["address"] == "launch_configuration.workers").unwrap();
    assert_eq!(lc["action"], "replace");
    assert_eq!(lc["create_before_destroy"], true);
    assert_eq!(lc["forced_by"], serde_json::json!(["instance_type"]));
    let asg = actions.iter().find(|a| a["address"] == "asg.workers").unwrap();
    assert_eq!(asg["action"], "update", "the group moves to the new configuration");

    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    rt.block_on(async {
        let second = aws.group("dev-workers").await.launch_configuration_name().unwrap().to_owned();
        assert_ne!(second, first);
        let configs = aws.autoscaling.describe_launch_configurations().send().await.unwrap();
        let names: Vec<&str> = configs.launch_configurations().iter().filter_map(|c| c.launch_configuration_name()).collect();
        assert_eq!(names, [second.as_str()], "the old configuration is deleted");
        assert_eq!(configs.launch_configurations()[0].instance_type(), Some("m5.xlarge"));
    });
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
}

#[test]
fn a_failed_apply_reports_aws_message_keeps_what_was_done_and_a_rerun_continues() {
    let moto = Moto::start();
    let project = Project::copy();
    let rt = runtime();
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let without = "  masters:\n    inline_policies:";
    let missing = "  masters:\n    managed_policies: [arn:aws:iam::aws:policy/NoSuchPolicyForKstackTests]\n    inline_policies:";
    project.edit("environments/base.yaml", without, missing);

    let failed = project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(message.contains("iam_role.masters could not be created: NoSuchEntity"), "{message}");
    assert!(message.contains("not started"), "{message}");
    // Everything that was created is in state, and nothing depending on the role was started.
    let listed = String::from_utf8_lossy(&project.kstack(&moto).args(["state", "list", "dev"]).output().unwrap().stdout).into_owned();
    assert!(listed.contains("vpc.main\tvpc-"), "{listed}");
    assert!(!listed.contains("instance_profile.masters"), "{listed}");
    assert!(!listed.contains("asg.masters"), "{listed}");

    project.edit("environments/base.yaml", missing, without);
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let replan = project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).output().unwrap();
    assert_eq!(replan.status.code(), Some(0), "{}", String::from_utf8_lossy(&replan.stdout));
    assert_eq!(rt.block_on(aws.vpcs_of("dev")).len(), 1);
}
