//! Turns the merged YAML of an environment into the typed model.
//!
//! Only shapes and single values are checked here (types, unknown keys, ranges, formats);
//! anything that relates two parts of the model is left to [`super::check`].

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use marked_yaml::Node;

use super::*;
use crate::diagnostics::Problems;
use crate::model::merge;
use crate::model::reboots::reboot_policy;
use crate::yaml::{self, boolean, choice, list, named, number, string, string_list, string_map, MapReader};

/// `project` is the project's name (`kstack.yaml`), which S3 state keys default under.
pub fn environment(name: &str, project: Option<&Spanned<String>>, root: &Node, problems: &mut Problems) -> Option<Environment> {
    environment_with(name, project, root, Secrets::Required, problems)
}

/// [`environment`], with unset secrets a problem or not (`secrets`).
pub fn environment_with(
    name: &str,
    project: Option<&Spanned<String>>,
    root: &Node,
    secrets: Secrets,
    problems: &mut Problems,
) -> Option<Environment> {
    let mut map = MapReader::new(root, "environment", problems)?;
    // Resolved while loading; listed here so it is a known key.
    map.get("extends");
    let region = map.required("region", problems).and_then(|n| region(n, problems));
    let aws = map.get("aws").map_or(Some(AwsAccess::default()), |n| access::aws_access(n, "AWS access", true, problems));
    let variables = map
        .get("variables")
        .map(|n| named(n, "variable", problems, |key, value, _| Some((key.value, Spanned::new(yaml::to_json(value), key.loc)))))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let secrets = map.get("secrets").map(|n| crate::model::secrets::secrets(n, secrets, problems)).unwrap_or_default();
    let tags = map.get("tags").map(|n| string_map(n, problems)).unwrap_or_default();
    let network = map.required("network", problems).and_then(|n| network(n, problems));
    let mut undecoded = BTreeSet::new();
    let security_groups = section(map.get("security_groups"), "security group", &mut undecoded, problems, security_group);
    let iam_roles = section(map.get("iam_roles"), "IAM role", &mut undecoded, problems, iam_role);
    let load_balancers = section(map.get("load_balancers"), "load balancer", &mut undecoded, problems, load_balancer);
    let dns = map.get("dns").map(|n| dns(n, problems)).unwrap_or_default();
    let state = map.get("state").map_or(Some(StateBackend::Local), |n| state_backend(n, name, project, region.as_ref(), problems));
    // A group's own `reboots:` is merged over the environment's.
    let reboots_node = map.get("reboots");
    let reboots = reboots_node.and_then(|n| reboot_policy(n, problems));
    let node_defaults = map.get("node_defaults");
    if let Some(defaults) = node_defaults {
        MapReader::new(defaults, "node defaults", problems);
    }
    let node_groups = section(map.get("node_groups"), "node group", &mut undecoded, problems, |name, group, problems| match node_defaults {
        // Defaults are merged before decoding, so a problem in them is reported once
        // per group that inherits it; `Problems::into_sorted` drops the repeats.
        Some(defaults) => node_group(name, &merge::merge(defaults.clone(), group.clone()), reboots_node, problems),
        None => node_group(name, group, reboots_node, problems),
    });
    // Groups rolled first, in this order (e.g. masters); the rest follow in file order.
    let roll_order = map.get("roll_order").and_then(|n| string_list(n, problems)).unwrap_or_default();
    let roll_hooks = map.get("roll_hooks").and_then(|n| roll_hooks(n, problems)).unwrap_or_default();
    let protect = map.get("protect").map_or(Some(Protection::Nothing), |n| protection(n, problems));
    let resource_tags = map
        .get("resource_tags")
        .map(|n| named(n, "resource", problems, |address, tags, problems| Some((address, string_map(tags, problems)))))
        .unwrap_or_default();
    map.finish(problems);
    Some(Environment {
        name: name.to_owned(),
        project: project.map(|p| p.value.clone()),
        region: region?,
        aws: aws?,
        variables,
        secrets,
        tags,
        network: network?,
        security_groups,
        iam_roles,
        load_balancers,
        node_groups,
        dns,
        roll_order,
        roll_hooks,
        state: state?,
        reboots,
        protect: protect?,
        resource_tags,
        undecoded,
    })
}

/// `protect: true | false | [address, ...]`; whether each address names a resource of the
/// model is checked once the model is compiled.
fn protection(node: &Node, problems: &mut Problems) -> Option<Protection> {
    match node {
        Node::Sequence(_) => string_list(node, problems).map(Protection::Addresses),
        Node::Scalar(s) if s.as_bool().is_some() => Some(if s.as_bool() == Some(true) { Protection::Everything } else { Protection::Nothing }),
        _ => {
            problems
                .error(yaml::loc(node), "`protect` is `true`, `false` or a list of resource addresses")
                .hint("e.g. `protect: [vpc.main, elb.ingress]`; `kstack graph <env> --format json` lists every address");
            None
        }
    }
}

