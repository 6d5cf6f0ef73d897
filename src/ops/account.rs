//! Reaching an environment's AWS account, and making sure it is the one meant before
//! anything is read as the environment's or changed: the model's `aws.account_id`, and the
//! account its state was written in. Every command that talks to an environment's resources
//! connects here.

use crate::aws::Cloud;
use crate::identity::Owner;
use crate::model::AwsAccess;
use crate::ops::OpsError;

/// AWS in `region` as `access` reaches it, and the account the credentials act in.
pub async fn connect(access: &AwsAccess, region: &str, owner: Owner, recorded: Option<&str>) -> Result<(Cloud, String), OpsError> {
    let environment = owner.environment.clone();
    let cloud = Cloud::connect(access, region, owner).await;
    let account = cloud.account().await.map_err(OpsError::aws(region, "asking which account the credentials act in"))?.to_owned();
    let reached_by = match (&access.assume_role, &access.profile) {
        (Some(role), _) => format!("role {} acts", role.arn),
        (None, Some(profile)) => format!("profile `{profile}` acts"),
        (None, None) => String::from("the credentials act"),
    };
    if let Some(expected) = access.account_id.as_ref().filter(|expected| **expected != account) {
        return Err(OpsError::failed(
            format!("`{environment}` is in AWS account {expected} (`aws.account_id`), but {reached_by} in account {account}"),
            format!("use credentials of account {expected} (`aws.profile`, `aws.assume_role`, or AWS_PROFILE); nothing was changed"),
        ));
    }
    if let Some(recorded) = recorded.filter(|recorded| *recorded != account) {
        return Err(OpsError::failed(
            format!("the state of `{environment}` was written in AWS account {recorded}, but {reached_by} in account {account}"),
            format!(
                "use credentials of account {recorded} (`aws.profile`, `aws.assume_role`, or AWS_PROFILE), or give the environment in account {account} a state of its own (`key:` in `state:`)"
            ),
        ));
    }
    Ok((cloud, account))
}
