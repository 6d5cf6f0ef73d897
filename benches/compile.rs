//! Validates and compiles a synthetic environment of about 5,000 resources.
//! Run with `cargo bench --bench compile`; prints wall time and peak memory.
//! Target (release build): under 0.5 s and 100 MiB.

use std::fmt::Write;
use std::time::Instant;

use kstack::compile::compile;
use kstack::diagnostics::Problems;
use kstack::model::{load_environment, Project};

/// Each node group brings a security group, its rules, a launch template and an ASG.
const GROUPS: usize = 1240;

fn synthetic_environment() -> String {
    let mut yaml = String::from(
        "region: eu-west-1\ntags: {Team: platform}\nvariables: {cluster_domain: cluster.local}\n\
         network:\n  vpc_cidr: 10.0.0.0/8\n  availability_zones: [eu-west-1a, eu-west-1b, eu-west-1c]\n  nat_gateways: per_zone\n  subnets:\n    public: {type: public, prefix_length: 20}\n    private: {type: private, prefix_length: 16}\n\
         iam_roles:\n  nodes: {managed_policies: [arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess]}\n\
         load_balancers:\n  ingress:\n    subnets: public\n    node_groups: [group-0]\n    listeners: [{port: 80, protocol: tcp, instance_port: 30080}]\n    health_check: {target: \"TCP:30080\"}\n\
         security_groups:\n",
    );
    for i in 0..GROUPS {
        let peer = (i + 1) % GROUPS;
        let _ = writeln!(
            yaml,
            "  group-{i}:\n    ingress:\n      - {{protocol: all, self: true}}\n      - {{protocol: tcp, ports: 10250, groups: [group-{peer}]}}\n      - {{protocol: tcp, ports: 22, cidrs: [10.0.0.0/8]}}"
        );
    }
    yaml.push_str("node_groups:\n");
    for i in 0..GROUPS {
        let _ = writeln!(
            yaml,
            "  group-{i}:\n    min: 1\n    max: 10\n    subnets: private\n    instance_type: m5.large\n    image: ami-0123456789abcdef0\n    security_groups: [group-{i}]\n    iam_role: nodes\n    user_data: |\n      #!/bin/sh\n      echo {{{{ env }}}} {{{{ group.name }}}} {{{{ cluster_domain }}}}"
        );
    }
    yaml
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("environments")).unwrap();
    let path = dir.path().join("environments/synthetic.yaml");
    std::fs::write(&path, synthetic_environment()).unwrap();
    let project = Project { root: dir.path().to_path_buf() };

    let mut best = f64::MAX;
    let mut resources = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let loaded = load_environment(&project, "synthetic");
        let checked = loaded.result.unwrap_or_else(|problems| panic!("synthetic environment invalid: {problems:?}"));
        let mut problems = Problems::default();
        let graph = compile(&checked, &mut problems).expect("compiles");
        assert!(problems.is_empty());
        resources = graph.len();
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!("validate+compile: {resources} resources, best of 5: {:.3} s", best);
    match peak_rss_mib() {
        Some(mib) => println!("peak memory (VmHWM): {mib:.1} MiB"),
        None => println!("peak memory: unavailable on this platform"),
    }
}
