//! The AMIs an image has in each region, what uses each, and retiring the ones past `keep:`:
//! `kstack images <name>` lists them; a bake retires after it made or reused its AMI.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Filter;
use serde::Serialize;

use super::finish::snapshots_of;
use super::BakeError;
use crate::aws::{self, AwsError, Cloud};
use crate::events::{Event, Watch};
use crate::model::image::Image;
use crate::naming::{TAG_COPIED_FROM, TAG_HASH, TAG_IMAGE, TAG_PROJECT, TAG_RETIRED};

/// One AMI of an image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageAmi {
    pub region: String,
    pub ami: String,
    pub name: String,
    pub state: String,
    /// The content hash it was baked from.
    pub hash: Option<String>,
    /// When it was made (ISO 8601, UTC).
    pub created: String,
    /// The AMI it is a copy of, for a copy in another region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<String>,
    pub snapshots: Vec<String>,
    /// What starts instances from it: environments, or launch templates and configurations
    /// by name. Empty when nothing does.
    pub used_by: BTreeSet<String>,
}

/// The image's AMIs in `cloud`'s region, newest first: those its project's bakes made (with a
/// project name, tagged `kstack:project`; without, untagged), never another project's.
pub async fn amis(cloud: &Cloud, image: &str, project: Option<&str>) -> Result<Vec<ImageAmi>, BakeError> {
    let doing = || format!("listing the AMIs of image `{image}` in {}", cloud.region);
    let mut request = cloud.ec2.describe_images().owners("self").filters(Filter::builder().name(format!("tag:{TAG_IMAGE}")).values(image).build());
    if let Some(project) = project {
        request = request.filters(Filter::builder().name(format!("tag:{TAG_PROJECT}")).values(project).build());
    }
    let (found, used) = tokio::try_join!(async { request.send().await.map_err(AwsError::from) }, aws::images_in_use(cloud))
        .map_err(|error| BakeError::Aws { doing: doing(), error })?;
    let tag =
        |image: &aws_sdk_ec2::types::Image, key: &str| image.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned);
    let mut amis: Vec<ImageAmi> = found
        .images()
        .iter()
        .filter(|i| project.is_some() || tag(i, TAG_PROJECT).is_none())
        .filter_map(|i| {
            let ami = i.image_id()?.to_owned();
            Some(ImageAmi {
                region: cloud.region.clone(),
                name: i.name().unwrap_or_default().to_owned(),
                state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                hash: tag(i, TAG_HASH),
                created: i.creation_date().unwrap_or_default().to_owned(),
                copied_from: tag(i, TAG_COPIED_FROM),
                snapshots: snapshots_of(i),
                used_by: used.get(&ami).cloned().unwrap_or_default(),
                ami,
            })
        })
        .collect();
    // ISO 8601 timestamps order correctly as text.
    amis.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.ami.cmp(&a.ami)));
    Ok(amis)
}

/// Keeps the image's newest `keep` AMIs in `cloud`'s region and retires the rest (deregistered,
/// then their snapshots deleted), except any something still starts instances from, which
/// stays whatever its age: a group is never left without its AMI. `made` (this bake's AMI)
/// is never retired. The AMIs retired.
pub async fn retire(cloud: &Cloud, image: &Image, project: Option<&str>, made: &str, progress: &dyn Watch) -> Result<Vec<String>, BakeError> {
    let Some(keep) = image.keep else { return Ok(Vec::new()) };
    let amis = amis(cloud, &image.name, project).await?;
    delete_snapshots(cloud, &left_by_a_retire(cloud, &image.name).await?).await?;
    let mut retired = Vec::new();
    for old in amis.iter().filter(|a| a.state == "available").skip(keep as usize) {
        if old.ami == made {
            continue;
        }
        if !old.used_by.is_empty() {
            let users = old.used_by.iter().cloned().collect::<Vec<_>>().join(", ");
            progress.event(Event::Bake(format!("keeping {} in {} past `keep: {keep}`: {users} uses it", old.ami, cloud.region)));
            continue;
        }
        progress.event(Event::Bake(format!("retiring {} in {} (made {})", old.ami, cloud.region, old.created)));
        let doing = |what: &str| format!("{what} {} in {}", old.ami, cloud.region);
        if !old.snapshots.is_empty() {
            let marked = aws_sdk_ec2::types::Tag::builder().key(TAG_RETIRED).value(&old.ami).build();
            let mark = cloud.ec2.create_tags().set_resources(Some(old.snapshots.clone())).tags(marked).send().await;
            mark.map_err(|e| BakeError::Aws { doing: doing("marking the snapshots of"), error: e.into() })?;
        }
        let deregistered = cloud.ec2.deregister_image().image_id(&old.ami).send().await;
        deregistered.map_err(|e| BakeError::Aws { doing: doing("deregistering"), error: e.into() })?;
        // Only once nothing is registered from them: AWS refuses to delete a snapshot an AMI uses.
        delete_snapshots(cloud, &old.snapshots).await?;
        retired.push(old.ami.clone());
    }
    Ok(retired)
}

/// Snapshots of the image a retire marked and was cut off before deleting.
async fn left_by_a_retire(cloud: &Cloud, image: &str) -> Result<Vec<String>, BakeError> {
    let found = cloud
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(Filter::builder().name(format!("tag:{TAG_IMAGE}")).values(image).build())
        .filters(Filter::builder().name("tag-key").values(TAG_RETIRED).build())
        .send()
        .await
        .map_err(|e| BakeError::Aws { doing: format!("looking for snapshots of retired AMIs in {}", cloud.region), error: e.into() })?;
    Ok(found.snapshots().iter().filter_map(|s| s.snapshot_id()).map(str::to_owned).collect())
}

async fn delete_snapshots(cloud: &Cloud, snapshots: &[String]) -> Result<(), BakeError> {
    for snapshot in snapshots {
        match cloud.ec2.delete_snapshot().snapshot_id(snapshot).send().await.map_err(AwsError::from) {
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(BakeError::Aws { doing: format!("deleting snapshot {snapshot} in {}", cloud.region), error }),
        }
    }
    Ok(())
}
