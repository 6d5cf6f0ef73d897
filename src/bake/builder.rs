//! The builder instance's life: launch, configure, check, clean, image, and the removal of
//! everything temporary, which is found by its `kstack:bake` tag so that even a resource
//! created a moment before an interrupt is removed.

use crate::events::{Event, Unwatched, Watch};
use crate::naming::{
    TAG_ADDRESS, TAG_BAKE, TAG_BAKE_KEPT, TAG_ENVIRONMENT, TAG_HASH, TAG_IDENTITY, TAG_IMAGE, TAG_PROJECT, TAG_ROLES, TAG_SOURCE_AMI, TAG_VERSION,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType, IpPermission,
    IpRange, ResourceType, Tag, TagSpecification, VolumeType,
};

use super::lease::{self, Leftover, Standing, LEASE, RENEW_EVERY};
use super::{BakeError, BakeOptions, BuildSubnet, HostKeyTrust};
use crate::aws::Cloud;

use crate::model::image::Image;
use crate::roles::{Role, RunOptions};
use crate::ssh::{Connection, HostKeys, Login, LoginKey, SshError};
use russh::keys::PrivateKey;

/// Removes what makes an instance unique, so every node launched from the image starts fresh.
/// Every step must succeed (`-e`), and each is echoed (`-x`) so a failure shows which one: an
/// image that kept the builder's host keys or login key would hand them to a whole fleet.
const CLEAN: &str = "exec 2>&1
set -ex
apt-get clean
rm -rf /var/lib/apt/lists/*
rm -f /etc/ssh/ssh_host_*
if command -v cloud-init >/dev/null; then cloud-init clean --logs; fi
truncate -s 0 /etc/machine-id
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys /root/.bash_history /home/*/.bash_history
sync";

fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

pub(super) async fn build(
    cloud: &Cloud,
    image: &Image,
    roles: &[Role],
    source: &str,
    hash: &str,
    options: &BakeOptions,
    progress: Arc<dyn Watch>,
) -> Result<(BTreeMap<String, String>, HostKeyTrust), BakeError> {
    let bake_id = format!("{}-{}-{}", image.name, &hash[..8], rand::random::<u32>());
    let scratch = scratch_dir(&bake_id);
    let key = Arc::new(
        PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
            .map_err(|e| BakeError::Local { doing: "making an SSH key", error: e.to_string() })?,
    );
    // A stop (Ctrl-C, SIGTERM) drops the steps where they wait; whatever they had made is
    // tagged, and removed below.
    let baking = Baking {
        cloud,
        image,
        roles,
        source,
        hash,
        options,
        bake_id: &bake_id,
        key: &key,
        scratch: &scratch,
        progress: &progress,
        started: Instant::now(),
    };
    let result = tokio::select! {
        result = baking.steps() => result,
        error = renew_lease(cloud, &bake_id) => Err(error),
        reason = options.stop.stopped() => Err(BakeError::Stopped(reason)),
    };
    match (&result, options.keep_on_error) {
        (Err(_), true) => keep(cloud, image, &bake_id, &key, &scratch, &progress).await,
        _ => {
            let _ = std::fs::remove_dir_all(&scratch);
            if let Err(error) = cleanup(cloud, Some(&bake_id), &progress).await {
                progress.event(Event::Bake(format!("cleanup failed: {error}; run `kstack bake --cleanup` to retry")));
            }
        }
    }
    result
}

/// A bake's local files: known_hosts, and the key of a builder kept for debugging. The key
/// stays in memory otherwise, so a killed bake leaves no secret behind.
fn scratch_dir(bake_id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kstack-bake-{bake_id}"))
}

