//! Resolves images of `images/` to the newest AMI baked for them.

use crate::naming::TAG_IMAGE;
use std::collections::BTreeMap;

use aws_sdk_ec2::types::Filter;

use super::{AwsError, Cloud};

/// The newest available AMI of each named image; names without one are left out.
pub async fn resolve_images(cloud: &Cloud, names: &[String]) -> Result<BTreeMap<String, String>, AwsError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let images = cloud
        .ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name(format!("tag:{TAG_IMAGE}")).set_values(Some(names.to_vec())).build())
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await?;
    let mut newest: BTreeMap<String, (String, String)> = BTreeMap::new();
    for image in images.images() {
        let Some(name) = image.tags().iter().find(|t| t.key() == Some(TAG_IMAGE)).and_then(|t| t.value()) else {
            continue;
        };
        let (Some(id), created) = (image.image_id(), image.creation_date().unwrap_or_default()) else { continue };
        let entry = newest.entry(name.to_owned()).or_insert_with(|| (String::new(), String::new()));
        // ISO 8601 timestamps order correctly as text.
        if created >= entry.1.as_str() {
            *entry = (id.to_owned(), created.to_owned());
        }
    }
    Ok(newest.into_iter().map(|(name, (id, _))| (name, id)).collect())
}
