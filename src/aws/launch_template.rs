//! `launch_template`: how a node group's instances boot. A change adds a version and makes it
//! the default; running instances keep theirs until the group is rolled.

use aws_sdk_ec2::types::{
    LaunchTemplate, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest, LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateTagSpecificationRequest,
    LaunchTemplateVersion, RequestLaunchTemplateData, ResourceType, VolumeType,
};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, ec2_tags, from_ec2, observed};
use super::{id_of, ids_of, AwsError, Cloud, Ids, Observed};
use crate::resource::{ImageSpec, Kind, LaunchSpec, Resource, UserData};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut templates = Vec::new();
        let mut pages = cloud.ec2.describe_launch_templates().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            templates.extend(page?.launch_templates().iter().cloned());
        }
        Ok(templates)
    };
    let templates = describe_ec2(cloud, Kind::LaunchTemplate, None, describe, |t: &LaunchTemplate| t.launch_template_id()).await?;
    if templates.is_empty() {
        return Ok(Vec::new());
    }
    // `$Latest` without a template id answers for every template in one paginated call.
    let mut versions: Vec<LaunchTemplateVersion> = Vec::new();
    let mut pages = cloud.ec2.describe_launch_template_versions().versions("$Latest").into_paginator().send();
    while let Some(page) = pages.next().await {
        versions.extend(page?.launch_template_versions().iter().cloned());
    }
    Ok(templates
        .iter()
        .filter_map(|template| {
            let id = template.launch_template_id()?;
            let version = versions.iter().find(|v| v.launch_template_id() == Some(id))?;
            let data = version.launch_template_data()?;
            let volume = data.block_device_mappings().first().and_then(|b| b.ebs());
            let metadata = data.metadata_options();
            let attributes = launch_attributes(LaunchAttributes {
                image: data.image_id(),
                instance_type: data.instance_type().map(|t| t.as_str()),
                security_groups: data.security_group_ids().iter().map(String::as_str).collect(),
                instance_profile: data.iam_instance_profile().and_then(|p| p.arn()),
                user_data: data.user_data(),
                volume_size: volume.and_then(|v| v.volume_size()),
                volume_type: volume.and_then(|v| v.volume_type()).map(|t| t.as_str()),
                encrypted: volume.and_then(|v| v.encrypted()),
                iops: volume.and_then(|v| v.iops()),
                require_tokens: metadata.and_then(|m| m.http_tokens()).map(|t| *t == aws_sdk_ec2::types::LaunchTemplateHttpTokensState::Required),
                hop_limit: metadata.and_then(|m| m.http_put_response_hop_limit()),
                key_name: data.key_name(),
            });
            observed(&cloud.owner, Kind::LaunchTemplate, id, from_ec2(template.tags()), attributes)
        })
        .collect())
}

/// Launch settings as read back from AWS, shared with launch configurations.
pub(super) struct LaunchAttributes<'a> {
    pub image: Option<&'a str>,
    pub instance_type: Option<&'a str>,
    pub security_groups: Vec<&'a str>,
    pub instance_profile: Option<&'a str>,
    pub user_data: Option<&'a str>,
    pub volume_size: Option<i32>,
    pub volume_type: Option<&'a str>,
    pub encrypted: Option<bool>,
    pub iops: Option<i32>,
    pub require_tokens: Option<bool>,
    pub hop_limit: Option<i32>,
    pub key_name: Option<&'a str>,
}

/// The JSON shape of [`LaunchSpec`], with user data reduced to its hash.
pub(super) fn launch_attributes(read: LaunchAttributes<'_>) -> serde_json::Value {
    let mut security_groups = read.security_groups;
    security_groups.sort_unstable();
    let user_data = read
        .user_data
        .filter(|data| !data.is_empty())
        .and_then(|data| aws_smithy_types::base64::decode(data).ok())
        .map(|bytes| json!({ "sha256": UserData::new(String::from_utf8_lossy(&bytes).into_owned()).sha256 }));
    json!({
        "image": { "ami": read.image },
        "instance_type": read.instance_type,
        "security_groups": security_groups,
        "instance_profile": read.instance_profile,
        "user_data": user_data,
        "root_volume": {
            "size_gib": read.volume_size,
            "volume_type": read.volume_type,
            "encrypted": read.encrypted.unwrap_or(false),
            "iops": read.iops,
        },
        "metadata": {
            "require_tokens": read.require_tokens.unwrap_or(false),
            "hop_limit": read.hop_limit.unwrap_or(1),
        },
        "key_name": read.key_name,
    })
}

