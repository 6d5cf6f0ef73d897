//! `route_table`: where a tier's traffic leaves the VPC (internet or NAT gateway).

use crate::resource::RouteTableSpec;
use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ResourceType, RouteOrigin, RouteTable};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{done_if_gone, id_of, AwsError, Cloud, Ids, Observed};
use crate::identity::Owner;
use crate::resource::{Address, Kind, Resource, Route};

/// The environment's route tables; subnets read their associations from the same answer.
pub(super) async fn describe(cloud: &Cloud) -> Result<Vec<RouteTable>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut tables = Vec::new();
        let mut pages = cloud.ec2.describe_route_tables().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            tables.extend(page?.route_tables().iter().cloned());
        }
        Ok(tables)
    };
    describe_ec2(cloud, Kind::RouteTable, Some("route-table-id"), describe, |t: &RouteTable| t.route_table_id()).await
}

pub(super) fn observe(owner: &Owner, tables: &[RouteTable]) -> Vec<Observed> {
    tables
        .iter()
        .filter_map(|table| {
            let mut routes: Vec<serde_json::Value> = table
                .routes()
                .iter()
                // The VPC's own `local` route is part of every table and not kstack's.
                .filter(|r| r.origin() != Some(&RouteOrigin::CreateRouteTable))
                .filter(|r| r.gateway_id() != Some("local"))
                .map(|r| {
                    json!({
                        "destination": r.destination_cidr_block(),
                        "target": r.nat_gateway_id().or(r.gateway_id()),
                    })
                })
                .collect();
            routes.sort_by_key(|r| r.to_string());
            let attributes = json!({ "vpc": table.vpc_id(), "routes": routes });
            observed(owner, Kind::RouteTable, table.route_table_id()?, from_ec2(table.tags()), attributes)
        })
        .collect()
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &RouteTableSpec, ids: &Ids) -> Result<String, AwsError> {
    let RouteTableSpec { vpc, routes } = spec;
    let created = cloud
        .ec2
        .create_route_table()
        .vpc_id(id_of(ids, vpc)?)
        .tag_specifications(ec2_tag_specification(ResourceType::RouteTable, &resource.tags))
        .customize()
        .config_override(super::without_retries())
        .send()
        .await?;
    let id =
        created.route_table().and_then(|t| t.route_table_id()).ok_or_else(|| AwsError::missing("CreateRouteTable", "route table id"))?.to_owned();
    for route in routes {
        create_route(cloud, &id, route, ids).await?;
    }
    Ok(id)
}

async fn create_route(cloud: &Cloud, table: &str, route: &Route, ids: &Ids) -> Result<(), AwsError> {
    let request = cloud.ec2.create_route().route_table_id(table).destination_cidr_block(route.destination.to_string());
    let target = id_of(ids, &route.target)?;
    let request = if route.target.is_kind(Kind::NatGateway) { request.nat_gateway_id(target) } else { request.gateway_id(target) };
    request.send().await?;
    Ok(())
}

pub(super) async fn update(cloud: &Cloud, spec: &RouteTableSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let RouteTableSpec { routes, .. } = spec;
    let existing: BTreeMap<String, Address> = actual.attributes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["destination"].as_str()?.to_owned(), Address::from(r["target"].as_str()?))))
        .collect();
    for route in routes {
        match existing.get(&route.destination.to_string()) {
            Some(target) if *target == route.target => {}
            Some(_) => {
                done_if_gone(cloud.ec2.delete_route().route_table_id(&actual.id).destination_cidr_block(route.destination.to_string()).send().await)?;
                create_route(cloud, &actual.id, route, ids).await?;
            }
            None => create_route(cloud, &actual.id, route, ids).await?,
        }
    }
    for destination in existing.keys() {
        if !routes.iter().any(|r| r.destination.to_string() == *destination) {
            done_if_gone(cloud.ec2.delete_route().route_table_id(&actual.id).destination_cidr_block(destination).send().await)?;
        }
    }
    Ok(())
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    // A table with subnet associations cannot be deleted; subnets still around fall back to
    // the VPC's main table. (AWS drops a deleted subnet's association; the emulator keeps it,
    // so there every destroy disassociates.)
    let described = cloud.ec2.describe_route_tables().route_table_ids(id).send().await?;
    let associations = described
        .route_tables()
        .iter()
        .flat_map(|t| t.associations())
        .filter(|a| a.main() != Some(true))
        .filter_map(|a| a.route_table_association_id());
    for association in associations {
        done_if_gone(cloud.ec2.disassociate_route_table().association_id(association).send().await)?;
    }
    cloud.ec2.delete_route_table().route_table_id(id).send().await?;
    Ok(())
}