/// Only what finds an environment's state: its `state:` settings and its `region` (which an S3
/// bucket defaults to). A problem with the region only leaves it unknown.
pub fn state_location(name: &str, project: Option<&Spanned<String>>, root: &Node, problems: &mut Problems) -> Option<StateLocation> {
    let mut map = MapReader::new(root, "environment", problems)?;
    let region = map.get("region").and_then(|n| region(n, &mut Problems::default()));
    let aws = map.get("aws").map_or(Some(AwsAccess::default()), |n| access::aws_access(n, "AWS access", true, problems))?;
    let state = map.get("state").map_or(Some(StateBackend::Local), |n| state_backend(n, name, project, region.as_ref(), problems))?;
    // A destroy works from here: protection that cannot be read protects everything.
    let protect = map.get("protect").map_or(Protection::Nothing, |n| protection(n, &mut Problems::default()).unwrap_or(Protection::Everything));
    Some(StateLocation { name: name.to_owned(), project: project.map(|p| p.value.clone()), region: region.map(|r| r.value), aws, state, protect })
}

/// A DNS name as Route53 compares it: lowercase, without the final dot.
fn dns_name(node: &Node, what: &str, problems: &mut Problems) -> Option<Spanned<String>> {
    let name = string(node, problems)?;
    let normal = name.value.trim_end_matches('.').to_ascii_lowercase();
    let labels_valid = normal.split('.').enumerate().all(|(i, label)| {
        (i == 0 && label == "*")
            || (!label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    });
    if normal.is_empty() || normal.len() > 253 || !labels_valid {
        problems
            .error(name.loc, format!("`{}` is not a valid {what}", name.value))
            .hint("use labels of letters, digits, `-` and `_` separated by dots, e.g. `apps.dev.example.com`; `*` only as the first label");
        return None;
    }
    Some(Spanned::new(normal, name.loc))
}

/// `dns: { zone: ZONE, records: { KEY: { name, type, alias | values, ttl, zone } } }`: `zone` is
/// the hosted zone records are in unless they name their own.
fn dns(node: &Node, problems: &mut Problems) -> Vec<DnsRecord> {
    let Some(mut map) = MapReader::new(node, "dns settings", problems) else { return Vec::new() };
    let zone = map.get("zone").and_then(|n| dns_name(n, "hosted zone name", problems));
    let records = map
        .required("records", problems)
        .map(|n| named(n, "DNS record", problems, |key, value, problems| dns_record(key, value, zone.as_ref(), problems)));
    map.finish(problems);
    records.unwrap_or_default()
}

fn dns_record(key: Spanned<String>, node: &Node, default_zone: Option<&Spanned<String>>, problems: &mut Problems) -> Option<DnsRecord> {
    let mut map = MapReader::new(node, "DNS record", problems)?;
    let loc = map.loc();
    let own_zone = map.get("zone").and_then(|n| dns_name(n, "hosted zone name", problems));
    let name = map.required("name", problems).and_then(|n| dns_name(n, "record name", problems));
    let record_type = map.required("type", problems).and_then(|n| choice(n, &RecordType::ALL, problems));
    let alias = map.get("alias").and_then(|n| string(n, problems));
    let ttl = map.get("ttl").map_or(Some(300), |n| number(n, 0..=2_147_483_647u32, problems).map(|t| t.value));
    let values = map.get("values").and_then(|n| string_list(n, problems));
    map.finish(problems);
    let Some(zone) = own_zone.or_else(|| default_zone.cloned()) else {
        problems
            .error(loc, format!("DNS record `{}` names no hosted zone", key.value))
            .hint("set `zone:` under `dns:` for all records, or on this record");
        return None;
    };
    let name = name?;
    if name.value != zone.value && !name.value.ends_with(&format!(".{}", zone.value)) {
        problems
            .error(name.loc, format!("`{}` is not inside the hosted zone `{}`", name.value, zone.value))
            .label("outside the zone")
            .hint(format!("record names are absolute: end it with `.{}`", zone.value));
        return None;
    }
    let record_type = record_type?;
    let target = match (alias, values) {
        (Some(alias), None) if matches!(record_type.value, RecordType::A | RecordType::AAAA) => RecordTarget::Alias(alias),
        (Some(alias), None) => {
            problems
                .error(alias.loc, format!("a {} record cannot alias a load balancer", record_type.value.as_str()))
                .hint("aliases are A or AAAA records; give other types `values:`");
            return None;
        }
        (None, Some(values)) if !values.is_empty() => RecordTarget::Values { ttl: ttl?, values },
        (Some(alias), Some(_)) => {
            problems.error(alias.loc, "a record has either `alias:` or `values:`, not both").hint("keep one of them");
            return None;
        }
        (None, _) => {
            problems
                .error(loc, format!("DNS record `{}` has neither `alias:` nor `values:`", key.value))
                .hint("alias a load balancer (`alias: ingress`) or list `values:`");
            return None;
        }
    };
    Some(DnsRecord { key, zone, name, record_type, target })
}

/// `state: { backend: s3, bucket, key, region, kms_key_id, aws: { profile, assume_role } }`; `backend: local` is the default.
/// The key defaults to `kstack/<project>/<env>.json`: without a project name there is no
/// default, since two projects sharing a bucket would share `kstack/<env>.json`.
fn state_backend(
    node: &Node,
    environment: &str,
    project: Option<&Spanned<String>>,
    region: Option<&Spanned<String>>,
    problems: &mut Problems,
) -> Option<StateBackend> {
    let mut map = MapReader::new(node, "state settings", problems)?;
    let s3 = map.get("backend").and_then(|n| choice(n, &[("local", false), ("s3", true)], problems)).is_some_and(|c| c.value);
    let bucket = if s3 { map.required("bucket", problems) } else { map.get("bucket") }.and_then(|n| string(n, problems));
    let key = map.get("key").and_then(|n| string(n, problems)).map(|k| k.value);
    let bucket_region = map.get("region").and_then(|n| string(n, problems)).map(|r| r.value);
    let kms_key_id = map.get("kms_key_id").and_then(|n| string(n, problems)).map(|k| k.value);
    let lease_seconds = map.get("lock_lease_seconds").map_or(Some(60), |n| number(n, 3..=3600u64, problems).map(|s| s.value));
    let access = map.get("aws").and_then(|n| access::aws_access(n, "the state bucket's AWS access", false, problems)).map(Box::new);
    map.finish(problems);
    if !s3 {
        return Some(StateBackend::Local);
    }
    let (key, legacy_key) = match (key, project) {
        (Some(key), _) => (key, None),
        (None, Some(project)) => (format!("kstack/{}/{environment}.json", project.value), Some(format!("kstack/{environment}.json"))),
        (None, None) => {
            problems.error(yaml::loc(node), "S3 state needs a `key:`, or a project name to make one from").label("no key").hint(format!(
                "name the project in kstack.yaml (`project: <name>`; the key is then kstack/<name>/{environment}.json), \
                     or set `key:`; a default shared by every project would let two projects in one bucket share a state"
            ));
            return None;
        }
    };
    Some(StateBackend::S3(S3State {
        bucket: bucket?.value,
        key,
        legacy_key,
        region: bucket_region.or_else(|| region.map(|r| r.value.clone())).unwrap_or_default(),
        kms_key_id,
        lease_seconds: lease_seconds?,
        access,
    }))
}

/// `roll_hooks: { readiness: CMD, pre_stop: { run: CMD, timeout_seconds: N }, timeout_seconds: N }`:
/// a hook is a command, or a command with its own timeout; `timeout_seconds` beside them is
/// the default.
fn roll_hooks(node: &Node, problems: &mut Problems) -> Option<RollHooks> {
    let mut map = MapReader::new(node, "roll hooks", problems)?;
    let timeout = |node: &Node, problems: &mut Problems| number(node, 1..=86_400u64, problems).map(|n| n.value);
    let default_timeout = map.get("timeout_seconds").and_then(|n| timeout(n, problems)).unwrap_or(DEFAULT_HOOK_TIMEOUT_SECONDS);
    let mut hook = |key| {
        let node = map.get(key)?;
        if let Node::Mapping(_) = node {
            let mut own = MapReader::new(node, "roll hook", problems)?;
            let command = own.required("run", problems).and_then(|n| string(n, problems));
            let timeout_seconds = own.get("timeout_seconds").and_then(|n| timeout(n, problems)).unwrap_or(default_timeout);
            own.finish(problems);
            return Some(RollHook { command: command?, timeout_seconds });
        }
        string(node, problems).map(|command| RollHook { command, timeout_seconds: default_timeout })
    };
    let hooks = RollHooks { readiness: hook("readiness"), pre_stop: hook("pre_stop"), validate: hook("validate") };
    map.finish(problems);
    Some(hooks)
}

/// A mapping of named entries. The names of entries that fail to decode are recorded, so
/// references to them are not reported a second time as dangling.
fn section<T>(
    node: Option<&Node>,
    what: &'static str,
    undecoded: &mut BTreeSet<(&'static str, String)>,
    problems: &mut Problems,
    mut item: impl FnMut(Spanned<String>, &Node, &mut Problems) -> Option<T>,
) -> Vec<T> {
    let Some(node) = node else { return Vec::new() };
    named(node, what, problems, |name, value, problems| {
        let key = name.value.clone();
        let decoded = item(name, value, problems);
        if decoded.is_none() {
            undecoded.insert((what, key));
        }
        decoded
    })
}

fn region(node: &Node, problems: &mut Problems) -> Option<Spanned<String>> {
    let region = string(node, problems)?;
    let parts: Vec<&str> = region.value.split('-').collect();
    let well_formed = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
    if !well_formed {
        problems
            .error(region.loc, format!("`{}` is not an AWS region name", region.value))
            .label("not a region")
            .hint("use a region code such as `eu-west-1` or `us-east-2`");
        return None;
    }
    Some(region)
}

pub fn cidr(node: &Node, problems: &mut Problems) -> Option<Spanned<Ipv4Net>> {
    let text = string(node, problems)?;
    match text.value.parse::<Ipv4Net>() {
        Ok(net) if net.trunc() == net => Some(Spanned::new(net, text.loc)),
        Ok(net) => {
            problems
                .error(text.loc, format!("`{}` has host bits set", text.value))
                .label("not a network address")
                .hint(format!("the network with this prefix is `{}`", net.trunc()));
            None
        }
        Err(_) => {
            problems
                .error(text.loc, format!("`{}` is not an IPv4 CIDR block", text.value))
                .label("invalid CIDR")
                .hint("write an address and prefix length, e.g. `10.20.0.0/16`");
            None
        }
    }
}

fn network(node: &Node, problems: &mut Problems) -> Option<Network> {
    let mut map = MapReader::new(node, "network", problems)?;
    let loc = map.loc();
    if let Some(vpc_id) = map.get("vpc_id") {
        return existing_network(vpc_id, map, problems);
    }
    let vpc_cidr = match map.get("vpc_cidr") {
        Some(node) => cidr(node, problems),
        None => {
            problems
                .error(loc, "the network needs `vpc_cidr` (a VPC kstack makes) or `vpc_id` (one someone else owns)")
                .hint("e.g. `vpc_cidr: 10.20.0.0/16`, or `vpc_id: vpc-0abc` with `subnets: { private: { eu-west-1a: subnet-0abc } }`");
            None
        }
    };
    let availability_zones = map.required("availability_zones", problems).and_then(|n| string_list(n, problems));
    let subnet_tiers = map.required("subnets", problems).map(|n| named(n, "subnet tier", problems, subnet_tier));
    let nat_gateways = map
        .get("nat_gateways")
        .and_then(|n| choice(n, &[("per_zone", NatGateways::PerZone), ("single", NatGateways::Single), ("none", NatGateways::None)], problems))
        .map_or(NatGateways::PerZone, |c| c.value);
    map.finish(problems);
    Some(Network { vpc: Vpc::Cidr(vpc_cidr?), availability_zones: availability_zones?, subnet_tiers: subnet_tiers?, nat_gateways, loc })
}

/// `network: { vpc_id: vpc-…, subnets: { <tier>: { <zone>: subnet-… } } }`: a VPC someone else
/// owns. Its zones are those its subnets name; kstack makes no gateway or route table in it.
fn existing_network(vpc_id: &Node, mut map: MapReader<'_>, problems: &mut Problems) -> Option<Network> {
    let loc = map.loc();
    let vpc = aws_id(vpc_id, "vpc", problems);
    for made in ["vpc_cidr", "nat_gateways", "availability_zones"] {
        if let Some(node) = map.get(made) {
            problems
                .error(yaml::loc(node), format!("`{made}` describes a VPC kstack makes; with `vpc_id` the VPC is someone else's"))
                .label("not with vpc_id")
                .hint("remove it: the zones are those the subnets name, and kstack makes no gateway in a VPC it does not own");
        }
    }
    let tiers = map.required("subnets", problems).map(|n| {
        named(n, "subnet tier", problems, |name, node, problems| {
            let ids = named(node, "zone", problems, |zone, id, problems| aws_id(id, "subnet", problems).map(|id| (zone, id)));
            Some(SubnetTier { name, public: false, cidrs: SubnetCidrs::Existing(ids) })
        })
    });
    map.finish(problems);
    let subnet_tiers = tiers?;
    let mut availability_zones: Vec<Spanned<String>> = Vec::new();
    for tier in &subnet_tiers {
        let SubnetCidrs::Existing(ids) = &tier.cidrs else { continue };
        for (zone, _) in ids {
            if !availability_zones.iter().any(|z| z.value == zone.value) {
                availability_zones.push(zone.clone());
            }
        }
    }
    Some(Network { vpc: Vpc::Existing(vpc?), availability_zones, subnet_tiers, nat_gateways: NatGateways::None, loc })
}

/// An AWS id of `kind` (`vpc-0abc…`, `subnet-0abc…`): the prefix, then 8 or 17 hex digits.
fn aws_id(node: &Node, kind: &str, problems: &mut Problems) -> Option<Spanned<String>> {
    let text = string(node, problems)?;
    let valid =
        text.value.strip_prefix(&format!("{kind}-")).is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        problems
            .error(text.loc, format!("`{}` is not a {kind} id", text.value))
            .label(format!("not a {kind} id"))
            .hint(format!("{kind} ids are `{kind}-` and 8 or 17 hex digits, as the AWS console shows them"));
        return None;
    }
    Some(text)
}

fn subnet_tier(name: Spanned<String>, node: &Node, problems: &mut Problems) -> Option<SubnetTier> {
    let mut map = MapReader::new(node, "subnet tier", problems)?;
    let public = map.required("type", problems).and_then(|n| choice(n, &[("public", true), ("private", false)], problems));
    let prefix = map.get("prefix_length");
    let explicit = map.get("cidrs");
    let cidrs = match (prefix, explicit) {
        (Some(p), None) => number(p, 16..=28, problems).map(|prefix_len| SubnetCidrs::Carved { prefix_len }),
        (None, Some(c)) => Some(SubnetCidrs::Explicit(named(c, "zone", problems, |zone, n, problems| cidr(n, problems).map(|c| (zone, c))))),
        (Some(_), Some(c)) => {
            problems
                .error(yaml::loc(c), "a subnet tier takes either `prefix_length` or `cidrs`, not both")
                .hint("remove `prefix_length` to use the explicit blocks, or `cidrs` to carve them");
            None
        }
        (None, None) => {
            problems
                .error(map.loc(), format!("subnet tier `{}` needs `prefix_length` or `cidrs`", name.value))
                .hint("`prefix_length: 20` carves one /20 per zone from the VPC CIDR");
            None
        }
    };
    map.finish(problems);
    Some(SubnetTier { name, public: public?.value, cidrs: cidrs? })
}

fn security_group(name: Spanned<String>, node: &Node, problems: &mut Problems) -> Option<SecurityGroup> {
    let mut map = MapReader::new(node, "security group", problems)?;
    let description =
        map.get("description").and_then(|n| string(n, problems)).map_or_else(|| format!("kstack security group {}", name.value), |d| d.value);
    let ingress = map.get("ingress").and_then(|n| list(n, problems, rule)).unwrap_or_default();
    let egress = map.get("egress").and_then(|n| list(n, problems, rule));
    map.finish(problems);
    Some(SecurityGroup { name, description, ingress, egress })
}

fn rule(node: &Node, problems: &mut Problems) -> Option<Rule> {
    let mut map = MapReader::new(node, "security group rule", problems)?;
    let loc = map.loc();
    let protocol = map
        .required("protocol", problems)
        .and_then(|n| choice(n, &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp), ("icmp", Protocol::Icmp), ("all", Protocol::All)], problems));
    let ports_node = map.get("ports");
    let ports = ports_node.and_then(|n| port_range(n, problems));
    let cidrs = map.get("cidrs").and_then(|n| list(n, problems, cidr)).unwrap_or_default();
    let groups = map.get("groups").and_then(|n| string_list(n, problems)).unwrap_or_default();
    let self_ = map.get("self").and_then(|n| boolean(n, problems)).unwrap_or(false);
    let description = map.get("description").and_then(|n| string(n, problems)).map(|d| d.value);
    map.finish(problems);
    let protocol = protocol?;
    if ports_node.is_some() && ports.is_none() {
        return None;
    }
    match (protocol.value, &ports) {
        (Protocol::Tcp | Protocol::Udp, None) => {
            problems.error(loc, "a tcp or udp rule needs `ports`").hint("add `ports: 443` or a range such as `ports: 30000-32767`");
        }
        (Protocol::Icmp | Protocol::All, Some(p)) => {
            problems.error(p.loc, "`ports` only applies to tcp and udp rules").hint("remove `ports`, or change the protocol to tcp or udp");
        }
        _ => {}
    }
    if cidrs.is_empty() && groups.is_empty() && !self_ {
        problems
            .error(loc, "a rule must name a peer: `cidrs`, `groups` or `self: true`")
            .hint("e.g. `groups: [workers]` to allow traffic from the workers' security group");
    }
    Some(Rule { protocol, ports, cidrs, groups, self_, description, loc })
}

