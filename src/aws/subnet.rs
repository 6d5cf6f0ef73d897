//! `subnet`: one per tier and zone, associated with its tier's route table.

use crate::resource::SubnetSpec;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType, RouteTable, Subnet};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{id_of, AwsError, Cloud, Ids, Observed};
use crate::identity::Owner;
use crate::resource::{Kind, Resource};

pub(super) async fn describe(cloud: &Cloud) -> Result<Vec<Subnet>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut subnets = Vec::new();
        let mut pages = cloud.ec2.describe_subnets().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            subnets.extend(page?.subnets().iter().cloned());
        }
        Ok(subnets)
    };
    describe_ec2(cloud, Kind::Subnet, Some("subnet-id"), describe, |s: &Subnet| s.subnet_id()).await
}

pub(super) fn observe(owner: &Owner, subnets: &[Subnet], tables: &[RouteTable]) -> Vec<Observed> {
    subnets
        .iter()
        .filter_map(|subnet| {
            let id = subnet.subnet_id()?;
            let route_table =
                tables.iter().find_map(|t| t.associations().iter().any(|a| a.subnet_id() == Some(id)).then(|| t.route_table_id()).flatten());
            let attributes = json!({
                "vpc": subnet.vpc_id(),
                "cidr": subnet.cidr_block(),
                "zone": subnet.availability_zone(),
                "map_public_ip_on_launch": subnet.map_public_ip_on_launch().unwrap_or(false),
                "route_table": route_table,
            });
            observed(owner, Kind::Subnet, id, from_ec2(subnet.tags()), attributes)
        })
        .collect()
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &SubnetSpec, ids: &Ids) -> Result<String, AwsError> {
    let SubnetSpec { vpc, cidr, zone, map_public_ip_on_launch, route_table } = spec;
    let created = cloud
        .ec2
        .create_subnet()
        .vpc_id(id_of(ids, vpc)?)
        .cidr_block(cidr.to_string())
        .availability_zone(zone)
        .tag_specifications(ec2_tag_specification(ResourceType::Subnet, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    let id = created.subnet().and_then(|s| s.subnet_id()).ok_or_else(|| AwsError::missing("CreateSubnet", "subnet id"))?.to_owned();
    if *map_public_ip_on_launch {
        set_public_ip(cloud, &id, true).await?;
    }
    cloud.ec2.associate_route_table().subnet_id(&id).route_table_id(id_of(ids, route_table)?).send().await?;
    Ok(id)
}

async fn set_public_ip(cloud: &Cloud, id: &str, on: bool) -> Result<(), AwsError> {
    cloud.ec2.modify_subnet_attribute().subnet_id(id).map_public_ip_on_launch(AttributeBooleanValue::builder().value(on).build()).send().await?;
    Ok(())
}

pub(super) async fn update(cloud: &Cloud, spec: &SubnetSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let SubnetSpec { map_public_ip_on_launch, route_table, .. } = spec;
    if actual.attributes["map_public_ip_on_launch"] != json!(map_public_ip_on_launch) {
        set_public_ip(cloud, &actual.id, *map_public_ip_on_launch).await?;
    }
    if actual.attributes["route_table"] != json!(route_table) {
        let table = id_of(ids, route_table)?;
        let tables = cloud
            .ec2
            .describe_route_tables()
            .filters(aws_sdk_ec2::types::Filter::builder().name("association.subnet-id").values(&actual.id).build())
            .send()
            .await?;
        let association = tables
            .route_tables()
            .iter()
            .flat_map(|t| t.associations())
            .find(|a| a.subnet_id() == Some(actual.id.as_str()))
            .and_then(|a| a.route_table_association_id());
        match association {
            Some(association) => {
                cloud.ec2.replace_route_table_association().association_id(association).route_table_id(table).send().await?;
            }
            None => {
                cloud.ec2.associate_route_table().subnet_id(&actual.id).route_table_id(table).send().await?;
            }
        }
    }
    Ok(())
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_subnet().subnet_id(id).send().await?;
    Ok(())
}
