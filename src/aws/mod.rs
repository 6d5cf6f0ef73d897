//! The AWS providers: read every resource of an environment, and create, update and delete
//! one resource. One file per resource kind; this file holds what they share.
//!
//! Readers return [`Observed`] resources whose attributes have the same JSON shape as the
//! desired [`Spec`](crate::resource::Spec) attributes, with AWS ids in reference fields;
//! [`refresh`] then swaps ids for addresses so the plan can compare the two directly.

pub mod access;
mod auto_scaling_group;
mod calls;
pub mod clock;
pub mod console;
pub mod discover;
mod dns_record;
mod error;
mod iam;
mod image;
mod instances;
mod internet_gateway;
mod launch_configuration;
mod launch_template;
mod load_balancer;
mod nat_gateway;
mod route_table;
pub mod secrets;
mod security_group;
mod subnet;
mod tags;
mod vpc;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::resource::Observed;
pub use calls::ApiCalls;
pub use clock::ServiceClock;
use error::done_if_gone;
pub use error::{AwsError, AwsErrorKind};

use crate::identity::{Owner, Ownership};
use crate::model::AwsAccess;
use crate::resource::{Address, Kind, Resource};

/// Clients for the AWS services kstack uses, sharing one configuration and call counter.
#[derive(Clone)]
pub struct Cloud {
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancing::Client,
    pub iam: aws_sdk_iam::Client,
    pub route53: aws_sdk_route53::Client,
    pub sts: aws_sdk_sts::Client,
    /// Secrets' stores: SSM parameters and Secrets Manager.
    pub ssm: aws_sdk_ssm::Client,
    pub secrets_manager: aws_sdk_secretsmanager::Client,
    pub calls: Arc<ApiCalls>,
    /// EC2's time, from its replies: what bake leases are judged by.
    pub clock: Arc<ServiceClock>,
    /// Whose resources are read and written.
    pub owner: Owner,
    pub region: String,
    /// The hosted zones refresh lists for the environment's DNS records (see
    /// [`Cloud::with_dns_zones`]): records cannot be found by tag.
    pub dns_zones: Vec<String>,
    /// What the clients were built from: another region's clients share its credentials.
    config: aws_config::SdkConfig,
    /// The account the credentials act in, once asked.
    account: Arc<tokio::sync::OnceCell<String>>,
}

impl Cloud {
    /// Connects to the environment's account (see [`access`]) in its region.
    pub async fn connect(access: &AwsAccess, region: &str, owner: Owner) -> Cloud {
        let config = access::sdk_config(access, region, &format!("kstack-{}", owner.environment)).await;
        Cloud::from_config(config, owner, Arc::default())
    }

    /// The same account, its credentials shared, in another region (an image's copies).
    pub fn in_region(&self, region: &str) -> Cloud {
        let config = self.config.to_builder().region(aws_config::Region::new(region.to_owned())).build();
        Cloud::from_config(config, self.owner.clone(), self.account.clone())
    }

    fn from_config(config: aws_config::SdkConfig, owner: Owner, account: Arc<tokio::sync::OnceCell<String>>) -> Cloud {
        let region = config.region().map(|r| r.to_string()).unwrap_or_default();
        let calls = Arc::new(ApiCalls::default());
        let clock = Arc::new(ServiceClock::default());
        Cloud {
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(&config).interceptor(calls.interceptor()).interceptor(clock.interceptor()).build(),
            ),
            autoscaling: aws_sdk_autoscaling::Client::from_conf(
                aws_sdk_autoscaling::config::Builder::from(&config).interceptor(calls.interceptor()).build(),
            ),
            elb: aws_sdk_elasticloadbalancing::Client::from_conf(
                aws_sdk_elasticloadbalancing::config::Builder::from(&config).interceptor(calls.interceptor()).build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(aws_sdk_iam::config::Builder::from(&config).interceptor(calls.interceptor()).build()),
            route53: aws_sdk_route53::Client::from_conf(aws_sdk_route53::config::Builder::from(&config).interceptor(calls.interceptor()).build()),
            sts: aws_sdk_sts::Client::from_conf(aws_sdk_sts::config::Builder::from(&config).interceptor(calls.interceptor()).build()),
            ssm: aws_sdk_ssm::Client::from_conf(aws_sdk_ssm::config::Builder::from(&config).interceptor(calls.interceptor()).build()),
            secrets_manager: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(&config).interceptor(calls.interceptor()).build(),
            ),
            calls,
            clock,
            owner,
            region,
            dns_zones: Vec::new(),
            config,
            account,
        }
    }

    /// The same clients, judging ownership as `owner` does (an identity new to state).
    pub fn with_owner(self, owner: Owner) -> Cloud {
        Cloud { owner, ..self }
    }

    /// The hosted zones the environment's model and state name, each listed once by refresh.
    pub fn with_dns_zones<'a>(mut self, zones: impl IntoIterator<Item = &'a str>) -> Cloud {
        self.dns_zones = zones.into_iter().map(str::to_owned).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        self
    }

    pub fn environment(&self) -> &str {
        &self.owner.environment
    }

    /// The account the credentials act in (STS GetCallerIdentity, which needs no permission),
    /// asked once.
    pub async fn account(&self) -> Result<&str, AwsError> {
        let account = self
            .account
            .get_or_try_init(|| async {
                let identity = self.sts.get_caller_identity().send().await?;
                identity.account().map(str::to_owned).ok_or_else(|| AwsError::missing("GetCallerIdentity", "the account"))
            })
            .await?;
        Ok(account)
    }
}

