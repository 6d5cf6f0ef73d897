//! `vpc`: the environment's VPC.

use crate::resource::VpcSpec;
use aws_sdk_ec2::types::ResourceType;
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{AwsError, Cloud, Observed};
use crate::resource::{Kind, Resource};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut vpcs = Vec::new();
        let mut pages = cloud.ec2.describe_vpcs().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            vpcs.extend(page?.vpcs().iter().cloned());
        }
        Ok(vpcs)
    };
    let vpcs = describe_ec2(cloud, Kind::Vpc, Some("vpc-id"), describe, |v: &aws_sdk_ec2::types::Vpc| v.vpc_id()).await?;
    let observe = |vpc: &aws_sdk_ec2::types::Vpc| {
        let attributes = json!({ "cidr": vpc.cidr_block() });
        observed(&cloud.owner, Kind::Vpc, vpc.vpc_id().unwrap_or_default(), from_ec2(vpc.tags()), attributes)
    };
    Ok(vpcs.iter().filter_map(observe).collect())
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &VpcSpec) -> Result<String, AwsError> {
    let VpcSpec { cidr } = spec;
    let created = cloud
        .ec2
        .create_vpc()
        .cidr_block(cidr.to_string())
        .tag_specifications(ec2_tag_specification(ResourceType::Vpc, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    let id = created.vpc().and_then(|v| v.vpc_id()).ok_or_else(|| AwsError::missing("CreateVpc", "VPC id"))?.to_owned();
    // Nodes resolve each other and AWS endpoints by name; hostnames are off by default.
    cloud.ec2.modify_vpc_attribute().vpc_id(&id).enable_dns_support(enabled()).send().await?;
    cloud.ec2.modify_vpc_attribute().vpc_id(&id).enable_dns_hostnames(enabled()).send().await?;
    Ok(id)
}

fn enabled() -> aws_sdk_ec2::types::AttributeBooleanValue {
    aws_sdk_ec2::types::AttributeBooleanValue::builder().value(true).build()
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_vpc().vpc_id(id).send().await?;
    Ok(())
}
