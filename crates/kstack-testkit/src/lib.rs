//! Test harness: a real AWS emulator (moto's server, installed by `scripts/setup`) on an
//! ephemeral loopback port per test, a private copy of the project, and SDK clients for
//! checking results with real API calls; test nodes ([`node`]), VMs ([`vm`], [`vm_cloud`])
//! and the role runner on them ([`runner`]), a fault-injecting proxy ([`faults`]) and a
//! local apt repository of stand-in packages ([`stand_in_repo`]).

pub mod faults;
pub mod node;
pub mod runner;
pub mod stand_in_repo;
pub mod vm;
pub mod vm_cloud;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const REGION: &str = "eu-west-1";

/// What a test needs from the machine beyond the build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root: network namespaces (`scripts/loopback-only`) and containers.
    Root,
    /// The AWS emulator: moto's server in `.venv/moto`.
    Emulator,
    /// Test nodes: root, systemd-nspawn and ssh-keygen, and the Debian rootfs.
    TestNodes,
    /// VM nodes: qemu, and the disk, kernel and apt repository built for them.
    Vms,
    /// A terminal to watch kstack in: tmux.
    Tmux,
    /// Ansible, to run a role as Ansible does: ansible-core in `.venv/ansible`.
    Ansible,
    /// pyinfra, the other tool the role engine is compared with: `.venv/pyinfra`.
    Pyinfra,
}

/// Fails the test, in one sentence naming what is missing and the command that provides it,
/// when this machine lacks `need`. Never a silent skip: CI runs every test.
pub fn require(need: Need) {
    if let Some(missing) = missing(need) {
        panic!("{missing}");
    }
}

fn missing(need: Need) -> Option<String> {
    let setup = "run `scripts/setup` (with the same HOME or KSTACK_CACHE as the tests)";
    let file = |path: PathBuf, what: &str| (!path.exists()).then(|| format!("{what} ({}) is missing: {setup}", path.display()));
    let program = |name: &str, package: &str| {
        let found = std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
        (!found).then(|| format!("`{name}` ({package}) is not installed: {setup}"))
    };
    match need {
        Need::Root => (!rustix::process::geteuid().is_root())
            .then(|| String::from("this test needs root (network namespaces, containers): run it as root, e.g. `sudo -E cargo test`")),
        Need::Emulator => file(repo().join(".venv/moto/bin/python"), "the AWS emulator's virtualenv"),
        Need::TestNodes => missing(Need::Root)
            .or_else(|| program("systemd-nspawn", "systemd-container"))
            .or_else(|| program("ssh-keygen", "openssh-client"))
            .or_else(|| file(node::rootfs().join("usr/sbin/sshd"), "the test nodes' Debian rootfs")),
        Need::Vms => program("qemu-system-x86_64", "qemu-system-x86").or_else(|| {
            ["disk.raw", "vmlinuz", "initrd.img", "apt/Packages"]
                .into_iter()
                .find_map(|name| file(node::cache().join("vm").join(name), "the VM image"))
        }),
        Need::Tmux => program("tmux", "tmux"),
        Need::Ansible => file(repo().join(".venv/ansible/bin/ansible-playbook"), "Ansible's virtualenv"),
        Need::Pyinfra => file(repo().join(".venv/pyinfra/bin/pyinfra"), "pyinfra's virtualenv"),
    }
}

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// The kstack repository, two levels above this crate.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/kstack-testkit is inside the repository").to_path_buf()
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// The emulator with settings of its own (`KSTACK_EMULATOR_SESSION_SECONDS`, see
    /// `scripts/moto-server`).
    pub fn start_with(settings: &[(&str, &str)]) -> Moto {
        require(Need::Emulator);
        let python = repo().join(".venv/moto/bin/python");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("kstack-moto-{port}.log"))).unwrap();
        // moto's server with the fix for its launch template versions (see the script).
        let child = Command::new(python)
            .arg(repo().join("scripts/moto-server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // AWS managed policies (arn:aws:iam::aws:policy/...) exist in every real account.
            .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
            // As in AWS, a bucket of one account is another's only by its bucket policy.
            .env("MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS", "false")
            .envs(settings.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        moto.wait_ready(SocketAddr::from(([127, 0, 0, 1], port)));
        moto
    }

    fn wait_ready(&self, address: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
                let _ = stream.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") && answer.contains(" 200 ") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto did not answer on {address} within 30 s");
    }

    /// The environment variables that point kstack and the SDK at this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", String::from("testing")),
            ("AWS_SECRET_ACCESS_KEY", String::from("testing")),
            ("AWS_REGION", String::from(REGION)),
            ("AWS_EC2_METADATA_DISABLED", String::from("true")),
        ]
    }

    pub async fn clients(&self) -> Clients {
        Clients::at(&self.endpoint).await
    }

    /// Clients acting in the account of `role_arn` (the emulator's accounts are reached by
    /// assuming a role in them), renewing their session as it ends.
    pub async fn clients_in(&self, role_arn: &str) -> Clients {
        let base = config_at(&self.endpoint).await;
        let role = aws_config::sts::AssumeRoleProvider::builder(role_arn).session_name("kstack-tests").configure(&base).build().await;
        Clients::from_config(&base.into_builder().credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(role)).build())
    }
}

