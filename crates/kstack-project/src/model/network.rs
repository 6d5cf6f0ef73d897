//! Lays out subnets: one per tier and zone, explicit or carved from the VPC CIDR, or the
//! subnets someone else made in a VPC kstack does not own.
//!
//! Carving is deterministic: explicit blocks are reserved first, then each carved tier, in
//! file order, takes for each zone (in the order listed) the lowest free aligned block of its
//! prefix length. Adding a tier or zone at the end never moves an existing subnet.

use ipnet::Ipv4Net;

use super::{Network, SubnetCidrs, Vpc};
use crate::diagnostics::{Loc, Problems};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetLayout {
    pub tier: String,
    pub zone: String,
    pub place: SubnetPlace,
    pub public: bool,
    pub loc: Loc,
}

/// Where a subnet is: a block kstack makes it with, or someone else's subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetPlace {
    Block(Ipv4Net),
    Existing(String),
}

impl SubnetLayout {
    /// The block of a subnet kstack makes.
    pub fn block(&self) -> Option<Ipv4Net> {
        match &self.place {
            SubnetPlace::Block(cidr) => Some(*cidr),
            SubnetPlace::Existing(_) => None,
        }
    }
}

pub fn layout(network: &Network, problems: &mut Problems) -> Vec<SubnetLayout> {
    let vpc = match &network.vpc {
        Vpc::Cidr(cidr) => cidr,
        Vpc::Existing(_) => return existing(network),
    };
    let (vpc, vpc_line) = (vpc.value, vpc.loc.line);
    let mut subnets: Vec<SubnetLayout> = Vec::new();
    for tier in &network.subnet_tiers {
        let SubnetCidrs::Explicit(blocks) = &tier.cidrs else {
            continue;
        };
        for zone in &network.availability_zones {
            match blocks.iter().find(|(z, _)| z.value == zone.value) {
                Some((_, cidr)) => subnets.push(SubnetLayout {
                    tier: tier.name.value.clone(),
                    zone: zone.value.clone(),
                    place: SubnetPlace::Block(cidr.value),
                    public: tier.public,
                    loc: cidr.loc,
                }),
                None => {
                    problems
                        .error(tier.name.loc, format!("subnet tier `{}` has no CIDR for zone `{}`", tier.name.value, zone.value))
                        .hint(format!("add `{}: <cidr>` under this tier's `cidrs`", zone.value));
                }
            }
        }
        for (zone, _) in blocks {
            if !network.availability_zones.iter().any(|z| z.value == zone.value) {
                problems
                    .error(zone.loc, format!("zone `{}` is not one of the environment's availability zones", zone.value))
                    .label("unknown zone")
                    .hint(crate::diagnostics::expected_one_of(&zone.value, &zone_names(network)));
            }
        }
    }
    check_explicit(vpc, vpc_line, &subnets, problems);

    for tier in &network.subnet_tiers {
        let SubnetCidrs::Carved { prefix_len } = &tier.cidrs else {
            continue;
        };
        if prefix_len.value < vpc.prefix_len() {
            problems
                .error(prefix_len.loc, format!("a /{} subnet cannot fit in the /{} VPC", prefix_len.value, vpc.prefix_len()))
                .hint(format!("use a prefix length of {} or more", vpc.prefix_len()));
            continue;
        }
        for zone in &network.availability_zones {
            let taken: Vec<Ipv4Net> = subnets.iter().filter_map(SubnetLayout::block).collect();
            let free = vpc.subnets(prefix_len.value).ok().and_then(|mut blocks| blocks.find(|b| !taken.iter().any(|t| overlaps(*t, *b))));
            match free {
                Some(cidr) => subnets.push(SubnetLayout {
                    tier: tier.name.value.clone(),
                    zone: zone.value.clone(),
                    place: SubnetPlace::Block(cidr),
                    public: tier.public,
                    loc: prefix_len.loc,
                }),
                None => {
                    problems
                        .error(
                            prefix_len.loc,
                            format!("no free /{} left in {} for tier `{}` in zone `{}`", prefix_len.value, vpc, tier.name.value, zone.value),
                        )
                        .label("VPC CIDR exhausted")
                        .hint("use a longer prefix length here, or a larger VPC CIDR");
                    break;
                }
            }
        }
    }
    subnets
}