/// Addresses of resources that exist, with their AWS ids.
pub type Ids = BTreeMap<Address, String>;

/// What refresh found under the environment's tag.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// The environment's own resources (see [`Owner`]), a recorded one first where two
    /// claim one address.
    pub observed: Vec<Observed>,
    /// Carrying the environment's identity without state's record of making them: left
    /// alone, reported, and adoptable only by `kstack state adopt`.
    pub unrecorded: Vec<Observed>,
    /// Tagged with the environment's name but another environment's: left alone, reported.
    pub foreign: Vec<Observed>,
    /// Every record set in the zones listed, whoever made it, with its id.
    pub dns_in_use: dns_record::RecordsInUse,
}

/// Reads every resource of the environment, a few batched calls per resource kind, and
/// keeps apart what is not its own.
pub async fn refresh(cloud: &Cloud) -> Result<Refreshed, AwsError> {
    let (network, security, iam, launch, groups, (records, dns_in_use)) = tokio::try_join!(
        read_network(cloud),
        security_group::read(cloud),
        iam::read(cloud),
        read_launch(cloud),
        read_groups(cloud),
        dns_record::read(cloud),
    )?;
    let mut refreshed = Refreshed { dns_in_use, ..Refreshed::default() };
    for mut found in network.into_iter().chain(security).chain(iam).chain(launch).chain(groups).chain(records) {
        match cloud.owner.judge(&found.id, &found.tags) {
            Ownership::Ours | Ownership::Recorded => {
                if let Some(address) = cloud.owner.recorded_address(found.kind, &found.id) {
                    found.address = address.clone();
                }
                refreshed.observed.push(found);
            }
            Ownership::Unrecorded => refreshed.unrecorded.push(found),
            Ownership::Foreign { .. } => refreshed.foreign.push(found),
        }
    }
    let Refreshed { mut observed, unrecorded, foreign, dns_in_use } = refreshed;
    alias_balancers_by_id(&mut observed);
    observed.sort_by(|a, b| {
        a.address.cmp(&b.address).then_with(|| cloud.owner.recorded(&b.id).cmp(&cloud.owner.recorded(&a.id))).then_with(|| a.id.cmp(&b.id))
    });
    // Rules share their group's id; references to that id mean the group.
    let by_id: BTreeMap<String, Address> =
        observed.iter().filter(|o| o.kind != Kind::SecurityGroupRules).map(|o| (o.id.clone(), o.address.clone())).collect();
    for resource in &mut observed {
        ids_to_addresses(&mut resource.attributes, &by_id);
    }
    Ok(Refreshed { observed, unrecorded, foreign, dns_in_use })
}

async fn read_network(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let (vpcs, gateways, addresses, nats, tables, subnets) = tokio::try_join!(
        vpc::read(cloud),
        internet_gateway::read(cloud),
        nat_gateway::read_elastic_ips(cloud),
        nat_gateway::read(cloud),
        route_table::describe(cloud),
        subnet::describe(cloud),
    )?;
    let mut observed = vpcs;
    observed.extend(gateways);
    observed.extend(addresses);
    observed.extend(nats);
    observed.extend(route_table::observe(&cloud.owner, &tables));
    observed.extend(subnet::observe(&cloud.owner, &subnets, &tables));
    Ok(observed)
}

async fn read_launch(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let (templates, configurations) = tokio::try_join!(launch_template::read(cloud), launch_configuration::read(cloud))?;
    Ok(templates.into_iter().chain(configurations).collect())
}

async fn read_groups(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let (groups, balancers) = tokio::try_join!(auto_scaling_group::read(cloud), load_balancer::read(cloud))?;
    Ok(groups.into_iter().chain(balancers).collect())
}