async fn config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancing::Client,
    pub iam: aws_sdk_iam::Client,
    pub route53: aws_sdk_route53::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub secrets_manager: aws_sdk_secretsmanager::Client,
}

impl Clients {
    /// Clients of the emulator at `endpoint`, for a thread with its own runtime.
    pub async fn at(endpoint: &str) -> Clients {
        Clients::from_config(&config_at(endpoint).await)
    }

    fn from_config(config: &aws_config::SdkConfig) -> Clients {
        Clients {
            ec2: aws_sdk_ec2::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            elb: aws_sdk_elasticloadbalancing::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            route53: aws_sdk_route53::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(config).force_path_style(true).build()),
            ssm: aws_sdk_ssm::Client::new(config),
            secrets_manager: aws_sdk_secretsmanager::Client::new(config),
        }
    }

    /// Stands in for `kstack bake node` until baking lands: a copy of the image's source
    /// AMI (stock Ubuntu 16.04), tagged as a bake of `name` is.
    pub async fn seed_image(&self, name: &str) -> String {
        let images = self
            .ec2
            .describe_images()
            .owners("099720109477")
            .filters(aws_sdk_ec2::types::Filter::builder().name("name").values("ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*").build())
            .send()
            .await
            .unwrap();
        let source = images.images().iter().max_by_key(|i| i.creation_date().map(str::to_owned)).expect("xenial AMI");
        let copied = self
            .ec2
            .copy_image()
            .source_image_id(source.image_id().unwrap())
            .source_region(REGION)
            .name(format!("kstack-{name}-test"))
            .send()
            .await
            .unwrap();
        let id = copied.image_id().unwrap().to_owned();
        self.ec2.create_tags().resources(&id).tags(aws_sdk_ec2::types::Tag::builder().key("kstack:image").value(name).build()).send().await.unwrap();
        id
    }

    /// A VPC tagged as kstack tags `address` of `environment`: with `identity`, as if kstack
    /// died right after creating it, before writing state; without, as some other tool or an
    /// environment of the same name elsewhere might have left it.
    pub async fn create_tagged_vpc(&self, environment: &str, identity: Option<&str>, address: &str) -> String {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let mut tags = TagSpecification::builder()
            .resource_type(ResourceType::Vpc)
            .tags(Tag::builder().key("kstack:environment").value(environment).build())
            .tags(Tag::builder().key("kstack:address").value(address).build());
        if let Some(identity) = identity {
            tags = tags.tags(Tag::builder().key("kstack:id").value(identity).build());
        }
        let vpc = self.ec2.create_vpc().cidr_block("10.20.0.0/16").tag_specifications(tags.build()).send().await.unwrap();
        vpc.vpc().unwrap().vpc_id().unwrap().to_owned()
    }

    /// The auto scaling group `name` (`<env>-<group>`), whose AWS name ends in its
    /// environment's identity (`-<8 hex>`).
    pub async fn group(&self, name: &str) -> aws_sdk_autoscaling::types::AutoScalingGroup {
        let groups = self.autoscaling.describe_auto_scaling_groups().send().await.unwrap();
        let named = |g: &&aws_sdk_autoscaling::types::AutoScalingGroup| {
            let aws_name = g.auto_scaling_group_name().unwrap_or_default();
            aws_name.strip_prefix(name).and_then(|rest| rest.strip_prefix('-')).is_some_and(|short| short.len() == 8)
        };
        let mut matching = groups.auto_scaling_groups().iter().filter(named);
        let group = matching.next().cloned().unwrap_or_else(|| panic!("no group {name}"));
        assert!(matching.next().is_none(), "more than one group {name}");
        group
    }

    /// Ids of the environment's VPCs, found by kstack's tag.
    pub async fn vpcs_of(&self, environment: &str) -> Vec<String> {
        let vpcs = self.ec2.describe_vpcs().filters(env_filter(environment)).send().await.unwrap();
        vpcs.vpcs().iter().filter_map(|v| v.vpc_id().map(str::to_owned)).collect()
    }
}

