//! `iam_role` and `instance_profile`. Both live under the path `/kstack/<env>/<identity>/`
//! (IAM is global: the path tells regions and projects apart), so one listing finds the
//! environment's own; their ids are ARNs, unique across kinds.

use crate::resource::{IamRoleSpec, InstanceProfileSpec};
use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_iam::types::{EntityType, Tag};
use serde_json::json;

use super::tags::TagChange;
use super::{done_if_gone, id_of, AwsError, Cloud, Ids, Observed};
use crate::resource::{Address, Kind, Resource};

pub(super) fn name_from_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect()
}

fn iam_tags(tags: &BTreeMap<String, String>) -> Result<Vec<Tag>, AwsError> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect::<Result<_, _>>().map_err(|e| AwsError::internal(e.to_string()))
}

/// Policy documents come back URL-encoded (RFC 3986) from some IAM calls.
fn policy_json(document: &str) -> serde_json::Value {
    let decoded = if document.trim_start().starts_with('{') { document.to_owned() } else { percent_decode(document) };
    serde_json::from_str(&decoded).unwrap_or(serde_json::Value::String(decoded))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let prefix = cloud.owner.iam_path_prefix();
    let mut found = Vec::new();
    // One paginated call returns every role with its policies, instead of three per role.
    let mut pages = cloud.iam.get_account_authorization_details().filter(EntityType::Role).into_paginator().send();
    while let Some(page) = pages.next().await {
        for role in page?.role_detail_list() {
            // The environment's roles of every identity, refresh keeps its own by their tags; and
            // those state records wherever they are (imported from another tool).
            let recorded = role.arn().is_some_and(|arn| cloud.owner.recorded_address(Kind::IamRole, arn).is_some());
            if !role.path().is_some_and(|path| path.starts_with(&prefix)) && !recorded {
                continue;
            }
            let tags = tags_of(role.tags());
            let mut managed: Vec<&str> = role.attached_managed_policies().iter().filter_map(|p| p.policy_arn()).collect();
            managed.sort_unstable();
            let inline: BTreeMap<&str, serde_json::Value> =
                role.role_policy_list().iter().filter_map(|p| Some((p.policy_name()?, policy_json(p.policy_document()?)))).collect();
            let attributes = json!({
                "assume_role_policy": role.assume_role_policy_document().map(policy_json),
                "managed_policies": managed,
                "inline_policies": inline,
            });
            found.extend(super::tags::observed(&cloud.owner, Kind::IamRole, role.arn().unwrap_or_default(), tags, attributes));
        }
    }
    let mut profiles = Vec::new();
    let mut pages = cloud.iam.list_instance_profiles().path_prefix(&prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        profiles.extend(page?.instance_profiles().iter().filter(|p| p.path().starts_with(&prefix)).cloned());
    }
    // Profiles state records outside the environment's path (imported), one call each.
    for arn in super::tags::untagged_recorded(cloud, Kind::InstanceProfile, profiles.iter().map(|p| p.arn())) {
        profiles.extend(get_instance_profile(cloud, arn.rsplit('/').next().unwrap_or_default()).await?);
    }
    {
        for profile in &profiles {
            // AWS's listing leaves tags out, GetInstanceProfile gives them (the emulator lacks
            // ListInstanceProfileTags); an environment has a handful of profiles.
            let fetched;
            let profile = match profile.tags() {
                [] => match get_instance_profile(cloud, profile.instance_profile_name()).await? {
                    Some(got) => {
                        fetched = got;
                        &fetched
                    }
                    None => continue,
                },
                _ => profile,
            };
            let tags = tags_of(profile.tags());
            let attributes = json!({ "role": profile.roles().first().map(|r| r.arn()) });
            found.extend(super::tags::observed(&cloud.owner, Kind::InstanceProfile, profile.arn(), tags, attributes));
        }
    }
    Ok(found)
}

