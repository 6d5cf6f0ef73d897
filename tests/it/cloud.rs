//! End-to-end tests of plan, apply and destroy through the binary, against a real AWS API
//! emulator, checked with real Describe calls.

use std::io::{BufRead, BufReader, Write};

use kstack_testkit::faults::FaultProxy;
use kstack_testkit::{env_filter, json, Emulated, Moto, Project};

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
    let Emulated { moto, rt, aws, ami } = Emulated::with_node_image();
    let project = Project::copy();

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
        let mut layout: Vec<(String, String)> =
            subnets.subnets().iter().map(|s| (s.availability_zone().unwrap().to_owned(), s.cidr_block().unwrap().to_owned())).collect();
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
        assert_eq!(data.metadata_options().and_then(|m| m.http_tokens()).map(|t| t.as_str()), Some("required"), "IMDSv2 is required by default");

        let identity = project.identity("dev");
        let elb_name = format!("dev-ingress-{}", &identity[..8]);
        assert_eq!(aws.group("dev-ingress").await.load_balancer_names(), [elb_name.as_str()]);

        let elbs = aws.elb.describe_load_balancers().load_balancer_names(&elb_name).send().await.unwrap();
        let elb = &elbs.load_balancer_descriptions()[0];
        let mut ports: Vec<i32> = elb.listener_descriptions().iter().map(|l| l.listener().unwrap().load_balancer_port()).collect();
        ports.sort();
        assert_eq!(ports, [80, 443]);
        assert_eq!(elb.health_check().unwrap().target(), "TCP:30080");
        let attributes = aws.elb.describe_load_balancer_attributes().load_balancer_name(&elb_name).send().await.unwrap();
        let draining = attributes.load_balancer_attributes().unwrap().connection_draining().unwrap();
        assert!(draining.enabled());
        assert_eq!(draining.timeout(), Some(300));

        // Least privilege as applied: the masters' cloud provider changes only what carries
        // the cluster tag their role carries, and only the masters reach the kubelet API.
        let roles = aws.iam.list_roles().path_prefix("/kstack/dev/").send().await.unwrap();
        let role = roles.roles().iter().find(|r| r.role_name().starts_with("dev-masters-")).expect("masters role");
        let tags = aws.iam.list_role_tags().role_name(role.role_name()).send().await.unwrap();
        let cluster = format!("dev-{}", project.identity("dev"));
        assert!(tags.tags().iter().any(|t| t.key() == "KubernetesCluster" && t.value() == cluster), "a cluster name no other project shares");
        let policy = aws.iam.get_role_policy().role_name(role.role_name()).policy_name("kubernetes-master").send().await.unwrap();
        // Real IAM returns the document URL-encoded; moto encodes only some characters.
        let document = ["%22", "%3A", "%2F", "%2A", "%24", "%7B", "%7D", "%5B", "%5D", "%2C", " "]
            .iter()
            .zip(["\"", ":", "/", "*", "$", "{", "}", "[", "]", ",", ""])
            .fold(policy.policy_document().to_owned(), |text, (code, c)| text.replace(code, c));
        assert!(document.contains("\"aws:ResourceTag/KubernetesCluster\""), "{document}");
        assert!(!document.contains("\"ec2:*\"") && !document.contains("\"elasticloadbalancing:*\""), "{document}");
        // Resources kstack made are the masters' only under their own identity, and no node
        // may write the tags that claim ownership. Emulator gap: moto stores policies but does
        // not evaluate them, so the document is checked as AWS would read it.
        assert!(document.contains("\"aws:ResourceTag/kstack:id\":\"${aws:PrincipalTag/kstack:id}\""), "{document}");
        assert!(document.contains("\"Effect\":\"Deny\"") && document.contains("\"aws:TagKeys\":[\"kstack:*\"]"), "{document}");
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
            .filter(|r| {
                r.ip_protocol() == Some("-1") || (r.ip_protocol() == Some("tcp") && r.from_port() <= Some(10250) && r.to_port() >= Some(10250))
            })
            .flat_map(|r| r.user_id_group_pairs().iter().filter_map(|p| p.group_id()))
            .collect();
        assert_eq!(kubelet_peers, [masters.as_str()], "only the masters reach the workers' kubelet API");
    });

    // Applied: nothing left to do.
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);

    // A size change is one in-place update of one group.
    project.edit(DEV, "    desired: 3\n", "    desired: 5\n");
    let text = project.kstack(&moto).args(["plan", "dev"]).output().unwrap().stdout;
    let text = String::from_utf8_lossy(&text).replace(&project.identity("dev")[..8], "<identity>");
    insta::assert_snapshot!("plan_size_change", text);
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
        let template_id = aws.group("dev-workers").await.launch_template().unwrap().launch_template_id().unwrap().to_owned();
        let templates = aws.ec2.describe_launch_templates().launch_template_ids(&template_id).send().await.unwrap();
        let template = &templates.launch_templates()[0];
        assert_eq!(template.latest_version_number(), Some(2));
        assert_eq!(template.default_version_number(), Some(2));
        let versions = aws.ec2.describe_launch_template_versions().launch_template_id(&template_id).versions("$Latest").send().await.unwrap();
        let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
        assert_eq!(data.instance_type().map(|t| t.as_str()), Some("m5.xlarge"));
    });
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);

    project.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    rt.block_on(assert_nothing_left_of_dev(&aws));
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(2);
}

