//! `launch_configuration`: the legacy, immutable way to describe how instances boot. Each
//! version has a name of its own (`<env>-<group>-<digest>-<identity short form>`), so a
//! change creates the new one, moves the group over, and only then deletes the old. Launch
//! configurations cannot be tagged: they are found by exact name (see `Owner`).

use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_IDENTITY};
use aws_sdk_autoscaling::types::{BlockDeviceMapping, Ebs, InstanceMetadataHttpTokensState, InstanceMetadataOptions};

use super::launch_template::{ami, launch_attributes, root_device, LaunchAttributes};
use super::{id_of, ids_of, AwsError, Cloud, Ids, Observed};

use crate::resource::{Address, Kind, LaunchSpec, Resource};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let mut found = Vec::new();
    let mut pages = cloud.autoscaling.describe_launch_configurations().into_paginator().send();
    while let Some(page) = pages.next().await {
        for config in page?.launch_configurations() {
            let name = config.launch_configuration_name().unwrap_or_default();
            // Its name places it, or state records it (named by another tool, say).
            let address = match cloud.owner.launch_configuration_group(name) {
                Some(group) => Address::new(Kind::LaunchConfiguration, group),
                None => match cloud.owner.recorded_address(Kind::LaunchConfiguration, name) {
                    Some(address) => address.clone(),
                    None => continue,
                },
            };
            let volume = config.block_device_mappings().first().and_then(|b| b.ebs());
            let metadata = config.metadata_options();
            let attributes = launch_attributes(LaunchAttributes {
                image: config.image_id(),
                instance_type: config.instance_type(),
                security_groups: config.security_groups().iter().map(String::as_str).collect(),
                instance_profile: config.iam_instance_profile(),
                user_data: config.user_data(),
                volume_size: volume.and_then(|v| v.volume_size()),
                volume_type: volume.and_then(|v| v.volume_type()),
                encrypted: volume.and_then(|v| v.encrypted()),
                iops: volume.and_then(|v| v.iops()),
                require_tokens: metadata.and_then(|m| m.http_tokens()).map(|t| *t == InstanceMetadataHttpTokensState::Required),
                hop_limit: metadata.and_then(|m| m.http_put_response_hop_limit()),
                key_name: config.key_name().filter(|k| !k.is_empty()),
            });
            let mut tags: std::collections::BTreeMap<String, String> =
                [(TAG_ENVIRONMENT.to_owned(), cloud.environment().to_owned()), (TAG_ADDRESS.to_owned(), address.to_string())].into();
            // The name carries the identity's short form, or state recorded it (no identity).
            if let Some(identity) = cloud.owner.identity.as_ref().filter(|i| name.ends_with(&format!("-{}", i.short()))) {
                tags.insert(TAG_IDENTITY.to_owned(), identity.to_string());
            }
            found.push(Observed {
                address,
                kind: Kind::LaunchConfiguration,
                id: name.to_owned(),
                tags,
                attributes,
                assigned: std::collections::BTreeMap::new(),
            });
        }
    }
    Ok(found)
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, launch: &LaunchSpec, ids: &Ids) -> Result<String, AwsError> {
    let ami = ami(launch)?;
    let security_groups = ids_of(ids, &launch.security_groups)?;
    let profile = match &launch.instance_profile {
        Some(profile) => Some(id_of(ids, profile)?.to_owned()),
        None => None,
    };
    let volume = &launch.root_volume;
    let tokens = if launch.metadata.require_tokens { InstanceMetadataHttpTokensState::Required } else { InstanceMetadataHttpTokensState::Optional };
    cloud
        .autoscaling
        .create_launch_configuration()
        .launch_configuration_name(&resource.name)
        .image_id(ami)
        .instance_type(&launch.instance_type)
        .set_security_groups(Some(security_groups))
        .set_iam_instance_profile(profile)
        .set_user_data(launch.user_data.as_ref().map(|u| aws_smithy_types::base64::encode(&u.content)))
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(root_device(cloud, ami).await?)
                .ebs(
                    Ebs::builder()
                        .volume_size(volume.size_gib as i32)
                        .volume_type(&volume.volume_type)
                        .encrypted(volume.encrypted)
                        .set_iops(volume.iops.map(|i| i as i32))
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .metadata_options(
            InstanceMetadataOptions::builder().http_tokens(tokens).http_put_response_hop_limit(i32::from(launch.metadata.hop_limit)).build(),
        )
        .set_key_name(launch.key_name.clone())
        .send()
        .await?;
    Ok(resource.name.clone())
}

pub(super) async fn delete(cloud: &Cloud, name: &str) -> Result<(), AwsError> {
    cloud.autoscaling.delete_launch_configuration().launch_configuration_name(name).send().await?;
    Ok(())
}
