//! An AMI a bake made, made whole: available, its snapshots tagged like it, shared as the
//! image says, and copied (encrypted with each region's key where one is named) to every
//! region the image asks for, each copy shared alike. Each step looks at what exists first
//! (copies carry an idempotency token; sharing sets permissions to what the image lists), so
//! a bake killed after CreateImage is finished by the next bake rather than done twice, and a
//! bake that reuses an AMI brings its sharing up to date.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{LaunchPermission, LaunchPermissionModifications, OperationType, Tag};

use super::{image_tagged, BakeError};
use crate::aws::Cloud;
use crate::events::{Event, Watch};
use crate::model::image::{Image, Share};
use crate::naming::{TAG_COPIED_FROM, TAG_PROJECT};

/// The AMI per region, the bake's own region first.
pub(super) async fn finish(cloud: &Cloud, image: &Image, ami: &str, progress: &dyn Watch) -> Result<BTreeMap<String, String>, BakeError> {
    let made = wait_for_image(cloud, ami).await?;
    let tags: Vec<Tag> = made.tags().iter().filter(|t| !t.key().unwrap_or_default().starts_with("aws:")).cloned().collect();
    tag_snapshots(cloud, &made, &tags).await?;
    share(cloud, &image.share, &made, progress).await?;
    // The copies are the image's project's, as their tags are its tags.
    let project = tags.iter().find(|t| t.key() == Some(TAG_PROJECT)).and_then(|t| t.value());
    let mut copy_tags = tags.clone();
    copy_tags.push(Tag::builder().key(TAG_COPIED_FROM).value(ami).build());
    // Every copy is started before any is waited for: AWS copies them side by side.
    let mut copies = Vec::new();
    for copy in &image.copy_to {
        let there = cloud.in_region(&copy.region);
        let copied = match image_tagged(&there, TAG_COPIED_FROM, ami, project).await? {
            Some(copied) => {
                progress.event(Event::Bake(format!("{} has {copied} already", copy.region)));
                copied
            }
            None => {
                progress.event(Event::Bake(format!("copying {ami} to {}", copy.region)));
                let copied = there
                    .ec2
                    .copy_image()
                    .source_image_id(ami)
                    .source_region(&cloud.region)
                    .name(made.name().unwrap_or(ami))
                    // A copy of an encrypted AMI is encrypted whatever is asked; a region's
                    // own key encrypts even a copy of a plain one.
                    .encrypted(image.encrypted || copy.kms_key_id.is_some())
                    .set_kms_key_id(copy.kms_key_id.clone())
                    // The same token for the same copy: a copy whose reply was lost, or whose
                    // bake was killed before tagging it, is returned again rather than made twice.
                    .client_token(format!("kstack-{ami}-{}", copy.region))
                    .send()
                    .await
                    .map_err(|e| BakeError::aws("copying the image")(e.into()))?;
                let copied = copied.image_id().unwrap_or_default().to_owned();
                // Tagged once it exists: the AWS emulator ignores CopyImage's tag specifications.
                there
                    .ec2
                    .create_tags()
                    .resources(&copied)
                    .set_tags(Some(copy_tags.clone()))
                    .send()
                    .await
                    .map_err(|e| BakeError::aws("tagging the copied image")(e.into()))?;
                copied
            }
        };
        copies.push((there, copied));
    }
    let mut amis = BTreeMap::from([(cloud.region.clone(), ami.to_owned())]);
    for (there, copied) in copies {
        let available = wait_for_image(&there, &copied).await?;
        tag_snapshots(&there, &available, &copy_tags).await?;
        share(&there, &image.share, &available, progress).await?;
        amis.insert(there.region.clone(), copied);
    }
    Ok(amis)
}

/// An AMI's snapshots, from its block device mappings.
pub(super) fn snapshots_of(image: &aws_sdk_ec2::types::Image) -> Vec<String> {
    image.block_device_mappings().iter().filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned)).collect()
}

