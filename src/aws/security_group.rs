//! `security_group` and `security_group_rules`. Rules are a resource of their own so groups
//! that refer to each other can all exist before any rule names them.

use crate::resource::{SecurityGroupRulesSpec, SecurityGroupSpec};
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, SecurityGroup, UserIdGroupPair};
use serde_json::json;

use super::tags::{describe_ec2, ec2_tag_specification, from_ec2, observed};
use super::{done_if_gone, id_of, AwsError, Cloud, Ids, Observed};
use crate::identity::Owner;
use crate::model::{PortRange, Protocol};
use crate::resource::{Address, Kind, Peer, Resource, RuleSpec};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |filter: Option<aws_sdk_ec2::types::Filter>| async move {
        let mut groups = Vec::new();
        let mut pages = cloud.ec2.describe_security_groups().set_filters(filter.map(|f| vec![f])).into_paginator().send();
        while let Some(page) = pages.next().await {
            groups.extend(page?.security_groups().iter().cloned());
        }
        Ok(groups)
    };
    let groups = describe_ec2(cloud, Kind::SecurityGroup, Some("group-id"), describe, |g: &SecurityGroup| g.group_id()).await?;
    Ok(groups.iter().flat_map(|group| observe(&cloud.owner, group)).collect())
}

/// A group and its rules, from one Describe answer.
fn observe(owner: &Owner, group: &SecurityGroup) -> Vec<Observed> {
    let id = group.group_id().unwrap_or_default();
    let tags = from_ec2(group.tags());
    let attributes = json!({ "vpc": group.vpc_id(), "description": group.description() });
    let Some(group_resource) = observed(owner, Kind::SecurityGroup, id, tags, attributes) else {
        return Vec::new();
    };
    let rules_address = group_resource
        .address
        .as_str()
        .strip_prefix(Kind::SecurityGroup.prefix())
        .map(|name| Address::from(format!("{}{name}", Kind::SecurityGroupRules.prefix()).as_str()));
    let mut found = vec![group_resource.clone()];
    if let Some(address) = rules_address {
        let egress = rules_of(group.ip_permissions_egress());
        // AWS gives every group an allow-all egress rule; kstack leaves it alone unless the
        // model lists egress rules, so it reads as "no egress rules declared".
        let egress = (!is_default_egress(&egress)).then_some(egress);
        found.push(Observed {
            address,
            kind: Kind::SecurityGroupRules,
            id: id.to_owned(),
            tags: group_resource.tags.clone(),
            attributes: json!({ "group": id, "ingress": rules_of(group.ip_permissions()), "egress": egress }),
            assigned: std::collections::BTreeMap::new(),
        });
    }
    found
}

/// The allow-all egress rule AWS gives every new group.
fn default_egress() -> RuleSpec {
    RuleSpec { protocol: Protocol::All, ports: None, peer: Peer::Cidr("0.0.0.0/0".parse().expect("valid CIDR")), description: None }
}

fn is_default_egress(rules: &[RuleSpec]) -> bool {
    matches!(rules, [only] if only.protocol == Protocol::All && only.peer == default_egress().peer)
}

fn rules_of(permissions: &[IpPermission]) -> Vec<RuleSpec> {
    let mut rules = Vec::new();
    for permission in permissions {
        let protocol = match permission.ip_protocol().unwrap_or("-1") {
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            _ => Protocol::All,
        };
        let ports = match (protocol, permission.from_port(), permission.to_port()) {
            (Protocol::Tcp | Protocol::Udp, Some(from), Some(to)) => {
                Some(PortRange { from: u16::try_from(from).unwrap_or(0), to: u16::try_from(to).unwrap_or(0) })
            }
            _ => None,
        };
        let rule = |peer, description: Option<&str>| RuleSpec { protocol, ports, peer, description: description.map(str::to_owned) };
        for range in permission.ip_ranges() {
            if let Some(cidr) = range.cidr_ip().and_then(|c| c.parse().ok()) {
                rules.push(rule(Peer::Cidr(cidr), range.description()));
            }
        }
        for pair in permission.user_id_group_pairs() {
            if let Some(group) = pair.group_id() {
                rules.push(rule(Peer::Group(Address::from(group)), pair.description()));
            }
        }
    }
    rules.sort();
    rules
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &SecurityGroupSpec, ids: &Ids) -> Result<String, AwsError> {
    let SecurityGroupSpec { vpc, description } = spec;
    let created = cloud
        .ec2
        .create_security_group()
        .group_name(&resource.name)
        .description(description)
        .vpc_id(id_of(ids, vpc)?)
        .tag_specifications(ec2_tag_specification(ResourceType::SecurityGroup, &resource.tags))
        .send()
        .await?;
    Ok(created.group_id().ok_or_else(|| AwsError::missing("CreateSecurityGroup", "group id"))?.to_owned())
}

pub(super) async fn delete(cloud: &Cloud, id: &str) -> Result<(), AwsError> {
    cloud.ec2.delete_security_group().group_id(id).send().await?;
    Ok(())
}

pub(super) async fn create_rules(cloud: &Cloud, spec: &SecurityGroupRulesSpec, ids: &Ids) -> Result<String, AwsError> {
    let SecurityGroupRulesSpec { group, ingress, egress } = spec;
    let group_id = id_of(ids, group)?.to_owned();
    authorize(cloud, &group_id, Direction::Ingress, ingress, ids).await?;
    if let Some(egress) = egress {
        revoke(cloud, &group_id, Direction::Egress, &[default_egress()], ids).await?;
        authorize(cloud, &group_id, Direction::Egress, egress, ids).await?;
    }
    Ok(group_id)
}

