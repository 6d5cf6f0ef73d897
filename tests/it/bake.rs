//! `kstack bake` through the binary on the AWS emulator: the builder instance gets a loopback
//! address in the fleet's VPC, and the test boots a test node there with the key the bake put
//! in the instance's user data, as cloud-init would install it.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kstack_testkit::faults::FaultProxy;
use kstack_testkit::node::{self, ClientKey, Node};
use kstack_testkit::{runtime, stand_in_repo, Clients, Moto, Project};

const FLEET: &str = "environments/fleet.yaml";

fn fleet(moto: &Moto, rt: &tokio::runtime::Runtime) -> (Project, Clients) {
    let project = Project::fixture("project");
    project.loopback_fleet(40);
    // The fleet itself needs no instances here: only its network.
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 0\n    max: 2\n");
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.kstack(moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    (project, aws)
}

/// Emulator gap: moto's console output never shows the builder's host keys, so a bake waits
/// only a second for them unless the test says otherwise (AWS posts them minutes after start).
const HOST_KEY_WAIT: [&str; 2] = ["--host-key-wait", "1"];

fn start_bake(project: &Project, moto: &Moto, image: &str, extra: &[&str]) -> Child {
    let mut command = project.kstack_process(moto);
    command.args(["bake", image, "--ssh-timeout", "60"]).args(extra);
    if !extra.contains(&HOST_KEY_WAIT[0]) {
        command.args(HOST_KEY_WAIT);
    }
    command.stdin(Stdio::null()).spawn().unwrap()
}

/// The running builder's address and the public key its user data asks cloud-init to install.
fn builder(aws: &Clients, rt: &tokio::runtime::Runtime) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = rt.block_on(async {
            let described = aws
                .ec2
                .describe_instances()
                .filters(aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:bake").build())
                .filters(aws_sdk_ec2::types::Filter::builder().name("instance-state-name").values("running").build())
                .send()
                .await
                .unwrap();
            let instance = described.reservations().iter().flat_map(|r| r.instances()).next().cloned()?;
            let id = instance.instance_id()?.to_owned();
            let attribute = aws
                .ec2
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
                .unwrap();
            let data = attribute.user_data()?.value()?.to_owned();
            let text = String::from_utf8(aws_smithy_types::base64::decode(&data).unwrap()).unwrap();
            let key = text.lines().find_map(|l| l.trim().strip_prefix("- "))?.to_owned();
            Some((instance.private_ip_address()?.to_owned(), key))
        });
        if let Some(found) = found {
            return found;
        }
        assert!(Instant::now() < deadline, "no builder was launched");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Boots a node at the builder's address with the bake's key installed.
fn serve(address: &str, public_key: &str) -> Node {
    serve_with(address, public_key, |_| {})
}

/// The same, with `prepare` adding to the node's root before it boots.
fn serve_with(address: &str, public_key: &str, prepare: impl FnOnce(&std::path::Path)) -> Node {
    let key = ClientKey::new();
    let public_key = public_key.to_owned();
    Node::boot_with(&key, address, move |root| {
        std::fs::write(root.join("root/.ssh/authorized_keys"), format!("{public_key}\n")).unwrap();
        prepare(root);
    })
}

/// Gone from the node: absent from its writable layer, or hidden there by an overlayfs
/// whiteout (a 0/0 character device) when the base rootfs has the file.
fn removed(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).map_or(true, |m| m.file_type().is_char_device())
}

/// An EC2 client for another region of the emulator.
async fn ec2_in(moto: &Moto, region: &'static str) -> aws_sdk_ec2::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto.endpoint)
        .region(aws_config::Region::new(region))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&config)
}

