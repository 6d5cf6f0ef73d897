//! The environment model: what one cluster in one region should look like.
//!
//! [`load`] reads `environments/<env>.yaml` (merging the files it `extends`), [`decode`]
//! turns the YAML into these types, and [`check`] finds what is inconsistent across them.
//! Every value keeps the location it was written at, so later problems can point at it.

pub mod access;
pub mod check;
pub mod decode;
pub mod image;
pub mod load;
pub mod merge;
pub mod network;
pub mod reboots;
pub mod roll_policy;
pub mod secrets;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

use crate::diagnostics::{Loc, Spanned};

pub use access::{AssumeRole, AwsAccess};
pub use load::{
    environment_from_text, load_environment, load_environment_with, locate_state, Checked, LoadedEnvironment, LocatedState, Project, Secrets,
    StateLocation,
};
pub use reboots::{RebootPolicy, RebootWindow};
pub use roll_policy::{Amount, BatchSize, PolicyOverrides, RollPolicy};
pub use secrets::{Secret, SecretSource};

/// One environment, after `extends` has been merged and every value decoded.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    /// The project's name (`kstack.yaml`), recorded in state: another project's state is refused.
    pub project: Option<String>,
    pub region: Spanned<String>,
    /// How its account is reached (`aws:`).
    pub aws: AwsAccess,
    pub variables: BTreeMap<String, Spanned<serde_json::Value>>,
    /// Values read from environment variables, for templates and roles, never shown.
    pub secrets: BTreeMap<String, Secret>,
    pub tags: BTreeMap<String, Spanned<String>>,
    pub network: Network,
    pub security_groups: Vec<SecurityGroup>,
    pub iam_roles: Vec<IamRole>,
    pub load_balancers: Vec<LoadBalancer>,
    pub node_groups: Vec<NodeGroup>,
    /// Route53 records kept in hosted zones the environment does not own.
    pub dns: Vec<DnsRecord>,
    /// Node groups rolled first, in this order; the others follow in file order.
    pub roll_order: Vec<Spanned<String>>,
    pub roll_hooks: RollHooks,
    /// Where the environment's state and lock live.
    pub state: StateBackend,
    /// The environment's reboot settings, whose `window.time_zone` and `zone_gap_minutes` hold for every group.
    pub reboots: Option<RebootPolicy>,
    /// What plans may not delete or replace unless the command names it.
    pub protect: Protection,
    /// Resources' own tags by address, in place of `tags` and the `Name` kstack gives them
    /// (resources another tool made and tagged its own way).
    pub resource_tags: Vec<(Spanned<String>, Tags)>,
    /// (kind, name) of entries that had problems of their own and were left out above.
    pub undecoded: BTreeSet<(&'static str, String)>,
}

/// Tags as written: key, and the value where it was written.
pub type Tags = BTreeMap<String, Spanned<String>>;

/// `protect:`: resources no plan deletes or replaces unless the command names each
/// (`--unprotect ADDRESS`, or `--replace ADDRESS` for a replacement asked for).
#[derive(Debug, Clone, Default)]
pub enum Protection {
    #[default]
    Nothing,
    /// `protect: true`: every resource of the environment.
    Everything,
    /// `protect: [vpc.main, elb.ingress]`: these addresses.
    Addresses(Vec<Spanned<String>>),
}

