//! Taking over what another tool made: resources found outside kstack (in a Terraform state,
//! or named `address=id` on the command line), matched to the addresses of the model. Pure:
//! knows nothing of AWS calls; the adoption is planned and carried out by `ops::import`.

pub mod terraform;

use std::collections::{BTreeMap, BTreeSet};

use crate::graph::ResourceGraph;
use crate::resource::{Address, Kind, Spec};

/// A resource made outside kstack, and what tells where it belongs in the model.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: Kind,
    /// The id kstack records (an ARN for IAM, a name for groups, balancers and launch
    /// configurations, `<zone id>|<name>|<type>` for a DNS record).
    pub id: String,
    /// Where it was found: its Terraform address.
    pub origin: String,
    /// Names it goes by (Terraform's resource name, its `name`, its `Name` tag).
    pub names: Vec<String>,
    pub cidr: Option<String>,
    /// A NAT gateway's subnet, and its address's allocation.
    pub subnet: Option<String>,
    pub allocation: Option<String>,
    /// A DNS record's name and type.
    pub record: Option<(String, String)>,
    /// The subnets a route table serves.
    pub subnets: Vec<String>,
}

/// A resource to adopt at an address of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    pub address: Address,
    pub kind: Kind,
    pub id: String,
    /// Its Terraform address, or `given` on the command line.
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {error}")]
    Unreadable { path: String, error: String },
    #[error("{path} is not a Terraform state file: {error}")]
    NotTerraformState { path: String, error: String },
    #[error("{path} is a Terraform state of format {version}; kstack reads format 4 (Terraform 0.12 and later)")]
    TerraformVersion { path: String, version: u32 },
    #[error("`{given}` is not ADDRESS=ID")]
    NotAPair { given: String },
    #[error("`{address}` is not an address of the model")]
    NotInModel { address: String, close: Option<String> },
}

impl crate::hint::Hint for ImportError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            ImportError::Unreadable { .. } => String::from("check the path"),
            ImportError::NotTerraformState { .. } => String::from("name the file `terraform state pull > terraform.tfstate` writes"),
            ImportError::TerraformVersion { .. } => {
                String::from("upgrade the state with a current Terraform (`terraform apply -refresh-only`), then pull it")
            }
            ImportError::NotAPair { .. } => String::from("e.g. `vpc.main=vpc-0abc123`; `kstack graph <env> --format json` lists every address"),
            ImportError::NotInModel { close, .. } => close.as_ref().map_or_else(
                || String::from("`kstack graph <env> --format json` lists every address; add the resource to the model first"),
                |close| format!("did you mean `{close}`?"),
            ),
        })
    }
}

/// `address=id` pairs given on the command line, each an address of the model.
pub fn given(pairs: &[String], desired: &ResourceGraph) -> Result<Vec<Adoption>, ImportError> {
    pairs
        .iter()
        .map(|pair| {
            let (address, id) =
                pair.split_once('=').filter(|(a, i)| !a.is_empty() && !i.is_empty()).ok_or_else(|| ImportError::NotAPair { given: pair.clone() })?;
            let address = Address::from(address);
            let Some(resource) = desired.get(&address) else {
                let close = crate::diagnostics::did_you_mean(address.as_str(), desired.in_dependency_order().map(|r| r.address.as_str()));
                return Err(ImportError::NotInModel { address: address.to_string(), close: close.map(str::to_owned) });
            };
            Ok(Adoption { kind: resource.kind(), address, id: id.to_owned(), origin: String::from("given") })
        })
        .collect()
}

/// Where each found resource belongs in the model: by what it is (a subnet by its range, a
/// route table by the subnets it serves, a NAT gateway by its subnet and its address by the
/// gateway, a DNS record by name and type), else by name (Terraform's resource name, its
/// `name` or `Name` tag equal to the model's name for it). A group's rules follow the group.
/// Each address and each resource is matched once; what matches nothing is returned apart.
pub fn match_to_model(found: &[Found], desired: &ResourceGraph, given: Vec<Adoption>) -> (Vec<Adoption>, Vec<Found>) {
    let allocations = found.iter().filter_map(|f| Some((f.id.clone(), f.allocation.clone()?))).collect();
    let mut matcher = Matcher { desired, adopted: given, by_id: BTreeMap::new(), allocations };
    for adoption in &matcher.adopted {
        matcher.by_id.insert((adoption.kind, adoption.id.clone()), adoption.address.clone());
    }
    let mut left: Vec<&Found> = found.iter().filter(|f| !matcher.by_id.contains_key(&(f.kind, f.id.clone()))).collect();
    // Kinds in an order where each can use what the ones before matched.
    for kind in [
        Kind::Vpc,
        Kind::Subnet,
        Kind::InternetGateway,
        Kind::RouteTable,
        Kind::NatGateway,
        Kind::ElasticIp,
        Kind::SecurityGroup,
        Kind::IamRole,
        Kind::InstanceProfile,
        Kind::LaunchTemplate,
        Kind::LaunchConfiguration,
        Kind::LoadBalancer,
        Kind::AutoScalingGroup,
        Kind::DnsRecord,
    ] {
        left.retain(|found| found.kind != kind || !matcher.place(found));
    }
    // A group's rules are the group's resource in AWS.
    let rules: Vec<Adoption> = matcher
        .adopted
        .iter()
        .filter(|a| a.kind == Kind::SecurityGroup)
        .filter_map(|group| {
            let address = Address::new(Kind::SecurityGroupRules, group.address.name());
            let free = desired.get(&address).is_some() && !matcher.adopted.iter().any(|a| a.address == address);
            free.then(|| Adoption { address, kind: Kind::SecurityGroupRules, id: group.id.clone(), origin: group.origin.clone() })
        })
        .collect();
    matcher.adopted.extend(rules);
    (matcher.adopted, left.into_iter().cloned().collect())
}

