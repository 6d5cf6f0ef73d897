//! `kstack bake <image>`: an immutable node AMI from roles, replacing Packer's amazon-ebs.
//!
//! Resolve the source AMI and the bake's content hash; reuse an AMI with that hash; otherwise
//! launch a tagged builder with a one-off SSH key (user data, as cloud-init installs it) and
//! a security group admitting SSH from this machine only, apply the roles, run their checks,
//! clean the instance, stop it, create the image, copy it, and delete everything temporary:
//! also on failure and Ctrl-C, unless asked to keep it for debugging. What a killed bake left
//! is removed by the next one (`lease.rs`), which also finishes its image (`finish.rs`).

mod builder;
mod finish;
mod hash;
pub mod inventory;
mod lease;
pub mod resolve;

use crate::events::{Event, Watch};
use crate::naming::TAG_HASH;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use builder::cleanup_leftovers;
pub use hash::content_hash;

use crate::aws::{self, AwsError, Cloud};
use crate::model::image::{Image, ImageSource};
use crate::roles::Role;
use crate::ssh::SshError;

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error("AWS failed while {doing}: {error}")]
    Aws { doing: String, error: AwsError },
    /// SSH to the builder failed in a way waiting does not mend (a key, known_hosts).
    #[error("{0}")]
    Ssh(#[from] SshError),
    #[error("the builder offers a host key its console output does not show, so nothing was run on it: {0}")]
    HostKeyNotOnConsole(SshError),
    #[error("the builder did not accept SSH within {seconds}s: {error}")]
    SshTimedOut { seconds: u64, error: SshError },
    #[error("{doing}: {error}")]
    Local { doing: &'static str, error: String },
    #[error("no AMI of owner {owner} matches `{name}`")]
    NoSourceAmi { owner: String, name: String },
    #[error("image `{image}` says nowhere to build: add `build: {{ environment: <env>, subnet_tier: <tier> }}`")]
    NowhereToBuild { image: String },
    #[error("environment `{environment}` has no subnet of tier `{tier}` in {region}: apply it first")]
    NoBuildSubnet { environment: String, tier: String, region: String },
    #[error("EC2's replies carry no time: the bake's lease cannot be written")]
    NoServiceTime,
    #[error(
        "image `{image}` is being baked from this same content by {holder} (bake {bake}, lease until {expires}); \
         wait for it to finish, then run again to reuse its AMI"
    )]
    BeingBaked { image: String, holder: String, bake: String, expires: String },
    #[error("bake {other} of the same content started first; this one gives way (run again when it is done to reuse its AMI)")]
    GaveWay { other: String },
    #[error("stopped: the bake's lease could not be renewed ({0})")]
    LeaseLost(Box<BakeError>),
    #[error("builder {instance} has no private address")]
    NoAddress { instance: String },
    #[error("builder {instance} was terminated")]
    BuilderTerminated { instance: String },
    #[error("builder {instance} did not become {state} in 10 minutes")]
    BuilderStuck { instance: String, state: String },
    #[error("the builder became unreachable: {0}")]
    Unreachable(String),
    #[error("task `{task}` of role `{role}` failed: {error}")]
    TaskFailed { role: String, task: String, error: String },
    #[error("checks failed, no image was made: {}", .0.join("; "))]
    ChecksFailed(Vec<String>),
    #[error("cleaning the builder failed, no image was made: {0}")]
    CleanUnreachable(SshError),
    #[error(
        "cleaning the builder failed (exit status {status}), no image was made: an image of it could carry its SSH host \
         keys or the bake's login key to every node; its output:\n{output}"
    )]
    CleanFailed { status: u32, output: String },
    #[error("image {ami} failed")]
    ImageFailed { ami: String },
    #[error("image {ami} was not available after 30 minutes")]
    ImageTimedOut { ami: String },
    #[error("{0}")]
    Stopped(crate::stop::Reason),
}

impl BakeError {
    fn aws(doing: &str) -> impl FnOnce(AwsError) -> BakeError + '_ {
        move |error| BakeError::Aws { doing: doing.to_owned(), error }
    }
}

#[derive(Default)]
pub struct BakeOptions {
    pub force: bool,
    pub keep_on_error: bool,
    /// The CIDR SSH is admitted from; by default the address this machine uses to reach the
    /// builder.
    pub ssh_cidr: Option<String>,
    pub ssh_timeout: Duration,
    /// How long to wait for the builder's console output to show its SSH host keys before
    /// trusting the first key it offers.
    pub host_key_wait: Duration,
    /// Set by Ctrl-C or SIGTERM: the bake stops and removes what it made.
    pub stop: crate::stop::Stop,
    /// Where the builder runs when the build environment's network is someone else's (its
    /// subnets carry no kstack tag to find them by).
    pub build_subnet: Option<BuildSubnet>,
    /// The project's name, tagged on the AMI (`kstack:project`): `keep:` retires only its
    /// own project's AMIs of the image.
    pub project: Option<String>,
}

/// A subnet the builder runs in, and its VPC.
#[derive(Debug, Clone)]
pub struct BuildSubnet {
    pub subnet: String,
    pub vpc: String,
}

