//! `elb`: a classic load balancer, named `<env>-<name>-<identity short form>`.

use crate::naming::TAG_ENVIRONMENT;
use crate::resource::LoadBalancerSpec;
use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancing::types::{
    ConnectionDraining, ConnectionSettings, CrossZoneLoadBalancing, HealthCheck, Listener, LoadBalancerAttributes, Tag,
};
use serde_json::json;

use super::tags::TagChange;
use super::{ids_of, AwsError, Cloud, Ids, Observed};

use crate::model::{self, ListenerProtocol};
use crate::resource::{Kind, Resource};

fn build_error(error: impl std::fmt::Display) -> AwsError {
    AwsError::internal(error.to_string())
}

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    // Classic ELBs cannot be filtered by tag: list the names with the environment's prefix
    // (and those state records, which may be named otherwise), then confirm ownership by tag,
    // twenty names per call.
    let prefix = crate::identity::name_prefix(cloud.environment(), Kind::LoadBalancer);
    let wanted = |name: &str| name.starts_with(&prefix) || cloud.owner.recorded_address(Kind::LoadBalancer, name).is_some();
    let mut balancers = Vec::new();
    let mut pages = cloud.elb.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        balancers.extend(page?.load_balancer_descriptions().iter().filter(|b| b.load_balancer_name().is_some_and(wanted)).cloned());
    }
    let names: Vec<String> = balancers.iter().filter_map(|b| b.load_balancer_name().map(str::to_owned)).collect();
    let mut tags_by_name: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for chunk in names.chunks(20) {
        let described = cloud.elb.describe_tags().set_load_balancer_names(Some(chunk.to_vec())).send().await?;
        for description in described.tag_descriptions() {
            let tags = description.tags().iter().map(|t| (t.key().to_owned(), t.value().unwrap_or_default().to_owned())).collect();
            tags_by_name.insert(description.load_balancer_name().unwrap_or_default().to_owned(), tags);
        }
    }
    let mut found = Vec::new();
    for balancer in &balancers {
        let name = balancer.load_balancer_name().unwrap_or_default();
        let Some(tags) = tags_by_name.remove(name) else { continue };
        // Whose it is, refresh judges; another environment's is reported among what is left
        // alone. One state records is read untagged.
        let recorded = cloud.owner.recorded_address(Kind::LoadBalancer, name).is_some();
        if tags.get(TAG_ENVIRONMENT).map(String::as_str) != Some(cloud.environment()) && !recorded {
            continue;
        }
        // Attributes have no batch call; an environment has a handful of load balancers.
        let attributes = cloud.elb.describe_load_balancer_attributes().load_balancer_name(name).send().await?;
        let attributes = attributes.load_balancer_attributes();
        let mut listeners: Vec<serde_json::Value> = balancer
            .listener_descriptions()
            .iter()
            .filter_map(|d| d.listener())
            .map(|l| {
                json!({
                    "port": l.load_balancer_port(),
                    "protocol": l.protocol().to_ascii_uppercase(),
                    "instance_port": l.instance_port(),
                    "instance_protocol": l.instance_protocol().map(str::to_ascii_uppercase),
                    "certificate": l.ssl_certificate_id(),
                })
            })
            .collect();
        listeners.sort_by_key(|l| l["port"].as_i64());
        let mut subnets: Vec<&str> = balancer.subnets().iter().map(String::as_str).collect();
        subnets.sort_unstable();
        let mut groups: Vec<&str> = balancer.security_groups().iter().map(String::as_str).collect();
        groups.sort_unstable();
        let health = balancer.health_check();
        let draining = attributes.and_then(|a| a.connection_draining());
        let attributes = json!({
            "internal": balancer.scheme() == Some("internal"),
            "subnets": subnets,
            "security_groups": groups,
            "listeners": listeners,
            "health_check": {
                "target": health.map(|h| h.target()),
                "interval": health.map(|h| h.interval()),
                "timeout": health.map(|h| h.timeout()),
                "healthy_threshold": health.map(|h| h.healthy_threshold()),
                "unhealthy_threshold": health.map(|h| h.unhealthy_threshold()),
            },
            "connection_draining": draining.filter(|d| d.enabled()).and_then(|d| d.timeout()),
            "cross_zone": attributes.and_then(|a| a.cross_zone_load_balancing()).is_some_and(|c| c.enabled()),
            "idle_timeout": attributes.and_then(|a| a.connection_settings()).map(|c| c.idle_timeout()),
        });
        found.extend(super::tags::observed(&cloud.owner, Kind::LoadBalancer, name, tags, attributes).map(|mut observed| {
            let assigned = [("dns_name", balancer.dns_name()), ("hosted_zone_id", balancer.canonical_hosted_zone_name_id())];
            observed.assigned = assigned.into_iter().filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned()))).collect();
            observed
        }));
    }
    Ok(found)
}

fn protocol(protocol: ListenerProtocol) -> &'static str {
    match protocol {
        ListenerProtocol::Tcp => "TCP",
        ListenerProtocol::Ssl => "SSL",
        ListenerProtocol::Http => "HTTP",
        ListenerProtocol::Https => "HTTPS",
    }
}

