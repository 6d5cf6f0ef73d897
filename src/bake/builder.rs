//! The builder instance's life: launch, configure, check, clean, image, and the removal of
//! everything temporary, which is found by its `kstack:bake` tag so that even a resource
//! created a moment before an interrupt is removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceMetadataOptionsRequest, InstanceStateName,
    InstanceType, IpPermission, IpRange, ResourceType, Tag, TagSpecification, VolumeType,
};

use super::{BakeError, Options, Progress, TAG_BAKE, TAG_HASH};
use crate::aws::Cloud;
use crate::compile::TAG_ADDRESS;
use crate::model::image::Image;
use crate::roles::{Role, RunOptions, Variables};
use crate::ssh::{Connection, HostKeys, Login, SshError};

/// Removes what makes an instance unique, so every node launched from the image starts fresh.
const CLEAN: &str = "set +e
apt-get clean
rm -rf /var/lib/apt/lists/*
rm -f /etc/ssh/ssh_host_*
command -v cloud-init >/dev/null && cloud-init clean --logs
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys /root/.bash_history /home/*/.bash_history
sync";

fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
    pairs.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()
}

pub async fn build(
    cloud: &Cloud,
    image: &Image,
    roles: &[Role],
    source: &str,
    hash: &str,
    options: &Options,
    progress: Progress,
) -> Result<BTreeMap<String, String>, BakeError> {
    let bake_id = format!("{}-{}-{}", image.name, &hash[..8], rand::random::<u32>());
    let key_dir = std::env::temp_dir().join(format!("kstack-bake-{bake_id}"));
    let result = tokio::select! {
        result = steps(cloud, image, roles, source, hash, options, &bake_id, &key_dir, &progress) => result,
        _ = tokio::signal::ctrl_c() => Err(BakeError::Interrupted),
    };
    match (&result, options.keep_on_error) {
        (Err(_), true) => {
            progress(&format!(
                "kept the builder for debugging (tag {TAG_BAKE}={bake_id}); log in with `ssh -i {} {}@<address>`, \
                 remove it with `kstack bake --cleanup`",
                key_dir.join("id_ed25519").display(),
                image.ssh_user
            ));
        }
        _ => {
            let _ = std::fs::remove_dir_all(&key_dir);
            if let Err(error) = cleanup(cloud, Some(&bake_id), &progress).await {
                progress(&format!("cleanup failed: {error}; run `kstack bake --cleanup` to retry"));
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    cloud: &Cloud,
    image: &Image,
    roles: &[Role],
    source: &str,
    hash: &str,
    options: &Options,
    bake_id: &str,
    key_dir: &std::path::Path,
    progress: &Progress,
) -> Result<BTreeMap<String, String>, BakeError> {
    let step_started = Instant::now();
    let step = |text: &str| progress(&format!("[{:>5.1}s] {text}", step_started.elapsed().as_secs_f64()));
    let Some(place) = &image.build else {
        return Err(BakeError::Failed(format!(
            "image `{}` says nowhere to build: add `build: {{ environment: <env>, subnet_tier: <tier> }}`",
            image.name
        )));
    };
    let subnets = cloud
        .ec2
        .describe_subnets()
        .filters(Filter::builder().name("tag:kstack:environment").values(&place.environment).build())
        .filters(Filter::builder().name(format!("tag:{TAG_ADDRESS}")).values(format!("subnet.{}.*", place.subnet_tier)).build())
        .send()
        .await
        .map_err(|e| BakeError::aws("finding the build subnet")(e.into()))?;
    let Some(subnet) = subnets.subnets().first() else {
        return Err(BakeError::Failed(format!(
            "environment `{}` has no subnet of tier `{}` in {}: apply it first",
            place.environment, place.subnet_tier, cloud.region
        )));
    };
    let (subnet_id, vpc_id) = (subnet.subnet_id().unwrap_or_default(), subnet.vpc_id().unwrap_or_default());
    let marker = [(TAG_BAKE, bake_id), ("kstack:image", image.name.as_str())];

    step("creating a temporary security group");
    let group = cloud
        .ec2
        .create_security_group()
        .group_name(format!("kstack-bake-{bake_id}"))
        .description(format!("kstack bake of {}: SSH from the baking machine", image.name))
        .vpc_id(vpc_id)
        .tag_specifications(TagSpecification::builder().resource_type(ResourceType::SecurityGroup).set_tags(Some(tags(&marker))).build())
        .send()
        .await
        .map_err(|e| BakeError::aws("creating the security group")(e.into()))?;
    let group_id = group.group_id().unwrap_or_default().to_owned();

    // A one-off key, installed by cloud-init from user data: no EC2 key pair to leak.
    let key = russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| BakeError::Failed(format!("cannot make an SSH key: {e}")))?;
    let public = key.public_key().to_openssh().map_err(|e| BakeError::Failed(e.to_string()))?;
    std::fs::create_dir_all(key_dir).map_err(|e| BakeError::Failed(e.to_string()))?;
    let key_path = key_dir.join("id_ed25519");
    let private = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| BakeError::Failed(e.to_string()))?;
    write_private(&key_path, private.as_bytes()).map_err(|e| BakeError::Failed(format!("cannot write the bake key: {e}")))?;
    let user_data = format!("#cloud-config\nssh_authorized_keys:\n  - {public}\n");

    step(&format!("launching the builder from {source}"));
    let root_device = crate::aws::root_device(cloud, source).await.map_err(BakeError::aws("reading the source AMI"))?;
    let launched = cloud
        .ec2
        .run_instances()
        .image_id(source)
        .instance_type(InstanceType::from(image.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet_id)
        .security_group_ids(&group_id)
        .user_data(aws_smithy_types::base64::encode(&user_data))
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(image.root_volume_gib as i32)
                        .volume_type(VolumeType::Gp3)
                        .encrypted(image.encrypted)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .metadata_options(InstanceMetadataOptionsRequest::builder().http_tokens(HttpTokensState::Required).build())
        .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags(&[marker[0], marker[1], ("Name", &format!("kstack-bake-{}", image.name))]))).build())
        .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags(&marker))).build())
        .send()
        .await
        .map_err(|e| BakeError::aws("launching the builder")(e.into()))?;
    let instance_id = launched.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_owned();

    let address = wait_for_instance(cloud, &instance_id, InstanceStateName::Running).await?;
    let address = address.ok_or_else(|| BakeError::Failed(format!("builder {instance_id} has no private address")))?;
    let cidr = match &options.ssh_cidr {
        Some(cidr) => cidr.clone(),
        None => format!("{}/32", local_address_towards(&address).map_err(|e| BakeError::Failed(e.to_string()))?),
    };
    cloud
        .ec2
        .authorize_security_group_ingress()
        .group_id(&group_id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(IpRange::builder().cidr_ip(&cidr).description("kstack bake").build())
                .build(),
        )
        .send()
        .await
        .map_err(|e| BakeError::aws("admitting SSH to the builder")(e.into()))?;

    let known_hosts = key_dir.join("known_hosts");
    let from_console = host_keys_from_console(cloud, &instance_id, &address).await;
    let trust_on_first_use = from_console.is_empty();
    if trust_on_first_use {
        step(&format!("builder {instance_id} at {address}: its console shows no host keys, so the first key seen is trusted"));
    } else {
        std::fs::write(&known_hosts, from_console).map_err(|e| BakeError::Failed(e.to_string()))?;
        step(&format!("builder {instance_id} at {address}: host keys taken from its console output"));
    }
    let login = Login {
        user: image.ssh_user.clone(),
        key: key_path,
        port: 22,
        host_keys: HostKeys { path: known_hosts, trust_on_first_use },
        connect_timeout: Duration::from_secs(10),
        bastion: None,
    };
    step("waiting for SSH");
    let connection = wait_for_ssh(&address, &login, options.ssh_timeout).await?;
    connection.close().await;

    step(&format!("applying roles: {}", roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")));
    let variables: Variables = image.variables.clone().into_iter().collect();
    let run_options = RunOptions { check: false, forks: 1, max_fail: None };
    let hosts = [address.clone()];
    let reports = crate::roles::run(&hosts, &login, roles, &variables, &run_options, Arc::new(|_| {})).await;
    let report = reports.into_iter().next().unwrap_or_default();
    if let Some(reason) = &report.unreachable {
        return Err(BakeError::Failed(format!("the builder became unreachable: {reason}")));
    }
    if let Some(failed) = report.tasks.iter().find(|t| t.status == crate::roles::TaskStatus::Failed) {
        return Err(BakeError::Failed(format!(
            "task `{}` of role `{}` failed: {}",
            failed.task,
            failed.role,
            failed.error.clone().unwrap_or_default()
        )));
    }
    step("running the roles' checks");
    let verified = crate::roles::verify(&hosts, &login, roles, &run_options, Arc::new(|_| {})).await;
    let failed: Vec<String> = verified
        .iter()
        .flat_map(|r| &r.checks)
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        return Err(BakeError::Failed(format!("checks failed, no image was made: {}", failed.join("; "))));
    }

    step("cleaning the builder");
    let connection = Connection::open(&address, &login).await.map_err(|e| BakeError::Failed(e.to_string()))?;
    let _ = connection.run(CLEAN, None).await;
    connection.close().await;
    cloud
        .ec2
        .stop_instances()
        .instance_ids(&instance_id)
        .send()
        .await
        .map_err(|e| BakeError::aws("stopping the builder")(e.into()))?;
    wait_for_instance(cloud, &instance_id, InstanceStateName::Stopped).await?;

    let timestamp = crate::state::now_rfc3339().replace([':', '-'], "").replace('T', "-").trim_end_matches('Z').to_owned();
    let name = image.ami_name.replace("{image}", &image.name).replace("{hash}", &hash[..12]).replace("{timestamp}", &timestamp);
    step(&format!("creating image {name}"));
    let role_names = roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(",");
    let mut image_tags = vec![
        ("kstack:image", image.name.as_str()),
        (TAG_HASH, hash),
        ("kstack:roles", role_names.as_str()),
        ("kstack:source-ami", source),
        ("kstack:version", env!("CARGO_PKG_VERSION")),
        ("Name", name.as_str()),
    ];
    image_tags.extend(image.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let created = cloud
        .ec2
        .create_image()
        .instance_id(&instance_id)
        .name(&name)
        .description(format!("kstack image {} from {source}", image.name))
        .tag_specifications(TagSpecification::builder().resource_type(ResourceType::Image).set_tags(Some(tags(&image_tags))).build())
        .send()
        .await
        .map_err(|e| BakeError::aws("creating the image")(e.into()))?;
    let ami = created.image_id().unwrap_or_default().to_owned();
    let snapshots = wait_for_image(cloud, &ami).await?;
    // Snapshots are tagged once they exist rather than through CreateImage's own tag
    // specifications, which the AWS emulator the tests use does not take for snapshots.
    if !snapshots.is_empty() {
        cloud
            .ec2
            .create_tags()
            .set_resources(Some(snapshots))
            .set_tags(Some(tags(&image_tags)))
            .send()
            .await
            .map_err(|e| BakeError::aws("tagging the image's snapshots")(e.into()))?;
    }
    let mut amis = BTreeMap::from([(cloud.region.clone(), ami.clone())]);
    for region in &image.copy_to {
        step(&format!("copying {ami} to {region}"));
        let there = Cloud::connect(region, &cloud.environment).await;
        let copied = there
            .ec2
            .copy_image()
            .source_image_id(&ami)
            .source_region(&cloud.region)
            .name(&name)
            .send()
            .await
            .map_err(|e| BakeError::aws("copying the image")(e.into()))?;
        let copy = copied.image_id().unwrap_or_default().to_owned();
        // Tagged once it exists: the AWS emulator ignores CopyImage's tag specifications.
        there
            .ec2
            .create_tags()
            .resources(&copy)
            .set_tags(Some(tags(&image_tags)))
            .send()
            .await
            .map_err(|e| BakeError::aws("tagging the copied image")(e.into()))?;
        amis.insert(region.clone(), copy);
    }
    step(&format!("image {ami} is available"));
    Ok(amis)
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

/// known_hosts lines from the host keys cloud-init prints to the console, if any.
async fn host_keys_from_console(cloud: &Cloud, instance: &str, address: &str) -> String {
    let Ok(output) = cloud.ec2.get_console_output().instance_id(instance).send().await else { return String::new() };
    let text = output
        .output()
        .and_then(|o| aws_smithy_types::base64::decode(o).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    known_hosts_from_console(&text, address)
}

/// The host keys cloud-init prints between its `SSH HOST KEY KEYS` markers, as known_hosts
/// lines for `address`.
fn known_hosts_from_console(console: &str, address: &str) -> String {
    let Some(block) = console.split("-----BEGIN SSH HOST KEY KEYS-----").nth(1) else { return String::new() };
    block
        .split("-----END SSH HOST KEY KEYS-----")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(format!("{address} {} {}\n", parts.next()?, parts.next()?))
        })
        .collect()
}

async fn wait_for_ssh(address: &str, login: &Login, timeout: Duration) -> Result<Connection, BakeError> {
    let deadline = Instant::now() + timeout;
    loop {
        match Connection::open(address, login).await {
            Ok(connection) => return Ok(connection),
            Err(error @ (SshError::HostKeyChanged { .. } | SshError::Key { .. })) => return Err(BakeError::Failed(error.to_string())),
            // Booting, or cloud-init has not installed the key yet.
            Err(error) if Instant::now() > deadline => {
                return Err(BakeError::Failed(format!("the builder did not accept SSH within {}s: {error}", timeout.as_secs())))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
}

/// Waits until the instance is in `wanted`; returns its private address.
async fn wait_for_instance(cloud: &Cloud, id: &str, wanted: InstanceStateName) -> Result<Option<String>, BakeError> {
    for _ in 0..300 {
        let described = cloud
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| BakeError::aws("waiting for the builder")(e.into()))?;
        let instance = described.reservations().iter().flat_map(|r| r.instances()).next();
        let state = instance.and_then(|i| i.state()).and_then(|s| s.name()).cloned();
        if state.as_ref() == Some(&wanted) {
            return Ok(instance.and_then(|i| i.private_ip_address()).map(str::to_owned));
        }
        if matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) {
            return Err(BakeError::Failed(format!("builder {id} was terminated")));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Err(BakeError::Failed(format!("builder {id} did not become {} in 10 minutes", wanted.as_str())))
}

/// Waits until the image is available; returns its snapshots.
async fn wait_for_image(cloud: &Cloud, ami: &str) -> Result<Vec<String>, BakeError> {
    for _ in 0..450 {
        let described = cloud
            .ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(|e| BakeError::aws("waiting for the image")(e.into()))?;
        let image = described.images().first();
        match image.and_then(|i| i.state()).map(|s| s.as_str()) {
            Some("available") => {
                let snapshots = image
                    .map(|i| i.block_device_mappings())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                    .collect();
                return Ok(snapshots);
            }
            Some("failed" | "error") => return Err(BakeError::Failed(format!("image {ami} failed"))),
            _ => tokio::time::sleep(Duration::from_secs(4)).await,
        }
    }
    Err(BakeError::Failed(format!("image {ami} was not available after 30 minutes")))
}

/// Terminates builders and deletes security groups of one bake (or of every bake), found
/// by tag. Returns how many resources were removed.
pub async fn cleanup(cloud: &Cloud, bake_id: Option<&str>, progress: &Progress) -> Result<usize, BakeError> {
    let filter = || match bake_id {
        Some(id) => Filter::builder().name(format!("tag:{TAG_BAKE}")).values(id).build(),
        None => Filter::builder().name("tag-key").values(TAG_BAKE).build(),
    };
    let described = cloud
        .ec2
        .describe_instances()
        .filters(filter())
        .send()
        .await
        .map_err(|e| BakeError::aws("finding builders")(e.into()))?;
    let instances: Vec<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| !matches!(i.state().and_then(|s| s.name()), Some(InstanceStateName::Terminated)))
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    let mut removed = 0;
    if !instances.is_empty() {
        progress(&format!("terminating builder {}", instances.join(", ")));
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
        removed += instances.len();
    }
    let groups = cloud
        .ec2
        .describe_security_groups()
        .filters(filter())
        .send()
        .await
        .map_err(|e| BakeError::aws("finding bake security groups")(e.into()))?;
    for group in groups.security_groups() {
        let id = group.group_id().unwrap_or_default();
        progress(&format!("deleting security group {id}"));
        let mut attempt = 0;
        loop {
            match cloud.ec2.delete_security_group().group_id(id).send().await {
                Ok(_) => break,
                // The terminated builder's network interface lingers for a while.
                Err(error) if attempt < 30 => {
                    let error = crate::aws::AwsError::from(error);
                    if !error.is_code("DependencyViolation") {
                        return Err(BakeError::aws("deleting a bake security group")(error));
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(error) => return Err(BakeError::aws("deleting a bake security group")(error.into())),
            }
        }
        removed += 1;
    }
    Ok(removed)
}

/// `kstack bake --cleanup`: everything any bake left behind.
pub async fn cleanup_leftovers(cloud: &Cloud, progress: &Progress) -> Result<usize, BakeError> {
    cleanup(cloud, None, progress).await
}

#[cfg(test)]
mod tests {
    use super::known_hosts_from_console;

    #[test]
    fn host_keys_are_read_from_cloud_init_console_output() {
        let console = "[  12.3] cloud-init[912]: Cloud-init v. 0.7.9 running\n\
            -----BEGIN SSH HOST KEY KEYS-----\n\
            ecdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-10-0-0-5\n\
            ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@ip-10-0-0-5\n\
            -----END SSH HOST KEY KEYS-----\n\
            [  13.0] cloud-init[912]: finished\n";
        assert_eq!(
            known_hosts_from_console(console, "10.0.0.5"),
            "10.0.0.5 ecdsa-sha2-nistp256 AAAAE2VjZHNh\n10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n"
        );
        assert_eq!(known_hosts_from_console("no keys printed", "10.0.0.5"), "");
    }
}