pub(super) async fn update_rules(cloud: &Cloud, spec: &SecurityGroupRulesSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let SecurityGroupRulesSpec { ingress, egress, .. } = spec;
    let (actual_ingress, actual_egress) = actual_rules(actual);
    let group_id = actual.id.as_str();
    sync(cloud, group_id, Direction::Ingress, &actual_ingress, ingress, ids).await?;
    if let Some(egress) = egress {
        // No egress rules read back means AWS's default is in place, and must go too.
        let actual_egress = actual_egress.unwrap_or_else(|| vec![default_egress()]);
        sync(cloud, group_id, Direction::Egress, &actual_egress, egress, ids).await?;
    }
    Ok(())
}

/// Revokes every rule, so the groups they name can be deleted.
pub(super) async fn delete_rules(cloud: &Cloud, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let (ingress, egress) = actual_rules(actual);
    revoke(cloud, &actual.id, Direction::Ingress, &ingress, ids).await?;
    revoke(cloud, &actual.id, Direction::Egress, &egress.unwrap_or_default(), ids).await
}

fn actual_rules(actual: &Observed) -> (Vec<RuleSpec>, Option<Vec<RuleSpec>>) {
    let ingress = serde_json::from_value(actual.attributes["ingress"].clone()).unwrap_or_default();
    let egress = serde_json::from_value(actual.attributes["egress"].clone()).unwrap_or_default();
    (ingress, egress)
}

async fn sync(cloud: &Cloud, group_id: &str, direction: Direction, actual: &[RuleSpec], desired: &[RuleSpec], ids: &Ids) -> Result<(), AwsError> {
    let removed: Vec<RuleSpec> = actual.iter().filter(|r| !desired.contains(r)).cloned().collect();
    let added: Vec<RuleSpec> = desired.iter().filter(|r| !actual.contains(r)).cloned().collect();
    revoke(cloud, group_id, direction, &removed, ids).await?;
    authorize(cloud, group_id, direction, &added, ids).await
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy)]
enum Grant {
    Authorize,
    Revoke,
}

async fn authorize(cloud: &Cloud, group_id: &str, direction: Direction, rules: &[RuleSpec], ids: &Ids) -> Result<(), AwsError> {
    change(cloud, group_id, direction, Grant::Authorize, rules, ids).await
}

async fn revoke(cloud: &Cloud, group_id: &str, direction: Direction, rules: &[RuleSpec], ids: &Ids) -> Result<(), AwsError> {
    change(cloud, group_id, direction, Grant::Revoke, rules, ids).await
}

/// One call for all `rules` of a direction; each of the four is its own EC2 operation.
async fn change(cloud: &Cloud, group_id: &str, direction: Direction, grant: Grant, rules: &[RuleSpec], ids: &Ids) -> Result<(), AwsError> {
    if rules.is_empty() {
        return Ok(());
    }
    let permissions = Some(permissions(rules, ids)?);
    let ec2 = &cloud.ec2;
    match (direction, grant) {
        (Direction::Ingress, Grant::Authorize) => {
            ec2.authorize_security_group_ingress().group_id(group_id).set_ip_permissions(permissions).send().await?;
        }
        (Direction::Egress, Grant::Authorize) => {
            ec2.authorize_security_group_egress().group_id(group_id).set_ip_permissions(permissions).send().await?;
        }
        (Direction::Ingress, Grant::Revoke) => {
            done_if_gone(ec2.revoke_security_group_ingress().group_id(group_id).set_ip_permissions(permissions).send().await)?;
        }
        (Direction::Egress, Grant::Revoke) => {
            done_if_gone(ec2.revoke_security_group_egress().group_id(group_id).set_ip_permissions(permissions).send().await)?;
        }
    }
    Ok(())
}

/// One permission per rule; a peer group is an address while kstack manages it, or an id.
fn permissions(rules: &[RuleSpec], ids: &Ids) -> Result<Vec<IpPermission>, AwsError> {
    rules
        .iter()
        .map(|rule| {
            let (protocol, from, to) = match (rule.protocol, rule.ports) {
                (Protocol::All, _) => ("-1", None, None),
                (Protocol::Icmp, _) => ("icmp", Some(-1), Some(-1)),
                (Protocol::Tcp, ports) => ("tcp", ports.map(|p| i32::from(p.from)), ports.map(|p| i32::from(p.to))),
                (Protocol::Udp, ports) => ("udp", ports.map(|p| i32::from(p.from)), ports.map(|p| i32::from(p.to))),
            };
            let mut permission = IpPermission::builder().ip_protocol(protocol).set_from_port(from).set_to_port(to);
            permission = match &rule.peer {
                Peer::Cidr(cidr) => {
                    permission.ip_ranges(IpRange::builder().cidr_ip(cidr.to_string()).set_description(rule.description.clone()).build())
                }
                Peer::Group(group) => {
                    let id = match ids.get(group) {
                        Some(id) => id.as_str(),
                        None if group.as_str().starts_with("sg-") => group.as_str(),
                        None => id_of(ids, group)?,
                    };
                    permission.user_id_group_pairs(UserIdGroupPair::builder().group_id(id).set_description(rule.description.clone()).build())
                }
            };
            Ok(permission.build())
        })
        .collect()
}