impl Protection {
    pub fn covers(&self, address: &str) -> bool {
        match self {
            Protection::Nothing => false,
            Protection::Everything => true,
            Protection::Addresses(addresses) => addresses.iter().any(|a| a.value == address),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Network {
    pub vpc: Vpc,
    pub availability_zones: Vec<Spanned<String>>,
    pub subnet_tiers: Vec<SubnetTier>,
    pub nat_gateways: NatGateways,
    pub loc: Loc,
}

/// The VPC the environment lives in.
#[derive(Debug, Clone)]
pub enum Vpc {
    /// kstack makes it with this range, and its subnets, gateways and route tables.
    Cidr(Spanned<Ipv4Net>),
    /// Someone else's (`vpc_id:`): kstack reads it and its subnets, never changes or deletes
    /// them, and puts the environment's groups, balancers and nodes in them.
    Existing(Spanned<String>),
}

/// A row of subnets, one per availability zone, sharing a routing policy.
#[derive(Debug, Clone)]
pub struct SubnetTier {
    pub name: Spanned<String>,
    pub public: bool,
    pub cidrs: SubnetCidrs,
}

#[derive(Debug, Clone)]
pub enum SubnetCidrs {
    /// Carve one block of this prefix length per zone from the VPC CIDR.
    Carved { prefix_len: Spanned<u8> },
    /// One explicit block per zone, by zone name.
    Explicit(Vec<(Spanned<String>, Spanned<Ipv4Net>)>),
    /// Subnets someone else made in a VPC kstack does not own: one id per zone.
    Existing(Vec<(Spanned<String>, Spanned<String>)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatGateways {
    /// Private subnets reach nothing outside the VPC.
    None,
    /// One NAT gateway in the first zone serves every private subnet.
    Single,
    /// One NAT gateway per zone, so losing a zone does not cut the others off.
    PerZone,
}

#[derive(Debug, Clone)]
pub struct SecurityGroup {
    pub name: Spanned<String>,
    pub description: String,
    pub ingress: Vec<Rule>,
    /// `None` keeps AWS's default of allowing all outbound traffic.
    pub egress: Option<Vec<Rule>>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub protocol: Spanned<Protocol>,
    pub ports: Option<Spanned<PortRange>>,
    pub cidrs: Vec<Spanned<Ipv4Net>>,
    /// Other security groups of this environment, by name.
    pub groups: Vec<Spanned<String>>,
    /// The group the rule belongs to, as a peer of itself.
    pub self_: bool,
    pub description: Option<String>,
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

#[derive(Debug, Clone)]
pub struct IamRole {
    pub name: Spanned<String>,
    pub assumed_by: String,
    pub managed_policies: Vec<Spanned<String>>,
    pub inline_policies: BTreeMap<String, serde_json::Value>,
    pub instance_profile: bool,
}

#[derive(Debug, Clone)]
pub struct LoadBalancer {
    pub name: Spanned<String>,
    pub internal: bool,
    pub subnets: SubnetSelection,
    pub security_groups: Vec<Spanned<String>>,
    pub listeners: Vec<Listener>,
    pub health_check: HealthCheck,
    /// Seconds in-flight requests may finish after an instance leaves; `None` turns draining off.
    pub connection_draining: Option<u16>,
    pub cross_zone: bool,
    pub idle_timeout: u16,
    /// The node groups whose instances serve this load balancer.
    pub node_groups: Vec<Spanned<String>>,
}

/// A Route53 record: an alias of one of the environment's load balancers, or plain values.
#[derive(Debug, Clone)]
pub struct DnsRecord {
    /// Its name in the model, under `dns.records`.
    pub key: Spanned<String>,
    /// The hosted zone's name, lowercase without the final dot (`dev.example.com`).
    pub zone: Spanned<String>,
    /// The record's name, lowercase without the final dot, inside the zone.
    pub name: Spanned<String>,
    pub record_type: Spanned<RecordType>,
    pub target: RecordTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum RecordType {
    A,
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
    #[allow(clippy::upper_case_acronyms)]
    CNAME,
    #[allow(clippy::upper_case_acronyms)]
    TXT,
    MX,
    #[allow(clippy::upper_case_acronyms)]
    SRV,
}

impl RecordType {
    pub const ALL: [(&'static str, RecordType); 6] = [
        ("A", RecordType::A),
        ("AAAA", RecordType::AAAA),
        ("CNAME", RecordType::CNAME),
        ("TXT", RecordType::TXT),
        ("MX", RecordType::MX),
        ("SRV", RecordType::SRV),
    ];

    pub fn as_str(self) -> &'static str {
        RecordType::ALL.iter().find(|(_, t)| *t == self).map_or("A", |(name, _)| name)
    }
}

#[derive(Debug, Clone)]
pub enum RecordTarget {
    /// A load balancer of the environment, by name.
    Alias(Spanned<String>),
    Values {
        ttl: u32,
        values: Vec<Spanned<String>>,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Listener {
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub instance_port: u16,
    pub instance_protocol: ListenerProtocol,
    pub certificate: Option<String>,
    #[serde(skip)]
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ListenerProtocol {
    Tcp,
    Ssl,
    Http,
    Https,
}

impl ListenerProtocol {
    pub fn needs_certificate(self) -> bool {
        matches!(self, ListenerProtocol::Ssl | ListenerProtocol::Https)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthCheck {
    /// In ELB's own syntax, e.g. `TCP:30080` or `HTTP:10254/healthz`.
    pub target: String,
    pub interval: u16,
    pub timeout: u16,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
    #[serde(skip)]
    pub loc: Loc,
}

/// Which subnets something is placed in: a tier, optionally narrowed to some zones.
#[derive(Debug, Clone)]
pub struct SubnetSelection {
    pub tier: Spanned<String>,
    /// Empty means every zone of the environment.
    pub zones: Vec<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub struct NodeGroup {
    pub name: Spanned<String>,
    pub min: Spanned<u32>,
    pub max: Spanned<u32>,
    pub desired: Spanned<u32>,
    /// Whether the file writes `desired:` (else it is `min`, the size at creation only).
    pub desired_written: bool,
    pub subnets: SubnetSelection,
    pub instance_type: Spanned<String>,
    pub image: Spanned<ImageRef>,
    pub security_groups: Vec<Spanned<String>>,
    pub iam_role: Option<Spanned<String>>,
    pub root_volume: RootVolume,
    pub user_data: Option<Spanned<String>>,
    pub metadata: InstanceMetadata,
    pub launch: LaunchMechanism,
    pub key_name: Option<String>,
    pub health_check: GroupHealthCheck,
    pub tags: BTreeMap<String, Spanned<String>>,
    /// Role variables for the group's nodes (`kstack provision`).
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// How fast `kstack roll` replaces the group's instances.
    pub roll: RollPolicy,
    /// When its nodes may reboot for OS updates (`kstack reboots`), if anywhere says.
    pub reboots: Option<RebootPolicy>,
}

/// Where an environment's state lives: a file under `.kstack/state/` (the default), or an
/// S3 object shared by a team, locked with S3 conditional writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBackend {
    #[default]
    Local,
    S3(S3State),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3State {
    pub bucket: String,
    /// The state object's key; its lock is `<key>.lock`.
    pub key: String,
    /// Where the state was by default before keys named the project (`kstack/<env>.json`):
    /// a state found there is reported, never taken for a new environment.
    pub legacy_key: Option<String>,
    /// The bucket's region, when not the environment's.
    pub region: String,
    /// SSE-KMS key for the state object, when not the bucket's default encryption.
    pub kms_key_id: Option<String>,
    /// How long a lock holds without renewal; a live holder renews it every third of that.
    pub lease_seconds: u64,
    /// How the bucket's account is reached, when not as the environment's (`aws:` in `state:`).
    pub access: Option<Box<AwsAccess>>,
}

/// Commands `kstack roll` runs on the machine it runs on, as minijinja templates with
/// `env`, `group` and (except `validate`) `instance` (`id`, `address`, `name`).
#[derive(Debug, Clone, Default)]
pub struct RollHooks {
    /// Must succeed for each new instance before any old one goes, e.g. `kubectl wait node`.
    pub readiness: Option<RollHook>,
    /// Runs for each old instance before it is terminated, e.g. `kubectl drain`.
    pub pre_stop: Option<RollHook>,
    /// Must succeed after each batch before the next, e.g. a cluster health check.
    pub validate: Option<RollHook>,
}

/// One roll hook: its command and how long it may run before it counts as failed (a hung
/// `kubectl wait` must not hold the surge and the lock forever).
#[derive(Debug, Clone)]
pub struct RollHook {
    pub command: Spanned<String>,
    pub timeout_seconds: u64,
}

/// How long a hook may run unless `roll_hooks` says otherwise.
pub const DEFAULT_HOOK_TIMEOUT_SECONDS: u64 = 600;

impl RollHooks {
    /// Each hook with its name, as the roll and `validate` see them.
    pub fn named(&self) -> [(&'static str, Option<&RollHook>); 3] {
        [("readiness", self.readiness.as_ref()), ("pre_stop", self.pre_stop.as_ref()), ("validate", self.validate.as_ref())]
    }
}

impl Environment {
    /// Node groups in the order `kstack roll` takes them.
    pub fn roll_sequence(&self) -> Vec<&NodeGroup> {
        let first = self.roll_order.iter().filter_map(|name| self.node_groups.iter().find(|g| g.name.value == name.value));
        let rest = self.node_groups.iter().filter(|g| !self.roll_order.iter().any(|n| n.value == g.name.value));
        first.chain(rest).collect()
    }

    /// Where its state lives, as `locate_state` finds it without loading the rest.
    pub fn state_location(&self) -> StateLocation {
        StateLocation {
            name: self.name.clone(),
            project: self.project.clone(),
            region: Some(self.region.value.clone()),
            aws: self.aws.clone(),
            state: self.state.clone(),
            protect: self.protect.clone(),
        }
    }

    /// Node groups with reboot settings: the ones `kstack reboots` schedules.
    pub fn reboot_groups(&self) -> Vec<String> {
        self.node_groups.iter().filter(|g| g.reboots.is_some()).map(|g| g.name.value.clone()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A literal AMI id.
    Ami(String),
    /// An image defined in `images/<name>.yaml`, resolved by tag at plan time.
    Named(String),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RootVolume {
    pub size_gib: u32,
    pub volume_type: String,
    pub encrypted: bool,
    pub iops: Option<u32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceMetadata {
    /// IMDSv2 only, the default: a stolen instance role cannot be reached through SSRF.
    pub require_tokens: bool,
    /// 2 lets containers with their own network namespace reach the metadata service.
    pub hop_limit: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchMechanism {
    Template,
    /// Legacy: accounts created since 2024-10-01 cannot create launch configurations.
    Configuration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupHealthCheck {
    pub elb: bool,
    pub grace_period: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roll_order_puts_its_groups_first_and_keeps_file_order_for_the_rest() {
        // The repository's own environments, two levels up from this crate.
        let project = Project { root: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..") };
        let checked = load_environment(&project, "dev").result.expect("dev is valid");
        let order: Vec<&str> = checked.environment.roll_sequence().iter().map(|g| g.name.value.as_str()).collect();
        assert_eq!(order, ["masters", "workers", "ingress"]);
        let workers = checked.environment.node_groups.iter().find(|g| g.name.value == "workers").unwrap();
        assert_eq!(workers.roll.max_surge, Amount::Percent(25));
    }
}
