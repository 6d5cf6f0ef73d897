//! An AMI a bake made, made whole: available, its snapshots tagged like it, and copied to
//! every region the image asks for. Each step looks at what exists first (copies carry an
//! idempotency token), so a bake killed after CreateImage is finished by the next bake
//! rather than done twice.

use crate::events::Event;
use crate::naming::TAG_COPIED_FROM;
use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::Tag;

use super::{image_tagged, BakeError};
use crate::aws::Cloud;
use crate::model::image::Image;

/// The AMI per region, the bake's own region first.
pub(super) async fn finish(
    cloud: &Cloud,
    image: &Image,
    ami: &str,
    progress: &dyn crate::events::Watch,
) -> Result<BTreeMap<String, String>, BakeError> {
    let made = wait_for_image(cloud, ami).await?;
    let tags: Vec<Tag> = made.tags().iter().filter(|t| !t.key().unwrap_or_default().starts_with("aws:")).cloned().collect();
    let snapshots: Vec<String> =
        made.block_device_mappings().iter().filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned)).collect();
    // Snapshots are tagged once they exist rather than through CreateImage's own tag
    // specifications, which the AWS emulator the tests use does not take for snapshots.
    if !snapshots.is_empty() {
        cloud
            .ec2
            .create_tags()
            .set_resources(Some(snapshots))
            .set_tags(Some(tags.clone()))
            .send()
            .await
            .map_err(|e| BakeError::aws("tagging the image's snapshots")(e.into()))?;
    }
    let mut amis = BTreeMap::from([(cloud.region.clone(), ami.to_owned())]);
    let mut copy_tags = tags.clone();
    copy_tags.push(Tag::builder().key(TAG_COPIED_FROM).value(ami).build());
    for region in &image.copy_to {
        let there = cloud.in_region(region);
        if let Some(copy) = image_tagged(&there, TAG_COPIED_FROM, ami).await? {
            progress.event(Event::Bake(format!("{region} has {copy} already")));
            amis.insert(region.clone(), copy);
            continue;
        }
        progress.event(Event::Bake(format!("copying {ami} to {region}")));
        let copied = there
            .ec2
            .copy_image()
            .source_image_id(ami)
            .source_region(&cloud.region)
            .name(made.name().unwrap_or(ami))
            // The same token for the same copy: a copy whose reply was lost, or whose bake
            // was killed before tagging it, is returned again rather than made twice.
            .client_token(format!("kstack-{ami}-{region}"))
            .send()
            .await
            .map_err(|e| BakeError::aws("copying the image")(e.into()))?;
        let copy = copied.image_id().unwrap_or_default().to_owned();
        // Tagged once it exists: the AWS emulator ignores CopyImage's tag specifications.
        there
            .ec2
            .create_tags()
            .resources(&copy)
            .set_tags(Some(copy_tags.clone()))
            .send()
            .await
            .map_err(|e| BakeError::aws("tagging the copied image")(e.into()))?;
        amis.insert(region.clone(), copy);
    }
    Ok(amis)
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
