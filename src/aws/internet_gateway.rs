//! `internet_gateway`: the public subnets' way out, attached to the VPC.

use crate::resource::InternetGatewaySpec;
use aws_sdk_ec2::types::{InternetGateway, ResourceType};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{done_if_gone, id_of, AwsError, Cloud, Ids, Observed};
use crate::resource::{Kind, Resource};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut gateways = Vec::new();
        let mut pages = cloud.ec2.describe_internet_gateways().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            gateways.extend(page?.internet_gateways().iter().cloned());
        }
        Ok(gateways)
    };
    let gateways =
        describe_ec2(cloud, Kind::InternetGateway, Some("internet-gateway-id"), describe, |g: &InternetGateway| g.internet_gateway_id()).await?;
    let observe = |gateway: &InternetGateway| {
        let vpc = gateway.attachments().first().and_then(|a| a.vpc_id());
        let id = gateway.internet_gateway_id().unwrap_or_default();
        observed(&cloud.owner, Kind::InternetGateway, id, from_ec2(gateway.tags()), json!({ "vpc": vpc }))
    };
    Ok(gateways.iter().filter_map(observe).collect())
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &InternetGatewaySpec, ids: &Ids) -> Result<String, AwsError> {
    let InternetGatewaySpec { vpc } = spec;
    let created = cloud
        .ec2
        .create_internet_gateway()
        .tag_specifications(ec2_tag_specification(ResourceType::InternetGateway, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    let id = created
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .ok_or_else(|| AwsError::missing("CreateInternetGateway", "internet gateway id"))?
        .to_owned();
    cloud.ec2.attach_internet_gateway().internet_gateway_id(&id).vpc_id(id_of(ids, vpc)?).send().await?;
    Ok(id)
}

pub(super) async fn delete(cloud: &Cloud, actual: &Observed) -> Result<(), AwsError> {
    // Detaching needs the VPC's id, which the gateway itself reports.
    let gateways = cloud.ec2.describe_internet_gateways().internet_gateway_ids(&actual.id).send().await?;
    for attachment in gateways.internet_gateways().iter().flat_map(|g| g.attachments()) {
        if let Some(vpc) = attachment.vpc_id() {
            done_if_gone(cloud.ec2.detach_internet_gateway().internet_gateway_id(&actual.id).vpc_id(vpc).send().await)?;
        }
    }
    cloud.ec2.delete_internet_gateway().internet_gateway_id(&actual.id).send().await?;
    Ok(())
}
