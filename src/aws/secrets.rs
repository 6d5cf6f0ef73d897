//! Reading secrets' values from the account's stores: SSM parameters (SecureStrings
//! decrypted) ten to a call, Secrets Manager secrets one per call. Values pass through
//! memory only; what is missing is said by name, never guessed.

use std::collections::BTreeMap;

use super::{AwsError, Cloud};

/// The SSM parameters `names` (names or ARNs) the store has, decrypted, by the name asked.
pub async fn parameters(cloud: &Cloud, names: &[String]) -> Result<BTreeMap<String, String>, AwsError> {
    let mut read = BTreeMap::new();
    // GetParameters takes at most ten names.
    for batch in names.chunks(10) {
        let got = cloud.ssm.get_parameters().set_names(Some(batch.to_vec())).with_decryption(true).send().await?;
        for parameter in got.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                // Asked by ARN, answered by name: keep what was asked.
                let asked = batch.iter().find(|n| *n == name || parameter.arn() == Some(n.as_str())).cloned().unwrap_or_else(|| name.to_owned());
                read.insert(asked, value.to_owned());
            }
        }
    }
    Ok(read)
}

/// The Secrets Manager secret `id` (name or ARN): its string value, `None` when there is no
/// such secret.
pub async fn secret(cloud: &Cloud, id: &str) -> Result<Option<String>, AwsError> {
    match cloud.secrets_manager.get_secret_value().secret_id(id).send().await.map_err(AwsError::from) {
        Ok(got) => Ok(got.secret_string().map(str::to_owned)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}