fn wait(child: Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

/// Every builder instance any bake launched, whatever its state.
fn builders(aws: &Clients, rt: &tokio::runtime::Runtime) -> Vec<aws_sdk_ec2::types::Instance> {
    rt.block_on(async {
        let described = aws
            .ec2
            .describe_instances()
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:bake").build())
            .send()
            .await
            .unwrap();
        described.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
    })
}

/// Builders not terminated, and bake security groups.
fn leftovers(aws: &Clients, rt: &tokio::runtime::Runtime) -> (usize, usize) {
    let alive = builders(aws, rt).iter().filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated")).count();
    rt.block_on(async {
        let groups = aws
            .ec2
            .describe_security_groups()
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:bake").build())
            .send()
            .await
            .unwrap();
        (alive, groups.security_groups().len())
    })
}

#[test]
fn a_bake_makes_a_tagged_ami_leaves_nothing_behind_and_is_reused_the_second_time() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt);

    // The fleet runs an AMI not baked from the current definition of `node`: plan says so.
    let before = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    let warning = String::from_utf8_lossy(&before.stderr);
    assert!(warning.contains("image `node` changed since its newest AMI"), "{warning}");

    let manifest = project.path().join("manifest.json");
    let child = start_bake(&project, &moto, "node", &["--manifest", manifest.to_str().unwrap()]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("its console showed no SSH host keys within 1s, so the first key seen is trusted"), "{stderr}");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(manifest["host_key"], "trusted-on-first-use", "{manifest:#}");
    // Cleaned before imaging: nothing that makes the builder unique is left.
    assert!(removed(&node.file("/root/.ssh/authorized_keys")), "the bake key is removed");
    assert!(removed(&node.file("/etc/ssh/ssh_host_ed25519_key")), "host keys are made anew on each node");
    assert_eq!(std::fs::read_to_string(node.file("/etc/machine-id")).unwrap(), "", "each node makes its own machine id");
    assert!(node.file("/etc/app/app.conf").exists(), "the roles' work stays");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ami = stdout.lines().find_map(|l| l.strip_prefix("eu-west-1: ")).unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(stdout.contains("(baked, image `node`"), "{stdout}");
    // Copied to the other region the image asks for, tagged like the original.
    let copy = stdout.lines().find_map(|l| l.strip_prefix("eu-central-1: ")).expect("a copy in eu-central-1");
    let copy = copy.split_whitespace().next().unwrap().to_owned();
    rt.block_on(async {
        let images = ec2_in(&moto, "eu-central-1").await.describe_images().image_ids(&copy).send().await.unwrap();
        let tags = images.images()[0].tags();
        assert!(tags.iter().any(|t| t.key() == Some("kstack:image") && t.value() == Some("node")), "{tags:?}");
    });

    rt.block_on(async {
        let images = aws.ec2.describe_images().image_ids(&ami).send().await.unwrap();
        let image = &images.images()[0];
        let tag = |key: &str| image.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned);
        assert_eq!(tag("kstack:image").as_deref(), Some("node"));
        assert_eq!(tag("kstack:roles").as_deref(), Some("common,everything"));
        assert_eq!(tag("Team").as_deref(), Some("platform"));
        assert!(tag("kstack:bake-hash").is_some_and(|h| h.len() == 64));
        assert!(tag("kstack:source-ami").is_some_and(|s| s.starts_with("ami-")));
        assert!(image.name().unwrap().starts_with("kstack-node-"));
    });
    assert_eq!(leftovers(&aws, &rt), (0, 0), "builder terminated, security group deleted");

    // The fleet was applied with the earlier image of `node`: its plan now moves to the bake.
    let plan = project.kstack(&moto).args(["plan", "fleet", "--json"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&plan.stderr).contains("warning"), "the bake is current");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let template = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "launch_template.app").unwrap();
    assert_eq!(template["action"], "update", "{template:#}");
    let change = template["changes"].as_array().unwrap().iter().find(|c| c["path"] == "image.ami").unwrap();
    assert_eq!(change["after"], ami.as_str());

    // Same source, roles and variables: the AMI is reused and nothing is launched.
    let again = project.kstack(&moto).args(["bake", "node"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && stdout.contains(&format!("eu-west-1: {ami} (reused")), "{stdout}");
    assert_eq!(builders(&aws, &rt).len(), 1, "only the first bake launched a builder");

    // --force bakes anyway.
    let mut forced = start_bake(&project, &moto, "node", &["--force"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while builders(&aws, &rt).len() < 2 {
        assert!(Instant::now() < deadline, "--force launched no builder");
        std::thread::sleep(Duration::from_millis(300));
    }
    forced.kill().unwrap();
    forced.wait().unwrap();
    project.kstack(&moto).args(["bake", "node", "--cleanup"]).assert().success();
    assert_eq!(leftovers(&aws, &rt), (0, 0));

    // Another project's bake of an image also named `node`, newer and of the same content, is
    // never this project's: not a bake to reuse, not its current bake, and not its newest once
    // the definition changes.
    let theirs = rt.block_on(async {
        let ours = aws.ec2.describe_images().image_ids(&ami).send().await.unwrap();
        let hash = ours.images()[0].tags().iter().find(|t| t.key() == Some("kstack:bake-hash")).unwrap().value().unwrap().to_owned();
        let copied = aws.ec2.copy_image().source_image_id(&ami).source_region("eu-west-1").name("theirs").send().await.unwrap();
        let theirs = copied.image_id().unwrap().to_owned();
        let tag = |key: &str, value: &str| aws_sdk_ec2::types::Tag::builder().key(key).value(value).build();
        let tags = [tag("kstack:image", "node"), tag("kstack:bake-hash", &hash), tag("kstack:project", "someone-else")];
        aws.ec2.create_tags().resources(&theirs).set_tags(Some(tags.to_vec())).send().await.unwrap();
        theirs
    });
    let plan = project.kstack(&moto).args(["plan", "fleet", "--json"]).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let template = plan["plan"]["actions"].as_array().unwrap().iter().find(|a| a["address"] == "launch_template.app").unwrap();
    let change = template["changes"].as_array().unwrap().iter().find(|c| c["path"] == "image.ami").unwrap();
    assert_eq!(change["after"], ami.as_str(), "this project's own bake, not {theirs}");
    let again = project.kstack(&moto).args(["bake", "node"]).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains(&format!("eu-west-1: {ami} (reused")), "not {theirs}: {again:?}");
    project.edit("images/node.yaml", "  app_name: app\n", "  app_name: renamed\n");
    let stale = project.kstack(&moto).args(["plan", "fleet"]).output().unwrap();
    let warning = String::from_utf8_lossy(&stale.stderr);
    assert!(warning.contains(&format!("image `node` changed since its newest AMI {ami} was baked")), "not {theirs}: {warning}");
}

#[test]
fn a_bake_whose_checks_fail_or_that_is_interrupted_leaves_nothing_behind() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt);
    std::fs::create_dir_all(project.path().join("roles/failing")).unwrap();
    project.write("roles/failing/tasks.yaml", "tasks:\n  - name: marker\n    copy: { dest: /etc/marker, content: \"x\\n\" }\n");
    project.write("roles/failing/checks.yaml", "never there:\n  file: { path: /etc/not-made-by-any-task }\n");
    let image = std::fs::read_to_string(project.path().join("images/node.yaml")).unwrap();
    project.write("images/broken.yaml", &image.replace("roles: [everything]", "roles: [failing]"));

    let child = start_bake(&project, &moto, "broken", &[]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checks failed, no image was made: never there"), "{stderr}");
    assert_eq!(leftovers(&aws, &rt), (0, 0), "{stderr}");
    drop(node);

    // With --keep-on-error the builder stays for debugging, with directions to reach it.
    let child = start_bake(&project, &moto, "broken", &["--keep-on-error"]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kept the builder for debugging") && stderr.contains("ssh -i "), "{stderr}");
    let key = stderr.split("ssh -i ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the kept builder's key is the owner's only");
    assert_eq!(leftovers(&aws, &rt), (1, 1));
    // Another project's kept builder (the identity of its own build environment) is its own
    // to remove: `--cleanup` finds only this build environment's.
    let claim = |identity: &str| {
        rt.block_on(async {
            let bake = aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:bake").build();
            let instances = aws.ec2.describe_instances().filters(bake.clone()).send().await.unwrap();
            let groups = aws.ec2.describe_security_groups().filters(bake).send().await.unwrap();
            let ids = instances
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id())
                .chain(groups.security_groups().iter().filter_map(|g| g.group_id()));
            let tag = aws_sdk_ec2::types::Tag::builder().key("kstack:id").value(identity).build();
            aws.ec2.create_tags().set_resources(Some(ids.map(str::to_owned).collect())).tags(tag).send().await.unwrap();
        })
    };
    claim("0123456789abcdef0123456789abcdef");
    project.kstack(&moto).args(["bake", "broken", "--cleanup"]).assert().success();
    assert_eq!(leftovers(&aws, &rt), (1, 1), "another project's kept builder stays");
    claim(&project.identity("fleet"));
    project.kstack(&moto).args(["bake", "broken", "--cleanup"]).assert().success();
    assert_eq!(leftovers(&aws, &rt), (0, 0));
    assert!(!std::path::Path::new(key).exists(), "the key goes with the builder");
    drop(node);

    // Interrupted while waiting for SSH: no node answers this time.
    let child = start_bake(&project, &moto, "node", &[]);
    builder(&aws, &rt);
    std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("bake of `node` in eu-west-1 stopped: interrupted (SIGINT)"), "{stderr}");
    assert_eq!(leftovers(&aws, &rt), (0, 0), "{stderr}");

    // Killed outright, a bake cannot clean up: `--cleanup` finds its leftovers by tag.
    let mut child = start_bake(&project, &moto, "node", &[]);
    builder(&aws, &rt);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(leftovers(&aws, &rt), (1, 1));
    let cleaned = project.kstack(&moto).args(["bake", "node", "--cleanup"]).output().unwrap();
    assert!(String::from_utf8_lossy(&cleaned.stdout).contains("removed 2 leftover bake resources"));
    assert_eq!(leftovers(&aws, &rt), (0, 0));
}