/// Nothing of `dev` is left in AWS, asked with Describe and List calls.
async fn assert_nothing_left_of_dev(aws: &kstack_testkit::Clients) {
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
}

/// With `--progress json`, every change an apply makes is a JSON object on a line of stderr,
/// for a machine following the run, instead of the lines a person reads.
#[test]
fn progress_as_json_lines_tells_each_change_as_it_is_made() {
    let Emulated { moto, rt: _rt, aws: _aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let output = project.kstack(&moto).args(["--progress", "json", "apply", "dev", "--auto-approve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> =
        stderr.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let of = |event: &str| events.iter().filter(|e| e["work"] == "apply" && e["event"]["event"] == event).collect::<Vec<_>>();
    let (started, finished) = (of("started"), of("finished"));
    assert_eq!((started.len(), finished.len()), (31, 31), "every change of dev's first apply starts and finishes: {stderr}");
    let vpc = finished.iter().find(|e| e["event"]["address"] == "vpc.main").expect("the VPC's change");
    assert_eq!(vpc["event"]["verb"], "create");
    assert!(vpc["event"]["id"].as_str().is_some_and(|id| id.starts_with("vpc-")), "{vpc}");
    assert!(vpc["event"]["elapsed"].is_f64(), "{vpc}");
    assert!(!stderr.contains("vpc.main: created"), "no line for a person: {stderr}");
}

/// A delete of several calls (a table's subnet associations, a gateway's attachment, a role's
/// policies, then the resource) whose step lost its reply: the SDK's retry is told the step's
/// target is not found, which means the step is done, never that the resource is gone.
#[test]
fn a_delete_step_whose_reply_was_lost_is_done_and_the_resource_still_goes() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let proxy = FaultProxy::start(&moto.endpoint, 1, 0);
    let through_proxy = |args: &[&str]| {
        let mut command = project.kstack(&moto);
        command.envs(proxy.env()).args(args).timeout(std::time::Duration::from_secs(600)).assert().success();
    };
    through_proxy(&["apply", "dev", "--auto-approve"]);
    let steps = ["DisassociateRouteTable", "DetachInternetGateway", "DeleteRolePolicy"];
    proxy.lose_next_reply_of(&steps);
    through_proxy(&["destroy", "dev", "--auto-approve"]);
    assert_eq!(proxy.replies_still_to_lose(), Vec::<String>::new(), "each step ran and lost its reply");
    rt.block_on(assert_nothing_left_of_dev(&aws));
    let tables = rt.block_on(aws.ec2.describe_route_tables().filters(env_filter("dev")).send()).unwrap();
    assert!(tables.route_tables().is_empty(), "{:?}", tables.route_tables());
}

#[test]
fn a_resource_created_but_missing_from_state_is_adopted_not_duplicated() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    // The first plan gives the environment its identity; a run that died after creating a
    // VPC and a security group (whose rules were never written) left them tagged with it,
    // and its state with the creates it journalled before making them.
    project.kstack(&moto).args(["plan", "dev"]).assert().success();
    let identity = project.identity("dev");
    let state_path = project.path().join(".kstack/state/dev.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["intents"] = serde_json::json!({"vpc.main": "2026-12-06T00:00:00Z", "security_group.ingress-elb": "2026-12-06T00:00:00Z"});
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let orphan = rt.block_on(aws.create_tagged_vpc("dev", Some(&identity), "vpc.main"));
    rt.block_on(async {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::SecurityGroup)
            .tags(Tag::builder().key("kstack:environment").value("dev").build())
            .tags(Tag::builder().key("kstack:address").value("security_group.ingress-elb").build())
            .tags(Tag::builder().key("kstack:id").value(&identity).build())
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
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert!(state.get("intents").is_none(), "every journalled create is recorded: {state:#}");
    let listed = project.kstack(&moto).args(["state", "list", "dev"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("vpc.main\t{orphan}")));
    // While the state records resources, their identity never changes hands.
    let other = "0123456789abcdef0123456789abcdef";
    let refused = project.kstack(&moto).args(["state", "identity", "dev", "--recover", other]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("never change hands"));

    // With state lost altogether, the environment's resources are no longer recognisably its
    // own: the plan leaves them alone and says how to claim them back.
    std::fs::remove_file(project.path().join(".kstack/state/dev.json")).unwrap();
    let lost = project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap();
    let warning = String::from_utf8_lossy(&lost.stderr);
    assert!(warning.contains(&format!("identity {identity} (project platform, eu-west-1, 31 resources: ")), "{warning}");
    assert!(warning.contains("kstack state identity dev --recover <id>"), "{warning}");
    let plan = json(&lost);
    let left_alone = plan["plan"]["left_alone"].as_array().unwrap();
    assert!(left_alone.iter().any(|f| f["id"] == orphan.as_str() && f["identity"] == identity.as_str()), "{plan:#}");
    // Recovering the identity is a person's word that what carries it is this environment's.
    let recovered = project.kstack(&moto).args(["state", "identity", "dev", "--recover", &identity]).output().unwrap();
    assert!(String::from_utf8_lossy(&recovered.stdout).contains("adopted the 31 resources carrying it"), "{recovered:?}");
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
    let shown = project.kstack(&moto).args(["state", "identity", "dev"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), identity);
}

#[test]
fn a_second_apply_on_a_locked_environment_fails_fast_naming_the_holder() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();

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
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let plan_file = project.path().join("dev.plan.json");
    let plan_file = plan_file.to_str().unwrap();

    project.kstack(&moto).args(["plan", "dev", "--out", plan_file]).assert().success();
    // A resource of the environment appears in the meantime: a run that journalled its create
    // in state and died before recording what it made.
    let state_path = project.path().join(".kstack/state/dev.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["intents"] = serde_json::json!({"vpc.main": "2026-12-06T00:00:00Z"});
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    rt.block_on(aws.create_tagged_vpc("dev", Some(&project.identity("dev")), "vpc.main"));
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
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.edit(DEV, "    instance_type: m5.large\n", "    instance_type: m5.large\n    launch: configuration\n");
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let first = rt.block_on(aws.group("dev-workers")).launch_configuration_name().unwrap().to_owned();
    let short = &project.identity("dev")[..8];
    assert!(first.starts_with("dev-workers-") && first.ends_with(&format!("-{short}")), "{first}");

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
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    let without = "  masters:\n    inline_policies:";
    let missing = "  masters:\n    managed_policies: [arn:aws:iam::aws:policy/NoSuchPolicyForKstackTests]\n    inline_policies:";
    project.edit("environments/base.yaml", without, missing);

    let failed = project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let message = String::from_utf8_lossy(&failed.stderr);
    // The operation, AWS's code and message, and the request id AWS support asks for.
    assert!(message.contains("iam_role.masters could not be created: AttachRolePolicy: NoSuchEntity: "), "{message}");
    assert!(message.contains("(request id "), "{message}");
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

/// The resources `env`'s state records, as (address, id).
fn recorded(project: &Project, moto: &Moto, env: &str) -> Vec<(String, String)> {
    let listed = project.kstack(moto).args(["state", "list", env]).output().unwrap();
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(address, id)| (address.to_owned(), id.to_owned()))
        .collect()
}

/// Whether the resource still exists, asked of AWS directly (not through kstack's refresh).
async fn exists(aws: &kstack_testkit::Clients, address: &str, id: &str) -> bool {
    let kind = address.split('.').next().unwrap_or_default();
    let name = id.rsplit('/').next().unwrap_or(id);
    match kind {
        "vpc" => aws.ec2.describe_vpcs().vpc_ids(id).send().await.is_ok_and(|d| !d.vpcs().is_empty()),
        "subnet" => aws.ec2.describe_subnets().subnet_ids(id).send().await.is_ok_and(|d| !d.subnets().is_empty()),
        "security_group" => aws.ec2.describe_security_groups().group_ids(id).send().await.is_ok_and(|d| !d.security_groups().is_empty()),
        "launch_configuration" => aws
            .autoscaling
            .describe_launch_configurations()
            .launch_configuration_names(id)
            .send()
            .await
            .is_ok_and(|d| !d.launch_configurations().is_empty()),
        "asg" => aws
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(id)
            .send()
            .await
            .is_ok_and(|d| !d.auto_scaling_groups().is_empty()),
        "elb" => aws.elb.describe_load_balancers().load_balancer_names(id).send().await.is_ok(),
        "iam_role" => aws.iam.get_role().role_name(name).send().await.is_ok(),
        "instance_profile" => aws.iam.get_instance_profile().instance_profile_name(name).send().await.is_ok(),
        // Kinds not checked one by one are covered by the plan staying clean.
        _ => true,
    }
}

/// Every resource `env` recorded still exists, and its plan finds nothing to do.
fn assert_intact(
    project: &Project,
    moto: &Moto,
    env: &str,
    before: &[(String, String)],
    rt: &tokio::runtime::Runtime,
    aws: &kstack_testkit::Clients,
) {
    assert_eq!(recorded(project, moto, env), before, "{env}'s state is unchanged");
    for (address, id) in before {
        assert!(rt.block_on(exists(aws, address, id)), "{env}'s {address} ({id}) is gone");
    }
    let plan = project.kstack(moto).args(["plan", env, "--detailed-exitcode"]).output().unwrap();
    assert_eq!(plan.status.code(), Some(0), "{env}: {}", String::from_utf8_lossy(&plan.stdout));
}

#[test]
fn environments_named_alike_never_touch_each_other() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    // Project `a` has `dev` and `dev-eu` (a common prefix); project `b` has a `dev` of its own,
    // in the same account and region. Workers use launch configurations, which cannot be
    // tagged and were once claimed by name prefix.
    let projects = [Project::copy(), Project::copy()];
    for project in &projects {
        project.edit(DEV, "    instance_type: m5.large\n", "    instance_type: m5.large\n    launch: configuration\n");
    }
    let dev_eu = std::fs::read_to_string(projects[0].path().join(DEV)).unwrap().replace("Environment: dev", "Environment: dev-eu");
    projects[0].write("environments/dev-eu.yaml", &dev_eu);
    let (a, b) = (&projects[0], &projects[1]);
    let all = [(a, "dev"), (a, "dev-eu"), (b, "dev")];

    for (project, env) in all {
        project.kstack(&moto).args(["apply", env, "--auto-approve"]).assert().success();
    }
    let identities: Vec<String> = all.iter().map(|(p, env)| p.identity(env)).collect();
    assert!(identities[0] != identities[1] && identities[0] != identities[2] && identities[1] != identities[2], "{identities:?}");
    let mut before: Vec<Vec<(String, String)>> = all.iter().map(|(p, env)| recorded(p, &moto, env)).collect();
    for ((project, env), recorded) in all.iter().zip(&before) {
        assert!(recorded.len() > 30, "{env}: {recorded:?}");
        assert_intact(project, &moto, env, recorded, &rt, &aws);
    }
    // Each VPC carries its own environment's identity.
    rt.block_on(async {
        for (address_id, identity) in before.iter().map(|r| r.iter().find(|(a, _)| a == "vpc.main").unwrap()).zip(&identities) {
            let vpcs = aws.ec2.describe_vpcs().vpc_ids(&address_id.1).send().await.unwrap();
            let tags = vpcs.vpcs()[0].tags();
            assert!(tags.iter().any(|t| t.key() == Some("kstack:id") && t.value() == Some(identity.as_str())));
        }
    });

    // Destroyed in every order, the others stay whole.
    a.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    assert_intact(a, &moto, "dev-eu", &before[1], &rt, &aws);
    assert_intact(b, &moto, "dev", &before[2], &rt, &aws);

    a.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    before[0] = recorded(a, &moto, "dev");
    b.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    assert_intact(a, &moto, "dev", &before[0], &rt, &aws);
    assert_intact(a, &moto, "dev-eu", &before[1], &rt, &aws);

    a.kstack(&moto).args(["destroy", "dev-eu", "--auto-approve"]).assert().success();
    assert_intact(a, &moto, "dev", &before[0], &rt, &aws);
    a.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    rt.block_on(async {
        for env in ["dev", "dev-eu"] {
            assert!(aws.vpcs_of(env).await.is_empty(), "{env}");
        }
        let configurations = aws.autoscaling.describe_launch_configurations().send().await.unwrap();
        assert!(configurations.launch_configurations().is_empty());
        let roles = aws.iam.list_roles().path_prefix("/kstack/").send().await.unwrap();
        assert!(roles.roles().is_empty());
    });
}

/// Strips what identities added, as if `dev` had been applied before they existed: no
/// `kstack:id` tags and no identity in state.
fn forget_identity(project: &Project, moto: &Moto, rt: &tokio::runtime::Runtime, aws: &kstack_testkit::Clients) {
    let path = project.path().join(".kstack/state/dev.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state.as_object_mut().unwrap().remove("identity");
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    rt.block_on(async {
        use aws_sdk_ec2::types::Tag;
        for (address, id) in recorded(project, moto, "dev") {
            let name = id.rsplit('/').next().unwrap().to_owned();
            match address.split('.').next().unwrap() {
                "asg" => {
                    let tag =
                        aws_sdk_autoscaling::types::Tag::builder().resource_id(&id).resource_type("auto-scaling-group").key("kstack:id").build();
                    aws.autoscaling.delete_tags().tags(tag).send().await.unwrap();
                }
                "elb" => {
                    let key = aws_sdk_elasticloadbalancing::types::TagKeyOnly::builder().key("kstack:id").build();
                    aws.elb.remove_tags().load_balancer_names(&id).tags(key).send().await.unwrap();
                }
                "iam_role" => {
                    aws.iam.untag_role().role_name(&name).tag_keys("kstack:id").send().await.unwrap();
                }
                "instance_profile" => {
                    aws.iam.untag_instance_profile().instance_profile_name(&name).tag_keys("kstack:id").send().await.unwrap();
                }
                "security_group_rules" | "launch_configuration" => {}
                _ => {
                    aws.ec2.delete_tags().resources(&id).tags(Tag::builder().key("kstack:id").build()).send().await.unwrap();
                }
            }
        }
    });
}

#[test]
fn an_environment_from_before_identities_is_taken_over_in_place() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let old_identity = project.identity("dev");
    forget_identity(&project, &moto, &rt, &aws);
    let before = recorded(&project, &moto, "dev");

    let output = project.kstack(&moto).args(["plan", "dev", "--json"]).output().unwrap();
    let plan = json(&output);
    let taken_over = plan["plan"]["takes_over"].as_array().unwrap();
    assert!(taken_over.len() > 20, "{plan:#}");
    for action in plan["plan"]["actions"].as_array().unwrap() {
        let changes: Vec<&str> = action["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
        match action["action"].as_str().unwrap() {
            "no_op" => {}
            "update" => assert!(changes.iter().all(|p| p.starts_with("tags")), "only tags change: {action:#}"),
            other => panic!("nothing is created, replaced or destroyed, yet {other}: {action:#}"),
        }
    }
    let text = String::from_utf8_lossy(&project.kstack(&moto).args(["plan", "dev"]).output().unwrap().stdout).into_owned();
    assert!(text.contains(&format!("Takes over {} resources of `dev`", taken_over.len())), "{text}");
    assert!(text.contains("0 to add, ") && text.contains(", 0 to destroy."), "{text}");

    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let identity = project.identity("dev");
    assert_ne!(identity, old_identity, "a new identity, since the old one was forgotten");
    assert_eq!(recorded(&project, &moto, "dev"), before, "the same resources, the same ids");
    project.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
    let vpc = before.iter().find(|(a, _)| a == "vpc.main").unwrap().1.clone();
    let tags = rt.block_on(aws.ec2.describe_vpcs().vpc_ids(&vpc).send()).unwrap().vpcs()[0].tags().to_vec();
    assert!(tags.iter().any(|t| t.key() == Some("kstack:id") && t.value() == Some(identity.as_str())));
}

#[test]
fn destroy_never_deletes_what_its_state_recorded_but_now_carries_another_identity() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let (ours, other) = (Project::copy(), Project::copy());
    ours.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let before = recorded(&ours, &moto, "dev");
    // Another state that recorded the same resources (copied, or from the days when two
    // same-named environments could adopt each other's), under an identity of its own.
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(ours.path().join(".kstack/state/dev.json")).unwrap()).unwrap();
    state["identity"] = serde_json::json!("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(other.path().join(".kstack/state")).unwrap();
    std::fs::write(other.path().join(".kstack/state/dev.json"), serde_json::to_vec(&state).unwrap()).unwrap();

    let destroyed = other.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).output().unwrap();
    assert!(destroyed.status.success(), "{}", String::from_utf8_lossy(&destroyed.stderr));
    let text = String::from_utf8_lossy(&destroyed.stdout);
    assert!(text.contains("No changes."), "nothing of the other identity is destroyed: {text}");
    assert_intact(&ours, &moto, "dev", &before, &rt, &aws);
}

#[test]
fn the_same_environment_in_two_regions_keeps_its_global_iam_apart() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    // IAM is global: a `dev` in eu-west-1 and one in us-east-1 share the account's roles.
    let (europe, america) = (Project::copy(), Project::copy());
    let xenial = rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&moto.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await;
        let images = aws_sdk_ec2::Client::new(&config).describe_images().owners("099720109477").send().await.unwrap();
        images.images().iter().find(|i| i.name().is_some_and(|n| n.contains("xenial"))).and_then(|i| i.image_id()).unwrap().to_owned()
    });
    let base = "environments/base.yaml";
    america.edit(base, "region: eu-west-1", "region: us-east-1");
    america.edit(base, "[eu-west-1a, eu-west-1b, eu-west-1c]", "[us-east-1a, us-east-1b, us-east-1c]");
    america.edit(base, "  image: node\n", &format!("  image: {xenial}\n"));
    for project in [&europe, &america] {
        project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    }
    let iam_of = |project: &Project| -> Vec<(String, String)> {
        recorded(project, &moto, "dev")
            .into_iter()
            .filter(|(address, _)| address.starts_with("iam_role.") || address.starts_with("instance_profile."))
            .collect()
    };
    let (european, american) = (iam_of(&europe), iam_of(&america));
    assert_eq!(european.len(), american.len());
    assert!(european.iter().all(|e| !american.contains(e)), "each region has roles of its own: {european:?} {american:?}");

    europe.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    for (address, id) in &american {
        assert!(rt.block_on(exists(&aws, address, id)), "us-east-1's {address} ({id}) is gone");
    }
    america.kstack(&moto).args(["plan", "dev", "--detailed-exitcode"]).assert().code(0);
    america.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).assert().success();
    let roles = rt.block_on(aws.iam.list_roles().path_prefix("/kstack/").send()).unwrap();
    assert!(roles.roles().is_empty());
}

