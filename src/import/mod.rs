//! Taking over what another tool made: resources found outside kstack (in a Terraform state,
//! or named `address=id` on the command line), matched to the addresses of the model. Pure:
//! knows nothing of AWS calls; the adoption is planned and carried out by `ops::import`.

pub mod ansible;
pub mod generate;
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

/// Where each found resource belongs in the model of `environment`: by what it is (a subnet
/// by its range, a route table by the subnets it serves, a NAT gateway by its subnet and its
/// address by the gateway, a DNS record by name and type), else by name (Terraform's resource
/// name, its `name` or `Name` tag equal to the model's name for it, alone or after
/// `<environment>-`). A group's rules follow the group. Each address and each resource is
/// matched once; what matches nothing is returned apart.
pub fn match_to_model(found: &[Found], desired: &ResourceGraph, given: Vec<Adoption>, environment: &str) -> (Vec<Adoption>, Vec<Found>) {
    let allocations = found.iter().filter_map(|f| Some((f.id.clone(), f.allocation.clone()?))).collect();
    let mut matcher = Matcher { desired, environment, adopted: given, by_id: BTreeMap::new(), allocations };
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
    environment: &'a str,
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
                    None => free.find(|r| named(found, self.environment, r.address.name(), &r.name)).map(|r| r.address.clone()),
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
            _ => free.find(|r| named(found, self.environment, r.address.name(), &r.name)).map(|r| r.address.clone()),
        };
        let Some(address) = chosen else { return false };
        self.by_id.insert((found.kind, found.id.clone()), address.clone());
        self.adopted.push(Adoption { address, kind: found.kind, id: found.id.clone(), origin: found.origin.clone() });
        true
    }
}

/// Whether any name `found` goes by is the model's name for a resource (its address's name,
/// alone or after `<environment>-`, or the name it has in AWS), letter case aside, and with
/// or without the `-<8 hex digits>` an identity's short form ends a name kstack gave with
/// (a state lost, its resources taken over again).
fn named(found: &Found, environment: &str, address_name: &str, aws_name: &str) -> bool {
    let prefixed = format!("{environment}-{address_name}");
    let without_short = |name: &str| match name.rsplit_once('-') {
        Some((front, short)) if short.len() == 8 && short.bytes().all(|b| b.is_ascii_hexdigit()) => front.to_owned(),
        _ => name.to_owned(),
    };
    let wanted = [address_name, prefixed.as_str(), aws_name];
    found.names.iter().flat_map(|n| [n.clone(), without_short(n)]).any(|n| wanted.iter().any(|w| n.eq_ignore_ascii_case(w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Problems;
    use crate::model::{load_environment, Project};

    fn dev() -> ResourceGraph {
        let project = Project { root: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")) };
        let checked = load_environment(&project, "dev").result.unwrap_or_else(|problems| panic!("{problems:?}"));
        crate::compile::compile(&checked, &mut Problems::default()).unwrap()
    }

    fn found(kind: Kind, id: &str, names: &[&str]) -> Found {
        Found {
            kind,
            id: id.to_owned(),
            origin: format!("tf.{id}"),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            cidr: None,
            subnet: None,
            allocation: None,
            record: None,
            subnets: Vec::new(),
        }
    }

    #[test]
    fn resources_match_by_what_they_are_then_by_name_and_rules_follow_their_group() {
        let graph = dev();
        let subnet_cidr = |address: &str| match &graph.get(&Address::from(address)).unwrap().spec {
            Spec::Subnet(s) => s.cidr.to_string(),
            other => panic!("not a subnet: {other:?}"),
        };
        let found = vec![
            Found { cidr: Some(subnet_cidr("subnet.private.eu-west-1b")), ..found(Kind::Subnet, "subnet-b", &["whatever"]) },
            Found { cidr: Some(subnet_cidr("subnet.public.eu-west-1a")), ..found(Kind::Subnet, "subnet-a", &[]) },
            Found { subnets: vec![String::from("subnet-b")], ..found(Kind::RouteTable, "rtb-1", &["main-private"]) },
            Found { subnet: Some(String::from("subnet-a")), allocation: Some(String::from("eipalloc-1")), ..found(Kind::NatGateway, "nat-1", &[]) },
            found(Kind::ElasticIp, "eipalloc-1", &[]),
            found(Kind::SecurityGroup, "sg-1", &["dev-workers-0badc0de"]),
            found(Kind::LoadBalancer, "legacy-lb", &["legacy"]),
            found(Kind::AutoScalingGroup, "tf-masters", &["dev-masters"]),
        ];
        let given = given(&[String::from("asg.workers=hand-made")], &graph).unwrap();
        let (adopted, left) = match_to_model(&found, &graph, given, "dev");
        let adopted: Vec<(String, String)> = adopted.iter().map(|a| (a.address.to_string(), a.id.clone())).collect();
        for pair in [
            ("asg.workers", "hand-made"),
            ("subnet.private.eu-west-1b", "subnet-b"),
            ("subnet.public.eu-west-1a", "subnet-a"),
            ("route_table.private", "rtb-1"),
            ("nat_gateway.eu-west-1a", "nat-1"),
            ("elastic_ip.nat.eu-west-1a", "eipalloc-1"),
            ("security_group.workers", "sg-1"),
            ("security_group_rules.workers", "sg-1"),
            ("asg.masters", "tf-masters"),
        ] {
            assert!(adopted.contains(&(pair.0.to_owned(), pair.1.to_owned())), "{pair:?} in {adopted:?}");
        }
        assert_eq!(adopted.len(), 9, "{adopted:?}");
        assert_eq!(left.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), ["legacy-lb"], "a name the model does not use matches nothing");
        assert!(
            matches!(super::given(&[String::from("vpc.mian=vpc-1")], &graph), Err(ImportError::NotInModel { close: Some(c), .. }) if c == "vpc.main")
        );
        assert!(matches!(super::given(&[String::from("vpc.main")], &graph), Err(ImportError::NotAPair { .. })));
    }
}
