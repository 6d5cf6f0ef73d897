//! How kstack reaches an account: the standard credential chain (environment, shared files,
//! instance role, `AWS_ENDPOINT_URL`), a named profile of it, or a role assumed with either.
//! An assumed role's session is renewed by the SDK's identity cache shortly before it ends,
//! so a run may outlive any number of sessions.

use std::time::Duration;

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};

use crate::model::AwsAccess;

/// The configuration every client of one account and region is built from. `session_name`
/// names an assumed role's sessions when the model does not (`kstack-<environment>`).
pub async fn sdk_config(access: &AwsAccess, region: &str, session_name: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(8));
    if let Some(profile) = &access.profile {
        // The profile's credentials, not the chain's first (variables in the environment
        // would win there): the file names how this environment is reached.
        let region = aws_config::provider_config::ProviderConfig::default().with_region(Some(aws_config::Region::new(region.to_owned())));
        let credentials = aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&region).profile_name(profile).build();
        loader = loader.profile_name(profile).credentials_provider(credentials);
    }
    let base = loader.load().await;
    let Some(role) = &access.assume_role else { return base };
    let mut provider = AssumeRoleProvider::builder(role.arn.clone())
        .session_name(role.session_name.clone().unwrap_or_else(|| session_name.to_owned()))
        .session_length(Duration::from_secs(role.duration_seconds));
    if let Some(external_id) = &role.external_id {
        provider = provider.external_id(external_id.clone());
    }
    let assumed = Assumed { arn: role.arn.clone(), provider: provider.configure(&base).build().await };
    base.into_builder().credentials_provider(SharedCredentialsProvider::new(assumed)).build()
}

/// An assumed role whose every new session is logged: a long run shows its renewals.
#[derive(Debug)]
struct Assumed {
    arn: String,
    provider: AssumeRoleProvider,
}

impl ProvideCredentials for Assumed {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let credentials = self.provider.provide_credentials().await?;
            let until = credentials.expiry().map(crate::state::time::rfc3339).unwrap_or_default();
            tracing::info!("assumed role {}: a session until {until}", self.arn);
            Ok(credentials)
        })
    }
}