/// Leaves a failed bake's builder for debugging: marked kept (so later bakes leave it alone),
/// with its key written, readable by the owner only, for the user to log in.
async fn keep(cloud: &Cloud, image: &Image, bake_id: &str, key: &PrivateKey, scratch: &std::path::Path, progress: &Arc<dyn Watch>) {
    let marked = match temporaries(cloud, Some(bake_id)).await {
        Ok(found) => {
            let kept = cloud.ec2.create_tags().set_resources(Some(found.ids())).tags(Tag::builder().key(TAG_BAKE_KEPT).value("true").build());
            kept.send().await.map(drop).map_err(|e| crate::aws::AwsError::from(e).to_string())
        }
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = marked {
        progress
            .event(Event::Bake(format!("could not mark the builder as kept ({error}): a later bake may remove it once this one's lease runs out")));
    }
    let key_path = scratch.join("id_ed25519");
    let written = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| e.to_string())
        .and_then(|text| write_private(&key_path, text.as_bytes()).map_err(|e| e.to_string()));
    match written {
        Ok(()) => progress.event(Event::Bake(format!(
            "kept the builder for debugging (tag {TAG_BAKE}={bake_id}); log in with `ssh -i {} {}@<address>`, \
             remove it with `kstack bake --cleanup`",
            key_path.display(),
            image.ssh_user
        ))),
        Err(error) => progress.event(Event::Bake(format!("kept the builder (tag {TAG_BAKE}={bake_id}) but cannot write its key: {error}"))),
    }
}

/// Renews the bake's lease on its temporary resources for as long as the bake runs. Stops the
/// bake before a lease it cannot renew runs out: another bake would take it for dead and
/// remove its builder.
async fn renew_lease(cloud: &Cloud, bake_id: &str) -> BakeError {
    let mut renewed_at = Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let renewal = async {
            let resources = temporaries(cloud, Some(bake_id)).await?.ids();
            if resources.is_empty() {
                return Ok(());
            }
            let aws_now = cloud.clock.now().ok_or(BakeError::NoServiceTime)?;
            let (key, value) = lease::renewed(aws_now);
            let renewed = cloud.ec2.create_tags().set_resources(Some(resources)).tags(Tag::builder().key(key).value(value).build());
            renewed.send().await.map(drop).map_err(|e| BakeError::aws("renewing the bake's lease")(e.into()))
        };
        match renewal.await {
            Ok(()) => renewed_at = Instant::now(),
            Err(error) if renewed_at.elapsed() + RENEW_EVERY >= LEASE => {
                return BakeError::LeaseLost(Box::new(error));
            }
            Err(error) => tracing::warn!("renewing the bake's lease failed, will retry: {error}"),
        }
    }
}

/// Of two bakes of the same content started together, the younger gives way once both have
/// tagged their security groups (the check before starting cannot see a bake that had not
/// made its group yet).
async fn refuse_if_second(cloud: &Cloud, image: &Image, hash: &str, bake_id: &str) -> Result<(), BakeError> {
    let bakes = temporaries(cloud, None).await?.bakes();
    let Some(ours) = bakes.iter().find(|b| b.bake_id == bake_id) else { return Ok(()) };
    let older = bakes.iter().find(|other| {
        other.bake_id != bake_id
            && other.image == image.name
            && other.hash == hash
            && matches!(other.standing, Standing::Running { .. })
            && (&other.started, &other.bake_id) < (&ours.started, &ours.bake_id)
    });
    match older {
        Some(other) => Err(BakeError::GaveWay { other: other.bake_id.clone() }),
        None => Ok(()),
    }
}

/// One bake under way: what it builds, and its progress.
struct Baking<'a> {
    cloud: &'a Cloud,
    image: &'a Image,
    roles: &'a [Role],
    source: &'a str,
    hash: &'a str,
    options: &'a BakeOptions,
    bake_id: &'a str,
    key: &'a Arc<PrivateKey>,
    scratch: &'a std::path::Path,
    progress: &'a Arc<dyn Watch>,
    started: Instant,
}

/// Steps of work the bake hands on (making its image whole) are its own, timed like them.
impl Watch for Baking<'_> {
    fn event(&self, event: Event) {
        match event {
            Event::Bake(text) => self.step(&text),
            other => self.progress.event(other),
        }
    }
}

/// The builder, once it runs.
struct Builder {
    instance: String,
    address: String,
}