fn port_range(node: &Node, problems: &mut Problems) -> Option<Spanned<PortRange>> {
    let text = string(node, problems)?;
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let range = match text.value.split_once('-') {
        Some((from, to)) => parse(from).zip(parse(to)).map(|(from, to)| PortRange { from, to }),
        None => parse(&text.value).map(|p| PortRange { from: p, to: p }),
    };
    match range {
        Some(r) if r.from <= r.to => Some(Spanned::new(r, text.loc)),
        _ => {
            problems
                .error(text.loc, format!("`{}` is not a port or port range", text.value))
                .label("invalid ports")
                .hint("use a port from 1 to 65535, or a range `low-high` such as `30000-32767`");
            None
        }
    }
}

fn iam_role(name: Spanned<String>, node: &Node, problems: &mut Problems) -> Option<IamRole> {
    let mut map = MapReader::new(node, "IAM role", problems)?;
    let assumed_by = map.get("assumed_by").and_then(|n| string(n, problems)).map_or_else(|| String::from("ec2.amazonaws.com"), |s| s.value);
    let managed_policies = map.get("managed_policies").and_then(|n| string_list(n, problems)).unwrap_or_default();
    for arn in &managed_policies {
        if !(arn.value.starts_with("arn:aws") && arn.value.contains(":policy/")) {
            problems
                .error(arn.loc, format!("`{}` is not an IAM policy ARN", arn.value))
                .label("not a policy ARN")
                .hint("managed policies are ARNs such as `arn:aws:iam::aws:policy/AmazonEC2ReadOnlyAccess`");
        }
    }
    let inline_policies = map.get("inline_policies").map(|n| named(n, "policy", problems, policy_document)).unwrap_or_default().into_iter().collect();
    let instance_profile = map.get("instance_profile").and_then(|n| boolean(n, problems)).unwrap_or(true);
    map.finish(problems);
    Some(IamRole { name, assumed_by, managed_policies, inline_policies, instance_profile })
}