/// Baked images of `node` in `region`, tagged or not.
fn baked(moto: &Moto, rt: &tokio::runtime::Runtime, region: &'static str) -> Vec<String> {
    rt.block_on(async {
        let ec2 = ec2_in(moto, region).await;
        let images = ec2
            .describe_images()
            .owners("self")
            .filters(aws_sdk_ec2::types::Filter::builder().name("name").values("kstack-node-*").build())
            .send()
            .await
            .unwrap();
        // The seeded image the fleet was applied with is no bake.
        let bakes = images.images().iter().filter(|i| i.name() != Some("kstack-node-test"));
        bakes.filter_map(|i| i.image_id()).map(str::to_owned).collect()
    })
}

fn running_builders(aws: &Clients, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let running = builders(aws, rt).into_iter().filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running"));
    running.filter_map(|i| i.instance_id().map(str::to_owned)).collect()
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files under `dir` holding a private key.
fn private_keys(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(private_keys(&path));
        } else if std::fs::read_to_string(&path).is_ok_and(|text| text.contains("PRIVATE KEY")) {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_bake_killed_at_any_step_is_finished_by_the_next_one_without_duplicates_leftovers_or_keys() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt);
    let temp = tempfile::tempdir().unwrap();
    let bake = || {
        let mut command = project.kstack_process(&moto);
        command.args(["bake", "node", "--ssh-timeout", "60"]).args(HOST_KEY_WAIT).env("TMPDIR", temp.path()).stdin(Stdio::null());
        command.spawn().unwrap()
    };
    for moment in ["its security group exists", "its builder runs", "the roles are applying", "its image exists"] {
        let mut killed = bake();
        let node = match moment {
            "its security group exists" => {
                until(moment, || leftovers(&aws, &rt).1 == 1);
                None
            }
            "its builder runs" => {
                builder(&aws, &rt);
                // A running bake is neither doubled nor cleaned up from under itself.
                let second = project.kstack(&moto).args(["bake", "node"]).env("TMPDIR", temp.path()).output().unwrap();
                let stderr = String::from_utf8_lossy(&second.stderr);
                assert_eq!(second.status.code(), Some(1), "{stderr}");
                assert!(stderr.contains("is being baked from this same content by"), "{stderr}");
                let cleanup = project.kstack(&moto).args(["bake", "node", "--cleanup"]).output().unwrap();
                let said = String::from_utf8_lossy(&cleanup.stderr);
                assert!(cleanup.status.success() && said.contains("is running") && said.contains("left alone"), "{said}");
                assert_eq!(leftovers(&aws, &rt), (1, 1), "the running bake keeps its builder and group");
                None
            }
            _ => {
                let (address, key) = builder(&aws, &rt);
                let node = serve(&address, &key);
                if moment == "the roles are applying" {
                    until(moment, || node.file("/etc/app/app.conf").exists());
                } else {
                    until(moment, || !baked(&moto, &rt, "eu-west-1").is_empty());
                }
                Some(node)
            }
        };
        killed.kill().unwrap();
        let status = killed.wait().unwrap();
        // On the emulator the last steps after CreateImage can beat the kill.
        if moment != "its image exists" {
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "killed when {moment}");
            assert!(leftovers(&aws, &rt).1 == 1, "killed when {moment}: its security group is left");
        }
        assert_eq!(private_keys(temp.path()), Vec::<std::path::PathBuf>::new(), "killed when {moment}: no key on disk");
        drop(node);

        // A plain bake clears what the killed one left, then bakes, or finishes its image.
        let stale = running_builders(&aws, &rt);
        let next = bake();
        let node = (moment != "its image exists").then(|| {
            until("the killed bake's builder is gone", || running_builders(&aws, &rt).iter().all(|id| !stale.contains(id)));
            let (address, key) = builder(&aws, &rt);
            serve(&address, &key)
        });
        let output = wait(next);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "after a kill when {moment}: {stderr}");
        assert_eq!(leftovers(&aws, &rt), (0, 0), "after a kill when {moment}: {stderr}");
        let (home, copies) = (baked(&moto, &rt, "eu-west-1"), baked(&moto, &rt, "eu-central-1"));
        // Emulator gap: moto ignores CopyImage's client token, so a bake killed between
        // CopyImage and tagging the copy leaves an untagged copy that the next bake cannot
        // know of, and it copies again. AWS returns the first copy for the same token.
        let gap = usize::from(moment == "its image exists" && copies.len() == 2);
        assert_eq!((home.len(), copies.len() - gap), (1, 1), "one image per region after a kill when {moment}: {stderr}");
        assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0, "no bake's files are left locally");
        drop(node);

        // Forget the image, so the next moment bakes again.
        rt.block_on(async {
            for (region, ami) in [("eu-west-1", &home[0]), ("eu-central-1", &copies[0])] {
                ec2_in(&moto, region).await.deregister_image().image_id(ami).send().await.unwrap();
            }
        });
    }
}