fn listener(listener: &model::Listener) -> Result<Listener, AwsError> {
    Listener::builder()
        .load_balancer_port(i32::from(listener.port))
        .protocol(protocol(listener.protocol))
        .instance_port(i32::from(listener.instance_port))
        .instance_protocol(protocol(listener.instance_protocol))
        .set_ssl_certificate_id(listener.certificate.clone())
        .build()
        .map_err(build_error)
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &LoadBalancerSpec, ids: &Ids) -> Result<String, AwsError> {
    let LoadBalancerSpec { internal, subnets, security_groups, listeners, .. } = spec;
    let tags = resource.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(build_error)).collect::<Result<Vec<_>, _>>()?;
    cloud
        .elb
        .create_load_balancer()
        .load_balancer_name(&resource.name)
        .set_listeners(Some(listeners.iter().map(listener).collect::<Result<_, _>>()?))
        .set_subnets(Some(ids_of(ids, subnets)?))
        .set_security_groups(Some(ids_of(ids, security_groups)?))
        .set_scheme(internal.then(|| String::from("internal")))
        .set_tags(Some(tags))
        .send()
        .await?;
    configure(cloud, spec, &resource.name).await?;
    Ok(resource.name.clone())
}

/// Health check and attributes, which creation does not take.
async fn configure(cloud: &Cloud, spec: &LoadBalancerSpec, name: &str) -> Result<(), AwsError> {
    let LoadBalancerSpec { health_check, connection_draining, cross_zone, idle_timeout, .. } = spec;
    let check = HealthCheck::builder()
        .target(&health_check.target)
        .interval(i32::from(health_check.interval))
        .timeout(i32::from(health_check.timeout))
        .healthy_threshold(i32::from(health_check.healthy_threshold))
        .unhealthy_threshold(i32::from(health_check.unhealthy_threshold))
        .build()
        .map_err(build_error)?;
    cloud.elb.configure_health_check().load_balancer_name(name).health_check(check).send().await?;
    let attributes = LoadBalancerAttributes::builder()
        .connection_draining(
            ConnectionDraining::builder().enabled(connection_draining.is_some()).set_timeout(connection_draining.map(i32::from)).build(),
        )
        .cross_zone_load_balancing(CrossZoneLoadBalancing::builder().enabled(*cross_zone).build())
        .connection_settings(ConnectionSettings::builder().idle_timeout(i32::from(*idle_timeout)).build().map_err(build_error)?)
        .build();
    cloud.elb.modify_load_balancer_attributes().load_balancer_name(name).load_balancer_attributes(attributes).send().await?;
    Ok(())
}

pub(super) async fn update(cloud: &Cloud, spec: &LoadBalancerSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let LoadBalancerSpec { subnets, security_groups, listeners, .. } = spec;
    let name = actual.id.as_str();
    let desired_listeners = serde_json::to_value(listeners).unwrap_or_default();
    if actual.attributes["listeners"] != desired_listeners {
        let ports: Vec<i32> = actual.attributes["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["port"].as_i64().and_then(|p| i32::try_from(p).ok()))
            .collect();
        if !ports.is_empty() {
            cloud.elb.delete_load_balancer_listeners().load_balancer_name(name).set_load_balancer_ports(Some(ports)).send().await?;
        }
        cloud
            .elb
            .create_load_balancer_listeners()
            .load_balancer_name(name)
            .set_listeners(Some(listeners.iter().map(listener).collect::<Result<_, _>>()?))
            .send()
            .await?;
    }
    let wanted = ids_of(ids, subnets)?;
    let current: Vec<String> = actual.attributes["subnets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .map(|s| ids.get(&s.into()).cloned().unwrap_or_else(|| s.to_owned()))
        .collect();
    let attach: Vec<String> = wanted.iter().filter(|s| !current.contains(s)).cloned().collect();
    let detach: Vec<String> = current.iter().filter(|s| !wanted.contains(s)).cloned().collect();
    if !attach.is_empty() {
        cloud.elb.attach_load_balancer_to_subnets().load_balancer_name(name).set_subnets(Some(attach)).send().await?;
    }
    if !detach.is_empty() {
        cloud.elb.detach_load_balancer_from_subnets().load_balancer_name(name).set_subnets(Some(detach)).send().await?;
    }
    cloud
        .elb
        .apply_security_groups_to_load_balancer()
        .load_balancer_name(name)
        .set_security_groups(Some(ids_of(ids, security_groups)?))
        .send()
        .await?;
    configure(cloud, spec, name).await
}

pub(super) async fn delete(cloud: &Cloud, name: &str) -> Result<(), AwsError> {
    cloud.elb.delete_load_balancer().load_balancer_name(name).send().await?;
    Ok(())
}

pub(super) async fn retag(cloud: &Cloud, name: &str, change: &TagChange) -> Result<(), AwsError> {
    use aws_sdk_elasticloadbalancing::types::{Tag as ElbTag, TagKeyOnly};
    if !change.changed.is_empty() {
        let tags = change.changed.iter().map(|(k, v)| ElbTag::builder().key(k).value(v).build()).collect::<Result<_, _>>().map_err(build_error)?;
        cloud.elb.add_tags().load_balancer_names(name).set_tags(Some(tags)).send().await?;
    }
    if !change.removed.is_empty() {
        let keys = change.removed.iter().map(|k| TagKeyOnly::builder().key(k).build()).collect();
        cloud.elb.remove_tags().load_balancer_names(name).set_tags(Some(keys)).send().await?;
    }
    Ok(())
}