fn policy_document(name: Spanned<String>, node: &Node, problems: &mut Problems) -> Option<(String, serde_json::Value)> {
    let has_statements = node.as_mapping().and_then(|m| m.get_node("Statement")).is_some_and(|s| matches!(s, Node::Sequence(_) | Node::Mapping(_)));
    if !has_statements {
        problems
            .error(yaml::loc(node), format!("inline policy `{}` has no `Statement`", name.value))
            .hint("write the policy document as YAML: `Version: \"2012-10-17\"` and a `Statement` list");
        return None;
    }
    Some((name.value, yaml::to_json(node)))
}

pub fn subnet_selection(node: &Node, problems: &mut Problems) -> Option<SubnetSelection> {
    if let Node::Scalar(_) = node {
        return string(node, problems).map(|tier| SubnetSelection { tier, zones: Vec::new() });
    }
    let mut map = MapReader::new(node, "subnet selection", problems)?;
    let tier = map.required("tier", problems).and_then(|n| string(n, problems));
    let zones = map.get("zones").and_then(|n| string_list(n, problems)).unwrap_or_default();
    map.finish(problems);
    Some(SubnetSelection { tier: tier?, zones })
}

fn load_balancer(name: Spanned<String>, node: &Node, problems: &mut Problems) -> Option<LoadBalancer> {
    let mut map = MapReader::new(node, "load balancer", problems)?;
    let loc = map.loc();
    let internal = map.get("internal").and_then(|n| boolean(n, problems)).unwrap_or(false);
    let subnets = map.required("subnets", problems).and_then(|n| subnet_selection(n, problems));
    let security_groups = map.get("security_groups").and_then(|n| string_list(n, problems)).unwrap_or_default();
    let listeners = map.required("listeners", problems).and_then(|n| list(n, problems, listener));
    if listeners.as_ref().is_some_and(Vec::is_empty) {
        problems
            .error(loc, format!("load balancer `{}` has no listeners", name.value))
            .hint("add a listener such as `{port: 443, protocol: tcp, instance_port: 30443}`");
    }
    let health_check = map.required("health_check", problems).and_then(|n| health_check(n, problems));
    let connection_draining = match map.get("connection_draining") {
        None => Some(300),
        Some(n) if n.as_scalar().and_then(|s| s.as_bool()) == Some(false) => None,
        Some(n) => number(n, 1..=3600, problems).map(|s| s.value),
    };
    let cross_zone = map.get("cross_zone").and_then(|n| boolean(n, problems)).unwrap_or(true);
    let idle_timeout = map.get("idle_timeout").and_then(|n| number(n, 1..=4000, problems)).map_or(60, |s| s.value);
    let node_groups = map.get("node_groups").and_then(|n| string_list(n, problems)).unwrap_or_default();
    map.finish(problems);
    Some(LoadBalancer {
        name,
        internal,
        subnets: subnets?,
        security_groups,
        listeners: listeners?,
        health_check: health_check?,
        connection_draining,
        cross_zone,
        idle_timeout,
        node_groups,
    })
}