#[test]
fn the_builder_is_trusted_by_the_host_key_its_console_shows_and_refused_when_it_offers_another() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt);
    // Emulator gap: moto's GetConsoleOutput never shows host keys, so this proxy answers it
    // with the console output AWS would post once cloud-init has printed them.
    let proxy = FaultProxy::start(&moto.endpoint, 1, 0);
    let bake = |extra: &[&str]| {
        let mut command = project.kstack_process(&moto);
        command.args(["bake", "node", "--ssh-timeout", "60", "--host-key-wait", "120"]).args(extra).envs(proxy.env());
        command.stdin(Stdio::null()).spawn().unwrap()
    };

    // The keys show only after a few reads: the bake keeps reading until they do.
    let child = bake(&["--json"]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    until("the bake has read the console twice", || proxy.console_reads() >= 2);
    let offered = std::fs::read_to_string(node.file("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    proxy.set_console_output(Some(kstack_testkit::faults::cloud_init_console(&offered)));
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("host keys taken from its console output"), "{stderr}");
    assert!(!stderr.contains("first key seen is trusted"), "{stderr}");
    let manifest: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(manifest["host_key"], "verified-from-console", "{manifest:#}");
    assert!(removed(&node.file("/etc/ssh/ssh_host_ed25519_key")), "the bake went on to clean the builder");
    drop(node);

    // A builder that offers a key other than the one its console shows is refused before
    // anything runs on it, and the bake leaves no image and nothing temporary.
    proxy.set_console_output(None);
    let child = bake(&["--force"]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    proxy.set_console_output(Some(kstack_testkit::faults::cloud_init_console(node::stale_known_hosts_line(&address).split_once(' ').unwrap().1)));
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the builder offers a host key its console output does not show, so nothing was run on it"), "{stderr}");
    assert!(stderr.contains(&format!("the host key of {address} has changed: it offers ssh-ed25519 SHA256:")), "{stderr}");
    assert!(!node.file("/etc/app").exists(), "nothing ran on the refused builder");
    assert_eq!(baked(&moto, &rt, "eu-west-1").len(), 1, "only the first bake made an image");
    assert_eq!(leftovers(&aws, &rt), (0, 0), "{stderr}");
}

#[test]
fn a_clean_up_that_fails_on_the_builder_fails_the_bake_with_its_output_and_makes_no_image() {
    let moto = Moto::start();
    let rt = runtime();
    let (project, aws) = fleet(&moto, &rt);
    let child = start_bake(&project, &moto, "node", &[]);
    let (address, key) = builder(&aws, &rt);
    let node = serve(&address, &key);
    // An immutable host key (set from outside the node, in its writable layer) cannot be
    // removed: the image would hand the builder's host key to every node.
    let host_key = node.file("/etc/ssh/ssh_host_ed25519_key");
    let chattr = |flag: &str| assert!(std::process::Command::new("chattr").arg(flag).arg(&host_key).status().unwrap().success());
    chattr("+i");
    let output = wait(child);
    chattr("-i");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cleaning the builder failed (exit status 1), no image was made"), "{stderr}");
    assert!(stderr.contains("+ rm -f /etc/ssh/ssh_host_") && stderr.contains("Operation not permitted"), "the script's output: {stderr}");
    assert!(host_key.exists(), "the failure was real: the key is still there");
    assert!(node.file("/etc/app/app.conf").exists(), "the roles ran before the clean-up");
    let images = rt.block_on(async {
        let found = aws
            .ec2
            .describe_images()
            .owners("self")
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag:kstack:image").values("node").build())
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag-key").values("kstack:bake-hash").build())
            .send()
            .await
            .unwrap();
        found.images().iter().filter_map(|i| i.image_id()).map(str::to_owned).collect::<Vec<_>>()
    });
    assert_eq!(images, Vec::<String>::new(), "no AMI carries the bake's tags");
    assert_eq!(leftovers(&aws, &rt), (0, 0), "{stderr}");
}

/// The shipped project's `node` image (images/node.yaml, the roles in roles/), baked as a team
/// would, then run by a fleet. It differs from the shipped file only where this machine does:
/// the builder's place (the test fleet's network), its login (root on a container node) and
/// the package sources (stand-in packages: the archives cannot be reached). A container
/// builder cannot show kernel settings; `vm.rs` checks those on a VM.
#[test]
fn the_shipped_node_image_bakes_and_each_group_gets_its_own_settings_through_user_data() {
    let moto = Moto::start();
    let rt = runtime();
    let project = Project::copy();
    std::fs::copy(kstack_testkit::repo().join("tests/fixtures/project/environments/fleet.yaml"), project.path().join(FLEET)).unwrap();
    project.loopback_fleet(41);
    let shipped = std::fs::read_to_string(kstack_testkit::repo().join("images/node.yaml")).unwrap();
    let source = stand_in_repo::source();
    let image = shipped
        .replace("ssh_user: ubuntu\n", "ssh_user: root\n")
        .replace("  environment: dev\n  subnet_tier: public\n", "  environment: fleet\n  subnet_tier: nodes\n");
    assert_ne!(image, shipped, "the shipped image's login and build place were replaced");
    project.write("images/node.yaml", &format!("{image}variables:\n  docker_apt_source: \"{source}\"\n  kubernetes_apt_source: \"{source}\"\n"));
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    project.edit(FLEET, "    min: 2\n    max: 2\n", "    min: 0\n    max: 2\n");
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();

    let child = start_bake(&project, &moto, "node", &[]);
    let (address, key) = builder(&aws, &rt);
    let node = serve_with(&address, &key, stand_in_repo::prepare);
    let output = wait(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("applying roles: base, thp, docker, monit, unattended-upgrades, kubelet"), "{stderr}");
    // Nothing of an environment or group was baked in: the kubelet reads it at boot.
    let drop_in = std::fs::read_to_string(node.file("/etc/systemd/system/kubelet.service.d/kstack.conf")).unwrap();
    assert!(drop_in.contains("EnvironmentFile=-/etc/kstack/node.env") && !drop_in.contains("kstack.io/group=app"), "{drop_in}");
    assert!(!node.file("/etc/kstack/node.env").exists(), "a builder has no group");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ami = stdout.lines().find_map(|l| l.strip_prefix("eu-west-1: ")).unwrap().split_whitespace().next().unwrap().to_owned();

    // The fleet moves to the baked AMI; its launch template's user data names its group.
    project.kstack(&moto).args(["apply", "fleet", "--auto-approve"]).assert().success();
    let user_data = rt.block_on(async {
        let versions =
            aws.ec2.describe_launch_template_versions().launch_template_name(fleet_template(&aws).await).versions("$Latest").send().await.unwrap();
        let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
        assert_eq!(data.image_id(), Some(ami.as_str()));
        String::from_utf8(aws_smithy_types::base64::decode(data.user_data().unwrap()).unwrap()).unwrap()
    });
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(user_data.contains("path: /etc/kstack/node.env"), "{user_data}");
    assert!(user_data.contains("KSTACK_NODE_LABELS=kstack.io/environment=fleet,kstack.io/group=app\n"), "{user_data}");
}

/// The name of the fleet's one launch template.
async fn fleet_template(aws: &Clients) -> String {
    let templates = aws.ec2.describe_launch_templates().send().await.unwrap();
    let names: Vec<&str> =
        templates.launch_templates().iter().filter_map(|t| t.launch_template_name()).filter(|n| n.starts_with("fleet-app-")).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].to_owned()
}

/// An image built in an environment whose VPC someone else owns: that VPC's subnets carry no
/// kstack tag, so the builder is placed in the tier's subnet the environment names. Here the
/// builder never answers SSH; the bake gives up and removes what it made.
#[test]
fn a_bake_in_a_vpc_someone_else_owns_runs_its_builder_in_the_subnet_the_environment_names() {
    let moto = Moto::start();
    let rt = runtime();
    let project = Project::fixture("project");
    let aws = rt.block_on(moto.clients());
    rt.block_on(aws.seed_image("node"));
    let (vpc, subnet) = rt.block_on(async {
        // Loopback ranges: the emulator gives the builder an address this machine answers for.
        let vpc = aws.ec2.create_vpc().cidr_block("127.61.0.0/16").send().await.unwrap().vpc().unwrap().vpc_id().unwrap().to_owned();
        let made = aws.ec2.create_subnet().vpc_id(&vpc).cidr_block("127.61.1.0/24").availability_zone("eu-west-1a").send().await.unwrap();
        (vpc, made.subnet().unwrap().subnet_id().unwrap().to_owned())
    });
    project.write(
        "environments/shared.yaml",
        &format!("region: eu-west-1\nnetwork:\n  vpc_id: {vpc}\n  subnets:\n    nodes: {{ eu-west-1a: {subnet} }}\n"),
    );
    project.edit("images/node.yaml", "  environment: fleet\n", "  environment: shared\n");
    let mut child =
        project.kstack_process(&moto).args(["bake", "node", "--ssh-timeout", "2"]).args(HOST_KEY_WAIT).stdin(Stdio::null()).spawn().unwrap();
    until("a builder is launched", || !builders(&aws, &rt).is_empty() || child.try_wait().unwrap().is_some());
    let placed = builders(&aws, &rt);
    assert!(!placed.is_empty(), "{}", String::from_utf8_lossy(&wait(child).stderr));
    assert_eq!(placed[0].subnet_id(), Some(subnet.as_str()), "the builder runs in the environment's subnet");
    assert_eq!(placed[0].vpc_id(), Some(vpc.as_str()));
    let output = wait(child);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    until("the builder and its group are removed", || leftovers(&aws, &rt) == (0, 0));
}

/// Who may launch `ami` in `ec2`'s region: accounts, organizations and units, in one list.
fn launch_permissions(rt: &tokio::runtime::Runtime, ec2: &aws_sdk_ec2::Client, ami: &str) -> Vec<String> {
    let described =
        rt.block_on(ec2.describe_image_attribute().image_id(ami).attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission).send());
    let mut found: Vec<String> = described
        .unwrap()
        .launch_permissions()
        .iter()
        .filter_map(|p| p.user_id().or(p.organization_arn()).or(p.organizational_unit_arn()).map(str::to_owned))
        .collect();
    found.sort();
    found
}

