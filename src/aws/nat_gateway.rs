//! `elastic_ip` and `nat_gateway`: the private subnets' way out, one address per gateway.

use std::time::Duration;

use aws_sdk_ec2::types::{DomainType, NatGatewayState, ResourceType};
use serde_json::json;

use super::tags::{ec2_tag_specification, environment_filter, from_ec2, observed};
use super::{id_of, AwsError, Cloud, Ids, Observed};
use crate::resource::{Kind, Resource, Spec};

pub async fn read_elastic_ips(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let addresses = cloud.ec2.describe_addresses().filters(environment_filter(cloud)).send().await?;
    Ok(addresses.addresses().iter().filter_map(|a| observed(Kind::ElasticIp, a.allocation_id()?, from_ec2(a.tags()), json!({}))).collect())
}

pub async fn create_elastic_ip(cloud: &Cloud, resource: &Resource) -> Result<String, AwsError> {
    let created = cloud
        .ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .tag_specifications(ec2_tag_specification(ResourceType::ElasticIp, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    Ok(created.allocation_id().unwrap_or_default().to_owned())
}

pub async fn delete_elastic_ip(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.release_address().allocation_id(id).send().await?;
    Ok(())
}

pub async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let mut found = Vec::new();
    let mut pages = cloud.ec2.describe_nat_gateways().filter(environment_filter(cloud)).into_paginator().send();
    while let Some(page) = pages.next().await {
        for nat in page?.nat_gateways() {
            // Deleted gateways stay visible for an hour; they are gone for kstack's purposes.
            if matches!(nat.state(), Some(NatGatewayState::Deleted | NatGatewayState::Deleting)) {
                continue;
            }
            let attributes = json!({
                "subnet": nat.subnet_id(),
                "elastic_ip": nat.nat_gateway_addresses().first().and_then(|a| a.allocation_id()),
            });
            found.extend(observed(Kind::NatGateway, nat.nat_gateway_id().unwrap_or_default(), from_ec2(nat.tags()), attributes));
        }
    }
    Ok(found)
}

pub async fn create(cloud: &Cloud, resource: &Resource, ids: &Ids) -> Result<String, AwsError> {
    let Spec::NatGateway { subnet, elastic_ip } = &resource.spec else { unreachable!("takes a NAT gateway") };
    let created = cloud
        .ec2
        .create_nat_gateway()
        .subnet_id(id_of(ids, subnet)?)
        .allocation_id(id_of(ids, elastic_ip)?)
        .tag_specifications(ec2_tag_specification(ResourceType::Natgateway, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    let id = created.nat_gateway().and_then(|n| n.nat_gateway_id()).unwrap_or_default().to_owned();
    // Routes to a pending gateway are accepted but drop traffic: wait until it is available.
    wait_for_state(cloud, &id, NatGatewayState::Available).await?;
    Ok(id)
}

pub async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_nat_gateway().nat_gateway_id(id).send().await?;
    // Its elastic IP and subnet can only go once the gateway has let go of them.
    wait_for_state(cloud, id, NatGatewayState::Deleted).await
}

async fn wait_for_state(cloud: &Cloud, id: &str, wanted: NatGatewayState) -> Result<(), AwsError> {
    for attempt in 0..120u32 {
        let described = cloud.ec2.describe_nat_gateways().nat_gateway_ids(id).send().await?;
        let state = described.nat_gateways().first().and_then(|n| n.state().cloned());
        match state {
            Some(state) if state == wanted => return Ok(()),
            None if wanted == NatGatewayState::Deleted => return Ok(()),
            Some(NatGatewayState::Failed) => {
                let reason = described.nat_gateways().first().and_then(|n| n.failure_message()).unwrap_or("no reason given");
                return Err(AwsError::internal(format!("NAT gateway {id} failed: {reason}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(10) + 1))).await,
        }
    }
    Err(AwsError::internal(format!("NAT gateway {id} did not become {} in time", wanted.as_str())))
}