/// How the bake came to trust the builder's SSH host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyTrust {
    /// The keys cloud-init printed to the builder's console (through the EC2 API, not SSH).
    VerifiedFromConsole,
    /// The console showed no keys in time: the first key the builder offered.
    TrustedOnFirstUse,
}

/// What a bake produced, also written as the JSON manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub image: String,
    pub hash: String,
    pub source_ami: String,
    pub reused: bool,
    /// AMI id per region, the bake's own region first.
    pub amis: BTreeMap<String, String>,
    /// AMIs retired past `keep:`, per region.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, Vec<String>>,
    /// How the builder's host key was trusted; none when an existing AMI was reused.
    pub host_key: Option<HostKeyTrust>,
    pub seconds: f64,
}

pub async fn source_ami(cloud: &Cloud, image: &Image) -> Result<String, BakeError> {
    match &image.source {
        ImageSource::Ami(id) => Ok(id.clone()),
        ImageSource::Search { owner, name } => {
            let found = cloud
                .ec2
                .describe_images()
                .owners(owner)
                .filters(aws_sdk_ec2::types::Filter::builder().name("name").values(name).build())
                .filters(aws_sdk_ec2::types::Filter::builder().name("state").values("available").build())
                .send()
                .await
                .map_err(|e| BakeError::Aws { doing: String::from("finding the source AMI"), error: e.into() })?;
            found
                .images()
                .iter()
                .max_by_key(|i| i.creation_date().unwrap_or_default().to_owned())
                .and_then(|i| i.image_id())
                .map(str::to_owned)
                .ok_or_else(|| BakeError::NoSourceAmi { owner: owner.clone(), name: name.clone() })
        }
    }
}

/// The AMI baked from the image's current definition (source, roles, variables), if any.
pub async fn current_ami(cloud: &Cloud, image: &Image, roles: &[Role], project: Option<&str>) -> Result<Option<String>, BakeError> {
    let source = source_ami(cloud, image).await?;
    existing(cloud, &content_hash(&source, image, roles)?, project).await
}

/// An AMI baked from exactly this content that `project` may use ([`aws::usable_by`]), if
/// there is one.
async fn existing(cloud: &Cloud, hash: &str, project: Option<&str>) -> Result<Option<String>, BakeError> {
    image_tagged(cloud, TAG_HASH, hash, project).await
}

/// An image tagged `key=value` that `project` may use and that is usable or becoming so: a
/// failed image is no bake to reuse; a pending one is finished by `finish`.
async fn image_tagged(cloud: &Cloud, key: &str, value: &str, project: Option<&str>) -> Result<Option<String>, BakeError> {
    let found = cloud
        .ec2
        .describe_images()
        .owners("self")
        .filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build())
        .filters(aws_sdk_ec2::types::Filter::builder().name("state").values("available").values("pending").build())
        .send()
        .await
        .map_err(|e| BakeError::Aws { doing: format!("looking for an image tagged {key}={value}"), error: e.into() })?;
    Ok(found.images().iter().filter(|i| aws::usable_by(i, project)).find_map(|i| i.image_id()).map(str::to_owned))
}

pub async fn bake(cloud: &Cloud, image: &Image, roles: &[Role], options: &BakeOptions, progress: Arc<dyn Watch>) -> Result<Manifest, BakeError> {
    let started = Instant::now();
    progress.event(Event::Bake(format!("resolving the source of image `{}`", image.name)));
    let source = source_ami(cloud, image).await?;
    let hash = content_hash(&source, image, roles)?;
    let running = builder::clear_abandoned(cloud, &progress).await?;
    for other in running.iter().filter(|b| b.image == image.name && b.hash == hash) {
        if let lease::Standing::Running { holder, expires } = &other.standing {
            return Err(BakeError::BeingBaked {
                image: image.name.clone(),
                holder: holder.clone(),
                bake: other.bake_id.clone(),
                expires: expires.clone(),
            });
        }
    }
    let reusable = if options.force { None } else { existing(cloud, &hash, options.project.as_deref()).await? };
    let (amis, host_key) = match &reusable {
        Some(ami) => {
            progress.event(Event::Bake(format!("reusing {ami}: it was baked from the same source, roles and variables (hash {})", &hash[..12])));
            (finish::finish(cloud, image, ami, &*progress).await?, None)
        }
        None => {
            options.stop.check().map_err(BakeError::Stopped)?;
            let (amis, host_key) = builder::build(cloud, image, roles, &source, &hash, options, progress.clone()).await?;
            (amis, Some(host_key))
        }
    };
    let mut retired = BTreeMap::new();
    for (region, ami) in &amis {
        let there = if *region == cloud.region { cloud.clone() } else { cloud.in_region(region) };
        let gone = inventory::retire(&there, image, options.project.as_deref(), ami, &*progress).await?;
        if !gone.is_empty() {
            retired.insert(region.clone(), gone);
        }
    }
    Ok(Manifest {
        image: image.name.clone(),
        hash,
        source_ami: source,
        reused: reusable.is_some(),
        amis,
        retired,
        host_key,
        seconds: started.elapsed().as_secs_f64(),
    })
}