/// `ami`'s snapshot: whether it is encrypted, its key, and who may create volumes from it.
fn snapshot_of(rt: &tokio::runtime::Runtime, ec2: &aws_sdk_ec2::Client, ami: &str) -> (String, bool, Option<String>, Vec<String>) {
    rt.block_on(async {
        let image = ec2.describe_images().image_ids(ami).send().await.unwrap();
        let snapshot = image.images()[0].block_device_mappings()[0].ebs().unwrap().snapshot_id().unwrap().to_owned();
        let described = ec2.describe_snapshots().snapshot_ids(&snapshot).send().await.unwrap();
        let found = &described.snapshots()[0];
        let permission = ec2
            .describe_snapshot_attribute()
            .snapshot_id(&snapshot)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .unwrap();
        let accounts = permission.create_volume_permissions().iter().filter_map(|p| p.user_id()).map(str::to_owned).collect();
        (snapshot, found.encrypted() == Some(true), found.kms_key_id().map(str::to_owned), accounts)
    })
}

/// One bake of `node` through a test node serving its builder; its stdout.
fn bake_once(project: &Project, moto: &Moto, aws: &Clients, rt: &tokio::runtime::Runtime, extra: &[&str]) -> String {
    let child = start_bake(project, moto, "node", extra);
    let (address, key) = builder(aws, rt);
    let _node = serve(&address, &key);
    let output = wait(child);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ami_in(stdout: &str, region: &str) -> String {
    let line = stdout.lines().find_map(|l| l.strip_prefix(&format!("{region}: ami-"))).unwrap_or_else(|| panic!("no AMI in {region}: {stdout}"));
    format!("ami-{}", line.split_whitespace().next().unwrap())
}

#[test]
fn a_bake_encrypts_shares_and_copies_and_keep_retires_the_oldest_unused_ami_but_never_one_in_use() {
    let moto = Moto::start();
    let rt = runtime();
    // The fleet is applied with the seeded AMI of `node`: its launch template uses it.
    let (project, aws) = fleet(&moto, &rt);
    let seeded = baked_or_seeded(&rt, &aws.ec2);
    assert_eq!(seeded.len(), 1);
    let frankfurt = rt.block_on(ec2_in(&moto, "eu-central-1"));
    let organization = "arn:aws:organizations::123456789012:organization/o-abc123def4";
    let unit = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cdef3456";
    project.edit(
        "images/node.yaml",
        "copy_to: [eu-central-1]",
        &format!(
            "copy_to: [{{ region: eu-central-1, kms_key_id: alias/images-frankfurt }}]\n\
             encrypt: {{ kms_key_id: alias/images }}\n\
             share: {{ accounts: ['111111111111'], organizations: ['{organization}'], organizational_units: ['{unit}'] }}\n\
             keep: 3\n"
        ),
    );

    let first = bake_once(&project, &moto, &aws, &rt, &[]);
    let (ami, copy) = (ami_in(&first, "eu-west-1"), ami_in(&first, "eu-central-1"));
    let mut shared = vec![String::from("111111111111"), organization.to_owned(), unit.to_owned()];
    shared.sort();
    for (ec2, ami, key) in [(&aws.ec2, &ami, "alias/images"), (&frankfurt, &copy, "alias/images-frankfurt")] {
        assert_eq!(launch_permissions(&rt, ec2, ami), shared, "{ami} is shared as the image says");
        let (_, encrypted, kms_key, volume_accounts) = snapshot_of(&rt, ec2, ami);
        assert!(encrypted, "{ami}'s snapshot is encrypted");
        assert_eq!(kms_key.as_deref(), Some(key), "with its region's key");
        assert_eq!(volume_accounts, ["111111111111"], "the account may copy it too");
    }

    // Sharing follows the file: an account no longer listed is taken back at the next bake,
    // even one that reuses the AMI.
    project.edit("images/node.yaml", "accounts: ['111111111111']", "accounts: ['222222222222']");
    let reused = project.kstack(&moto).args(["bake", "node"]).output().unwrap();
    assert!(String::from_utf8_lossy(&reused.stdout).contains("(reused"), "{}", String::from_utf8_lossy(&reused.stderr));
    assert!(launch_permissions(&rt, &aws.ec2, &ami).contains(&String::from("222222222222")));
    assert!(!launch_permissions(&rt, &aws.ec2, &ami).contains(&String::from("111111111111")));
    assert_eq!(snapshot_of(&rt, &frankfurt, &copy).3, ["222222222222"]);

    // Two more bakes: four AMIs of `node` with the seeded one, which the fleet uses.
    let second = bake_once(&project, &moto, &aws, &rt, &["--force"]);
    let third = bake_once(&project, &moto, &aws, &rt, &["--force"]);
    assert!(!third.contains("retired"), "nothing unused is past keep: 3: {third}");
    let (first_snapshot, ..) = snapshot_of(&rt, &aws.ec2, &ami);
    let fourth = bake_once(&project, &moto, &aws, &rt, &["--force"]);
    assert!(fourth.contains(&format!("eu-west-1: retired {ami} ")), "{fourth}");
    assert!(fourth.contains(&format!("eu-central-1: retired {copy} ")), "{fourth}");
    let mut left = baked_or_seeded(&rt, &aws.ec2);
    let mut expected = vec![ami_in(&fourth, "eu-west-1"), ami_in(&third, "eu-west-1"), ami_in(&second, "eu-west-1"), seeded[0].clone()];
    left.sort();
    expected.sort();
    assert_eq!(left, expected, "the oldest bake is gone; the seeded AMI the fleet uses stays, however old");
    let snapshot_gone = rt.block_on(aws.ec2.describe_snapshots().snapshot_ids(&first_snapshot).send());
    assert!(snapshot_gone.is_err() || snapshot_gone.unwrap().snapshots().is_empty(), "its snapshot is deleted");
    assert_eq!(baked_or_seeded(&rt, &frankfurt).len(), 3, "three copies kept in eu-central-1");

    let listed = project.kstack(&moto).args(["images", "node", "--json"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let amis = listed["amis"].as_array().unwrap();
    assert_eq!(amis.len(), 7, "{listed:#}");
    let seeded_row = amis.iter().find(|a| a["ami"] == seeded[0].as_str()).unwrap();
    assert_eq!(seeded_row["used_by"], serde_json::json!(["environment fleet"]), "{listed:#}");
    let table = project.kstack(&moto).args(["images", "node"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("REGION") && table.lines().count() == 8, "{table}");
}

/// AMIs tagged as images of `node` in `ec2`'s region (bakes and the seeded one).
fn baked_or_seeded(rt: &tokio::runtime::Runtime, ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let tagged = aws_sdk_ec2::types::Filter::builder().name("tag:kstack:image").values("node").build();
    let images = rt.block_on(ec2.describe_images().owners("self").filters(tagged).send()).unwrap();
    images.images().iter().filter_map(|i| i.image_id()).map(str::to_owned).collect()
}