/// An instance profile with its tags, if it exists.
async fn get_instance_profile(cloud: &Cloud, name: &str) -> Result<Option<aws_sdk_iam::types::InstanceProfile>, AwsError> {
    match cloud.iam.get_instance_profile().instance_profile_name(name).send().await.map_err(AwsError::from) {
        Ok(got) => Ok(got.instance_profile().cloned()),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Where new roles and profiles go: the path that names the environment's identity.
fn path_for_new(cloud: &Cloud) -> Result<String, AwsError> {
    cloud.owner.iam_path().ok_or_else(|| AwsError::internal(String::from("the environment has no identity yet")))
}

pub(super) async fn create_role(cloud: &Cloud, resource: &Resource, spec: &IamRoleSpec) -> Result<String, AwsError> {
    let IamRoleSpec { assume_role_policy, managed_policies, inline_policies } = spec;
    let created = cloud
        .iam
        .create_role()
        .role_name(&resource.name)
        .path(path_for_new(cloud)?)
        .assume_role_policy_document(assume_role_policy.to_string())
        .set_tags(Some(iam_tags(&resource.tags)?))
        .send()
        .await?;
    let arn = created.role().map(|r| r.arn().to_owned()).ok_or_else(|| AwsError::missing("CreateRole", "role ARN"))?;
    for policy in managed_policies {
        cloud.iam.attach_role_policy().role_name(&resource.name).policy_arn(policy).send().await?;
    }
    for (name, document) in inline_policies {
        put_inline(cloud, &resource.name, name, document).await?;
    }
    Ok(arn)
}

async fn put_inline(cloud: &Cloud, role: &str, name: &str, document: &serde_json::Value) -> Result<(), AwsError> {
    cloud.iam.put_role_policy().role_name(role).policy_name(name).policy_document(document.to_string()).send().await?;
    Ok(())
}

pub(super) async fn update_role(cloud: &Cloud, spec: &IamRoleSpec, actual: &Observed) -> Result<(), AwsError> {
    let IamRoleSpec { assume_role_policy, managed_policies, inline_policies } = spec;
    let role = name_from_arn(&actual.id);
    if actual.attributes["assume_role_policy"] != *assume_role_policy {
        cloud.iam.update_assume_role_policy().role_name(role).policy_document(assume_role_policy.to_string()).send().await?;
    }
    let attached: BTreeSet<&str> = actual.attributes["managed_policies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    for policy in managed_policies.iter().filter(|p| !attached.contains(p.as_str())) {
        cloud.iam.attach_role_policy().role_name(role).policy_arn(policy).send().await?;
    }
    for policy in attached.iter().filter(|p| !managed_policies.iter().any(|m| m == *p)) {
        done_if_gone(cloud.iam.detach_role_policy().role_name(role).policy_arn(*policy).send().await)?;
    }
    let existing = actual.attributes["inline_policies"].as_object().cloned().unwrap_or_default();
    for (name, document) in inline_policies {
        if existing.get(name) != Some(document) {
            put_inline(cloud, role, name, document).await?;
        }
    }
    for name in existing.keys().filter(|n| !inline_policies.contains_key(*n)) {
        done_if_gone(cloud.iam.delete_role_policy().role_name(role).policy_name(name).send().await)?;
    }
    Ok(())
}

pub(super) async fn delete_role(cloud: &Cloud, actual: &Observed) -> Result<(), AwsError> {
    let role = name_from_arn(&actual.id);
    for policy in actual.attributes["managed_policies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()) {
        done_if_gone(cloud.iam.detach_role_policy().role_name(role).policy_arn(policy).send().await)?;
    }
    for name in actual.attributes["inline_policies"].as_object().into_iter().flat_map(|m| m.keys()) {
        done_if_gone(cloud.iam.delete_role_policy().role_name(role).policy_name(name).send().await)?;
    }
    let profiles = cloud.iam.list_instance_profiles_for_role().role_name(role).send().await?;
    for profile in profiles.instance_profiles() {
        done_if_gone(
            cloud.iam.remove_role_from_instance_profile().instance_profile_name(profile.instance_profile_name()).role_name(role).send().await,
        )?;
    }
    cloud.iam.delete_role().role_name(role).send().await?;
    Ok(())
}

pub(super) async fn create_instance_profile(cloud: &Cloud, resource: &Resource, spec: &InstanceProfileSpec, ids: &Ids) -> Result<String, AwsError> {
    let InstanceProfileSpec { role } = spec;
    let created = cloud
        .iam
        .create_instance_profile()
        .instance_profile_name(&resource.name)
        .path(path_for_new(cloud)?)
        .set_tags(Some(iam_tags(&resource.tags)?))
        .send()
        .await?;
    let arn =
        created.instance_profile().map(|p| p.arn().to_owned()).ok_or_else(|| AwsError::missing("CreateInstanceProfile", "instance profile ARN"))?;
    add_role(cloud, &resource.name, role, ids).await?;
    Ok(arn)
}

async fn add_role(cloud: &Cloud, profile: &str, role: &Address, ids: &Ids) -> Result<(), AwsError> {
    cloud.iam.add_role_to_instance_profile().instance_profile_name(profile).role_name(name_from_arn(id_of(ids, role)?)).send().await?;
    Ok(())
}

pub(super) async fn update_instance_profile(cloud: &Cloud, spec: &InstanceProfileSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let InstanceProfileSpec { role } = spec;
    let profile = name_from_arn(&actual.id);
    remove_roles(cloud, profile).await?;
    add_role(cloud, profile, role, ids).await
}

async fn remove_roles(cloud: &Cloud, profile: &str) -> Result<(), AwsError> {
    let described = cloud.iam.get_instance_profile().instance_profile_name(profile).send().await?;
    for role in described.instance_profile().map(|p| p.roles()).unwrap_or_default() {
        done_if_gone(cloud.iam.remove_role_from_instance_profile().instance_profile_name(profile).role_name(role.role_name()).send().await)?;
    }
    Ok(())
}

pub(super) async fn delete_instance_profile(cloud: &Cloud, actual: &Observed) -> Result<(), AwsError> {
    let profile = name_from_arn(&actual.id);
    remove_roles(cloud, profile).await?;
    cloud.iam.delete_instance_profile().instance_profile_name(profile).send().await?;
    Ok(())
}

/// Retags a role or an instance profile, named by its ARN.
pub(super) async fn retag(cloud: &Cloud, kind: Kind, arn: &str, change: &TagChange) -> Result<(), AwsError> {
    let name = name_from_arn(arn);
    let tags: Vec<Tag> = change
        .changed
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect::<Result<_, _>>()
        .map_err(|e| AwsError::internal(e.to_string()))?;
    let removed = (!change.removed.is_empty()).then(|| change.removed.clone());
    if kind == Kind::IamRole {
        if !tags.is_empty() {
            cloud.iam.tag_role().role_name(name).set_tags(Some(tags)).send().await?;
        }
        if let Some(keys) = removed {
            cloud.iam.untag_role().role_name(name).set_tag_keys(Some(keys)).send().await?;
        }
    } else {
        if !tags.is_empty() {
            cloud.iam.tag_instance_profile().instance_profile_name(name).set_tags(Some(tags)).send().await?;
        }
        if let Some(keys) = removed {
            cloud.iam.untag_instance_profile().instance_profile_name(name).set_tag_keys(Some(keys)).send().await?;
        }
    }
    Ok(())
}
