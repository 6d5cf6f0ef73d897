//! An environment's secrets from the account's stores, read once when work that needs their
//! values starts (provisioning, verifying, a roll's hooks), kept in memory for the run, and
//! hidden from everything shown from then on. What cannot be read is said one line per
//! secret, naming it and where it was looked for, all at once.

use std::collections::{BTreeMap, BTreeSet};

use super::{Notice, OpsError};
use crate::aws::{self, AwsError, Cloud};
use crate::identity::Owner;
use crate::model::{Environment, SecretSource};

/// Reads every secret of `environment` kept in a store; nothing to do (and no call) when it
/// has none.
pub async fn read(environment: &mut Environment, notice: &dyn Notice) -> Result<(), OpsError> {
    if !environment.secrets.values().any(|s| s.source.in_store() && s.value().is_none()) {
        return Ok(());
    }
    let region = environment.region.value.clone();
    let (cloud, _) = super::account::connect(&environment.aws, &region, Owner::new(&environment.name, None, []), None).await?;
    let ssm_names: Vec<String> = environment
        .secrets
        .values()
        .filter_map(|s| match &s.source {
            SecretSource::Ssm(name) => Some(name.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (parameters, denied) = parameters(&cloud, &ssm_names).await.map_err(OpsError::aws(&region, "reading SSM parameters"))?;
    let mut unreadable = Vec::new();
    for (name, secret) in environment.secrets.iter_mut().filter(|(_, s)| s.source.in_store()) {
        let source = secret.source.clone();
        let value = match &source {
            SecretSource::Ssm(parameter) => match (parameters.get(parameter), denied.iter().find(|(p, _)| p == parameter)) {
                (Some(value), _) => Ok(value.clone()),
                (None, Some((_, error))) => Err(format!("reading {source} was refused: {error}")),
                (None, None) => Err(format!("{source} does not exist")),
            },
            SecretSource::SecretsManager { id, key } => match aws::secrets::secret(&cloud, id).await {
                Ok(Some(text)) => field(&text, key.as_deref()).ok_or_else(|| match key {
                    Some(key) => format!("{source} is not JSON with a string field `{key}`"),
                    None => format!("{source} has no string value"),
                }),
                Ok(None) => Err(format!("{source} does not exist")),
                Err(error) => Err(format!("reading {source} was refused: {error}")),
            },
            SecretSource::Env(_) => continue,
        };
        match value {
            Ok(value) => secret.set(value),
            Err(why) => unreadable.push(format!("secret `{name}`: {why}")),
        }
    }
    notice.secrets(&mut environment.secrets.values().filter_map(|s| s.value()));
    if unreadable.is_empty() {
        return Ok(());
    }
    Err(OpsError::failed(
        unreadable.join("\n"),
        "create what is missing, or let the credentials read it (ssm:GetParameters and kms:Decrypt for a SecureString's key; secretsmanager:GetSecretValue); nothing was changed",
    ))
}

/// SSM parameters in batches; when a batch is refused, each of its names alone, so a refusal
/// names the parameter it was for.
async fn parameters(cloud: &Cloud, names: &[String]) -> Result<(BTreeMap<String, String>, Vec<(String, AwsError)>), AwsError> {
    match aws::secrets::parameters(cloud, names).await {
        Ok(read) => Ok((read, Vec::new())),
        Err(error) if error.code().is_some_and(|c| c.contains("AccessDenied")) => {
            let (mut read, mut denied) = (BTreeMap::new(), Vec::new());
            for name in names {
                match aws::secrets::parameters(cloud, std::slice::from_ref(name)).await {
                    Ok(one) => read.extend(one),
                    Err(error) => denied.push((name.clone(), error)),
                }
            }
            Ok((read, denied))
        }
        Err(error) => Err(error),
    }
}

/// A secret's value: the whole string, or the string field `key` of its JSON.
fn field(text: &str, key: Option<&str>) -> Option<String> {
    let Some(key) = key else { return Some(text.to_owned()) };
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    json.get(key)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn a_field_is_a_string_of_the_json() {
        assert_eq!(field(r#"{"password":"p4ss","port":5432}"#, Some("password")).as_deref(), Some("p4ss"));
        assert_eq!(field(r#"{"port":5432}"#, Some("port")), None, "a number is no secret string");
        assert_eq!(field("plain", Some("password")), None);
        assert_eq!(field("plain", None).as_deref(), Some("plain"));
    }
}
