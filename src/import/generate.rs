//! An environment file written from what exists (`kstack generate`): the network with its
//! tiers (carved where carving gives the same ranges, explicit blocks where not), security groups
//! and their rules, IAM roles, node groups with their launch settings and user data, and
//! load balancers, as a person would write them; a comment where something cannot be said.
//! Pure: it writes what it is given, read by refresh as if state recorded it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use ipnet::Ipv4Net;

use super::Found;
use crate::diagnostics::{Loc, Problems, Spanned};
use crate::model::network::layout;
use crate::model::{NatGateways, Network, SubnetCidrs, SubnetTier, Vpc};
use crate::resource::{Kind, Observed, Peer, RuleSpec};

/// What exists, as refresh read it: each resource at `<kind>.<id>`, its references as those
/// addresses; the names each goes by; a launch template's or configuration's user data.
pub struct Existing<'a> {
    pub environment: &'a str,
    pub region: &'a str,
    /// How it was found, for the header (`--vpc vpc-0abc`).
    pub source: &'a str,
    pub observed: &'a [Observed],
    pub found: &'a [Found],
    pub user_data: &'a BTreeMap<String, String>,
}

/// The environment file's text.
pub fn environment_yaml(existing: &Existing<'_>) -> String {
    Writer::new(existing).write()
}

/// The peers of rules that share protocol, ports and description.
#[derive(Default)]
struct Peers {
    cidrs: Vec<String>,
    groups: Vec<String>,
    itself: bool,
}

struct Writer<'a> {
    existing: &'a Existing<'a>,
    by_address: BTreeMap<&'a str, &'a Observed>,
    /// The model's name for each resource, by its address here.
    names: BTreeMap<String, String>,
    /// Each subnet's tier, by its address here.
    tiers: BTreeMap<String, String>,
    out: String,
}

/// A name as the model writes it: lowercase letters, digits and `-`, without the
/// environment's prefix or an identity's short form at the end.
fn model_name(environment: &str, name: &str) -> String {
    let mut name = name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect::<String>();
    if let Some(rest) = name.strip_prefix(&format!("{environment}-")).filter(|r| !r.is_empty()) {
        name = rest.to_owned();
    }
    if let Some((front, short)) = name.rsplit_once('-') {
        if short.len() == 8 && short.bytes().all(|b| b.is_ascii_hexdigit()) && !front.is_empty() {
            name = front.to_owned();
        }
    }
    name.trim_matches('-').to_owned()
}

/// `resource_tags:` for resources whose tags differ from what the model gives them.
pub fn resource_tags_yaml(own: &[(crate::resource::Address, BTreeMap<String, String>)]) -> String {
    if own.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# The tags these carry, in place of `tags:` and the `Name` kstack would give them.\nresource_tags:\n");
    for (address, tags) in own {
        let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{}: {}", scalar(k), quoted(v))).collect();
        let _ = writeln!(out, "  {address}: {{ {} }}", pairs.join(", "));
    }
    out
}

/// A tier of subnets as found: its blocks by zone, in the zones' order.
struct Tier {
    name: String,
    public: bool,
    blocks: Vec<(String, Ipv4Net)>,
}

/// Each tier's prefix length, when carving the VPC's range tier by tier in this order (as
/// `kstack validate` lays subnets out) gives exactly the blocks that exist: a person writes
/// `prefix_length` then, not the blocks.
fn carving(vpc: Ipv4Net, zones: &[String], tiers: &[Tier]) -> Option<Vec<u8>> {
    let at = Loc { source: 0, line: 1, column: 1, len: 1 };
    let mut prefixes = Vec::new();
    for tier in tiers {
        let prefix = tier.blocks.first()?.1.prefix_len();
        if tier.blocks.len() != zones.len() || tier.blocks.iter().any(|(_, block)| block.prefix_len() != prefix) {
            return None;
        }
        prefixes.push(prefix);
    }
    let network = Network {
        vpc: Vpc::Cidr(Spanned::new(vpc, at)),
        availability_zones: zones.iter().map(|z| Spanned::new(z.clone(), at)).collect(),
        subnet_tiers: tiers
            .iter()
            .zip(&prefixes)
            .map(|(tier, prefix)| SubnetTier {
                name: Spanned::new(tier.name.clone(), at),
                public: tier.public,
                cidrs: SubnetCidrs::Carved { prefix_len: Spanned::new(*prefix, at) },
            })
            .collect(),
        nat_gateways: NatGateways::None,
        loc: at,
    };
    let mut problems = Problems::default();
    let laid = layout(&network, &mut problems);
    let same = tiers
        .iter()
        .all(|tier| tier.blocks.iter().all(|(zone, block)| laid.iter().any(|l| l.tier == tier.name && &l.zone == zone && l.block() == Some(*block))));
    (problems.is_empty() && same).then_some(prefixes)
}