/// An alias record names its load balancer by DNS name: by id instead, which then becomes the
/// balancer's address like every other reference.
fn alias_balancers_by_id(observed: &mut [Observed]) {
    let by_dns: BTreeMap<String, String> = observed
        .iter()
        .filter(|o| o.kind == Kind::LoadBalancer)
        .filter_map(|o| Some((o.assigned.get("dns_name")?.trim_end_matches('.').to_ascii_lowercase(), o.id.clone())))
        .collect();
    for record in observed.iter_mut().filter(|o| o.kind == Kind::DnsRecord) {
        if let Some(id) = record.attributes["alias"].as_str().and_then(|dns| by_dns.get(dns)) {
            record.attributes["alias"] = serde_json::Value::String(id.clone());
        }
    }
}

/// Refers to resources someone else owns (`existing`: address and id, as a VPC kstack does not
/// own and its subnets) by address in what refresh found, as the model does.
pub fn refer_to_existing(observed: &mut [Observed], existing: &BTreeMap<Address, String>) {
    let by_id: BTreeMap<String, Address> = existing.iter().map(|(address, id)| (id.clone(), address.clone())).collect();
    for resource in observed {
        ids_to_addresses(&mut resource.attributes, &by_id);
    }
}

/// Replaces every string that is the id of a known resource with that resource's address.
fn ids_to_addresses(value: &mut serde_json::Value, by_id: &BTreeMap<String, Address>) {
    match value {
        serde_json::Value::String(text) => {
            if let Some(address) = by_id.get(text.as_str()) {
                *text = address.to_string();
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| ids_to_addresses(v, by_id)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| ids_to_addresses(v, by_id)),
        _ => {}
    }
}

/// Looks up the AWS id of a resource this one refers to; it was created earlier in the walk.
fn id_of<'a>(ids: &'a Ids, address: &Address) -> Result<&'a str, AwsError> {
    ids.get(address).map(String::as_str).ok_or_else(|| AwsError::internal(format!("{address} has no id yet although it was needed")))
}

/// The AWS ids of several resources, in order.
fn ids_of(ids: &Ids, addresses: &[Address]) -> Result<Vec<String>, AwsError> {
    addresses.iter().map(|a| id_of(ids, a).map(str::to_owned)).collect()
}

/// An idempotency token for one create or new version of `scope` (e.g. a launch template's
/// name, or its id and the content a new version replaces) in this kstack process. The SDK sends the same token when it retries the call, so a
/// retry after a lost reply gets the first result back instead of making a second one.
pub(crate) fn client_token(scope: &str) -> String {
    use sha2::{Digest, Sha256};
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(rand::random::<u64>);
    format!("kstack-{run:016x}-{}", &format!("{:x}", Sha256::digest(scope.as_bytes()))[..16])
}

/// For creates AWS cannot deduplicate (no client token, no unique name): the SDK retrying
/// after a lost reply would make a second resource, so kstack retries those itself, after
/// looking for the first one by its tags (`apply`).
pub(crate) fn without_retries() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default().retry_config(aws_config::retry::RetryConfig::disabled())
}

/// Creates `resource` and returns its id.
pub async fn create(cloud: &Cloud, resource: &Resource, ids: &Ids) -> Result<String, AwsError> {
    use crate::resource::Spec;
    match &resource.spec {
        Spec::Vpc(spec) => vpc::create(cloud, resource, spec).await,
        Spec::InternetGateway(spec) => internet_gateway::create(cloud, resource, spec, ids).await,
        Spec::ElasticIp(_) => nat_gateway::create_elastic_ip(cloud, resource).await,
        Spec::NatGateway(spec) => nat_gateway::create(cloud, resource, spec, ids).await,
        Spec::RouteTable(spec) => route_table::create(cloud, resource, spec, ids).await,
        Spec::Subnet(spec) => subnet::create(cloud, resource, spec, ids).await,
        Spec::SecurityGroup(spec) => security_group::create(cloud, resource, spec, ids).await,
        Spec::SecurityGroupRules(spec) => security_group::create_rules(cloud, spec, ids).await,
        Spec::IamRole(spec) => iam::create_role(cloud, resource, spec).await,
        Spec::InstanceProfile(spec) => iam::create_instance_profile(cloud, resource, spec, ids).await,
        Spec::LaunchTemplate(spec) => launch_template::create(cloud, resource, spec, ids).await,
        Spec::LaunchConfiguration(spec) => launch_configuration::create(cloud, resource, spec, ids).await,
        Spec::AutoScalingGroup(spec) => auto_scaling_group::create(cloud, resource, spec, ids).await,
        Spec::LoadBalancer(spec) => load_balancer::create(cloud, resource, spec, ids).await,
        Spec::DnsRecord(spec) => dns_record::create(cloud, resource, spec, ids).await,
    }
}

