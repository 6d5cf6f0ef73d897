//! An environment's outputs as AWS holds them now: what `kstack output` prints, and an apply
//! after its changes.

use super::OpsError;
use crate::aws::{self, Cloud, Observed};
use crate::outputs::Outputs;

/// The outputs of the environment `cloud` works for, from `observed` when a refresh just
/// found it, or else refreshed now (never stale). `None` for an environment without an
/// identity: one that was never applied has no outputs.
pub async fn current(cloud: &Cloud, environment: &str, observed: Option<&[Observed]>) -> Result<Option<Outputs>, OpsError> {
    let Some(identity) = cloud.owner.identity.as_ref() else { return Ok(None) };
    let account = cloud.account().await.map_err(OpsError::aws(&cloud.region, "asking which account the credentials act in"))?;
    let outputs = |observed: &[Observed]| Some(Outputs::of(environment, &cloud.region, account, identity.as_str(), observed));
    match observed {
        Some(observed) => Ok(outputs(observed)),
        None => {
            let refreshed = aws::refresh(cloud).await.map_err(OpsError::aws(&cloud.region, "refreshing"))?;
            Ok(outputs(&refreshed.observed))
        }
    }
}