/// Tags the snapshots as their AMI is tagged, once they exist, rather than through
/// CreateImage's own tag specifications, which the AWS emulator the tests use does not take
/// for snapshots.
async fn tag_snapshots(cloud: &Cloud, made: &aws_sdk_ec2::types::Image, tags: &[Tag]) -> Result<(), BakeError> {
    let snapshots = snapshots_of(made);
    if snapshots.is_empty() {
        return Ok(());
    }
    cloud
        .ec2
        .create_tags()
        .set_resources(Some(snapshots))
        .set_tags(Some(tags.to_vec()))
        .send()
        .await
        .map_err(|e| BakeError::aws("tagging the image's snapshots")(e.into()))?;
    Ok(())
}

/// Sets who may launch the AMI to exactly what `share` lists (launch permission for
/// accounts, organizations and organizational units; the accounts may also create volumes
/// from its snapshots), taking back what is no longer listed. Two calls when nothing
/// changes; public launch permission is never touched.
async fn share(cloud: &Cloud, share: &Share, made: &aws_sdk_ec2::types::Image, progress: &dyn Watch) -> Result<(), BakeError> {
    let ami = made.image_id().unwrap_or_default();
    let described = cloud
        .ec2
        .describe_image_attribute()
        .image_id(ami)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .map_err(|e| BakeError::aws("reading who may launch the image")(e.into()))?;
    let now = described.launch_permissions();
    let wanted: Vec<LaunchPermission> = share
        .accounts
        .iter()
        .map(|a| LaunchPermission::builder().user_id(a).build())
        .chain(share.organizations.iter().map(|o| LaunchPermission::builder().organization_arn(o).build()))
        .chain(share.organizational_units.iter().map(|u| LaunchPermission::builder().organizational_unit_arn(u).build()))
        .collect();
    let same = |a: &LaunchPermission, b: &LaunchPermission| {
        a.user_id() == b.user_id() && a.organization_arn() == b.organization_arn() && a.organizational_unit_arn() == b.organizational_unit_arn()
    };
    let add: Vec<LaunchPermission> = wanted.iter().filter(|w| !now.iter().any(|n| same(n, w))).cloned().collect();
    let remove: Vec<LaunchPermission> = now.iter().filter(|n| n.group().is_none() && !wanted.iter().any(|w| same(n, w))).cloned().collect();
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    progress.event(Event::Bake(format!("sharing {ami}: {} added, {} taken back", add.len(), remove.len())));
    let changes = LaunchPermissionModifications::builder()
        .set_add((!add.is_empty()).then_some(add.clone()))
        .set_remove((!remove.is_empty()).then_some(remove.clone()));
    cloud
        .ec2
        .modify_image_attribute()
        .image_id(ami)
        .launch_permission(changes.build())
        .send()
        .await
        .map_err(|e| BakeError::aws("sharing the image")(e.into()))?;
    // Organizations launch without snapshot permission; accounts get it to copy the image.
    let accounts = |permissions: &[LaunchPermission]| permissions.iter().filter_map(|p| p.user_id()).map(str::to_owned).collect::<Vec<_>>();
    for (operation, accounts) in [(OperationType::Add, accounts(&add)), (OperationType::Remove, accounts(&remove))] {
        if accounts.is_empty() {
            continue;
        }
        for snapshot in snapshots_of(made) {
            cloud
                .ec2
                .modify_snapshot_attribute()
                .snapshot_id(snapshot)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .operation_type(operation.clone())
                .set_user_ids(Some(accounts.clone()))
                .send()
                .await
                .map_err(|e| BakeError::aws("sharing the image's snapshots")(e.into()))?;
        }
    }
    Ok(())
}

async fn wait_for_image(cloud: &Cloud, ami: &str) -> Result<aws_sdk_ec2::types::Image, BakeError> {
    for _ in 0..450 {
        let described = cloud.ec2.describe_images().image_ids(ami).send().await.map_err(|e| BakeError::aws("waiting for the image")(e.into()))?;
        let image = described.images().first();
        match image.and_then(|i| i.state()).map(|s| s.as_str()) {
            Some("available") => return Ok(image.cloned().unwrap_or_else(|| aws_sdk_ec2::types::Image::builder().build())),
            Some("failed" | "error") => return Err(BakeError::ImageFailed { ami: ami.to_owned() }),
            _ => tokio::time::sleep(Duration::from_secs(4)).await,
        }
    }
    Err(BakeError::ImageTimedOut { ami: ami.to_owned() })
}