const LISTENER_PROTOCOLS: [(&str, ListenerProtocol); 4] =
    [("tcp", ListenerProtocol::Tcp), ("ssl", ListenerProtocol::Ssl), ("http", ListenerProtocol::Http), ("https", ListenerProtocol::Https)];

fn listener(node: &Node, problems: &mut Problems) -> Option<Listener> {
    let mut map = MapReader::new(node, "listener", problems)?;
    let loc = map.loc();
    let port = map.required("port", problems).and_then(|n| number(n, 1..=65535, problems));
    let protocol = map.required("protocol", problems).and_then(|n| choice(n, &LISTENER_PROTOCOLS, problems));
    let instance_port = map.required("instance_port", problems).and_then(|n| number(n, 1..=65535, problems));
    let instance_protocol = map.get("instance_protocol").and_then(|n| choice(n, &LISTENER_PROTOCOLS, problems));
    let certificate = map.get("certificate").and_then(|n| string(n, problems));
    map.finish(problems);
    let protocol = protocol?.value;
    if protocol.needs_certificate() && certificate.is_none() {
        problems
            .error(loc, "an ssl or https listener needs a `certificate`")
            .hint("add `certificate: arn:aws:acm:...` with the ARN of an ACM or IAM server certificate");
    }
    Some(Listener {
        port: port?.value,
        protocol,
        instance_port: instance_port?.value,
        instance_protocol: instance_protocol.map_or(protocol, |p| p.value),
        certificate: certificate.map(|c| c.value),
        loc,
    })
}