impl Baking<'_> {
    /// Every step, in order; what they make is tagged, and removed by the caller.
    async fn steps(&self) -> Result<(BTreeMap<String, String>, HostKeyTrust), BakeError> {
        let place = self.place().await?;
        let marker = self.marker()?;
        let group = self.security_group(&place, &marker).await?;
        refuse_if_second(self.cloud, self.image, self.hash, self.bake_id).await?;
        let builder = self.launch(&place, &group, &marker).await?;
        self.admit_ssh(&group, &builder).await?;
        let (login, host_key) = self.trust_host_keys(&builder).await?;
        self.step("waiting for SSH");
        wait_for_ssh(&builder.address, &login, self.options.ssh_timeout).await?.close().await;
        self.configure(&builder, &login).await?;
        self.clean(&builder, &login).await?;
        let amis = self.make_image(&builder).await?;
        Ok((amis, host_key))
    }

    fn step(&self, text: &str) {
        self.progress.event(Event::Bake(format!("[{:>5.1}s] {text}", self.started.elapsed().as_secs_f64())));
    }

    /// The subnet of the image's `build:` place: one of the environment's own.
    async fn place(&self) -> Result<BuildSubnet, BakeError> {
        let (cloud, image) = (self.cloud, self.image);
        if let Some(given) = &self.options.build_subnet {
            return Ok(given.clone());
        }
        let Some(place) = &image.build else {
            return Err(BakeError::NowhereToBuild { image: image.name.clone() });
        };
        let subnets = cloud
            .ec2
            .describe_subnets()
            .filters(Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(&place.environment).build())
            .filters(Filter::builder().name(format!("tag:{TAG_ADDRESS}")).values(format!("subnet.{}.*", place.subnet_tier)).build())
            .send()
            .await
            .map_err(|e| BakeError::aws("finding the build subnet")(e.into()))?;
        let owned = |s: &&aws_sdk_ec2::types::Subnet| cloud.owner.owns(s.subnet_id().unwrap_or_default(), &crate::aws::from_ec2(s.tags()));
        let Some(subnet) = subnets.subnets().iter().find(owned) else {
            return Err(BakeError::NoBuildSubnet {
                environment: place.environment.clone(),
                tier: place.subnet_tier.clone(),
                region: cloud.region.clone(),
            });
        };
        Ok(BuildSubnet { subnet: subnet.subnet_id().unwrap_or_default().to_owned(), vpc: subnet.vpc_id().unwrap_or_default().to_owned() })
    }

    /// The tags of everything the bake makes: the bake, its content, and its lease.
    fn marker(&self) -> Result<Vec<(String, String)>, BakeError> {
        let aws_now = self.cloud.clock.now().ok_or(BakeError::NoServiceTime)?;
        let mut marker: Vec<(String, String)> = [(TAG_BAKE, self.bake_id), (TAG_IMAGE, self.image.name.as_str()), (TAG_HASH, self.hash)]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec();
        marker.extend(lease::ours(aws_now));
        // Whose bake it is: `--cleanup` and later bakes clear only their own environment's.
        if let Some(identity) = &self.cloud.owner.identity {
            marker.push((TAG_IDENTITY.to_owned(), identity.to_string()));
        }
        Ok(marker)
    }

    async fn security_group(&self, place: &BuildSubnet, marker: &[(String, String)]) -> Result<String, BakeError> {
        self.step("creating a temporary security group");
        let group = self
            .cloud
            .ec2
            .create_security_group()
            .group_name(format!("kstack-bake-{}", self.bake_id))
            .description(format!("kstack bake of {}: SSH from the baking machine", self.image.name))
            .vpc_id(&place.vpc)
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::SecurityGroup).set_tags(Some(tags(marker))).build())
            .send()
            .await
            .map_err(|e| BakeError::aws("creating the security group")(e.into()))?;
        Ok(group.group_id().unwrap_or_default().to_owned())
    }

    /// Launches the builder with a one-off key, installed by cloud-init from user data (no EC2
    /// key pair to leak), and waits until it runs.
    async fn launch(&self, place: &BuildSubnet, group: &str, marker: &[(String, String)]) -> Result<Builder, BakeError> {
        let (cloud, image, source) = (self.cloud, self.image, self.source);
        let public = self.key.public_key().to_openssh().map_err(|e| BakeError::Local { doing: "writing the SSH key", error: e.to_string() })?;
        let user_data = format!("#cloud-config\nssh_authorized_keys:\n  - {public}\n");
        self.step(&format!("launching the builder from {source}"));
        let root_device = crate::aws::root_device(cloud, source).await.map_err(BakeError::aws("reading the source AMI"))?;
        let mut instance_tags = marker.to_vec();
        instance_tags.push((String::from("Name"), format!("kstack-bake-{}", image.name)));
        let launched = cloud
            .ec2
            .run_instances()
            .image_id(source)
            .instance_type(InstanceType::from(image.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            // One builder per bake, however often the SDK retries the call.
            .client_token(crate::aws::client_token(self.bake_id))
            .subnet_id(&place.subnet)
            .security_group_ids(group)
            .user_data(aws_smithy_types::base64::encode(&user_data))
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root_device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(image.root_volume_gib as i32)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(image.encrypted || image.kms_key_id.is_some())
                            // The AMI's snapshots are made from this volume, encrypted with its
                            // key: no unencrypted copy of the image ever exists.
                            .set_kms_key_id(image.kms_key_id.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .metadata_options(InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build())
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags(&instance_tags))).build())
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags(marker))).build())
            .send()
            .await
            .map_err(|e| BakeError::aws("launching the builder")(e.into()))?;
        let instance = launched.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_owned();
        let address = wait_for_instance(cloud, &instance, InstanceStateName::Running).await?;
        let address = address.ok_or_else(|| BakeError::NoAddress { instance: instance.clone() })?;
        Ok(Builder { instance, address })
    }

    /// Admits SSH to the builder from `--ssh-cidr`, or from this machine's address alone.
    async fn admit_ssh(&self, group: &str, builder: &Builder) -> Result<(), BakeError> {
        let cidr = match &self.options.ssh_cidr {
            Some(cidr) => cidr.clone(),
            None => {
                let local = local_address_towards(&builder.address)
                    .map_err(|e| BakeError::Local { doing: "finding the address SSH comes from", error: e.to_string() })?;
                format!("{local}/32")
            }
        };
        let rule = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(IpRange::builder().cidr_ip(&cidr).description("kstack bake").build())
            .build();
        let admitted = self.cloud.ec2.authorize_security_group_ingress().group_id(group).ip_permissions(rule).send().await;
        admitted.map(drop).map_err(|e| BakeError::aws("admitting SSH to the builder")(e.into()))
    }

    /// The login to the builder, with the host keys its console shows, or else (said in the
    /// manifest) the first key it offers.
    async fn trust_host_keys(&self, builder: &Builder) -> Result<(Login, HostKeyTrust), BakeError> {
        let Builder { instance, address } = builder;
        let local = |doing| move |e: std::io::Error| BakeError::Local { doing, error: e.to_string() };
        std::fs::create_dir_all(self.scratch).map_err(local("making the bake's scratch directory"))?;
        let known_hosts = self.scratch.join("known_hosts");
        let wait = self.options.host_key_wait;
        self.step(&format!("builder {instance} at {address}: waiting up to {}s for its console to show its SSH host keys", wait.as_secs()));
        let mut host_keys = HostKeys { path: known_hosts, trust_on_first_use: false };
        let from_console = crate::aws::console::host_keys(self.cloud, instance, wait).await;
        let host_key = if from_console.is_empty() {
            self.step(&format!(
                "builder {instance} at {address}: its console showed no SSH host keys within {}s, so the first key seen \
                 is trusted (the manifest says host_key: trusted-on-first-use)",
                wait.as_secs()
            ));
            host_keys.trust_on_first_use = true;
            HostKeyTrust::TrustedOnFirstUse
        } else {
            host_keys.record(address, 22, &from_console, instance).map_err(BakeError::Ssh)?;
            self.step(&format!("builder {instance} at {address}: host keys taken from its console output"));
            HostKeyTrust::VerifiedFromConsole
        };
        let login = Login {
            user: self.image.ssh_user.clone(),
            key: LoginKey::InMemory(Arc::clone(self.key)),
            port: 22,
            host_keys,
            connect_timeout: Duration::from_secs(10),
            bastion: None,
        };
        Ok((login, host_key))
    }

    /// Applies the roles, reboots the builder when they changed what takes effect at boot (a
    /// kernel, its command line: every instance of the image boots with it), then runs their
    /// checks.
    async fn configure(&self, builder: &Builder, login: &Login) -> Result<(), BakeError> {
        let roles = self.roles;
        self.step(&format!("applying roles: {}", roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")));
        let variables = crate::variables::for_image(self.image);
        let run_options = RunOptions { check: false, forks: 1, max_fail: None };
        let hosts = [builder.address.clone()];
        let reports = crate::roles::run(&hosts, login, roles, &variables, &run_options, Arc::new(Unwatched)).await;
        let report = reports.into_iter().next().unwrap_or_default();
        if let Some(reason) = &report.unreachable {
            return Err(BakeError::Unreachable(reason.clone()));
        }
        if let Some(failed) = report.tasks.iter().find(|t| t.status == crate::roles::TaskStatus::Failed) {
            return Err(BakeError::TaskFailed {
                role: failed.role.clone(),
                task: failed.task.clone(),
                error: failed.error.clone().unwrap_or_default(),
            });
        }
        let connection = Connection::open(&builder.address, login).await?;
        let pending = connection.run("test -e /var/run/reboot-required", None).await?;
        if pending.success() {
            self.step("rebooting the builder: the roles changed what takes effect at boot");
            // The reply may never come: the builder goes down under the connection.
            let _ = tokio::time::timeout(Duration::from_secs(15), connection.run("systemctl reboot", None)).await;
            drop(connection);
            tokio::time::sleep(Duration::from_secs(5)).await;
            wait_for_ssh(&builder.address, login, self.options.ssh_timeout).await?.close().await;
        } else {
            connection.close().await;
        }
        self.step("running the roles' checks");
        let verified = crate::roles::verify(&hosts, login, roles, &variables, &run_options, Arc::new(Unwatched)).await;
        let failed: Vec<String> =
            verified.iter().flat_map(|r| &r.checks).filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        if !failed.is_empty() {
            return Err(BakeError::ChecksFailed(failed));
        }
        Ok(())
    }

    /// Removes what makes the builder unique ([`CLEAN`]), or fails the bake.
    async fn clean(&self, builder: &Builder, login: &Login) -> Result<(), BakeError> {
        self.step("cleaning the builder");
        let connection = Connection::open(&builder.address, login).await?;
        let cleaned = connection.run(CLEAN, None).await;
        connection.close().await;
        let cleaned = cleaned.map_err(BakeError::CleanUnreachable)?;
        if !cleaned.success() {
            let output = format!("{}{}", cleaned.stdout, cleaned.stderr).trim_end().to_owned();
            return Err(BakeError::CleanFailed { status: cleaned.status, output });
        }
        Ok(())
    }

    /// Stops the builder, images it, and finishes the image (copies, tags); returns the AMI
    /// per region.
    async fn make_image(&self, builder: &Builder) -> Result<BTreeMap<String, String>, BakeError> {
        let (cloud, image, hash, source) = (self.cloud, self.image, self.hash, self.source);
        let instance = &builder.instance;
        cloud.ec2.stop_instances().instance_ids(instance).send().await.map_err(|e| BakeError::aws("stopping the builder")(e.into()))?;
        wait_for_instance(cloud, instance, InstanceStateName::Stopped).await?;

        let timestamp = crate::state::now_rfc3339().replace([':', '-'], "").replace('T', "-").trim_end_matches('Z').to_owned();
        let name = image.ami_name.replace("{image}", &image.name).replace("{hash}", &hash[..12]).replace("{timestamp}", &timestamp);
        self.step(&format!("creating image {name}"));
        let role_names = self.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(",");
        let mut image_tags: Vec<(String, String)> = [
            (TAG_IMAGE, image.name.as_str()),
            (TAG_HASH, hash),
            (TAG_ROLES, role_names.as_str()),
            (TAG_SOURCE_AMI, source),
            (TAG_VERSION, env!("CARGO_PKG_VERSION")),
            ("Name", name.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        image_tags.extend(self.options.project.iter().map(|project| (TAG_PROJECT.to_owned(), project.clone())));
        image_tags.extend(image.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        let created = cloud
            .ec2
            .create_image()
            .instance_id(instance)
            .name(&name)
            .description(format!("kstack image {} from {source}", image.name))
            .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Image).set_tags(Some(tags(&image_tags))).build())
            .send()
            .await
            .map_err(|e| BakeError::aws("creating the image")(e.into()))?;
        let ami = created.image_id().unwrap_or_default().to_owned();
        let amis = super::finish::finish(cloud, image, &ami, self).await?;
        self.step(&format!("image {ami} is available"));
        Ok(amis)
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// The address this machine uses to reach `address`: what the builder sees SSH come from.
fn local_address_towards(address: &str) -> std::io::Result<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect((address, 22))?;
    Ok(socket.local_addr()?.ip())
}

async fn wait_for_ssh(address: &str, login: &Login, timeout: Duration) -> Result<Connection, BakeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match Connection::open(address, login).await {
            Ok(connection) => return Ok(connection),
            Err(error @ SshError::HostKeyChanged { .. }) => return Err(BakeError::HostKeyNotOnConsole(error)),
            Err(
                error @ (SshError::HostKeyRevoked { .. }
                | SshError::KnownHostsUnreadable { .. }
                | SshError::KnownHostsMalformed { .. }
                | SshError::Key { .. }),
            ) => return Err(BakeError::Ssh(error)),
            // Booting, or cloud-init has not installed the key yet.
            Err(error) if Instant::now() > deadline => return Err(BakeError::SshTimedOut { seconds: timeout.as_secs(), error }),
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Waits until the instance is in `wanted`; returns its private address.
async fn wait_for_instance(cloud: &Cloud, id: &str, wanted: InstanceStateName) -> Result<Option<String>, BakeError> {
    for _ in 0..300 {
        let described =
            cloud.ec2.describe_instances().instance_ids(id).send().await.map_err(|e| BakeError::aws("waiting for the builder")(e.into()))?;
        let instance = described.reservations().iter().flat_map(|r| r.instances()).next();
        let state = instance.and_then(|i| i.state()).and_then(|s| s.name()).cloned();
        if state.as_ref() == Some(&wanted) {
            return Ok(instance.and_then(|i| i.private_ip_address()).map(str::to_owned));
        }
        if matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) {
            return Err(BakeError::BuilderTerminated { instance: id.to_owned() });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(BakeError::BuilderStuck { instance: id.to_owned(), state: wanted.as_str().to_owned() })
}

/// The temporary resources of one bake (or of every bake), found by tag: builders that are
/// not terminated and security groups, each with what its bake's tags say.
#[derive(Default)]
struct Temporaries {
    instances: Vec<(String, Leftover)>,
    groups: Vec<(String, Leftover)>,
}

impl Temporaries {
    fn ids(&self) -> Vec<String> {
        self.instances.iter().chain(&self.groups).map(|(id, _)| id.clone()).collect()
    }

    /// One entry per bake.
    fn bakes(&self) -> Vec<Leftover> {
        let mut bakes: BTreeMap<String, Leftover> = BTreeMap::new();
        for (_, leftover) in self.groups.iter().chain(&self.instances) {
            bakes.entry(leftover.bake_id.clone()).or_insert_with(|| leftover.clone());
        }
        bakes.into_values().collect()
    }

    fn only(self, keep: impl Fn(&Leftover) -> bool) -> Temporaries {
        Temporaries {
            instances: self.instances.into_iter().filter(|(_, l)| keep(l)).collect(),
            groups: self.groups.into_iter().filter(|(_, l)| keep(l)).collect(),
        }
    }
}

/// The temporary resources of bake `bake_id`, or of every bake of this build environment
/// (its identity tag): another project's bakes, dead or kept, are its own to clear.
async fn temporaries(cloud: &Cloud, bake_id: Option<&str>) -> Result<Temporaries, BakeError> {
    let identity = cloud.owner.identity.as_ref().map(|i| i.to_string()).unwrap_or_default();
    let filters = || match bake_id {
        Some(id) => vec![Filter::builder().name(format!("tag:{TAG_BAKE}")).values(id).build()],
        None => vec![
            Filter::builder().name("tag-key").values(TAG_BAKE).build(),
            Filter::builder().name(format!("tag:{TAG_IDENTITY}")).values(&identity).build(),
        ],
    };
    let (described, groups) = tokio::join!(
        cloud.ec2.describe_instances().set_filters(Some(filters())).send(),
        cloud.ec2.describe_security_groups().set_filters(Some(filters())).send()
    );
    let described = described.map_err(|e| BakeError::aws("finding builders")(e.into()))?;
    let groups = groups.map_err(|e| BakeError::aws("finding bake security groups")(e.into()))?;
    // The leases are judged on EC2's clock as of these replies.
    let aws_now = cloud.clock.now();
    let instances = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| !matches!(i.state().and_then(|s| s.name()), Some(InstanceStateName::Terminated)))
        .filter_map(|i| Some((i.instance_id()?.to_owned(), Leftover::from_tags(i.tags(), aws_now)?)))
        .collect();
    let groups = groups.security_groups().iter().filter_map(|g| Some((g.group_id()?.to_owned(), Leftover::from_tags(g.tags(), aws_now)?))).collect();
    Ok(Temporaries { instances, groups })
}

/// Terminates builders, then deletes their security groups. Returns how many resources were
/// removed.
async fn remove(cloud: &Cloud, found: &Temporaries, progress: &Arc<dyn Watch>) -> Result<usize, BakeError> {
    for bake in found.bakes() {
        let _ = std::fs::remove_dir_all(scratch_dir(&bake.bake_id));
    }
    let instances: Vec<String> = found.instances.iter().map(|(id, _)| id.clone()).collect();
    if !instances.is_empty() {
        progress.event(Event::Bake(format!("terminating builder {}", instances.join(", "))));
        cloud
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(instances.clone()))
            .send()
            .await
            .map_err(|e| BakeError::aws("terminating builders")(e.into()))?;
        for id in &instances {
            let _ = wait_for_instance(cloud, id, InstanceStateName::Terminated).await;
        }
    }
    for (id, _) in &found.groups {
        progress.event(Event::Bake(format!("deleting security group {id}")));
        let mut attempt = 0;
        loop {
            match cloud.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => break,
                // The terminated builder's network interface lingers for a while.
                Err(error) if attempt < 30 => {
                    let error = crate::aws::AwsError::from(error);
                    if error.is_not_found() {
                        break;
                    }
                    if !error.is_code("DependencyViolation") {
                        return Err(BakeError::aws("deleting a bake security group")(error));
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(error) => return Err(BakeError::aws("deleting a bake security group")(error.into())),
            }
        }
    }
    Ok(instances.len() + found.groups.len())
}

/// Removes everything one bake made that is temporary.
async fn cleanup(cloud: &Cloud, bake_id: Option<&str>, progress: &Arc<dyn Watch>) -> Result<usize, BakeError> {
    remove(cloud, &temporaries(cloud, bake_id).await?, progress).await
}

/// What other bakes left, before a bake starts: removes what dead bakes left and returns the
/// bakes still running. Builders kept for debugging are left alone (and mentioned).
pub(super) async fn clear_abandoned(cloud: &Cloud, progress: &Arc<dyn Watch>) -> Result<Vec<Leftover>, BakeError> {
    let found = temporaries(cloud, None).await?;
    let bakes = found.bakes();
    for bake in &bakes {
        match &bake.standing {
            Standing::Abandoned { holder } => progress.event(Event::Bake(format!(
                "removing what bake {} of image `{}` left behind: its holder {holder} is gone",
                bake.bake_id, bake.image
            ))),
            Standing::Kept => progress.event(Event::Bake(format!(
                "bake {} of image `{}` was kept for debugging; `kstack bake --cleanup` removes it",
                bake.bake_id, bake.image
            ))),
            Standing::Running { .. } => {}
        }
    }
    remove(cloud, &found.only(|l| matches!(l.standing, Standing::Abandoned { .. })), progress).await?;
    Ok(bakes.into_iter().filter(|b| matches!(b.standing, Standing::Running { .. })).collect())
}

/// `kstack bake --cleanup`: what dead bakes left and builders kept for debugging; bakes that
/// still run are named and left alone. Returns how many resources were removed.
pub async fn cleanup_leftovers(cloud: &Cloud, progress: &Arc<dyn Watch>) -> Result<usize, BakeError> {
    let found = temporaries(cloud, None).await?;
    for bake in found.bakes() {
        if let Standing::Running { holder, expires } = &bake.standing {
            progress.event(Event::Bake(format!(
                "bake {} of image `{}` is running ({holder}, lease until {expires}): left alone",
                bake.bake_id, bake.image
            )));
        }
    }
    remove(cloud, &found.only(|l| !matches!(l.standing, Standing::Running { .. })), progress).await
}
