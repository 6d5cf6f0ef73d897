//! AWS resources as kstack wants them: what `compile` produces and `plan` compares.
//!
//! A resource refers to another by [`Address`]; those references are its dependencies, so
//! the graph's edges are derived from the specs and can never disagree with them.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{GroupHealthCheck, HealthCheck, InstanceMetadata, Listener, PortRange, Protocol, RecordType, RootVolume};

/// A resource's stable name within an environment, e.g. `subnet.private.eu-west-1a`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(String);

impl From<&str> for Address {
    fn from(text: &str) -> Address {
        Address(text.to_owned())
    }
}

impl Address {
    pub fn new(kind: Kind, name: &str) -> Address {
        Address(format!("{}.{name}", kind.prefix()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_kind(&self, kind: Kind) -> bool {
        self.0.strip_prefix(kind.prefix()).is_some_and(|rest| rest.starts_with('.'))
    }

    /// The kind its prefix names, if any.
    pub fn kind(&self) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| self.is_kind(*kind))
    }

    /// What follows the kind's prefix (`workers` of `asg.workers`).
    pub fn name(&self) -> &str {
        self.0.split_once('.').map_or(self.0.as_str(), |(_, name)| name)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Vpc,
    InternetGateway,
    ElasticIp,
    NatGateway,
    RouteTable,
    Subnet,
    SecurityGroup,
    SecurityGroupRules,
    IamRole,
    InstanceProfile,
    LaunchTemplate,
    LaunchConfiguration,
    AutoScalingGroup,
    LoadBalancer,
    DnsRecord,
}

impl Kind {
    /// The attributes a change to which cannot be made in place (terraform-provider-aws's
    /// `ForceNew`).
    pub fn forces_replacement(self, attribute: &str) -> bool {
        match self {
            Kind::Vpc => attribute == "cidr",
            Kind::InternetGateway => attribute == "vpc",
            Kind::NatGateway => true,
            Kind::ElasticIp => true,
            Kind::RouteTable => attribute == "vpc",
            Kind::Subnet => matches!(attribute, "vpc" | "cidr" | "zone"),
            Kind::SecurityGroup => true,
            Kind::SecurityGroupRules => attribute == "group",
            Kind::IamRole => false,
            Kind::InstanceProfile => false,
            Kind::LaunchTemplate => false,
            Kind::LaunchConfiguration => true,
            Kind::AutoScalingGroup => false,
            Kind::LoadBalancer => attribute == "internal",
            Kind::DnsRecord => matches!(attribute, "zone" | "name" | "type"),
        }
    }

    /// Whether a replacement makes the new one before the old goes: launch configurations are
    /// immutable and named by content, so the new one can exist beside the old, and the group
    /// moves over before the old goes.
    pub fn creates_before_destroying(self) -> bool {
        self == Kind::LaunchConfiguration
    }

    /// Launch configurations and DNS records cannot be tagged (a record's owner is told by a
    /// TXT record beside it), and security group rules are part of their group: none has tags of
    /// its own to compare or change.
    pub fn has_own_tags(self) -> bool {
        !matches!(self, Kind::LaunchConfiguration | Kind::SecurityGroupRules | Kind::DnsRecord)
    }

    /// Attributes kstack keeps in state that AWS does not hold: never compared with AWS.
    pub fn recorded_only(self) -> &'static [&'static str] {
        match self {
            Kind::AutoScalingGroup => &["asked"],
            _ => &[],
        }
    }

    pub const ALL: [Kind; 15] = [
        Kind::Vpc,
        Kind::InternetGateway,
        Kind::ElasticIp,
        Kind::NatGateway,
        Kind::RouteTable,
        Kind::Subnet,
        Kind::SecurityGroup,
        Kind::SecurityGroupRules,
        Kind::IamRole,
        Kind::InstanceProfile,
        Kind::LaunchTemplate,
        Kind::LaunchConfiguration,
        Kind::AutoScalingGroup,
        Kind::LoadBalancer,
        Kind::DnsRecord,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Vpc => "vpc",
            Kind::InternetGateway => "internet_gateway",
            Kind::ElasticIp => "elastic_ip",
            Kind::NatGateway => "nat_gateway",
            Kind::RouteTable => "route_table",
            Kind::Subnet => "subnet",
            Kind::SecurityGroup => "security_group",
            Kind::SecurityGroupRules => "security_group_rules",
            Kind::IamRole => "iam_role",
            Kind::InstanceProfile => "instance_profile",
            Kind::LaunchTemplate => "launch_template",
            Kind::LaunchConfiguration => "launch_configuration",
            Kind::AutoScalingGroup => "asg",
            Kind::LoadBalancer => "elb",
            Kind::DnsRecord => "dns_record",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub address: Address,
    /// The name the resource has in AWS (its `Name` tag where AWS has no name field).
    pub name: String,
    /// Every tag, including kstack's own `kstack:environment` and `kstack:address`.
    pub tags: BTreeMap<String, String>,
    #[serde(flatten)]
    pub spec: Spec,
    /// Resources to create first although no attribute refers to them, e.g. a group's
    /// security group rules, so its instances boot with their rules in place.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Address>,
}

impl Resource {
    /// A resource without tags or extra ordering, e.g. for tests.
    pub fn new(kind: Kind, name: &str, spec: Spec) -> Resource {
        Resource { address: Address::new(kind, name), name: name.into(), tags: BTreeMap::new(), spec, after: Vec::new() }
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// Everything this resource must be created after.
    pub fn dependencies(&self) -> impl Iterator<Item = &Address> {
        self.spec.dependencies().into_iter().chain(&self.after)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "attributes", rename_all = "snake_case")]
pub enum Spec {
    Vpc(VpcSpec),
    InternetGateway(InternetGatewaySpec),
    ElasticIp(ElasticIpSpec),
    NatGateway(NatGatewaySpec),
    RouteTable(RouteTableSpec),
    Subnet(SubnetSpec),
    SecurityGroup(SecurityGroupSpec),
    SecurityGroupRules(SecurityGroupRulesSpec),
    IamRole(IamRoleSpec),
    InstanceProfile(InstanceProfileSpec),
    LaunchTemplate(LaunchSpec),
    LaunchConfiguration(LaunchSpec),
    AutoScalingGroup(AutoScalingGroupSpec),
    LoadBalancer(LoadBalancerSpec),
    DnsRecord(DnsRecordSpec),
}

#[derive(Debug, Clone, Serialize)]
pub struct VpcSpec {
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, Serialize)]
pub struct InternetGatewaySpec {
    pub vpc: Address,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElasticIpSpec {}

#[derive(Debug, Clone, Serialize)]
pub struct NatGatewaySpec {
    pub subnet: Address,
    pub elastic_ip: Address,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteTableSpec {
    pub vpc: Address,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubnetSpec {
    pub vpc: Address,
    pub cidr: Ipv4Net,
    pub zone: String,
    pub map_public_ip_on_launch: bool,
    pub route_table: Address,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecurityGroupSpec {
    pub vpc: Address,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecurityGroupRulesSpec {
    pub group: Address,
    pub ingress: Vec<RuleSpec>,
    /// `None` leaves AWS's default allow-all egress rule in place.
    pub egress: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IamRoleSpec {
    pub assume_role_policy: serde_json::Value,
    pub managed_policies: Vec<String>,
    pub inline_policies: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceProfileSpec {
    pub role: Address,
}

#[derive(Debug, Clone, Serialize)]
pub struct AutoScalingGroupSpec {
    pub min: u32,
    pub max: u32,
    /// The capacity kstack sets: the model's at creation and when the model's changes,
    /// else what the group has (see `plan::capacity`).
    pub desired: u32,
    /// The model's `desired` where the file writes one, kept in state to tell a person's
    /// change in the file from an autoscaler's change in AWS. AWS holds no such thing:
    /// never compared with it.
    pub asked: Option<u32>,
    pub subnets: Vec<Address>,
    pub launch: Address,
    pub load_balancers: Vec<Address>,
    pub health_check: GroupHealthCheck,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancerSpec {
    pub internal: bool,
    pub subnets: Vec<Address>,
    pub security_groups: Vec<Address>,
    pub listeners: Vec<Listener>,
    pub health_check: HealthCheck,
    pub connection_draining: Option<u16>,
    pub cross_zone: bool,
    pub idle_timeout: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsRecordSpec {
    /// The hosted zone's name, lowercase without the final dot.
    pub zone: String,
    /// Lowercase, without the final dot.
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: RecordType,
    /// A load balancer of the environment, or `values` with their `ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub destination: Ipv4Net,
    /// An internet gateway or NAT gateway.
    pub target: Address,
}

/// One permission of a security group: a protocol and ports to or from one peer. Rules are
/// kept one peer each because that is how AWS stores them and how a change is applied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleSpec {
    pub protocol: Protocol,
    pub ports: Option<PortRange>,
    pub peer: Peer,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Cidr(Ipv4Net),
    Group(Address),
}

#[derive(Debug, Clone, Serialize)]
pub struct LaunchSpec {
    pub image: ImageSpec,
    pub instance_type: String,
    pub security_groups: Vec<Address>,
    pub instance_profile: Option<Address>,
    pub user_data: Option<UserData>,
    pub root_volume: RootVolume,
    pub metadata: InstanceMetadata,
    pub key_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSpec {
    Ami(String),
    /// An image of `images/`, resolved to the newest matching AMI when planning.
    Named(String),
}

/// Rendered user data. Only its hash is ever shown, serialized or logged: it may hold secrets.
#[derive(Clone, Serialize)]
pub struct UserData {
    #[serde(skip)]
    pub content: String,
    pub sha256: String,
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserData").field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

impl UserData {
    pub fn new(content: String) -> UserData {
        use sha2::{Digest, Sha256};
        let sha256 = format!("{:x}", Sha256::digest(content.as_bytes()));
        UserData { content, sha256 }
    }
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Vpc(VpcSpec { .. }) => Kind::Vpc,
            Spec::InternetGateway(InternetGatewaySpec { .. }) => Kind::InternetGateway,
            Spec::ElasticIp(ElasticIpSpec {}) => Kind::ElasticIp,
            Spec::NatGateway(NatGatewaySpec { .. }) => Kind::NatGateway,
            Spec::RouteTable(RouteTableSpec { .. }) => Kind::RouteTable,
            Spec::Subnet(SubnetSpec { .. }) => Kind::Subnet,
            Spec::SecurityGroup(SecurityGroupSpec { .. }) => Kind::SecurityGroup,
            Spec::SecurityGroupRules(SecurityGroupRulesSpec { .. }) => Kind::SecurityGroupRules,
            Spec::IamRole(IamRoleSpec { .. }) => Kind::IamRole,
            Spec::InstanceProfile(InstanceProfileSpec { .. }) => Kind::InstanceProfile,
            Spec::LaunchTemplate(_) => Kind::LaunchTemplate,
            Spec::LaunchConfiguration(_) => Kind::LaunchConfiguration,
            Spec::AutoScalingGroup(AutoScalingGroupSpec { .. }) => Kind::AutoScalingGroup,
            Spec::LoadBalancer(LoadBalancerSpec { .. }) => Kind::LoadBalancer,
            Spec::DnsRecord(DnsRecordSpec { .. }) => Kind::DnsRecord,
        }
    }

    /// Every resource this one refers to and so must be created after.
    pub fn dependencies(&self) -> Vec<&Address> {
        match self {
            Spec::Vpc(VpcSpec { .. }) | Spec::ElasticIp(ElasticIpSpec {}) | Spec::IamRole(IamRoleSpec { .. }) => Vec::new(),
            Spec::InternetGateway(InternetGatewaySpec { vpc }) | Spec::SecurityGroup(SecurityGroupSpec { vpc, .. }) => vec![vpc],
            Spec::NatGateway(NatGatewaySpec { subnet, elastic_ip }) => vec![subnet, elastic_ip],
            Spec::RouteTable(RouteTableSpec { vpc, routes }) => std::iter::once(vpc).chain(routes.iter().map(|r| &r.target)).collect(),
            Spec::Subnet(SubnetSpec { vpc, route_table, .. }) => vec![vpc, route_table],
            Spec::SecurityGroupRules(SecurityGroupRulesSpec { group, ingress, egress }) => std::iter::once(group)
                .chain(ingress.iter().chain(egress.iter().flatten()).filter_map(|r| match &r.peer {
                    Peer::Group(group) => Some(group),
                    Peer::Cidr(_) => None,
                }))
                .collect(),
            Spec::InstanceProfile(InstanceProfileSpec { role }) => vec![role],
            Spec::LaunchTemplate(launch) | Spec::LaunchConfiguration(launch) => {
                launch.security_groups.iter().chain(&launch.instance_profile).collect()
            }
            Spec::AutoScalingGroup(AutoScalingGroupSpec { subnets, launch, load_balancers, .. }) => {
                subnets.iter().chain(std::iter::once(launch)).chain(load_balancers).collect()
            }
            Spec::LoadBalancer(LoadBalancerSpec { subnets, security_groups, .. }) => subnets.iter().chain(security_groups).collect(),
            Spec::DnsRecord(DnsRecordSpec { alias, .. }) => alias.iter().collect(),
        }
    }
}

/// A resource as it exists in AWS, in the shape of its [`Spec`]: what refresh reads and state
/// records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub address: Address,
    pub kind: Kind,
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub attributes: serde_json::Value,
    /// What AWS assigned and nothing in the model sets, so never compared: a load balancer's
    /// DNS name and hosted zone (see `outputs.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assigned: BTreeMap<String, String>,
}