fn health_check(node: &Node, problems: &mut Problems) -> Option<HealthCheck> {
    let mut map = MapReader::new(node, "health check", problems)?;
    let loc = map.loc();
    let target = map.required("target", problems).and_then(|n| string(n, problems));
    let interval = map.get("interval").and_then(|n| number(n, 5..=300, problems)).map_or(10, |s| s.value);
    let timeout = map.get("timeout").and_then(|n| number(n, 2..=60, problems));
    let healthy_threshold = map.get("healthy_threshold").and_then(|n| number(n, 2..=10, problems)).map_or(2, |s| s.value);
    let unhealthy_threshold = map.get("unhealthy_threshold").and_then(|n| number(n, 2..=10, problems)).map_or(2, |s| s.value);
    map.finish(problems);
    let target = target?;
    if !health_check_target_is_valid(&target.value) {
        problems
            .error(target.loc, format!("`{}` is not a health check target", target.value))
            .label("invalid target")
            .hint("use `TCP:<port>`, `SSL:<port>`, or `HTTP:<port>/<path>` / `HTTPS:<port>/<path>`");
    }
    let timeout_value = timeout.as_ref().map_or(5, |t| t.value);
    if timeout_value >= interval {
        problems
            .error(timeout.map_or(loc, |t| t.loc), "the health check timeout must be shorter than its interval")
            .hint(format!("ELB rejects a timeout of {timeout_value}s with an interval of {interval}s"));
    }
    Some(HealthCheck { target: target.value, interval, timeout: timeout_value, healthy_threshold, unhealthy_threshold, loc })
}

fn health_check_target_is_valid(target: &str) -> bool {
    let Some((protocol, rest)) = target.split_once(':') else {
        return false;
    };
    let (port, path) = rest.split_once('/').map_or((rest, None), |(p, path)| (p, Some(path)));
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    match protocol {
        "TCP" | "SSL" => port_ok && path.is_none(),
        "HTTP" | "HTTPS" => port_ok && path.is_some(),
        _ => false,
    }
}

