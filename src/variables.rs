//! What templates see, in one place: user data and roll hooks through `compile` and `roll`,
//! node roles through provisioning and bakes. Later sources override earlier ones: an image's
//! defaults, the environment's `variables`, the group's `variables`, the environment's
//! secrets, then the names kstack sets itself (`env`, `region`, `group`, the reboot window).
//! Knows nothing of templates or where the values go.

use serde_json::json;

use crate::model::image::Image;
use crate::model::reboots::format_minute;
use crate::model::{Environment, NodeGroup, SecretSource};
use crate::roles::Variables;

/// What a node group's templates see: its user data, and its nodes' roles beside the image's
/// own defaults (see [`for_roles`]).
pub fn for_group(environment: &Environment, group: &NodeGroup) -> Variables {
    let mut variables: Variables = environment.variables.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    variables.extend(group.variables.clone());
    // `term` hides secrets' values in all output.
    // An unset secret (only where the command needs none) is undefined: a template using it fails.
    variables.extend(environment.secrets.iter().filter_map(|(k, v)| Some((k.clone(), json!(v.value()?)))));
    // A store's secrets as commands a node runs to read them with its own role.
    let references: serde_json::Map<String, serde_json::Value> = environment
        .secrets
        .iter()
        .filter_map(|(name, secret)| Some((name.clone(), json!(secret_reference(&secret.source, &environment.region.value)?))))
        .collect();
    if !references.is_empty() {
        variables.insert("secret_ref".into(), serde_json::Value::Object(references));
    }
    if let Some(reboots) = &group.reboots {
        // The unattended-upgrades role's window, for nodes without an assigned slot.
        variables.insert("reboot_window_start".into(), json!(format_minute(reboots.window.start)));
        variables.insert("reboot_window_end".into(), json!(format_minute(reboots.window.end)));
        variables.insert("reboot_days".into(), json!(reboots.window.days.join(" ")));
        variables.insert("reboot_time_zone".into(), json!(reboots.window.time_zone));
        variables.insert("reboot_gap_minutes".into(), json!(reboots.group_gap_minutes));
    }
    variables.insert("env".into(), json!(environment.name));
    variables.insert("region".into(), json!(environment.region.value));
    variables.insert(
        "group".into(),
        json!({
            "name": group.name.value,
            "instance_type": group.instance_type.value,
            "min": group.min.value,
            "max": group.max.value,
            "desired": group.desired.value,
        }),
    );
    variables
}

/// A shell command printing the secret on a node, with the AWS CLI and the instance role's
/// permission (and `jq` for a field of a JSON secret); none for an environment variable, which
/// only the machine kstack runs on has.
fn secret_reference(source: &SecretSource, region: &str) -> Option<String> {
    let quoted = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    match source {
        SecretSource::Env(_) => None,
        SecretSource::Ssm(name) => {
            Some(format!("aws ssm get-parameter --region {region} --name {} --with-decryption --query Parameter.Value --output text", quoted(name)))
        }
        SecretSource::SecretsManager { id, key } => {
            let read = format!("aws secretsmanager get-secret-value --region {region} --secret-id {} --query SecretString --output text", quoted(id));
            Some(match key {
                Some(key) => format!("{read} | jq -r {}", quoted(&format!(".[{}]", serde_json::Value::from(key.as_str())))),
                None => read,
            })
        }
    }
}

/// What an image's roles see when they run on a group's nodes.
pub fn for_roles(image: &Image, environment: &Environment, group: &NodeGroup) -> Variables {
    let mut variables = for_image(image);
    variables.extend(for_group(environment, group));
    variables
}

/// What an image's roles see on a builder: the image's own variables only, since one image
/// serves every group (what belongs to a group reaches its nodes through user data).
pub fn for_image(image: &Image) -> Variables {
    image.variables.clone().into_iter().collect()
}
