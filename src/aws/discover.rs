//! What another tool made in a VPC, for `kstack import --vpc`: every resource kstack models in
//! it or used by what runs in it (groups in its subnets, their launch settings, instance
//! profiles and roles; load balancers in it; the model's DNS records), each with what matches
//! it to the model. Reads only; a few calls per kind.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, NatGatewayState, Tag};

use super::{dns_record, AwsError, Cloud};
use crate::import::Found;
use crate::resource::Kind;

/// Everything of the VPC `vpc_id`; the DNS records `records` names (zone, name, type); and in
/// the hosted zones `zones`, the records that alias the VPC's load balancers or are CNAMEs of
/// those.
pub async fn in_vpc(cloud: &Cloud, vpc_id: &str, records: &[(String, String, String)], zones: &[String]) -> Result<Vec<Found>, AwsError> {
    let origin = format!("found in {vpc_id}");
    let found = |kind: Kind, id: &str, names: Vec<String>| Found {
        kind,
        id: id.to_owned(),
        origin: origin.clone(),
        names,
        cidr: None,
        subnet: None,
        allocation: None,
        record: None,
        subnets: Vec::new(),
    };
    let in_vpc = || Filter::builder().name("vpc-id").values(vpc_id).build();
    let mut all = Vec::new();

    let vpcs = cloud.ec2.describe_vpcs().vpc_ids(vpc_id).send().await?;
    let Some(vpc) = vpcs.vpcs().first() else { return Err(AwsError::missing("DescribeVpcs", vpc_id)) };
    all.push(Found { cidr: vpc.cidr_block().map(str::to_owned), ..found(Kind::Vpc, vpc_id, name_tag(vpc.tags())) });

    let subnets = cloud.ec2.describe_subnets().filters(in_vpc()).send().await?;
    let subnet_ids: BTreeSet<String> = subnets.subnets().iter().filter_map(|s| s.subnet_id().map(str::to_owned)).collect();
    for subnet in subnets.subnets() {
        let Some(id) = subnet.subnet_id() else { continue };
        all.push(Found { cidr: subnet.cidr_block().map(str::to_owned), ..found(Kind::Subnet, id, name_tag(subnet.tags())) });
    }
    let tables = cloud.ec2.describe_route_tables().filters(in_vpc()).send().await?;
    for table in tables.route_tables() {
        let Some(id) = table.route_table_id() else { continue };
        let served = table.associations().iter().filter_map(|a| a.subnet_id().map(str::to_owned)).collect();
        all.push(Found { subnets: served, ..found(Kind::RouteTable, id, name_tag(table.tags())) });
    }
    let attached = Filter::builder().name("attachment.vpc-id").values(vpc_id).build();
    for gateway in cloud.ec2.describe_internet_gateways().filters(attached).send().await?.internet_gateways() {
        all.extend(gateway.internet_gateway_id().map(|id| found(Kind::InternetGateway, id, name_tag(gateway.tags()))));
    }
    let mut allocations = Vec::new();
    for nat in cloud.ec2.describe_nat_gateways().filter(in_vpc()).send().await?.nat_gateways() {
        if matches!(nat.state(), Some(NatGatewayState::Deleted | NatGatewayState::Deleting | NatGatewayState::Failed)) {
            continue;
        }
        let Some(id) = nat.nat_gateway_id() else { continue };
        let allocation = nat.nat_gateway_addresses().first().and_then(|a| a.allocation_id()).map(str::to_owned);
        allocations.extend(allocation.clone());
        all.push(Found { subnet: nat.subnet_id().map(str::to_owned), allocation, ..found(Kind::NatGateway, id, name_tag(nat.tags())) });
    }
    if !allocations.is_empty() {
        for address in cloud.ec2.describe_addresses().set_allocation_ids(Some(allocations)).send().await?.addresses() {
            all.extend(address.allocation_id().map(|id| found(Kind::ElasticIp, id, name_tag(address.tags()))));
        }
    }
    for group in cloud.ec2.describe_security_groups().filters(in_vpc()).send().await?.security_groups() {
        // Every VPC has its `default` group; kstack never models it.
        let (Some(id), Some(name)) = (group.group_id(), group.group_name()) else { continue };
        if name != "default" {
            all.push(found(Kind::SecurityGroup, id, [vec![name.to_owned()], name_tag(group.tags())].concat()));
        }
    }

    let mut balancer_dns = BTreeMap::new();
    let mut pages = cloud.elb.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        for balancer in page?.load_balancer_descriptions().iter().filter(|b| b.vpc_id() == Some(vpc_id)) {
            let Some(name) = balancer.load_balancer_name() else { continue };
            balancer_dns.extend(balancer.dns_name().map(|dns| (dns.trim_end_matches('.').to_ascii_lowercase(), name.to_owned())));
            all.push(found(Kind::LoadBalancer, name, vec![name.to_owned()]));
        }
    }

    let (mut templates, mut configurations) = (BTreeSet::new(), BTreeSet::new());
    let mut pages = cloud.autoscaling.describe_auto_scaling_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        for group in page?.auto_scaling_groups() {
            let zones = group.vpc_zone_identifier().unwrap_or_default();
            let mut subnets = zones.split(',').map(str::trim).filter(|s| !s.is_empty()).peekable();
            let Some(name) = group.auto_scaling_group_name() else { continue };
            if subnets.peek().is_none() || !subnets.all(|s| subnet_ids.contains(s)) {
                continue;
            }
            templates.extend(group.launch_template().and_then(|t| t.launch_template_id()).map(str::to_owned));
            configurations.extend(group.launch_configuration_name().map(str::to_owned));
            let tag = group.tags().iter().find(|t| t.key() == Some("Name")).and_then(|t| t.value()).map(str::to_owned);
            all.push(found(Kind::AutoScalingGroup, name, [Some(name.to_owned()), tag].into_iter().flatten().collect()));
        }
    }
    let mut profiles = BTreeSet::new();
    if !templates.is_empty() {
        let ids: Vec<String> = templates.into_iter().collect();
        for template in cloud.ec2.describe_launch_templates().set_launch_template_ids(Some(ids.clone())).send().await?.launch_templates() {
            let (Some(id), Some(name)) = (template.launch_template_id(), template.launch_template_name()) else { continue };
            all.push(found(Kind::LaunchTemplate, id, [vec![name.to_owned()], name_tag(template.tags())].concat()));
        }
        for id in &ids {
            let versions = cloud.ec2.describe_launch_template_versions().launch_template_id(id).versions("$Latest").send().await?;
            let profile = versions.launch_template_versions().first().and_then(|v| v.launch_template_data()).and_then(|d| d.iam_instance_profile());
            profiles.extend(profile.and_then(|p| p.arn().or(p.name())).map(profile_name));
        }
    }
    if !configurations.is_empty() {
        let names: Vec<String> = configurations.into_iter().collect();
        for config in
            cloud.autoscaling.describe_launch_configurations().set_launch_configuration_names(Some(names)).send().await?.launch_configurations()
        {
            let Some(name) = config.launch_configuration_name() else { continue };
            all.push(found(Kind::LaunchConfiguration, name, vec![name.to_owned()]));
            profiles.extend(config.iam_instance_profile().map(profile_name));
        }
    }
    for name in profiles {
        let got = cloud.iam.get_instance_profile().instance_profile_name(&name).send().await?;
        let Some(profile) = got.instance_profile() else { continue };
        all.push(found(Kind::InstanceProfile, profile.arn(), vec![name.clone()]));
        for role in profile.roles() {
            all.push(found(Kind::IamRole, role.arn(), vec![role.role_name().to_owned()]));
        }
    }

    let record = |zone_id: &str, name: String, record_type: String| Found {
        record: Some((name.clone(), record_type.clone())),
        ..found(Kind::DnsRecord, &format!("{zone_id}|{name}|{record_type}"), vec![name])
    };
    for (zone, name, record_type) in records {
        let Some(zone_id) = dns_record::zone_id(cloud, zone).await? else { continue };
        if dns_record::current(cloud, &format!("{zone_id}|{name}|{record_type}")).await?.1.is_some() {
            all.push(record(&zone_id, name.clone(), record_type.clone()));
        }
    }
    for zone in zones {
        let Some(zone_id) = dns_record::zone_id(cloud, zone).await? else { continue };
        let sets = dns_record::record_sets(cloud, &zone_id).await?;
        let aliases: BTreeSet<String> = sets
            .iter()
            .filter(|s| {
                s.alias_target().is_some_and(|a| balancer_dns.contains_key(dns_record::normal(a.dns_name()).trim_start_matches("dualstack.")))
            })
            .map(|s| dns_record::normal(s.name()))
            .collect();
        let cnames = sets
            .iter()
            .filter(|s| s.r#type().as_str() == "CNAME" && s.resource_records().iter().any(|r| aliases.contains(&dns_record::normal(r.value()))));
        for set in sets.iter().filter(|s| aliases.contains(&dns_record::normal(s.name())) && s.alias_target().is_some()).chain(cnames) {
            all.push(record(&zone_id, dns_record::normal(set.name()), set.r#type().as_str().to_owned()));
        }
    }
    all.dedup_by(|a, b| a.kind == b.kind && a.id == b.id);
    Ok(all)
}

fn name_tag(tags: &[Tag]) -> Vec<String> {
    tags.iter().filter(|t| t.key() == Some("Name")).filter_map(|t| t.value().map(str::to_owned)).collect()
}

/// An instance profile's name, from its ARN or its name.
fn profile_name(profile: &str) -> String {
    profile.rsplit('/').next().unwrap_or(profile).to_owned()
}

/// The user data each launch template (latest version) and launch configuration of
/// `observed` boots with, decoded, by id: one call per template, one for the configurations.
pub async fn user_data(cloud: &Cloud, observed: &[crate::resource::Observed]) -> Result<BTreeMap<String, String>, AwsError> {
    let decode = |data: Option<&str>| {
        data.filter(|d| !d.is_empty())
            .and_then(|d| aws_smithy_types::base64::decode(d).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut found = BTreeMap::new();
    for template in observed.iter().filter(|o| o.kind == Kind::LaunchTemplate) {
        let versions = cloud.ec2.describe_launch_template_versions().launch_template_id(&template.id).versions("$Latest").send().await?;
        let data = versions.launch_template_versions().first().and_then(|v| v.launch_template_data()).and_then(|d| d.user_data());
        found.extend(decode(data).map(|text| (template.id.clone(), text)));
    }
    let names: Vec<String> = observed.iter().filter(|o| o.kind == Kind::LaunchConfiguration).map(|o| o.id.clone()).collect();
    if !names.is_empty() {
        let described = cloud.autoscaling.describe_launch_configurations().set_launch_configuration_names(Some(names)).send().await?;
        for config in described.launch_configurations() {
            if let (Some(name), Some(text)) = (config.launch_configuration_name(), decode(config.user_data())) {
                found.insert(name.to_owned(), text);
            }
        }
    }
    Ok(found)
}

/// Of a VPC someone else owns and the subnets named in it: each id that does not exist, and
/// each subnet that is in another VPC (with that VPC).
pub async fn check_existing(cloud: &Cloud, vpc_id: &str, subnet_ids: &[String]) -> Result<(bool, Vec<(String, Option<String>)>), AwsError> {
    let vpcs = cloud.ec2.describe_vpcs().filters(Filter::builder().name("vpc-id").values(vpc_id).build()).send().await?;
    let vpc_exists = !vpcs.vpcs().is_empty();
    let subnets =
        cloud.ec2.describe_subnets().filters(Filter::builder().name("subnet-id").set_values(Some(subnet_ids.to_vec())).build()).send().await?;
    let found: BTreeMap<&str, Option<&str>> = subnets.subnets().iter().filter_map(|s| Some((s.subnet_id()?, s.vpc_id()))).collect();
    let wrong = subnet_ids
        .iter()
        .filter_map(|id| match found.get(id.as_str()) {
            None => Some((id.clone(), None)),
            Some(vpc) if *vpc != Some(vpc_id) => Some((id.clone(), vpc.map(str::to_owned))),
            Some(_) => None,
        })
        .collect();
    Ok((vpc_exists, wrong))
}

/// The names of hosted zones, by id (`Z123…`), one call each; a zone that is gone is left out.
pub async fn zone_names(cloud: &Cloud, ids: &BTreeSet<String>) -> Result<Vec<String>, AwsError> {
    let mut names = Vec::new();
    for id in ids {
        match cloud.route53.get_hosted_zone().id(id).send().await.map_err(AwsError::from) {
            Ok(zone) => names.extend(zone.hosted_zone().map(|z| z.name().trim_end_matches('.').to_ascii_lowercase())),
            Err(error) if error.is_not_found() || error.is_code("NoSuchHostedZone") => {}
            Err(error) => return Err(error),
        }
    }
    Ok(names)
}
