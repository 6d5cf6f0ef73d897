//! `kstack validate` and `kstack graph` through the binary.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

fn kstack() -> Command {
    let mut cmd = Command::cargo_bin("kstack").expect("kstack binary");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env_remove("KSTACK_PROJECT")
        .env_remove("RUST_LOG");
    cmd
}

/// Every broken file under tests/invalid/ fails validation with the problems in its snapshot.
#[test]
fn broken_environments_report_every_problem_with_its_location() {
    insta::glob!("invalid/*.yaml", |path| {
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        let output = kstack().arg("validate").arg(relative).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{} must fail validation", relative.display());
        assert!(output.stdout.is_empty(), "problems go to stderr only");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        insta::assert_snapshot!(stderr);
    });
}

#[test]
fn the_shipped_dev_environment_is_valid() {
    let output = kstack().args(["validate", "dev"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("environment `dev` is valid"), "{stdout}");
}

#[test]
fn validate_json_lists_problems_with_file_line_and_column() {
    let output = kstack()
        .args(["validate", "tests/invalid/min-greater-than-max.yaml", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["valid"], false);
    let problem = &json["problems"][0];
    assert_eq!(problem["location"]["file"], "tests/invalid/min-greater-than-max.yaml");
    assert_eq!(problem["location"]["line"], 4);
    assert_eq!(problem["location"]["column"], 10);
    assert_eq!(problem["message"], "min (10) is greater than max (5)");
}

#[test]
fn unknown_environment_names_the_ones_that_exist() {
    let output = kstack().args(["validate", "deve"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("environments/deve.yaml does not exist"), "{stderr}");
    assert!(stderr.contains("did you mean `dev`?"), "{stderr}");
}

#[test]
fn dev_graph_is_valid_dot_with_every_resource_and_edge() {
    let json_out = kstack().args(["graph", "dev", "--format", "json"]).output().unwrap();
    assert!(json_out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    let resources = json["resources"].as_array().unwrap();
    let edges = json["edges"].as_array().unwrap();

    let addresses: Vec<&str> = resources.iter().map(|r| r["address"].as_str().unwrap()).collect();
    for expected in [
        "vpc.main",
        "internet_gateway.main",
        "nat_gateway.eu-west-1a",
        "subnet.public.eu-west-1a",
        "subnet.private.eu-west-1c",
        "route_table.public",
        "route_table.private",
        "security_group.masters",
        "security_group_rules.ingress-elb",
        "iam_role.masters",
        "instance_profile.nodes",
        "launch_template.workers",
        "asg.masters",
        "asg.workers",
        "asg.ingress",
        "elb.ingress",
    ] {
        assert!(addresses.contains(&expected), "missing {expected} in {addresses:?}");
    }
    // dev uses a single NAT gateway, so there is no second one.
    assert!(!addresses.contains(&"nat_gateway.eu-west-1b"));
    // Dependencies come first in the resource list.
    let position = |a: &str| addresses.iter().position(|x| *x == a).unwrap();
    for edge in edges {
        let (from, to) = (edge["from"].as_str().unwrap(), edge["to"].as_str().unwrap());
        assert!(position(from) < position(to), "{from} must come before {to}");
    }
    let has_edge = |from: &str, to: &str| edges.iter().any(|e| e["from"] == from && e["to"] == to);
    assert!(has_edge("elb.ingress", "asg.ingress"));
    assert!(has_edge("security_group.workers", "security_group_rules.masters"));
    assert!(has_edge("security_group_rules.ingress", "asg.ingress"));
    assert!(has_edge("nat_gateway.eu-west-1a", "route_table.private"));

    let dot_out = kstack().args(["graph", "dev"]).output().unwrap();
    assert!(dot_out.status.success());
    let dot = String::from_utf8(dot_out.stdout).unwrap();
    for address in &addresses {
        assert!(dot.contains(&format!("\"{address}\" [label=")), "node {address} missing from DOT");
    }
    for edge in edges {
        let line = format!("\"{}\" -> \"{}\";", edge["from"].as_str().unwrap(), edge["to"].as_str().unwrap());
        assert!(dot.contains(&line), "edge {line} missing from DOT");
    }

    // Graphviz itself must accept it (installed by scripts/setup).
    let mut dot_cmd = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz `dot` must be installed: run scripts/setup");
    use std::io::Write;
    dot_cmd.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let rendered = dot_cmd.wait_with_output().unwrap();
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    let svg = String::from_utf8(rendered.stdout).unwrap();
    assert_eq!(svg.matches("class=\"node\"").count(), resources.len());
    assert_eq!(svg.matches("class=\"edge\"").count(), edges.len());
}

#[test]
fn secrets_in_user_data_are_shown_as_a_hash() {
    let output = kstack().args(["graph", "dev", "--format", "json"]).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("#!/bin/bash"), "user data must not appear in clear text");
    assert!(text.contains("\"sha256\""));
}

#[test]
fn completions_are_generated_for_bash() {
    let output = kstack().args(["completions", "bash"]).output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8(output.stdout).unwrap().contains("validate"));
}

/// `kstack graph dev | head -n 1`: a reader that leaves early is no error (the demo runs under
/// `set -o pipefail`), but output that cannot be written for another reason is.
#[test]
fn output_to_a_closed_pipe_is_quietly_dropped_and_a_full_disk_fails() {
    let mut child = kstack().args(["graph", "dev"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(closed.status.success(), "exit {:?}: {stderr}", closed.status);
    assert!(stderr.is_empty(), "{stderr}");

    let full = kstack().args(["graph", "dev"]).stdout(std::fs::File::create("/dev/full").unwrap()).output().unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: cannot write to stdout: No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn problems_in_an_image_and_its_roles_are_reported_with_the_environment() {
    let project = tempfile::tempdir().unwrap();
    for dir in ["environments", "images", "roles/base"] {
        std::fs::create_dir_all(project.path().join(dir)).unwrap();
    }
    let minimal = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minimal.yaml")).unwrap();
    std::fs::write(project.path().join("environments/test.yaml"), minimal.replace("image: ami-0123456789abcdef0", "image: node")).unwrap();
    std::fs::write(
        project.path().join("images/node.yaml"),
        "source: { owner: \"099720109477\", name: ubuntu-* }\nroles: [base, missing]\n",
    )
    .unwrap();
    std::fs::write(project.path().join("roles/base/tasks.yaml"), "tasks:\n  - name: typo\n    fille: { path: /tmp/x }\n").unwrap();
    let output = kstack().arg("-C").arg(project.path()).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("role `missing` does not exist"), "{stderr}");
    assert!(stderr.contains("images/node.yaml:2:"), "{stderr}");
    assert!(stderr.contains("unknown module or setting `fille` in task"), "{stderr}");
    assert!(stderr.contains("did you mean `file`?"), "{stderr}");
    assert!(stderr.contains("roles/base/tasks.yaml:3:5"), "{stderr}");
}
