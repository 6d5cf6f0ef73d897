//! Which AMI each named image of an environment runs: the one baked from the image's current
//! definition, or else its newest bake, marked stale. Plans and rolls use it; knows nothing of
//! how the answer is shown.

use std::collections::BTreeMap;

use super::{current_ami, BakeError};
use crate::aws::{self, Cloud};
use crate::hint::Hint;
use crate::model::image::Image;
use crate::roles::Role;

/// The AMI an image resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub ami: String,
    /// The image's definition changed since this AMI was baked: it is the newest bake, not a
    /// bake of the current definition.
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("AWS failed while resolving images in {region}: {error}")]
    Aws { region: String, error: aws::AwsError },
    #[error("no AMI has been baked in {region} for image `{image}`")]
    NotBaked { image: String, region: String },
}

impl Hint for ResolveError {
    fn hint(&self) -> Option<String> {
        match self {
            ResolveError::Aws { error, .. } => error.hint(),
            ResolveError::NotBaked { image, .. } => {
                Some(format!("bake it first with `kstack bake {image}`, or name an AMI id as the group's `image`"))
            }
        }
    }
}

/// Each of `names`' AMI; `definitions` holds the images (with their roles) whose current
/// definition can be looked for. Only AMIs `project` may use count ([`aws::usable_by`]):
/// another project's image of the same name is never launched.
pub async fn resolve(
    cloud: &Cloud,
    definitions: &BTreeMap<&str, (&Image, &[Role])>,
    names: &[String],
    project: Option<&str>,
) -> Result<BTreeMap<String, Resolved>, ResolveError> {
    let newest = aws::resolve_images(cloud, names, project).await.map_err(|error| ResolveError::Aws { region: cloud.region.clone(), error })?;
    let mut resolved = BTreeMap::new();
    for name in names {
        // A failure to find the current bake falls back to the newest, marked stale.
        let current = match definitions.get(name.as_str()) {
            Some((image, roles)) => current_ami(cloud, image, roles, project).await.unwrap_or_else(|error: BakeError| {
                tracing::debug!("looking for the current bake of `{name}`: {error}");
                None
            }),
            None => None,
        };
        let found = match (current, newest.get(name)) {
            (Some(ami), _) => Resolved { ami, stale: false },
            (None, Some(ami)) => Resolved { ami: ami.clone(), stale: true },
            (None, None) => return Err(ResolveError::NotBaked { image: name.clone(), region: cloud.region.clone() }),
        };
        resolved.insert(name.clone(), found);
    }
    Ok(resolved)
}