fn node_group(name: Spanned<String>, node: &Node, env_reboots: Option<&Node>, problems: &mut Problems) -> Option<NodeGroup> {
    let mut map = MapReader::new(node, "node group", problems)?;
    let min = map.required("min", problems).and_then(|n| number(n, 0..=10_000, problems));
    let max = map.required("max", problems).and_then(|n| number(n, 0..=10_000, problems));
    let desired = map.get("desired").and_then(|n| number(n, 0..=10_000, problems));
    let subnets = map.required("subnets", problems).and_then(|n| subnet_selection(n, problems));
    let instance_type = map.required("instance_type", problems).and_then(|n| instance_type(n, problems));
    let image = map.required("image", problems).and_then(|n| image_ref(n, problems));
    let security_groups = map.get("security_groups").and_then(|n| string_list(n, problems)).unwrap_or_default();
    let iam_role = map.get("iam_role").and_then(|n| string(n, problems));
    let root_volume = map.get("root_volume").map_or_else(|| Some(default_root_volume()), |n| root_volume(n, problems));
    let user_data = map.get("user_data").and_then(|n| string(n, problems));
    let metadata = map
        .get("instance_metadata")
        .map_or_else(|| Some(InstanceMetadata { require_tokens: true, hop_limit: 1 }), |n| instance_metadata(n, problems));
    let launch = map
        .get("launch")
        .and_then(|n| choice(n, &[("template", LaunchMechanism::Template), ("configuration", LaunchMechanism::Configuration)], problems))
        .map_or(LaunchMechanism::Template, |c| c.value);
    let key_name = map.get("key_name").and_then(|n| string(n, problems)).map(|k| k.value);
    let health_check =
        map.get("health_check").map_or_else(|| Some(GroupHealthCheck { elb: false, grace_period: 300 }), |n| group_health_check(n, problems));
    let tags = map.get("tags").map(|n| string_map(n, problems)).unwrap_or_default();
    let roll = map.get("roll").map_or_else(|| Some(RollPolicy::default()), |n| roll_policy(n, problems));
    let reboots = group_reboots(map.get("reboots"), env_reboots, problems);
    // Role variables for this group's nodes, above the environment's.
    let variables = map.get("variables").map(|n| yaml::to_json(n).as_object().cloned().unwrap_or_default()).unwrap_or_default();
    map.finish(problems);
    let min = min?;
    Some(NodeGroup {
        name,
        desired_written: desired.is_some(),
        desired: desired.unwrap_or_else(|| min.clone()),
        min,
        max: max?,
        subnets: subnets?,
        instance_type: instance_type?,
        image: image?,
        security_groups,
        iam_role,
        root_volume: root_volume?,
        user_data,
        metadata: metadata?,
        launch,
        key_name,
        health_check: health_check?,
        tags,
        variables,
        roll: roll?,
        reboots: reboots?,
    })
}

/// The group's reboot policy: its own `reboots:` over the environment's. `Some(None)` when
/// neither sets one; `None` when there is a problem.
fn group_reboots(own: Option<&Node>, env: Option<&Node>, problems: &mut Problems) -> Option<Option<RebootPolicy>> {
    // Both compare nodes across groups, so one value holds for the environment.
    let window = own.and_then(|n| match n {
        Node::Mapping(map) => map.get("window"),
        _ => None,
    });
    let mut environment_wide: Vec<(&str, &marked_yaml::types::MarkedScalarNode)> = Vec::new();
    if let Some(Node::Mapping(map)) = own {
        environment_wide.extend(map.keys().filter(|k| k.as_str() == "zone_gap_minutes").map(|k| ("zone_gap_minutes", k)));
    }
    if let Some(Node::Mapping(map)) = window {
        environment_wide.extend(map.keys().filter(|k| k.as_str() == "time_zone").map(|k| ("window.time_zone", k)));
    }
    if let Some((key, found)) = environment_wide.first() {
        problems
            .error(yaml::loc(&Node::Scalar((*found).clone())), format!("`{key}` is set for the whole environment, not per node group"))
            .label("environment-wide setting")
            .hint(format!("move `{key}` to the environment's `reboots:`"));
        return None;
    }
    let merged = match (env, own) {
        (Some(env), Some(own)) => merge::merge(env.clone(), own.clone()),
        (None, Some(only)) | (Some(only), None) => only.clone(),
        (None, None) => return Some(None),
    };
    reboot_policy(&merged, problems).map(Some)
}

/// A group's `roll:` settings: `max_surge` and `max_unavailable` as a count or a
/// percentage of the group's size, and `min_healthy_percent`.
fn roll_policy(node: &Node, problems: &mut Problems) -> Option<RollPolicy> {
    let mut map = MapReader::new(node, "roll policy", problems)?;
    let defaults = RollPolicy::default();
    let surge_node = map.get("max_surge");
    let max_surge = surge_node.map(|n| amount(n, problems));
    let max_unavailable = map.get("max_unavailable").map(|n| amount(n, problems));
    let min_healthy_percent = map.get("min_healthy_percent").map(|n| number(n, 0..=100u32, problems).map(|p| p.value));
    map.finish(problems);
    let policy = RollPolicy {
        max_surge: max_surge.unwrap_or(Some(defaults.max_surge))?,
        max_unavailable: max_unavailable.unwrap_or(Some(defaults.max_unavailable))?,
        min_healthy_percent: min_healthy_percent.unwrap_or(None),
    };
    if policy.max_surge.is_zero() && policy.max_unavailable.is_zero() {
        problems
            .error(yaml::loc(surge_node.unwrap_or(node)), "a roll with max_surge 0 and max_unavailable 0 can never replace an instance")
            .label("no room to replace instances")
            .hint("set max_surge (new instances first, e.g. 1 or 25%) or max_unavailable (e.g. 1)");
        return None;
    }
    Some(policy)
}

