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
    Vpc {
        cidr: Ipv4Net,
    },
    InternetGateway {
        vpc: Address,
    },
    ElasticIp {},
    NatGateway {
        subnet: Address,
        elastic_ip: Address,
    },
    RouteTable {
        vpc: Address,
        routes: Vec<Route>,
    },
    Subnet {
        vpc: Address,
        cidr: Ipv4Net,
        zone: String,
        map_public_ip_on_launch: bool,
        route_table: Address,
    },
    SecurityGroup {
        vpc: Address,
        description: String,
    },
    SecurityGroupRules {
        group: Address,
        ingress: Vec<RuleSpec>,
        /// `None` leaves AWS's default allow-all egress rule in place.
        egress: Option<Vec<RuleSpec>>,
    },
    IamRole {
        assume_role_policy: serde_json::Value,
        managed_policies: Vec<String>,
        inline_policies: BTreeMap<String, serde_json::Value>,
    },
    InstanceProfile {
        role: Address,
    },
    LaunchTemplate(LaunchSpec),
    LaunchConfiguration(LaunchSpec),
    AutoScalingGroup {
        min: u32,
        max: u32,
        /// The capacity kstack sets: the model's at creation and when the model's changes,
        /// else what the group has (see `plan::capacity`).
        desired: u32,
        /// The model's `desired` where the file writes one, kept in state to tell a person's
        /// change in the file from an autoscaler's change in AWS. AWS holds no such thing:
        /// never compared with it.
        asked: Option<u32>,
        subnets: Vec<Address>,
        launch: Address,
        load_balancers: Vec<Address>,
        health_check: GroupHealthCheck,
    },
    LoadBalancer {
        internal: bool,
        subnets: Vec<Address>,
        security_groups: Vec<Address>,
        listeners: Vec<Listener>,
        health_check: HealthCheck,
        connection_draining: Option<u16>,
        cross_zone: bool,
        idle_timeout: u16,
    },
    DnsRecord {
        /// The hosted zone's name, lowercase without the final dot.
        zone: String,
        /// Lowercase, without the final dot.
        name: String,
        #[serde(rename = "type")]
        record_type: RecordType,
        /// A load balancer of the environment, or `values` with their `ttl`.
        #[serde(skip_serializing_if = "Option::is_none")]
        alias: Option<Address>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u32>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        values: Vec<String>,
    },
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
            Spec::Vpc { .. } => Kind::Vpc,
            Spec::InternetGateway { .. } => Kind::InternetGateway,
            Spec::ElasticIp {} => Kind::ElasticIp,
            Spec::NatGateway { .. } => Kind::NatGateway,
            Spec::RouteTable { .. } => Kind::RouteTable,
            Spec::Subnet { .. } => Kind::Subnet,
            Spec::SecurityGroup { .. } => Kind::SecurityGroup,
            Spec::SecurityGroupRules { .. } => Kind::SecurityGroupRules,
            Spec::IamRole { .. } => Kind::IamRole,
            Spec::InstanceProfile { .. } => Kind::InstanceProfile,
            Spec::LaunchTemplate(_) => Kind::LaunchTemplate,
            Spec::LaunchConfiguration(_) => Kind::LaunchConfiguration,
            Spec::AutoScalingGroup { .. } => Kind::AutoScalingGroup,
            Spec::LoadBalancer { .. } => Kind::LoadBalancer,
            Spec::DnsRecord { .. } => Kind::DnsRecord,
        }
    }

    /// Every resource this one refers to and so must be created after.
    pub fn dependencies(&self) -> Vec<&Address> {
        match self {
            Spec::Vpc { .. } | Spec::ElasticIp {} | Spec::IamRole { .. } => Vec::new(),
            Spec::InternetGateway { vpc } | Spec::SecurityGroup { vpc, .. } => vec![vpc],
            Spec::NatGateway { subnet, elastic_ip } => vec![subnet, elastic_ip],
            Spec::RouteTable { vpc, routes } => std::iter::once(vpc).chain(routes.iter().map(|r| &r.target)).collect(),
            Spec::Subnet { vpc, route_table, .. } => vec![vpc, route_table],
            Spec::SecurityGroupRules { group, ingress, egress } => std::iter::once(group)
                .chain(ingress.iter().chain(egress.iter().flatten()).filter_map(|r| match &r.peer {
                    Peer::Group(group) => Some(group),
                    Peer::Cidr(_) => None,
                }))
                .collect(),
            Spec::InstanceProfile { role } => vec![role],
            Spec::LaunchTemplate(launch) | Spec::LaunchConfiguration(launch) => {
                launch.security_groups.iter().chain(&launch.instance_profile).collect()
            }
            Spec::AutoScalingGroup { subnets, launch, load_balancers, .. } => {
                subnets.iter().chain(std::iter::once(launch)).chain(load_balancers).collect()
            }
            Spec::LoadBalancer { subnets, security_groups, .. } => subnets.iter().chain(security_groups).collect(),
            Spec::DnsRecord { alias, .. } => alias.iter().collect(),
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