/// A destroy works from state and tags while the environment has problems: with an unset
/// secret, an unrelated typo and even a region it cannot read (taken from state instead), it
/// lists the problems as warnings and destroys everything the apply made.
#[test]
fn destroy_works_from_state_and_tags_while_the_environment_has_problems() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    project.kstack(&moto).args(["apply", "dev", "--auto-approve"]).assert().success();
    let before = recorded(&project, &moto, "dev");
    assert!(before.len() > 20, "{before:?}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(project.path().join(".kstack/state/dev.json")).unwrap()).unwrap();
    assert_eq!(state["region"], "eu-west-1", "the state records its region");

    let dev = std::fs::read_to_string(project.path().join(DEV)).unwrap();
    project.write(DEV, &format!("{dev}secrets:\n  token: KSTACK_TEST_UNSET_SECRET\nnode_groupz: {{}}\n"));
    project.edit("environments/base.yaml", "region: eu-west-1", "region: Ireland");
    let destroyed = project.kstack(&moto).args(["destroy", "dev", "--auto-approve"]).env_remove("KSTACK_TEST_UNSET_SECRET").output().unwrap();
    let warned = String::from_utf8_lossy(&destroyed.stderr);
    assert!(destroyed.status.success(), "{warned}");
    assert!(warned.contains("warning: environment `dev` has 3 problem(s) (`kstack validate dev` shows them); going on from its state:"), "{warned}");
    for problem in
        ["base.yaml:3:9: `Ireland` is not an AWS region name", "secret `token` reads $KSTACK_TEST_UNSET_SECRET, which is not set", "node_groupz"]
    {
        assert!(warned.contains(problem), "{problem}: {warned}");
    }
    let text = String::from_utf8_lossy(&destroyed.stdout);
    assert!(text.contains("Destroy complete!"), "{text}");
    rt.block_on(assert_nothing_left_of_dev(&aws));
    assert!(recorded(&project, &moto, "dev").is_empty(), "the state records nothing");
}

