//! An environment in a VPC another team owns, through the binary on the emulator: its groups,
//! balancer and nodes go in that VPC's subnets; the VPC and subnets are read, checked, never
//! changed, and still there after `destroy`.

use kstack_testkit::{json, said, Emulated, Project};

const ENVIRONMENT: &str = "region: eu-west-1
network:
  vpc_id: VPC
  subnets:
    nodes: { eu-west-1a: NODES_A, eu-west-1b: NODES_B }
    edge: { eu-west-1a: EDGE_A }
security_groups:
  web:
    description: Web nodes
    ingress:
      - { protocol: tcp, ports: 30080, groups: [lb] }
  lb:
    description: The web balancer
    ingress:
      - { protocol: tcp, ports: 80, cidrs: [0.0.0.0/0] }
load_balancers:
  front:
    subnets: edge
    security_groups: [lb]
    node_groups: [web]
    listeners:
      - { port: 80, protocol: tcp, instance_port: 30080 }
    health_check: { target: \"TCP:30080\" }
node_groups:
  web:
    min: 2
    max: 4
    subnets: nodes
    instance_type: t3.small
    image: node
    security_groups: [web]
";

#[test]
fn an_environment_lives_in_a_vpc_it_does_not_own_and_leaves_it_as_it_was() {
    let Emulated { moto, rt, aws, ami: _ } = Emulated::with_node_image();
    let project = Project::copy();
    // The network team's VPC and subnets, tagged their way.
    let (vpc, subnets) = rt.block_on(async {
        let vpc = aws.ec2.create_vpc().cidr_block("10.50.0.0/16").send().await.unwrap().vpc().unwrap().vpc_id().unwrap().to_owned();
        let mut subnets = Vec::new();
        for (cidr, zone) in [("10.50.0.0/20", "eu-west-1a"), ("10.50.16.0/20", "eu-west-1b"), ("10.50.32.0/24", "eu-west-1a")] {
            let made = aws.ec2.create_subnet().vpc_id(&vpc).cidr_block(cidr).availability_zone(zone).send().await.unwrap();
            subnets.push(made.subnet().unwrap().subnet_id().unwrap().to_owned());
        }
        (vpc, subnets)
    });
    let text = ENVIRONMENT.replace("VPC", &vpc).replace("NODES_A", &subnets[0]).replace("NODES_B", &subnets[1]).replace("EDGE_A", &subnets[2]);
    project.write("environments/shared.yaml", &text);

    // Mistakes are problems at their lines: a VPC described both ways, a subnet that is not there.
    project.write("environments/both.yaml", &text.replace("  vpc_id:", "  vpc_cidr: 10.50.0.0/16\n  vpc_id:"));
    let both = project.kstack(&moto).args(["validate", "both"]).output().unwrap();
    assert_eq!(both.status.code(), Some(2), "{}", said(&both));
    assert!(said(&both).contains("`vpc_cidr` describes a VPC kstack makes; with `vpc_id` the VPC is someone else's"), "{}", said(&both));
    project.write("environments/missing.yaml", &text.replace(&subnets[1], "subnet-0123456789abcdef0"));
    let missing = project.kstack(&moto).args(["plan", "missing"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", said(&missing));
    assert!(
        said(&missing).contains("eu-west-1 has no subnet `subnet-0123456789abcdef0`") && said(&missing).contains("missing.yaml:5:64"),
        "{}",
        said(&missing)
    );

    let plan = json(&project.kstack(&moto).args(["plan", "shared", "--json"]).output().unwrap());
    let kinds: Vec<&str> = plan["plan"]["actions"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert!(!kinds.iter().any(|k| matches!(*k, "vpc" | "subnet" | "route_table" | "internet_gateway" | "nat_gateway")), "{kinds:?}");
    project.kstack(&moto).args(["apply", "shared", "--auto-approve"]).assert().success();

    rt.block_on(async {
        let groups = aws.ec2.describe_security_groups().filters(kstack_testkit::env_filter("shared")).send().await.unwrap();
        assert_eq!(groups.security_groups().len(), 2);
        assert!(groups.security_groups().iter().all(|g| g.vpc_id() == Some(vpc.as_str())), "the groups are in the team's VPC");
        let group = aws.group("shared-web").await;
        let mut zones: Vec<&str> = group.vpc_zone_identifier().unwrap().split(',').collect();
        zones.sort_unstable();
        let mut nodes = vec![subnets[0].as_str(), subnets[1].as_str()];
        nodes.sort_unstable();
        assert_eq!(zones, nodes, "the nodes run in the team's subnets");
        let balancers = aws.elb.describe_load_balancers().send().await.unwrap();
        assert_eq!(balancers.load_balancer_descriptions()[0].subnets(), [subnets[2].clone()]);
    });
    let again = json(&project.kstack(&moto).args(["plan", "shared", "--json"]).output().unwrap());
    assert_eq!(again["plan"]["summary"]["create"], 0, "{:#}", again["plan"]);
    assert!(again["plan"]["actions"].as_array().unwrap().iter().all(|a| a["action"] == "no_op"), "{:#}", again["plan"]["actions"]);

    project.kstack(&moto).args(["destroy", "shared", "--auto-approve"]).assert().success();
    rt.block_on(async {
        let vpcs = aws.ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
        assert_eq!(vpcs.vpcs().len(), 1, "the VPC stays");
        let left = aws.ec2.describe_subnets().set_subnet_ids(Some(subnets.clone())).send().await.unwrap();
        assert_eq!(left.subnets().len(), 3, "its subnets stay");
        let groups = aws.ec2.describe_security_groups().filters(kstack_testkit::env_filter("shared")).send().await.unwrap();
        assert!(groups.security_groups().is_empty(), "what kstack made is gone");
    });
}