/// The subnets of a VPC someone else owns, as the environment names them.
fn existing(network: &Network) -> Vec<SubnetLayout> {
    let mut subnets = Vec::new();
    for tier in &network.subnet_tiers {
        let SubnetCidrs::Existing(ids) = &tier.cidrs else { continue };
        for (zone, id) in ids {
            let place = SubnetPlace::Existing(id.value.clone());
            subnets.push(SubnetLayout { tier: tier.name.value.clone(), zone: zone.value.clone(), place, public: tier.public, loc: id.loc });
        }
    }
    subnets
}

fn zone_names(network: &Network) -> Vec<&str> {
    network.availability_zones.iter().map(|z| z.value.as_str()).collect()
}

fn check_explicit(vpc: Ipv4Net, vpc_line: usize, subnets: &[SubnetLayout], problems: &mut Problems) {
    let blocks: Vec<(&SubnetLayout, Ipv4Net)> = subnets.iter().filter_map(|s| Some((s, s.block()?))).collect();
    for (i, (subnet, cidr)) in blocks.iter().enumerate() {
        if !vpc.contains(cidr) {
            problems
                .error(subnet.loc, format!("subnet {cidr} is outside the VPC CIDR {vpc}"))
                .label("outside the VPC")
                .hint(format!("choose a block inside {vpc}, declared at line {vpc_line}"));
        }
        if let Some((other, other_cidr)) = blocks[..i].iter().find(|(_, o)| overlaps(*o, *cidr)) {
            problems
                .error(subnet.loc, format!("subnet {cidr} overlaps subnet {other_cidr} ({} in {})", other.tier, other.zone))
                .label("overlapping block")
                .hint(format!("subnets must not share addresses; the other block is on line {}", other.loc.line));
        }
        if cidr.prefix_len() > 28 {
            problems.error(subnet.loc, format!("subnet {cidr} is smaller than AWS allows")).hint("AWS subnets are /16 to /28");
        }
    }
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Spanned;
    use crate::model::{NatGateways, SubnetTier};

    fn at() -> Loc {
        Loc { source: 0, line: 1, column: 1, len: 1 }
    }

    fn network(tiers: Vec<SubnetTier>) -> Network {
        Network {
            vpc: Vpc::Cidr(Spanned::new("10.0.0.0/16".parse().unwrap(), at())),
            availability_zones: ["a", "b"].iter().map(|z| Spanned::new(z.to_string(), at())).collect(),
            subnet_tiers: tiers,
            nat_gateways: NatGateways::None,
            loc: at(),
        }
    }

    fn carved(name: &str, prefix: u8) -> SubnetTier {
        SubnetTier { name: Spanned::new(name.into(), at()), public: false, cidrs: SubnetCidrs::Carved { prefix_len: Spanned::new(prefix, at()) } }
    }

    #[test]
    fn carving_skips_explicit_blocks_and_packs_in_order() {
        let explicit = SubnetTier {
            name: Spanned::new("db".into(), at()),
            public: false,
            cidrs: SubnetCidrs::Explicit(vec![
                (Spanned::new("a".into(), at()), Spanned::new("10.0.0.0/24".parse().unwrap(), at())),
                (Spanned::new("b".into(), at()), Spanned::new("10.0.1.0/24".parse().unwrap(), at())),
            ]),
        };
        let mut problems = Problems::default();
        let subnets = layout(&network(vec![carved("private", 20), explicit, carved("public", 24)]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let cidrs: Vec<String> = subnets.iter().map(|s| format!("{}:{}:{}", s.tier, s.zone, s.block().unwrap())).collect();
        assert_eq!(
            cidrs,
            [
                "db:a:10.0.0.0/24",
                "db:b:10.0.1.0/24",
                "private:a:10.0.16.0/20",
                "private:b:10.0.32.0/20",
                "public:a:10.0.2.0/24",
                "public:b:10.0.3.0/24",
            ]
        );
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut problems = Problems::default();
        layout(&network(vec![carved("big", 17), carved("more", 17)]), &mut problems);
        assert_eq!(problems.len(), 1);
    }
}