struct Matcher<'a> {
    desired: &'a ResourceGraph,
    adopted: Vec<Adoption>,
    /// What is matched so far, by kind and id.
    by_id: BTreeMap<(Kind, String), Address>,
    /// Each NAT gateway's address's allocation, by the gateway's id.
    allocations: BTreeMap<String, String>,
}

impl Matcher<'_> {
    /// Matches `found` to a free address of the model; whether it did.
    fn place(&mut self, found: &Found) -> bool {
        let taken: BTreeSet<&Address> = self.adopted.iter().map(|a| &a.address).collect();
        let mut free = self.desired.in_dependency_order().filter(|r| r.kind() == found.kind && !taken.contains(&r.address));
        let address_of = |id: &Option<String>, kind: Kind| id.as_ref().and_then(|id| self.by_id.get(&(kind, id.clone())));
        let chosen = match found.kind {
            Kind::Vpc => {
                let vpcs: Vec<_> = free.collect();
                vpcs.iter()
                    .find(|r| matches!(&r.spec, Spec::Vpc(v) if Some(v.cidr.to_string()) == found.cidr))
                    .or(vpcs.first())
                    .map(|r| r.address.clone())
            }
            Kind::Subnet => free.find(|r| matches!(&r.spec, Spec::Subnet(s) if Some(s.cidr.to_string()) == found.cidr)).map(|r| r.address.clone()),
            Kind::InternetGateway => free.next().map(|r| r.address.clone()),
            Kind::RouteTable => {
                // The table the model gives the subnets it serves.
                let served: BTreeSet<&Address> = found.subnets.iter().filter_map(|s| self.by_id.get(&(Kind::Subnet, s.clone()))).collect();
                let table = self.desired.in_dependency_order().find_map(|r| match &r.spec {
                    Spec::Subnet(s) if served.contains(&r.address) => Some(s.route_table.clone()),
                    _ => None,
                });
                match table {
                    Some(table) => free.find(|r| r.address == table).map(|r| r.address.clone()),
                    None => free.find(|r| named(found, r.address.name(), &r.name)).map(|r| r.address.clone()),
                }
            }
            Kind::NatGateway => {
                let subnet = address_of(&found.subnet, Kind::Subnet);
                free.find(|r| matches!(&r.spec, Spec::NatGateway(n) if Some(&n.subnet) == subnet)).map(|r| r.address.clone())
            }
            Kind::ElasticIp => {
                // The address of the gateway whose allocation it is.
                let gateway = self.adopted.iter().find(|a| a.kind == Kind::NatGateway && self.allocations.get(&a.id) == Some(&found.id));
                let eip = gateway.and_then(|g| match self.desired.get(&g.address).map(|r| &r.spec) {
                    Some(Spec::NatGateway(n)) => Some(n.elastic_ip.clone()),
                    _ => None,
                });
                free.find(|r| Some(&r.address) == eip.as_ref()).map(|r| r.address.clone())
            }
            Kind::DnsRecord => free
                .find(
                    |r| matches!(&r.spec, Spec::DnsRecord(d) if found.record.as_ref() == Some(&(d.name.clone(), d.record_type.as_str().to_owned()))),
                )
                .map(|r| r.address.clone()),
            _ => free.find(|r| named(found, r.address.name(), &r.name)).map(|r| r.address.clone()),
        };
        let Some(address) = chosen else { return false };
        self.by_id.insert((found.kind, found.id.clone()), address.clone());
        self.adopted.push(Adoption { address, kind: found.kind, id: found.id.clone(), origin: found.origin.clone() });
        true
    }
}

/// Whether any name `found` goes by is the model's name for a resource (its address's name, or
/// the name it has in AWS), letter case aside.
fn named(found: &Found, address_name: &str, aws_name: &str) -> bool {
    found.names.iter().any(|n| n.eq_ignore_ascii_case(address_name) || n.eq_ignore_ascii_case(aws_name))
}