pub(super) fn ami(launch: &LaunchSpec) -> Result<&str, AwsError> {
    match &launch.image {
        ImageSpec::Ami(id) => Ok(id),
        ImageSpec::Named(name) => Err(AwsError::internal(format!("image `{name}` was not resolved to an AMI"))),
    }
}

/// The device name of an AMI's root volume, which the root volume settings must name.
pub async fn root_device(cloud: &Cloud, ami: &str) -> Result<String, AwsError> {
    let images = cloud.ec2.describe_images().image_ids(ami).send().await?;
    Ok(images.images().first().and_then(|i| i.root_device_name()).unwrap_or("/dev/sda1").to_owned())
}

async fn template_data(cloud: &Cloud, resource: &Resource, launch: &LaunchSpec, ids: &Ids) -> Result<RequestLaunchTemplateData, AwsError> {
    let ami = ami(launch)?;
    let security_groups = ids_of(ids, &launch.security_groups)?;
    let profile = match &launch.instance_profile {
        Some(profile) => Some(LaunchTemplateIamInstanceProfileSpecificationRequest::builder().arn(id_of(ids, profile)?).build()),
        None => None,
    };
    let volume = &launch.root_volume;
    let ebs = LaunchTemplateEbsBlockDeviceRequest::builder()
        .volume_size(volume.size_gib as i32)
        .volume_type(VolumeType::from(volume.volume_type.as_str()))
        .encrypted(volume.encrypted)
        .set_iops(volume.iops.map(|i| i as i32))
        .delete_on_termination(true)
        .build();
    let tokens = if launch.metadata.require_tokens { LaunchTemplateHttpTokensState::Required } else { LaunchTemplateHttpTokensState::Optional };
    Ok(RequestLaunchTemplateData::builder()
        .image_id(ami)
        .instance_type(launch.instance_type.as_str().into())
        .set_security_group_ids(Some(security_groups))
        .set_iam_instance_profile(profile)
        .set_user_data(launch.user_data.as_ref().map(|u| aws_smithy_types::base64::encode(&u.content)))
        .block_device_mappings(LaunchTemplateBlockDeviceMappingRequest::builder().device_name(root_device(cloud, ami).await?).ebs(ebs).build())
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(tokens)
                .http_put_response_hop_limit(i32::from(launch.metadata.hop_limit))
                .build(),
        )
        .set_key_name(launch.key_name.clone())
        // Instances and their volumes carry the group's tags from the moment they exist.
        .tag_specifications(
            LaunchTemplateTagSpecificationRequest::builder().resource_type(ResourceType::Volume).set_tags(Some(ec2_tags(&resource.tags))).build(),
        )
        .build())
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, launch: &LaunchSpec, ids: &Ids) -> Result<String, AwsError> {
    let data = template_data(cloud, resource, launch, ids).await?;
    let created = cloud
        .ec2
        .create_launch_template()
        .launch_template_name(&resource.name)
        .client_token(super::client_token(&resource.name))
        .launch_template_data(data)
        .tag_specifications(ec2_tag_specification(ResourceType::LaunchTemplate, &resource.tags))
        .send()
        .await?;
    Ok(created
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .ok_or_else(|| AwsError::missing("CreateLaunchTemplate", "launch template id"))?
        .to_owned())
}

pub(super) async fn update(cloud: &Cloud, resource: &Resource, launch: &LaunchSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let data = template_data(cloud, resource, launch, ids).await?;
    let version = cloud
        .ec2
        .create_launch_template_version()
        .launch_template_id(&actual.id)
        // Scoped to the observed content of `$Latest`, which this version replaces: a retry of
        // this step is deduplicated, a later change of the template in this process is not.
        .client_token(super::client_token(&format!("{}:{}", actual.id, actual.attributes)))
        .launch_template_data(data)
        .send()
        .await?;
    let number = version.launch_template_version().and_then(|v| v.version_number()).unwrap_or_default();
    cloud.ec2.modify_launch_template().launch_template_id(&actual.id).default_version(number.to_string()).send().await?;
    Ok(())
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_launch_template().launch_template_id(id).send().await?;
    Ok(())
}