fn amount(node: &Node, problems: &mut Problems) -> Option<Amount> {
    let text = string(node, problems)?;
    match text.value.parse() {
        Ok(amount) => Some(amount),
        Err(message) => {
            problems.error(text.loc, message).label("invalid amount").hint("write a count such as 1, or a percentage of the group such as 25%");
            None
        }
    }
}

fn instance_type(node: &Node, problems: &mut Problems) -> Option<Spanned<String>> {
    let text = string(node, problems)?;
    let valid = text.value.split_once('.').is_some_and(|(family, size)| {
        family.starts_with(|c: char| c.is_ascii_lowercase())
            && family.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !size.is_empty()
            && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !valid {
        problems
            .error(text.loc, format!("`{}` is not an EC2 instance type", text.value))
            .label("invalid instance type")
            .hint("instance types look like `m5.large` or `c5n.2xlarge`");
        return None;
    }
    Some(text)
}

fn image_ref(node: &Node, problems: &mut Problems) -> Option<Spanned<ImageRef>> {
    let text = string(node, problems)?;
    if let Some(id) = text.value.strip_prefix("ami-") {
        let valid = matches!(id.len(), 8 | 17) && id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if !valid {
            problems
                .error(text.loc, format!("`{}` is not an AMI id", text.value))
                .label("invalid AMI id")
                .hint("AMI ids are `ami-` and 8 or 17 lowercase hex digits; or name an image from `images/`");
            return None;
        }
        return Some(Spanned::new(ImageRef::Ami(text.value), text.loc));
    }
    if !crate::paths::check_name(&text.value, Some(text.loc), "image", super::image::IMAGE_NAMES, problems) {
        return None;
    }
    Some(Spanned::new(ImageRef::Named(text.value), text.loc))
}

fn default_root_volume() -> RootVolume {
    RootVolume { size_gib: 32, volume_type: String::from("gp3"), encrypted: true, iops: None }
}

fn root_volume(node: &Node, problems: &mut Problems) -> Option<RootVolume> {
    let mut map = MapReader::new(node, "root volume", problems)?;
    let defaults = default_root_volume();
    let size_gib = map.get("size_gib").and_then(|n| number(n, 8..=16_384, problems)).map_or(defaults.size_gib, |s| s.value);
    let volume_type = map
        .get("type")
        .and_then(|n| {
            choice(n, &[("gp3", "gp3"), ("gp2", "gp2"), ("io1", "io1"), ("io2", "io2"), ("st1", "st1"), ("standard", "standard")], problems)
        })
        .map_or(defaults.volume_type, |t| t.value.to_owned());
    let encrypted = map.get("encrypted").and_then(|n| boolean(n, problems)).unwrap_or(defaults.encrypted);
    let iops = map.get("iops").and_then(|n| number(n, 100..=256_000, problems)).map(|s| s.value);
    map.finish(problems);
    Some(RootVolume { size_gib, volume_type, encrypted, iops })
}

fn instance_metadata(node: &Node, problems: &mut Problems) -> Option<InstanceMetadata> {
    let mut map = MapReader::new(node, "instance metadata", problems)?;
    let require_tokens = map.get("require_tokens").and_then(|n| boolean(n, problems)).unwrap_or(true);
    let hop_limit = map.get("hop_limit").and_then(|n| number(n, 1..=64, problems)).map_or(1, |s| s.value);
    map.finish(problems);
    Some(InstanceMetadata { require_tokens, hop_limit })
}

fn group_health_check(node: &Node, problems: &mut Problems) -> Option<GroupHealthCheck> {
    let mut map = MapReader::new(node, "group health check", problems)?;
    let elb = map.get("type").and_then(|n| choice(n, &[("ec2", false), ("elb", true)], problems)).is_some_and(|t| t.value);
    let grace_period = map.get("grace_period").and_then(|n| number(n, 0..=7200, problems)).map_or(300, |s| s.value);
    map.finish(problems);
    Some(GroupHealthCheck { elb, grace_period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_check_targets_follow_elb_syntax() {
        assert!(health_check_target_is_valid("TCP:30080"));
        assert!(health_check_target_is_valid("HTTP:10254/healthz"));
        assert!(!health_check_target_is_valid("HTTP:10254"));
        assert!(!health_check_target_is_valid("TCP:0"));
        assert!(!health_check_target_is_valid("tcp:80"));
    }

    #[test]
    fn decodes_defaults() {
        let text = "region: eu-west-1\ntags: {Team: platform}\nnetwork:\n  vpc_cidr: 10.0.0.0/16\n  availability_zones: [eu-west-1a]\n  subnets: {private: {type: private, prefix_length: 20}}\n";
        let mut problems = Problems::default();
        let node = crate::yaml::parse(0, text, &mut problems).unwrap();
        let env = environment("t", None, &node, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(env.network.nat_gateways, NatGateways::PerZone);
        let tags: BTreeMap<&str, &str> = env.tags.iter().map(|(k, v)| (k.as_str(), v.value.as_str())).collect();
        assert_eq!(tags, BTreeMap::from([("Team", "platform")]));
    }
}