/// Brings `actual` in line with `resource`. `changed` names the attributes that differ, none
/// of which forces replacement; a launch template keeps its id and gains a version.
pub async fn update(cloud: &Cloud, resource: &Resource, actual: &Observed, changed: &[String], ids: &Ids) -> Result<(), AwsError> {
    use crate::resource::Spec;
    if changed.iter().any(|c| c == "tags") {
        retag(cloud, actual, &resource.tags).await?;
    }
    if changed.iter().all(|c| c == "tags") {
        return Ok(());
    }
    match &resource.spec {
        Spec::RouteTable(spec) => route_table::update(cloud, spec, actual, ids).await,
        Spec::Subnet(spec) => subnet::update(cloud, spec, actual, ids).await,
        Spec::SecurityGroupRules(spec) => security_group::update_rules(cloud, spec, actual, ids).await,
        Spec::IamRole(spec) => iam::update_role(cloud, spec, actual).await,
        Spec::InstanceProfile(spec) => iam::update_instance_profile(cloud, spec, actual, ids).await,
        Spec::LaunchTemplate(spec) => launch_template::update(cloud, resource, spec, actual, ids).await,
        Spec::AutoScalingGroup(spec) => auto_scaling_group::update(cloud, spec, actual, changed, ids).await,
        Spec::LoadBalancer(spec) => load_balancer::update(cloud, spec, actual, ids).await,
        Spec::DnsRecord(spec) => dns_record::update(cloud, spec, actual, ids).await,
        // Every other attribute of these forces replacement; only tags change in place.
        Spec::Vpc(_)
        | Spec::InternetGateway(_)
        | Spec::ElasticIp(_)
        | Spec::NatGateway(_)
        | Spec::SecurityGroup(_)
        | Spec::LaunchConfiguration(_) => Ok(()),
    }
}

/// Sets a resource's tags to `desired`, through its service's own tagging calls.
pub async fn retag(cloud: &Cloud, actual: &Observed, desired: &std::collections::BTreeMap<String, String>) -> Result<(), AwsError> {
    let change = tags::TagChange::between(&actual.tags, desired);
    let id = actual.id.as_str();
    match actual.kind {
        Kind::AutoScalingGroup => auto_scaling_group::retag(cloud, id, &change).await,
        Kind::LoadBalancer => load_balancer::retag(cloud, id, &change).await,
        Kind::IamRole | Kind::InstanceProfile => iam::retag(cloud, actual.kind, id, &change).await,
        // Launch configurations cannot be tagged; kstack finds them by name. A DNS record's
        // owner record never changes.
        Kind::LaunchConfiguration | Kind::DnsRecord => Ok(()),
        Kind::Vpc
        | Kind::InternetGateway
        | Kind::ElasticIp
        | Kind::NatGateway
        | Kind::RouteTable
        | Kind::Subnet
        | Kind::SecurityGroup
        | Kind::SecurityGroupRules
        | Kind::LaunchTemplate => tags::retag_ec2(cloud, id, &change).await,
    }
}

/// Deletes a resource and waits until it is gone far enough for its dependencies to go.
/// A resource already gone counts as deleted: a run killed after its delete went out leaves
/// it in state.
pub async fn delete(cloud: &Cloud, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    match delete_once(cloud, actual, ids).await {
        Err(error) if error.is_not_found() => Ok(()),
        deleted => deleted,
    }
}

async fn delete_once(cloud: &Cloud, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let id = actual.id.as_str();
    match actual.kind {
        Kind::Vpc => vpc::delete(cloud, id).await,
        Kind::InternetGateway => internet_gateway::delete(cloud, actual).await,
        Kind::ElasticIp => nat_gateway::delete_elastic_ip(cloud, id).await,
        Kind::NatGateway => nat_gateway::delete(cloud, id).await,
        Kind::RouteTable => route_table::delete(cloud, id).await,
        Kind::Subnet => subnet::delete(cloud, id).await,
        Kind::SecurityGroup => security_group::delete(cloud, id).await,
        Kind::SecurityGroupRules => security_group::delete_rules(cloud, actual, ids).await,
        Kind::IamRole => iam::delete_role(cloud, actual).await,
        Kind::InstanceProfile => iam::delete_instance_profile(cloud, actual).await,
        Kind::LaunchTemplate => launch_template::delete(cloud, id).await,
        Kind::LaunchConfiguration => launch_configuration::delete(cloud, id).await,
        Kind::AutoScalingGroup => auto_scaling_group::delete(cloud, id).await,
        Kind::LoadBalancer => load_balancer::delete(cloud, id).await,
        Kind::DnsRecord => dns_record::delete(cloud, actual).await,
    }
}

pub use dns_record::{take_over as take_over_dns_record, zone_exists as dns_zone_exists};
pub use image::{images_in_use, resolve_images, usable_by};
pub use instances::{running_instances, tag_reboot_times, Instance};
pub use launch_template::root_device;
pub use tags::from_ec2;