/// `base`, or `base-2`, `base-3`, ... : the first that is not `taken`.
fn unique(base: &str, taken: impl Fn(&str) -> bool) -> String {
    (1..).map(|n| if n == 1 { base.to_owned() } else { format!("{base}-{n}") }).find(|name| !taken(name)).unwrap_or_else(|| base.to_owned())
}

/// A string as YAML reads it back unchanged (JSON's double-quoted form is YAML).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// A plain scalar where YAML reads it back as the same string, else quoted.
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        && !text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && !matches!(text, "true" | "false" | "yes" | "no" | "null" | "on" | "off");
    if plain {
        text.to_owned()
    } else {
        quoted(text)
    }
}

impl<'a> Writer<'a> {
    fn new(existing: &'a Existing<'a>) -> Writer<'a> {
        let by_address = existing.observed.iter().map(|o| (o.address.as_str(), o)).collect();
        let mut writer = Writer { existing, by_address, names: BTreeMap::new(), tiers: BTreeMap::new(), out: String::new() };
        writer.name_everything();
        writer
    }

    fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &'a Observed> + '_ {
        self.existing.observed.iter().filter(move |o| o.kind == kind)
    }

    /// The name found for a resource: its first name, or its id.
    fn found_name(&self, observed: &Observed) -> String {
        let found = self.existing.found.iter().find(|f| f.kind == observed.kind && f.id == observed.id);
        let name = found.and_then(|f| f.names.iter().find(|n| !n.is_empty())).cloned().or_else(|| observed.tags.get("Name").cloned());
        model_name(self.existing.environment, &name.unwrap_or_else(|| observed.id.rsplit('/').next().unwrap_or(&observed.id).to_owned()))
    }

    fn name_everything(&mut self) {
        let mut taken: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
        for kind in [Kind::SecurityGroup, Kind::IamRole, Kind::AutoScalingGroup, Kind::LoadBalancer] {
            for observed in self.of_kind(kind).collect::<Vec<_>>() {
                let base = self.found_name(observed);
                let used = taken.entry(kind).or_default();
                let name = unique(&base, |n| used.contains(n));
                used.insert(name.clone());
                self.names.insert(observed.address.to_string(), name);
            }
        }
        // A subnet is public when its route table sends the internet to an internet gateway.
        let public = |subnet: &Observed| {
            let table = subnet.attributes["route_table"].as_str().and_then(|t| self.by_address.get(t));
            table.is_some_and(|t| {
                t.attributes["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["target"].as_str().is_some_and(|x| x.starts_with("internet_gateway.")))
            })
        };
        let mut per_tier_zone: BTreeSet<(String, String)> = BTreeSet::new();
        let mut subnets: Vec<&Observed> = self.of_kind(Kind::Subnet).collect();
        subnets.sort_by_key(|s| s.attributes["cidr"].as_str().map(str::to_owned));
        for subnet in subnets {
            let base = if public(subnet) { "public" } else { "private" };
            let zone = subnet.attributes["zone"].as_str().unwrap_or_default().to_owned();
            let tier = unique(base, |t| per_tier_zone.contains(&(t.to_owned(), zone.clone())));
            per_tier_zone.insert((tier.clone(), zone));
            self.tiers.insert(subnet.address.to_string(), tier);
        }
    }

    fn name_of(&self, address: &str) -> String {
        self.names.get(address).cloned().unwrap_or_else(|| address.to_owned())
    }

    fn write(mut self) -> String {
        let e = self.existing;
        let _ = writeln!(self.out, "# Written by `kstack generate {} {}` from what runs in {}.", e.environment, e.source, e.region);
        let _ = writeln!(self.out, "# Review it, then `kstack import {} {}` adopts what it describes.", e.environment, e.source);
        let _ = writeln!(self.out, "region: {}\n", scalar(e.region));
        self.tags();
        self.network();
        self.security_groups();
        self.iam_roles();
        self.load_balancers();
        self.node_groups();
        self.dns();
        self.out
    }

    /// Records, in the zone most of them are in unless they name theirs; each keyed by its
    /// name within its zone.
    fn dns(&mut self) {
        let records: Vec<&Observed> = self.of_kind(Kind::DnsRecord).collect();
        let mut by_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for record in &records {
            *by_zone.entry(record.attributes["zone"].as_str().unwrap_or_default()).or_default() += 1;
        }
        let Some((zone, _)) = by_zone.iter().max_by_key(|(_, count)| **count) else { return };
        let _ = writeln!(self.out, "\ndns:\n  zone: {}\n  records:", scalar(zone));
        let mut keys = BTreeSet::new();
        for record in records {
            let a = &record.attributes;
            let (name, record_zone) = (a["name"].as_str().unwrap_or_default(), a["zone"].as_str().unwrap_or_default());
            let relative = name.strip_suffix(record_zone).unwrap_or(name).trim_end_matches('.');
            let base = model_name(self.existing.environment, &relative.replace('*', "wildcard").replace('.', "-"));
            let base = if base.is_empty() { String::from("apex") } else { base };
            let key = unique(&base, |k| keys.contains(k));
            keys.insert(key.clone());
            let mut parts = vec![format!("name: {}", quoted(name)), format!("type: {}", a["type"].as_str().unwrap_or("A"))];
            match a["alias"].as_str() {
                Some(balancer) => parts.push(format!("alias: {}", self.name_of(balancer))),
                None => {
                    parts.push(format!("ttl: {}", a["ttl"]));
                    let values: Vec<String> = a["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(quoted)).collect();
                    parts.push(format!("values: [{}]", values.join(", ")));
                }
            }
            if record_zone != *zone {
                parts.push(format!("zone: {}", scalar(record_zone)));
            }
            let _ = writeln!(self.out, "    {key}: {{ {} }}", parts.join(", "));
        }
    }

    /// The VPC's tags (`Name`, kstack's and AWS's aside) as the environment's `tags:`, which
    /// kstack puts on everything: a resource without one gets it.
    fn tags(&mut self) {
        let Some(vpc) = self.of_kind(Kind::Vpc).next() else { return };
        let common: Vec<(&String, &String)> =
            vpc.tags.iter().filter(|(k, _)| *k != "Name" && !k.starts_with("kstack:") && !k.starts_with("aws:")).collect();
        if common.is_empty() {
            return;
        }
        self.out.push_str("tags:\n");
        for (key, value) in common {
            let _ = writeln!(self.out, "  {}: {}", scalar(key), quoted(value));
        }
        self.out.push('\n');
    }

    fn network(&mut self) {
        let Some(vpc) = self.of_kind(Kind::Vpc).next() else {
            let _ = writeln!(self.out, "# No VPC was found: describe the network by hand.\nnetwork: {{}}\n");
            return;
        };
        let subnets: Vec<&Observed> = self.of_kind(Kind::Subnet).collect();
        let nats: Vec<&Observed> = self.of_kind(Kind::NatGateway).collect();
        let mut zones: Vec<String> =
            subnets.iter().filter_map(|s| s.attributes["zone"].as_str().map(str::to_owned)).collect::<BTreeSet<_>>().into_iter().collect();
        let nat_zones: Vec<String> = nats
            .iter()
            .filter_map(|n| n.attributes["subnet"].as_str().and_then(|s| self.by_address.get(s)))
            .filter_map(|s| s.attributes["zone"].as_str().map(str::to_owned))
            .collect();
        let nat_gateways = match nats.len() {
            0 => "none",
            1 => {
                // The model puts a single NAT gateway in the first zone.
                zones.sort_by_key(|z| Some(z) != nat_zones.first());
                "single"
            }
            n if n == zones.len() => "per_zone",
            _ => "per_zone  # differs: AWS has a NAT gateway in some zones only",
        };
        let _ = writeln!(self.out, "network:\n  vpc_cidr: {}", vpc.attributes["cidr"].as_str().unwrap_or_default());
        let _ = writeln!(self.out, "  availability_zones: [{}]", zones.join(", "));
        let _ = writeln!(self.out, "  nat_gateways: {nat_gateways}\n  subnets:");
        let mut names: Vec<String> = self.tiers.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        names.sort_by_key(|t| (!t.starts_with("public"), t.clone()));
        let tiers: Vec<Tier> = names
            .into_iter()
            .map(|name| {
                let mut blocks: Vec<(String, Ipv4Net)> = subnets
                    .iter()
                    .filter(|s| self.tiers.get(s.address.as_str()) == Some(&name))
                    .filter_map(|s| Some((s.attributes["zone"].as_str()?.to_owned(), s.attributes["cidr"].as_str()?.parse().ok()?)))
                    .collect();
                blocks.sort_by_key(|(zone, _)| zones.iter().position(|z| z == zone));
                Tier { public: name.starts_with("public"), name, blocks }
            })
            .collect();
        let carved = vpc.attributes["cidr"].as_str().and_then(|c| c.parse().ok()).and_then(|vpc| carving(vpc, &zones, &tiers));
        for (i, tier) in tiers.iter().enumerate() {
            let kind = if tier.public { "public" } else { "private" };
            let _ = writeln!(self.out, "    {}:\n      type: {kind}", tier.name);
            match &carved {
                Some(prefixes) => {
                    let _ = writeln!(self.out, "      prefix_length: {}", prefixes[i]);
                }
                None => {
                    self.out.push_str("      cidrs:\n");
                    for (zone, cidr) in &tier.blocks {
                        let _ = writeln!(self.out, "        {zone}: {cidr}");
                    }
                }
            }
        }
        self.out.push('\n');
    }

    fn security_groups(&mut self) {
        let groups: Vec<&Observed> = self.of_kind(Kind::SecurityGroup).collect();
        if groups.is_empty() {
            return;
        }
        self.out.push_str("security_groups:\n");
        for group in groups {
            let name = self.name_of(group.address.as_str());
            let _ = writeln!(self.out, "  {name}:\n    description: {}", quoted(group.attributes["description"].as_str().unwrap_or_default()));
            let rules = self.of_kind(Kind::SecurityGroupRules).find(|r| r.id == group.id);
            for direction in ["ingress", "egress"] {
                let Some(list) = rules.and_then(|r| r.attributes[direction].as_array()) else { continue };
                let specs: Vec<RuleSpec> = list.iter().filter_map(|r| serde_json::from_value(r.clone()).ok()).collect();
                if specs.is_empty() {
                    continue;
                }
                let _ = writeln!(self.out, "    {direction}:");
                for line in self.rules(group.address.as_str(), &specs) {
                    let _ = writeln!(self.out, "      - {line}");
                }
            }
        }
        self.out.push('\n');
    }

    /// Rules of one protocol, ports and description written as one, their peers together.
    fn rules(&self, own: &str, specs: &[RuleSpec]) -> Vec<String> {
        let mut merged: BTreeMap<(String, Option<String>, Option<String>), Peers> = BTreeMap::new();
        for spec in specs {
            let protocol = serde_json::to_value(spec.protocol).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let ports = spec.ports.map(|p| if p.from == p.to { p.from.to_string() } else { format!("{}-{}", p.from, p.to) });
            let entry = merged.entry((protocol, ports, spec.description.clone())).or_default();
            match &spec.peer {
                Peer::Cidr(cidr) => entry.cidrs.push(cidr.to_string()),
                Peer::Group(group) if group.as_str() == own => entry.itself = true,
                Peer::Group(group) => entry.groups.push(self.name_of(group.as_str())),
            }
        }
        merged
            .into_iter()
            .map(|((protocol, ports, description), Peers { cidrs, groups, itself })| {
                let mut parts = vec![format!("protocol: {protocol}")];
                parts.extend(ports.map(|p| format!("ports: {p}")));
                if !cidrs.is_empty() {
                    parts.push(format!("cidrs: [{}]", cidrs.join(", ")));
                }
                if !groups.is_empty() {
                    parts.push(format!("groups: [{}]", groups.join(", ")));
                }
                if itself {
                    parts.push(String::from("self: true"));
                }
                parts.extend(description.map(|d| format!("description: {}", quoted(&d))));
                format!("{{ {} }}", parts.join(", "))
            })
            .collect()
    }

    fn iam_roles(&mut self) {
        let roles: Vec<&Observed> = self.of_kind(Kind::IamRole).collect();
        if roles.is_empty() {
            return;
        }
        self.out.push_str("iam_roles:\n");
        for role in roles {
            let _ = writeln!(self.out, "  {}:", self.name_of(role.address.as_str()));
            let statement = &role.attributes["assume_role_policy"]["Statement"];
            match statement[0]["Principal"]["Service"].as_str() {
                Some(service) if statement.as_array().is_some_and(|s| s.len() == 1) => {
                    if service != "ec2.amazonaws.com" {
                        let _ = writeln!(self.out, "    assumed_by: {}", scalar(service));
                    }
                }
                _ => {
                    let _ = writeln!(self.out, "    # Its trust policy is not one service's: kstack writes one, assumed by ec2.amazonaws.com.");
                }
            }
            if let Some(managed) = role.attributes["managed_policies"].as_array().filter(|m| !m.is_empty()) {
                let arns: Vec<String> = managed.iter().filter_map(|m| m.as_str().map(quoted)).collect();
                let _ = writeln!(self.out, "    managed_policies: [{}]", arns.join(", "));
            }
            if let Some(inline) = role.attributes["inline_policies"].as_object().filter(|i| !i.is_empty()) {
                self.out.push_str("    inline_policies:\n");
                for (name, document) in inline {
                    let _ = writeln!(self.out, "      {}: {}", scalar(name), document);
                }
            }
        }
        self.out.push('\n');
    }

    /// The tier of a set of subnets (by address here), and its zones when not all of them.
    fn subnet_selection(&self, subnets: &[Value]) -> String {
        let tiers: BTreeSet<&String> = subnets.iter().filter_map(|s| s.as_str().and_then(|s| self.tiers.get(s))).collect();
        match tiers.into_iter().next() {
            Some(tier) => {
                let all = self.tiers.values().filter(|t| *t == tier).count();
                if all == subnets.len() {
                    tier.clone()
                } else {
                    let zones: Vec<&str> = subnets
                        .iter()
                        .filter_map(|s| s.as_str().and_then(|s| self.by_address.get(s)))
                        .filter_map(|s| s.attributes["zone"].as_str())
                        .collect();
                    format!("{{ tier: {tier}, zones: [{}] }}", zones.join(", "))
                }
            }
            None => String::from("private  # its subnets were not found in the VPC"),
        }
    }

    fn names_of(&self, addresses: &Value) -> Vec<String> {
        addresses.as_array().into_iter().flatten().filter_map(|a| a.as_str()).map(|a| self.name_of(a)).collect()
    }

    fn load_balancers(&mut self) {
        let balancers: Vec<&Observed> = self.of_kind(Kind::LoadBalancer).collect();
        if balancers.is_empty() {
            return;
        }
        self.out.push_str("load_balancers:\n");
        for balancer in balancers {
            let a = &balancer.attributes;
            let _ = writeln!(self.out, "  {}:", self.name_of(balancer.address.as_str()));
            if a["internal"] == true {
                self.out.push_str("    internal: true\n");
            }
            let _ = writeln!(self.out, "    subnets: {}", self.subnet_selection(a["subnets"].as_array().map_or(&[][..], Vec::as_slice)));
            let groups = self.names_of(&a["security_groups"]);
            if !groups.is_empty() {
                let _ = writeln!(self.out, "    security_groups: [{}]", groups.join(", "));
            }
            let users: Vec<String> = self
                .of_kind(Kind::AutoScalingGroup)
                .filter(|g| g.attributes["load_balancers"].as_array().into_iter().flatten().any(|b| b.as_str() == Some(balancer.address.as_str())))
                .map(|g| self.name_of(g.address.as_str()))
                .collect();
            if !users.is_empty() {
                let _ = writeln!(self.out, "    node_groups: [{}]", users.join(", "));
            }
            self.out.push_str("    listeners:\n");
            for listener in a["listeners"].as_array().into_iter().flatten() {
                let protocol = listener["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                let mut parts = vec![
                    format!("port: {}", listener["port"]),
                    format!("protocol: {protocol}"),
                    format!("instance_port: {}", listener["instance_port"]),
                ];
                let instance_protocol = listener["instance_protocol"].as_str().map(str::to_ascii_lowercase);
                parts.extend(instance_protocol.filter(|p| *p != protocol).map(|p| format!("instance_protocol: {p}")));
                parts.extend(listener["certificate"].as_str().map(|c| format!("certificate: {}", quoted(c))));
                let _ = writeln!(self.out, "      - {{ {} }}", parts.join(", "));
            }
            let h = &a["health_check"];
            let _ = writeln!(
                self.out,
                "    health_check: {{ target: {}, interval: {}, timeout: {}, healthy_threshold: {}, unhealthy_threshold: {} }}",
                quoted(h["target"].as_str().unwrap_or("TCP:80")),
                h["interval"],
                h["timeout"],
                h["healthy_threshold"],
                h["unhealthy_threshold"]
            );
            let draining = a["connection_draining"].as_u64().map_or_else(|| String::from("false"), |d| d.to_string());
            let _ = writeln!(
                self.out,
                "    connection_draining: {draining}\n    cross_zone: {}\n    idle_timeout: {}",
                a["cross_zone"] == true,
                a["idle_timeout"]
            );
        }
        self.out.push('\n');
    }

    fn node_groups(&mut self) {
        let groups: Vec<&Observed> = self.of_kind(Kind::AutoScalingGroup).collect();
        if groups.is_empty() {
            return;
        }
        self.out.push_str("node_groups:\n");
        for group in groups {
            let a = &group.attributes;
            let _ = writeln!(self.out, "  {}:", self.name_of(group.address.as_str()));
            let _ = writeln!(self.out, "    min: {}\n    max: {}\n    desired: {}", a["min"], a["max"], a["desired"]);
            let _ = writeln!(self.out, "    subnets: {}", self.subnet_selection(a["subnets"].as_array().map_or(&[][..], Vec::as_slice)));
            if a["health_check"]["elb"] == true || a["health_check"]["grace_period"] != 300 {
                let kind = if a["health_check"]["elb"] == true { "elb" } else { "ec2" };
                let _ = writeln!(self.out, "    health_check: {{ type: {kind}, grace_period: {} }}", a["health_check"]["grace_period"]);
            }
            let launch = a["launch"].as_str().and_then(|l| self.by_address.get(l));
            let Some(launch) = launch else {
                let _ = writeln!(self.out, "    # Its launch template or configuration was not found: add instance_type and image.");
                continue;
            };
            if launch.kind == Kind::LaunchConfiguration {
                self.out.push_str("    launch: configuration\n");
            }
            self.launch(launch);
        }
    }

    fn launch(&mut self, launch: &Observed) {
        let l = &launch.attributes;
        let _ = writeln!(self.out, "    instance_type: {}", l["instance_type"].as_str().unwrap_or("t3.medium"));
        let _ = writeln!(self.out, "    image: {}", l["image"]["ami"].as_str().unwrap_or("ami-00000000"));
        let groups = self.names_of(&l["security_groups"]);
        if !groups.is_empty() {
            let _ = writeln!(self.out, "    security_groups: [{}]", groups.join(", "));
        }
        let profile = l["instance_profile"].as_str().and_then(|p| self.by_address.get(p));
        let role = profile.and_then(|p| p.attributes["role"].as_str());
        match (l["instance_profile"].as_str(), role) {
            (Some(_), Some(role)) => {
                let _ = writeln!(self.out, "    iam_role: {}", self.name_of(role));
            }
            (Some(profile), None) => {
                let _ = writeln!(self.out, "    # Its instance profile {profile} was not found: name its role under iam_role.");
            }
            _ => {}
        }
        let v = &l["root_volume"];
        let mut volume = vec![
            format!("size_gib: {}", v["size_gib"]),
            format!("type: {}", v["volume_type"].as_str().unwrap_or("gp3")),
            format!("encrypted: {}", v["encrypted"] == true),
        ];
        volume.extend(v["iops"].as_u64().map(|iops| format!("iops: {iops}")));
        let _ = writeln!(self.out, "    root_volume: {{ {} }}", volume.join(", "));
        let m = &l["metadata"];
        let _ = writeln!(self.out, "    instance_metadata: {{ require_tokens: {}, hop_limit: {} }}", m["require_tokens"] == true, m["hop_limit"]);
        if let Some(key) = l["key_name"].as_str() {
            let _ = writeln!(self.out, "    key_name: {}", scalar(key));
        }
        if let Some(data) = self.existing.user_data.get(&launch.id) {
            // Verbatim: the model renders user data as a template, and this is not one.
            let body = format!("{{% raw %}}{data}{{% endraw %}}");
            // A literal block keeps every line as written, but a line of spaces alone would read
            // back empty, and control characters cannot appear in one.
            let literal = body.chars().all(|c| c == '\n' || !c.is_control()) && !body.lines().any(|l| !l.is_empty() && l.trim().is_empty());
            if literal {
                self.out.push_str("    user_data: |-\n");
                for line in body.lines() {
                    let _ = writeln!(self.out, "{}{line}", if line.is_empty() { "" } else { "      " });
                }
            } else {
                let _ = writeln!(self.out, "    user_data: {}", quoted(&body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_carved_when_carving_gives_the_blocks_that_exist() {
        let zones: Vec<String> = ["eu-west-1a", "eu-west-1b"].map(String::from).to_vec();
        let tier = |name: &str, public: bool, blocks: [&str; 2]| Tier {
            name: name.to_owned(),
            public,
            blocks: zones.iter().cloned().zip(blocks.map(|b| b.parse().unwrap())).collect(),
        };
        let vpc = "10.20.0.0/16".parse().unwrap();
        let laid_out = [tier("public", true, ["10.20.0.0/22", "10.20.4.0/22"]), tier("private", false, ["10.20.32.0/19", "10.20.64.0/19"])];
        assert_eq!(carving(vpc, &zones, &laid_out), Some(vec![22, 19]));
        let by_hand = [tier("public", true, ["10.20.0.0/22", "10.20.8.0/22"]), tier("private", false, ["10.20.32.0/19", "10.20.64.0/19"])];
        assert_eq!(carving(vpc, &zones, &by_hand), None, "a gap carving would not leave: the blocks are written out");
    }

    #[test]
    fn names_lose_the_environment_and_an_identity_and_strings_read_back_unchanged() {
        assert_eq!(model_name("dev", "dev-workers-3f9a2c7d"), "workers");
        assert_eq!(model_name("dev", "Ingress ELB"), "ingress-elb");
        assert_eq!(model_name("dev", "dev-"), "dev");
        assert_eq!(scalar("eu-west-1"), "eu-west-1");
        for tricky in ["yes", "10.0.0.0/16", "a: b", "", "-x"] {
            assert_eq!(scalar(tricky), quoted(tricky), "{tricky}");
        }
    }
}
