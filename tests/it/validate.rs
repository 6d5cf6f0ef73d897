//! `kstack validate` and `kstack graph` through the binary.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

fn kstack() -> Command {
    let mut cmd = Command::cargo_bin("kstack").expect("kstack binary");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).env("NO_COLOR", "1").env("COLUMNS", "100").env_remove("KSTACK_PROJECT").env_remove("RUST_LOG");
    cmd
}

/// Every broken file under tests/invalid/ fails validation with the problems in its snapshot.
#[test]
fn broken_environments_report_every_problem_with_its_location() {
    insta::glob!("../invalid", "*.yaml", |path| {
        let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        let output = kstack().arg("validate").arg(relative).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{} must fail validation: bad input exits 2", relative.display());
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
    let output = kstack().args(["validate", "tests/invalid/min-greater-than-max.yaml", "--json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
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
    assert_eq!(output.status.code(), Some(2));
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
    let minimal = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid/base/minimal.yaml")).unwrap();
    std::fs::write(project.path().join("environments/test.yaml"), minimal.replace("image: ami-0123456789abcdef0", "image: node")).unwrap();
    std::fs::write(project.path().join("images/node.yaml"), "source: { owner: \"099720109477\", name: ubuntu-* }\nroles: [base, missing]\n").unwrap();
    std::fs::write(project.path().join("roles/base/tasks.yaml"), "tasks:\n  - name: typo\n    fille: { path: /tmp/x }\n").unwrap();
    let output = kstack().arg("-C").arg(project.path()).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("role `missing` does not exist"), "{stderr}");
    assert!(stderr.contains("images/node.yaml:2:"), "{stderr}");
    assert!(stderr.contains("unknown module or setting `fille` in task"), "{stderr}");
    assert!(stderr.contains("did you mean `file`?"), "{stderr}");
    assert!(stderr.contains("roles/base/tasks.yaml:3:5"), "{stderr}");

    // A bake of the image says the same, before it goes near AWS; an image that names no
    // place to build is refused as bad input too.
    let bake =
        |project: &Path| kstack().arg("-C").arg(project).args(["bake", "node"]).env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").output().unwrap();
    let output = bake(project.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("image `node`") && stderr.contains("role `missing` does not exist"), "{stderr}");
    std::fs::write(project.path().join("images/node.yaml"), "source: { owner: \"099720109477\", name: ubuntu-* }\nroles: []\n").unwrap();
    let output = bake(project.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("image `node` says nowhere to build") && stderr.contains("add `build:"), "{stderr}");
}

/// `state:` of a line or a kernel parameter is present or absent: a typo is a problem at load
/// time, where it is written, not a failure on the first host.
#[test]
fn a_misspelt_state_is_a_problem_before_anything_runs() {
    let project = project_with_roles("[typos]");
    std::fs::create_dir_all(project.path().join("roles/typos")).unwrap();
    std::fs::write(
        project.path().join("roles/typos/tasks.yaml"),
        "tasks:\n  \
         - name: a line\n    line: { path: /etc/x, line: y, state: absnet }\n  \
         - name: a parameter\n    kernel_cmdline: { parameter: quiet, state: presnet }\n",
    )
    .unwrap();
    let output = kstack().arg("-C").arg(project.path()).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "unknown variant `absnet`, expected `present` or `absent`",
        "roles/typos/tasks.yaml:3:",
        "unknown variant `presnet`",
        "roles/typos/tasks.yaml:5:",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// A scratch project whose `test` environment runs `image: node` with `roles`.
fn project_with_roles(roles: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().unwrap();
    for dir in ["environments", "images", "roles"] {
        std::fs::create_dir_all(project.path().join(dir)).unwrap();
    }
    let minimal = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid/base/minimal.yaml")).unwrap();
    std::fs::write(project.path().join("environments/test.yaml"), minimal.replace("image: ami-0123456789abcdef0", "image: node")).unwrap();
    std::fs::write(project.path().join("images/node.yaml"), format!("source: ami-0123456789abcdef0\nroles: {roles}\n")).unwrap();
    project
}

/// A vendored role cannot make kstack read files outside it (and so ship them to the nodes):
/// absolute paths, `..` and symlinks leading out are each reported where they are written,
/// all at once, by every command that loads roles, before anything runs.
#[test]
fn role_files_outside_the_role_are_refused_before_anything_runs() {
    const SECRET: &str = "aws_secret_access_key = do-not-ship-me";
    let project = project_with_roles("[leaky, ../roles/leaky]");
    let root = project.path();
    std::fs::write(root.join("secret"), SECRET).unwrap();
    let role = root.join("roles/leaky");
    std::fs::create_dir_all(role.join("files")).unwrap();
    std::fs::write(
        role.join("tasks.yaml"),
        "tasks:\n  \
         - name: climb out\n    copy: { dest: /etc/stolen, src: ../../secret }\n  \
         - name: absolute\n    template: { dest: /etc/copy, src: /etc/passwd }\n  \
         - name: through a link\n    copy: { dest: /etc/linked, src: link }\n  \
         - name: key from home\n    apt_repository: { name: x, source: \"deb http://127.0.0.1/ x main\", key_src: /root/.aws/credentials }\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../../../secret", role.join("files/link")).unwrap();
    std::os::unix::fs::symlink(root.join("secret"), role.join("defaults.yaml")).unwrap();
    let secret = root.join("secret").canonicalize().unwrap();

    let expected = [
        "role name `../roles/leaky` is not a plain name".to_owned(),
        "images/node.yaml:2:16".to_owned(),
        "`src: ../../secret` contains `..`, which could lead outside the role".to_owned(),
        "roles/leaky/tasks.yaml:3:37".to_owned(),
        "`src: /etc/passwd` is an absolute path, outside the role".to_owned(),
        "roles/leaky/tasks.yaml:5:39".to_owned(),
        format!("`src: link` resolves to {}, outside the role", secret.display()),
        "roles/leaky/tasks.yaml:7:37".to_owned(),
        "`key_src: /root/.aws/credentials` is an absolute path, outside the role".to_owned(),
        format!("defaults.yaml resolves to {}, outside the role", secret.display()),
        "images/node.yaml:2:9".to_owned(),
        "name a file in the role's files/ directory by its path there".to_owned(),
    ];
    // `provision --check` would connect to AWS next: pointed at a closed loopback port, so a
    // regression fails here instead of reaching out.
    for command in [&["validate", "test"][..], &["provision", "test", "--check"]] {
        let output = kstack()
            .arg("-C")
            .arg(root)
            .args(command)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        for part in &expected {
            assert!(stderr.contains(part.as_str()), "{command:?}: missing {part:?} in\n{stderr}");
        }
        assert!(stderr.contains("has 6 problems"), "{command:?}: {stderr}");
        assert!(!stderr.contains("listing instances"), "{command:?} must stop before AWS: {stderr}");
        let all = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
        assert!(!all.contains("do-not-ship-me"), "the secret must never be read: {all}");
    }
}

/// The roles/ and images/ directories themselves linked to somewhere outside the project are
/// refused like any other link leading out: kstack reads nothing outside the project.
#[test]
fn roles_and_images_directories_linked_from_outside_the_project_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("roles/vendored")).unwrap();
    std::fs::write(outside.path().join("roles/vendored/tasks.yaml"), "tasks: []\n").unwrap();
    std::fs::create_dir_all(outside.path().join("images")).unwrap();
    std::fs::write(outside.path().join("images/node.yaml"), "source: ami-0123456789abcdef0\nroles: [vendored]\n").unwrap();
    let project = project_with_roles("[vendored]");
    let root = project.path();
    std::fs::remove_dir_all(root.join("roles")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("roles"), root.join("roles")).unwrap();
    let output = kstack().arg("-C").arg(root).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let role = outside.path().join("roles/vendored").canonicalize().unwrap();
    assert!(stderr.contains(&format!("resolves to {}, outside the project", role.display())), "{stderr}");

    std::fs::remove_file(root.join("roles")).unwrap();
    std::fs::create_dir_all(root.join("roles/vendored")).unwrap();
    std::fs::write(root.join("roles/vendored/tasks.yaml"), "tasks: []\n").unwrap();
    std::fs::remove_dir_all(root.join("images")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("images"), root.join("images")).unwrap();
    let output = kstack().arg("-C").arg(root).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("outside the project"), "{stderr}");
}

/// `extends` through a symlink that leads out of the project is refused like a `..`.
#[test]
fn a_base_file_linked_from_outside_the_project_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let base = outside.path().join("base.yaml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid/base/minimal.yaml"), &base).unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("environments")).unwrap();
    std::os::unix::fs::symlink(&base, project.path().join("environments/base.yaml")).unwrap();
    std::fs::write(project.path().join("environments/test.yaml"), "extends: base.yaml\n").unwrap();
    let output = kstack().arg("-C").arg(project.path()).args(["validate", "test"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let resolved = base.canonicalize().unwrap();
    assert!(stderr.contains(&format!("`extends: base.yaml` resolves to {}, outside the project", resolved.display())), "{stderr}");
    assert!(stderr.contains("environments/test.yaml:1:10"), "{stderr}");

    // The same file copied in is fine.
    std::fs::remove_file(project.path().join("environments/base.yaml")).unwrap();
    std::fs::copy(&base, project.path().join("environments/base.yaml")).unwrap();
    let output = kstack().arg("-C").arg(project.path()).args(["validate", "test"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Like git since CVE-2022-24765: a project found above the working directory that another
/// user owns (here uid 65534, which could have planted `environments/` there) is not used,
/// even by root; naming it with `-C` is the way to say it is trusted.
#[test]
fn a_project_owned_by_another_user_is_not_discovered() {
    use std::os::unix::fs::chown;
    let scratch = tempfile::tempdir().unwrap();
    let planted = scratch.path().join("shared");
    std::fs::create_dir_all(planted.join("environments")).unwrap();
    std::fs::create_dir_all(planted.join("work/sub")).unwrap();
    std::fs::write(planted.join("environments/dev.yaml"), "region: eu-west-1\n").unwrap();
    let discover = || kstack().current_dir(planted.join("work/sub")).args(["validate", "dev"]).output().unwrap();

    // Owned by this user, it is found (and its half-written environment is reported).
    let own = discover();
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert!(stderr.contains("missing required setting `network`"), "{stderr}");

    // The owner of /proc/self is this process's effective user.
    let user = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    for owned_by_other in [planted.clone(), planted.join("environments")] {
        chown(&owned_by_other, Some(65534), Some(65534)).unwrap();
        let refused = discover();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{stderr}");
        let expected = format!(
            "error: {} looks like a kstack project, but {} is owned by uid 65534, not by you (uid {user}); kstack does not use it",
            planted.display(),
            owned_by_other.display(),
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(stderr.contains(&format!("hint: if you trust it, name it with `-C {}`", planted.display())), "{stderr}");
        assert!(!stderr.contains("network"), "nothing of the project may be read: {stderr}");
        chown(&owned_by_other, Some(user), Some(user)).unwrap();
    }

    // Named explicitly, it is used.
    chown(&planted, Some(65534), Some(65534)).unwrap();
    let named = kstack().current_dir(planted.join("work/sub")).arg("-C").arg(&planted).args(["validate", "dev"]).output().unwrap();
    assert!(String::from_utf8_lossy(&named.stderr).contains("missing required setting `network`"));
}

/// A machine without a tz database still refuses an unknown zone (kstack's own list of names)
/// and accepts known ones: a node would read an unknown zone as UTC without a word.
#[test]
fn time_zones_are_checked_without_a_tz_database() {
    let refused = kstack().env("TZDIR", "/nonexistent").args(["validate", "tests/invalid/reboots.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`Mars/Olympus` is not a known time zone"), "{stderr}");
    assert!(stderr.contains("tests/invalid/reboots.yaml:3:74"), "{stderr}");
    // dev's window is in Europe/Berlin.
    let accepted = kstack().env("TZDIR", "/nonexistent").args(["validate", "dev"]).output().unwrap();
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
}