/// Exit statuses tell bad input (2) from a failed run (1); with `plan --detailed-exitcode`, 2
/// means changes and any error is 1, as in Terraform. Missing AWS credentials fail the run with
/// what the credential chain tried, one line each, and what to set. No emulator: nothing here
/// gets as far as a request (the endpoint is a closed loopback port, instance metadata off).
#[test]
fn exit_statuses_tell_bad_input_from_a_failed_run_and_missing_credentials_say_what_was_tried() {
    let project = Project::copy();
    let home = tempfile::tempdir().unwrap();
    let kstack = |args: &[&str]| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("kstack"))
            .arg("-C")
            .arg(project.path())
            .args(args)
            .env_clear()
            .envs([("PATH", std::env::var("PATH").unwrap_or_default()), ("HOME", home.path().display().to_string())])
            .envs([("AWS_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_EC2_METADATA_DISABLED", "true"), ("NO_COLOR", "1")])
            .output()
            .unwrap()
    };
    project.edit(DEV, "    min: 3\n", "    min: 40\n");
    for (args, status) in [(&["validate", "dev"][..], 2), (&["plan", "dev"], 2), (&["plan", "dev", "--detailed-exitcode"], 1)] {
        let output = kstack(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(status), "{args:?}: {stderr}");
        assert!(stderr.contains("min (40) is greater than max (30)") && stderr.contains("dev.yaml:23:10"), "{args:?}: {stderr}");
    }
    project.edit(DEV, "    min: 40\n", "    min: 3\n");
    let unknown = kstack(&["roll", "dev", "--group", "wrokers"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", String::from_utf8_lossy(&unknown.stderr));

    let output = kstack(&["plan", "dev"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for tried in ["no credentials found in chain", "\n  Environment: ", "\n  Profile: ", "\n  Ec2InstanceMetadata: ", "set AWS_PROFILE"] {
        assert!(stderr.contains(tried), "`{tried}` in: {stderr}");
    }
    assert!(!stderr.contains("CredentialsNotLoaded(") && !stderr.contains("DispatchFailure("), "no debug dump: {stderr}");
    assert!(stderr.lines().all(|line| line.len() < 300), "one line each: {stderr}");
}
