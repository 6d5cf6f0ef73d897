//! Secrets: values that templates and roles use but no file holds. `secrets: { name: VAR }`
//! reads each from the environment variable `VAR` when the environment loads; kstack's output
//! shows `(secret)` wherever one would appear (`kstack::redact`; user data is only ever shown
//! and stored as a hash).

use std::collections::BTreeMap;
use std::fmt;

use marked_yaml::Node;

use crate::diagnostics::{Problems, Spanned};
use crate::model::Secrets;
use crate::yaml::{named, string};

#[derive(Clone)]
pub struct Secret {
    /// The environment variable it was read from.
    pub env_var: String,
    /// `None` when the variable is not set, for work that needs none: a template using it fails.
    value: Option<String>,
}

impl Secret {
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} = (secret))", self.env_var)
    }
}

/// Decodes `secrets:` and reads each variable; an unset one is a problem at its name, unless
/// the command needs none (`Secrets::IfSet`), which keeps it unset.
pub fn secrets(node: &Node, required: Secrets, problems: &mut Problems) -> BTreeMap<String, Secret> {
    named(node, "secret", problems, |name, value, problems| {
        let env_var: Spanned<String> = string(value, problems)?;
        let value = std::env::var(&env_var.value).ok();
        if value.is_none() && required == Secrets::Required {
            problems
                .error(env_var.loc, format!("secret `{}` reads ${}, which is not set", name.value, env_var.value))
                .label("not set")
                .hint(format!("export {}=... before running kstack; secrets never live in files", env_var.value));
        }
        Some((name.value, Secret { env_var: env_var.value, value }))
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_value() {
        let secrets = BTreeMap::from([(String::from("token"), Secret { env_var: String::from("TOKEN"), value: Some(String::from("hunter22")) })]);
        assert!(!format!("{secrets:?}").contains("hunter22"));
    }
}