pub fn env_filter(environment: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder().name("tag:kstack:environment").values(environment).build()
}

/// A private copy of the project's environments and images, so tests can edit them.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A copy of the repository's own project.
    pub fn copy() -> Project {
        Project::copy_from(&repo())
    }

    /// A copy of `tests/fixtures/<name>`.
    pub fn fixture(name: &str) -> Project {
        Project::copy_from(&repo().join("tests/fixtures").join(name))
    }

    fn copy_from(source: &Path) -> Project {
        fn copy_tree(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy_tree(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), target).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        for sub in ["environments", "images", "roles"] {
            if source.join(sub).is_dir() {
                copy_tree(&source.join(sub), &dir.path().join(sub));
            }
        }
        if source.join("kstack.yaml").is_file() {
            std::fs::copy(source.join("kstack.yaml"), dir.path().join("kstack.yaml")).unwrap();
        }
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the fixture's `fleet` environment a loopback VPC whose addresses no other fleet
    /// on this machine uses at the same time (`spread` keeps test binaries apart), so test
    /// nodes can serve its instances. Returns the subnet's address prefix, e.g. `127.42.3.`.
    pub fn loopback_fleet(&self, spread: u32) -> String {
        static FLEETS: AtomicU32 = AtomicU32::new(1);
        let octet = 10 + (std::process::id() + spread) % 80;
        let subnet = FLEETS.fetch_add(1, Ordering::SeqCst);
        self.edit("environments/fleet.yaml", "VPC_CIDR", &format!("127.{octet}.0.0/16"));
        self.edit("environments/fleet.yaml", "SUBNET_CIDR", &format!("127.{octet}.{subnet}.0/24"));
        format!("127.{octet}.{subnet}.")
    }

    /// The identity `env`'s state records (`kstack:id`).
    pub fn identity(&self, env: &str) -> String {
        let state = std::fs::read(self.path().join(format!(".kstack/state/{env}.json"))).unwrap();
        let state: serde_json::Value = serde_json::from_slice(&state).unwrap();
        state["identity"].as_str().unwrap_or_else(|| panic!("{env} has no identity")).to_owned()
    }

    pub fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path().join(relative), text).unwrap();
    }

    pub fn edit(&self, relative: &str, from: &str, to: &str) {
        let path = self.path().join(relative);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{relative} has no `{from}`");
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    /// `kstack -C <project>` against `moto`, without colour.
    pub fn kstack(&self, moto: &Moto) -> assert_cmd::Command {
        let mut command = assert_cmd::Command::cargo_bin("kstack").unwrap();
        command.arg("-C").arg(self.path()).env("NO_COLOR", "1").env_remove("AWS_PROFILE");
        for (key, value) in moto.env() {
            command.env(key, value);
        }
        command
    }

    /// The same, as a plain process for tests that interact with it while it runs.
    pub fn kstack_process(&self, moto: &Moto) -> Command {
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("kstack"));
        command.arg("-C").arg(self.path()).env("NO_COLOR", "1").env_remove("AWS_PROFILE");
        for (key, value) in moto.env() {
            command.env(key, value);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// How most tests that talk to AWS begin: an emulator of their own with the `node` image
/// seeded, its clients, and the runtime they run on. Bind every field (`moto: _moto`): a field
/// left to `..` is dropped at once, and the emulator with it.
pub struct Emulated {
    pub moto: Moto,
    pub rt: tokio::runtime::Runtime,
    pub aws: Clients,
    /// The seeded `node` image's AMI.
    pub ami: String,
}

impl Emulated {
    pub fn with_node_image() -> Emulated {
        let moto = Moto::start();
        let rt = runtime();
        let aws = rt.block_on(moto.clients());
        let ami = rt.block_on(aws.seed_image("node"));
        Emulated { moto, rt, aws, ami }
    }
}

/// What a run printed, stdout then stderr, for assertions and their messages.
pub fn said(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A plan's (`kstack plan --json`) actions other than no-ops, as `action address`.
pub fn plan_changes(plan: &serde_json::Value) -> Vec<String> {
    let actions = plan["plan"]["actions"].as_array().map_or(&[][..], Vec::as_slice);
    actions
        .iter()
        .filter(|a| a["action"] != "no_op")
        .map(|a| format!("{} {}", a["action"].as_str().unwrap_or("?"), a["address"].as_str().unwrap_or("?")))
        .collect()
}

pub fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", String::from_utf8_lossy(&output.stdout)))
}
