//! `elastic_ip` and `nat_gateway`: the private subnets' way out, one address per gateway.

use crate::resource::NatGatewaySpec;
use std::time::Duration;

use aws_sdk_ec2::types::{Address, DomainType, NatGateway, NatGatewayState, ResourceType};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{id_of, AwsError, Cloud, Ids, Observed};
use crate::resource::{Kind, Resource};

pub(super) async fn read_elastic_ips(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        Ok(cloud.ec2.describe_addresses().set_filters(filter.map(|f| vec![f])).send().await?.addresses().to_vec())
    };
    let addresses = describe_ec2(cloud, Kind::ElasticIp, Some("allocation-id"), describe, |a: &Address| a.allocation_id()).await?;
    Ok(addresses.iter().filter_map(|a| observed(&cloud.owner, Kind::ElasticIp, a.allocation_id()?, from_ec2(a.tags()), json!({}))).collect())
}

pub(super) async fn create_elastic_ip(cloud: &Cloud, resource: &Resource) -> Result<String, AwsError> {
    let created = cloud
        .ec2
        .allocate_address()
        .domain(DomainType::Vpc)
        .tag_specifications(ec2_tag_specification(ResourceType::ElasticIp, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    Ok(created.allocation_id().ok_or_else(|| AwsError::missing("AllocateAddress", "allocation id"))?.to_owned())
}

pub(super) async fn delete_elastic_ip(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.release_address().allocation_id(id).send().await?;
    Ok(())
}

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut gateways = Vec::new();
        let mut pages = cloud.ec2.describe_nat_gateways().set_filter(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            gateways.extend(page?.nat_gateways().iter().cloned());
        }
        Ok(gateways)
    };
    let gateways = describe_ec2(cloud, Kind::NatGateway, Some("nat-gateway-id"), describe, |n: &NatGateway| n.nat_gateway_id()).await?;
    let observe = |nat: &NatGateway| {
        // Deleted and failed gateways stay visible for an hour; they are gone for kstack's
        // purposes (a failed one never was: nothing adopts it as created).
        if matches!(nat.state(), Some(NatGatewayState::Deleted | NatGatewayState::Deleting | NatGatewayState::Failed)) {
            return None;
        }
        let attributes = json!({
            "subnet": nat.subnet_id(),
            "elastic_ip": nat.nat_gateway_addresses().first().and_then(|a| a.allocation_id()),
        });
        observed(&cloud.owner, Kind::NatGateway, nat.nat_gateway_id().unwrap_or_default(), from_ec2(nat.tags()), attributes)
    };
    Ok(gateways.iter().filter_map(observe).collect())
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &NatGatewaySpec, ids: &Ids) -> Result<String, AwsError> {
    let NatGatewaySpec { subnet, elastic_ip } = spec;
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
    let id =
        created.nat_gateway().and_then(|n| n.nat_gateway_id()).ok_or_else(|| AwsError::missing("CreateNatGateway", "NAT gateway id"))?.to_owned();
    // Routes to a pending gateway are accepted but drop traffic: wait until it is available.
    wait_for_state(cloud, &id, NatGatewayState::Available).await?;
    Ok(id)
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_nat_gateway().nat_gateway_id(id).send().await?;
    // Its elastic IP and subnet can only go once the gateway has let go of them.
    wait_for_state(cloud, id, NatGatewayState::Deleted).await
}

async fn wait_for_state(cloud: &Cloud, id: &str, wanted: NatGatewayState) -> Result<(), AwsError> {
    for attempt in 0..120u32 {
        let described = cloud.ec2.describe_nat_gateways().nat_gateway_ids(id).send().await?;
        match reached(id, described.nat_gateways().first(), &wanted) {
            Some(done) => return done,
            None => tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(10) + 1))).await,
        }
    }
    Err(AwsError::internal(format!("NAT gateway {id} did not become {} in time", wanted.as_str())))
}

/// Whether a gateway as described has reached `wanted` (None: not yet). One that ended
/// `failed` is an error with AWS's reason: AWS answered, so nothing is adopted or retried.
fn reached(id: &str, nat: Option<&aws_sdk_ec2::types::NatGateway>, wanted: &NatGatewayState) -> Option<Result<(), AwsError>> {
    match nat.and_then(|n| n.state()) {
        Some(state) if state == wanted => Some(Ok(())),
        None if *wanted == NatGatewayState::Deleted => Some(Ok(())),
        Some(NatGatewayState::Failed) => {
            let nat = nat?;
            let reason = nat.failure_message().unwrap_or("AWS gave no reason");
            let code = nat.failure_code().map(|c| format!(" ({c})")).unwrap_or_default();
            Some(Err(AwsError::internal(format!("NAT gateway {id} failed{code}: {reason}"))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{NatGateway, NatGatewayState};

    use super::reached;

    #[test]
    fn a_gateway_that_ended_failed_is_an_error_with_aws_reason() {
        // moto's gateways are available at once and never fail: the wait's judgement is tested here.
        let failed = NatGateway::builder()
            .state(NatGatewayState::Failed)
            .failure_code("InsufficientFreeAddressesInSubnet")
            .failure_message("Subnet has insufficient free addresses to create this NAT gateway")
            .build();
        let error = reached("nat-0abc", Some(&failed), &NatGatewayState::Available).unwrap().unwrap_err();
        assert_eq!(
            error.to_string(),
            "NAT gateway nat-0abc failed (InsufficientFreeAddressesInSubnet): Subnet has insufficient free addresses to create this NAT gateway"
        );
        assert!(!error.is_ambiguous(), "an answer, not a lost reply: no adoption, no retries");
        let pending = NatGateway::builder().state(NatGatewayState::Pending).build();
        assert!(reached("nat-0abc", Some(&pending), &NatGatewayState::Available).is_none());
        let available = NatGateway::builder().state(NatGatewayState::Available).build();
        assert!(reached("nat-0abc", Some(&available), &NatGatewayState::Available).unwrap().is_ok());
        assert!(reached("nat-0abc", None, &NatGatewayState::Deleted).unwrap().is_ok(), "gone from the listing");
        assert!(reached("nat-0abc", None, &NatGatewayState::Available).is_none());
    }
}
