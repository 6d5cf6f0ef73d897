//! Secrets: values that templates and roles use but no file holds.
//! `secrets: { name: VAR | { env: VAR } | { ssm: /path } | { secrets_manager: id, key: field } }`.
//! An environment variable is read when the environment loads; a store's secret when work
//! that needs it runs (`kstack::secrets`), once per run, kept in memory only. kstack's output
//! shows `(secret)` wherever one would appear (`kstack::redact`; user data is only ever shown
//! and stored as a hash, and never holds a store's secret: nodes read those themselves).

use std::collections::BTreeMap;
use std::fmt;

use marked_yaml::Node;

use crate::diagnostics::{Problems, Spanned};
use crate::model::Secrets;
use crate::yaml::{self, named, string, MapReader};

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the machine kstack runs on.
    Env(String),
    /// An SSM parameter (a SecureString is decrypted), by name or ARN.
    Ssm(String),
    /// A Secrets Manager secret, by name or ARN; with `key`, that field of its JSON.
    SecretsManager { id: String, key: Option<String> },
}

impl SecretSource {
    /// Read from a store in the account, not from this machine.
    pub fn in_store(&self) -> bool {
        !matches!(self, SecretSource::Env(_))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "${var}"),
            SecretSource::Ssm(name) => write!(f, "SSM parameter {name}"),
            SecretSource::SecretsManager { id, key: None } => write!(f, "Secrets Manager secret {id}"),
            SecretSource::SecretsManager { id, key: Some(key) } => write!(f, "field `{key}` of Secrets Manager secret {id}"),
        }
    }
}

#[derive(Clone)]
pub struct Secret {
    pub source: SecretSource,
    /// `None` until read: a variable that is not set (for work that needs none), or a
    /// store's secret not yet read (or for work that needs none). A template using it fails.
    value: Option<String>,
}

impl Secret {
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// The value read from its store.
    pub fn set(&mut self, value: String) {
        self.value = Some(value);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} = (secret))", self.source)
    }
}

/// Decodes `secrets:` and reads each variable; an unset one is a problem at its name, unless
/// the command needs none (`Secrets::IfSet`), which keeps it unset.
pub fn secrets(node: &Node, required: Secrets, problems: &mut Problems) -> BTreeMap<String, Secret> {
    named(node, "secret", problems, |name, value, problems| {
        let (source, loc) = source(value, problems)?;
        let value = match &source {
            SecretSource::Env(var) => std::env::var(var).ok(),
            _ => None,
        };
        if let (SecretSource::Env(var), None, Secrets::Required) = (&source, &value, required) {
            problems
                .error(loc, format!("secret `{}` reads ${var}, which is not set", name.value))
                .label("not set")
                .hint(format!("export {var}=... before running kstack; secrets never live in files"));
        }
        Some((name.value, Secret { source, value }))
    })
    .into_iter()
    .collect()
}

fn source(node: &Node, problems: &mut Problems) -> Option<(SecretSource, crate::diagnostics::Loc)> {
    if let Node::Scalar(_) = node {
        let var: Spanned<String> = string(node, problems)?;
        return Some((SecretSource::Env(var.value), var.loc));
    }
    let mut map = MapReader::new(node, "secret", problems)?;
    let loc = map.loc();
    let env = map.get("env").and_then(|n| string(n, problems));
    let ssm = map.get("ssm").and_then(|n| string(n, problems));
    let manager = map.get("secrets_manager").and_then(|n| string(n, problems));
    let key = map.get("key").and_then(|n| string(n, problems));
    map.finish(problems);
    let source = match (env, ssm, manager) {
        (Some(var), None, None) => SecretSource::Env(var.value),
        (None, Some(name), None) => SecretSource::Ssm(name.value),
        (None, None, Some(id)) => SecretSource::SecretsManager { id: id.value, key: key.as_ref().map(|k| k.value.clone()) },
        _ => {
            problems
                .error(loc, "a secret comes from one place: `env`, `ssm` or `secrets_manager`")
                .hint("e.g. `{ ssm: /prod/db/password }` or `{ secrets_manager: prod/db, key: password }`");
            return None;
        }
    };
    if let (Some(key), false) = (&key, matches!(source, SecretSource::SecretsManager { .. })) {
        problems.error(key.loc, "`key` picks a field of a Secrets Manager secret's JSON").hint("remove it, or read from `secrets_manager:`");
        return None;
    }
    Some((source, yaml::loc(node)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Sources;

    #[test]
    fn debug_never_shows_a_value() {
        let secrets =
            BTreeMap::from([(String::from("token"), Secret { source: SecretSource::Env("TOKEN".into()), value: Some(String::from("hunter22")) })]);
        assert!(!format!("{secrets:?}").contains("hunter22"));
    }

    #[test]
    fn sources_decode_and_a_store_is_read_later() {
        let text = "a: A_VAR\nb: { ssm: /prod/b }\nc: { secrets_manager: prod/c, key: password }\nd: { ssm: /x, env: Y }\ne: { ssm: /x, key: k }\n";
        let mut sources = Sources::default();
        let id = sources.add(std::path::Path::new("dev.yaml"), text.to_owned());
        let mut problems = Problems::default();
        let node = yaml::parse(id, text, &mut problems).unwrap();
        let secrets = secrets(&node, Secrets::IfSet, &mut problems);
        assert_eq!(secrets["b"].source, SecretSource::Ssm("/prod/b".into()));
        assert_eq!(secrets["c"].source, SecretSource::SecretsManager { id: "prod/c".into(), key: Some("password".into()) });
        assert!(secrets["b"].value().is_none(), "read when work needs it");
        assert_eq!(problems.into_sorted().len(), 2, "one place each, and `key` only for Secrets Manager");
    }
}
