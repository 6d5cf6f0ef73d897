//! Baking an image in the environment its `build:` names, as the resources that environment's
//! state records: the bake itself is `bake`, this opens it and says how it ended.

use std::sync::Arc;

use super::load::{for_bake, open_store, ForBake};
use super::{Notice, OpsError};
use crate::aws::Cloud;
use crate::bake::inventory::{self, ImageAmi};
use crate::bake::{bake, cleanup_leftovers, BakeError, BakeOptions, BuildSubnet, Manifest};
use crate::events::Watch;
use crate::model::image::Image;
use crate::model::network::SubnetPlace;
use crate::model::Project;
use crate::model::Vpc;
use crate::roles::Role;

/// An image ready to bake: its roles, and AWS where its builder runs.
pub struct Baking {
    image: Image,
    roles: Vec<Role>,
    pub cloud: Cloud,
    /// The build subnet, when the build environment's network is someone else's.
    build_subnet: Option<BuildSubnet>,
    /// The project's name: its AMIs carry it.
    project: Option<String>,
}

impl Baking {
    pub async fn open(project: &Project, image: &str, notice: &dyn Notice) -> Result<Baking, OpsError> {
        let ForBake { image, roles, environment: checked } = for_bake(project, image, notice)?;
        let environment = &checked.environment;
        let state = open_store(project, &environment.state_location())?.load()?;
        let (cloud, _) = super::account::connect(&environment.aws, &environment.region.value, state.owner(), state.account.as_deref()).await?;
        let tier = image.build.as_ref().map(|b| b.subnet_tier.as_str());
        let build_subnet = match &environment.network.vpc {
            Vpc::Existing(vpc) => checked.subnets.iter().find(|s| Some(s.tier.as_str()) == tier).and_then(|s| match &s.place {
                SubnetPlace::Existing(subnet) => Some(BuildSubnet { subnet: subnet.clone(), vpc: vpc.value.clone() }),
                SubnetPlace::Block(_) => None,
            }),
            Vpc::Cidr(_) => None,
        };
        Ok(Baking { image, roles, cloud, build_subnet, project: environment.project.clone() })
    }

    /// The image's AMIs in its region and each region it is copied to, newest first in each.
    pub async fn amis(&self) -> Result<Vec<ImageAmi>, OpsError> {
        let mut all = inventory::amis(&self.cloud, &self.image.name, self.project.as_deref()).await.map_err(failed)?;
        for copy in &self.image.copy_to {
            let there = self.cloud.in_region(&copy.region);
            all.extend(inventory::amis(&there, &self.image.name, self.project.as_deref()).await.map_err(failed)?);
        }
        Ok(all)
    }

    /// Bakes the image, or reuses the AMI of the same content.
    pub async fn bake(&self, options: BakeOptions, watch: Arc<dyn Watch>) -> Result<Manifest, OpsError> {
        let options = BakeOptions { build_subnet: self.build_subnet.clone(), project: self.project.clone(), ..options };
        bake(&self.cloud, &self.image, &self.roles, &options, watch).await.map_err(|error| {
            let what = if matches!(error, BakeError::Stopped(_)) { "stopped" } else { "failed" };
            let message = format!("bake of `{}` in {} {what}: {error}", self.image.name, self.cloud.region);
            let hint = Some(String::from(if options.keep_on_error { "the builder was kept; see above" } else { "everything temporary was removed" }));
            match error {
                BakeError::Stopped(reason) => OpsError::Stopped { reason, message, hint },
                _ => OpsError::Failed { message, hint },
            }
        })
    }

    /// Removes what earlier bakes left behind in the region; how many resources.
    pub async fn clean_up(&self, watch: Arc<dyn Watch>) -> Result<usize, OpsError> {
        cleanup_leftovers(&self.cloud, &watch).await.map_err(failed)
    }
}

fn failed(error: BakeError) -> OpsError {
    OpsError::Failed { message: error.to_string(), hint: None }
}
