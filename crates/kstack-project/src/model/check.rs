//! Checks that relate parts of the model: references, sizes, names and the network layout.

use std::collections::BTreeSet;
use std::path::Path;

use super::network::{self, SubnetLayout};
use super::*;
use crate::diagnostics::{expected_one_of, Problems};

/// Names a user may not give a variable, because templates already define them.
pub const RESERVED_VARIABLES: [&str; 3] = ["env", "region", "group"];

/// Checks the environment and returns its subnet layout.
pub fn check(env: &Environment, images_dir: &Path, problems: &mut Problems) -> Vec<SubnetLayout> {
    check_zones(env, problems);
    let subnets = network::layout(&env.network, problems);
    check_nat(&env.network, problems);
    check_names(env, problems);
    check_tags(&env.tags, problems);
    for (_, tags) in &env.resource_tags {
        check_tags(tags, problems);
    }
    for (name, value) in &env.variables {
        if RESERVED_VARIABLES.contains(&name.as_str()) {
            problems
                .error(value.loc, format!("variable `{name}` is reserved"))
                .hint("templates already receive `env`, `region` and `group`; choose another name");
        }
    }
    check_roll_hooks(env, problems);
    let refs = References::new(env);
    for group in &env.security_groups {
        for rule in group.ingress.iter().chain(group.egress.iter().flatten()) {
            for peer in &rule.groups {
                refs.security_group(peer, problems);
            }
        }
    }
    for lb in &env.load_balancers {
        refs.subnets(&lb.subnets, problems);
        refs.security_groups(&lb.security_groups, problems);
        for group in &lb.node_groups {
            refs.node_group(group, problems);
        }
        check_listeners(lb, problems);
    }
    for group in &env.roll_order {
        refs.node_group(group, problems);
    }
    check_dns(env, &refs, problems);
    for group in &env.node_groups {
        refs.subnets(&group.subnets, problems);
        refs.security_groups(&group.security_groups, problems);
        if let Some(role) = &group.iam_role {
            refs.iam_role_with_profile(role, problems);
        }
        check_sizes(group, problems);
        check_tags(&group.tags, problems);
        if let ImageRef::Named(name) = &group.image.value {
            check_image_exists(name, group.image.loc, images_dir, problems);
        }
    }
    subnets
}

fn check_zones(env: &Environment, problems: &mut Problems) {
    let region = &env.region.value;
    let mut seen = BTreeSet::new();
    for zone in &env.network.availability_zones {
        let suffix = zone.value.strip_prefix(region.as_str());
        let valid = suffix.is_some_and(|s| s.len() == 1 && s.chars().all(|c| c.is_ascii_lowercase()));
        if !valid {
            problems
                .error(zone.loc, format!("`{}` is not an availability zone of {region}", zone.value))
                .label("not in this region")
                .hint(format!("zones of {region} are named `{region}a`, `{region}b`, ..."));
        }
        if !seen.insert(zone.value.as_str()) {
            problems.error(zone.loc, format!("availability zone `{}` is listed twice", zone.value)).hint("remove the repeated zone");
        }
    }
    if env.network.availability_zones.is_empty() {
        problems
            .error(env.network.loc, "the network has no availability zones")
            .hint("list at least one zone, e.g. `availability_zones: [eu-west-1a]`; three survive a zone outage");
    }
}

fn check_nat(network: &Network, problems: &mut Problems) {
    let has_private = network.subnet_tiers.iter().any(|t| !t.public);
    let has_public = network.subnet_tiers.iter().any(|t| t.public);
    if has_private && !has_public && network.nat_gateways != NatGateways::None {
        problems
            .error(network.loc, "NAT gateways need a public subnet tier to live in")
            .hint("add a tier with `type: public`, or set `nat_gateways: none` if private subnets need no internet access");
    }
}

/// Names become parts of AWS names and tags, so they are kept to a safe alphabet.
fn check_names(env: &Environment, problems: &mut Problems) {
    let names = env
        .security_groups
        .iter()
        .map(|g| (&g.name, "security group"))
        .chain(env.iam_roles.iter().map(|r| (&r.name, "IAM role")))
        .chain(env.load_balancers.iter().map(|l| (&l.name, "load balancer")))
        .chain(env.node_groups.iter().map(|g| (&g.name, "node group")))
        .chain(env.network.subnet_tiers.iter().map(|t| (&t.name, "subnet tier")));
    for (name, what) in names {
        let valid = name.value.starts_with(|c: char| c.is_ascii_lowercase())
            && name.value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.value.len() <= 40;
        if !valid {
            problems
                .error(name.loc, format!("`{}` is not a valid {what} name", name.value))
                .label("invalid name")
                .hint("names start with a lowercase letter and use lowercase letters, digits and `-`, at most 40 characters");
        }
    }
}

/// Aliases name load balancers of the environment, and no name and type is kept twice.
fn check_dns(env: &Environment, refs: &References<'_>, problems: &mut Problems) {
    let balancers: Vec<&str> = env.load_balancers.iter().map(|l| l.name.value.as_str()).collect();
    for (i, record) in env.dns.iter().enumerate() {
        if let RecordTarget::Alias(balancer) = &record.target {
            if !balancers.contains(&balancer.value.as_str()) {
                refs.dangling(balancer, "load balancer", &balancers, problems);
            }
        }
        let same = |other: &&DnsRecord| other.zone.value == record.zone.value && other.name.value == record.name.value;
        if let Some(earlier) = env.dns[..i].iter().find(|o| same(o) && o.record_type.value == record.record_type.value) {
            problems
                .error(
                    record.name.loc,
                    format!("`{}` {} is also record `{}`", record.name.value, record.record_type.value.as_str(), earlier.key.value),
                )
                .label("duplicate")
                .hint("a name and type is one record: merge their values, or remove one");
        } else if let Some(other) =
            env.dns[..i].iter().find(|o| same(o) && (o.record_type.value == RecordType::CNAME) != (record.record_type.value == RecordType::CNAME))
        {
            problems
                .error(record.name.loc, format!("`{}` cannot be a CNAME and another type (record `{}`)", record.name.value, other.key.value))
                .hint("a CNAME is the only record of its name");
        }
    }
}

fn check_tags(tags: &std::collections::BTreeMap<String, Spanned<String>>, problems: &mut Problems) {
    for (key, value) in tags {
        let reserved = ["aws:", "kstack:"].iter().find(|p| key.to_ascii_lowercase().starts_with(*p));
        if let Some(prefix) = reserved {
            problems
                .error(value.loc, format!("tag key `{key}` uses the reserved prefix `{prefix}`"))
                .hint("AWS reserves `aws:` and kstack sets `kstack:` tags itself; choose another key");
        }
        if key.len() > 128 || value.value.len() > 256 {
            problems.error(value.loc, format!("tag `{key}` is too long")).hint("AWS allows tag keys of up to 128 characters and values of up to 256");
        }
    }
}

fn check_sizes(group: &NodeGroup, problems: &mut Problems) {
    let (min, desired, max) = (&group.min, &group.desired, &group.max);
    if min.value > max.value {
        problems
            .error(min.loc, format!("min ({}) is greater than max ({})", min.value, max.value))
            .label("greater than max")
            .hint(format!("node group `{}` needs min <= desired <= max", group.name.value));
    } else if desired.value < min.value || desired.value > max.value {
        problems
            .error(desired.loc, format!("desired ({}) is outside min..max ({}..{})", desired.value, min.value, max.value))
            .label("outside min..max")
            .hint(format!("node group `{}` needs min <= desired <= max", group.name.value));
    }
}

fn check_listeners(lb: &LoadBalancer, problems: &mut Problems) {
    let mut ports = BTreeSet::new();
    for listener in &lb.listeners {
        if !ports.insert(listener.port) {
            problems
                .error(listener.loc, format!("load balancer `{}` has two listeners on port {}", lb.name.value, listener.port))
                .hint("each listener needs its own load balancer port");
        }
    }
}

fn check_image_exists(name: &str, loc: Loc, images_dir: &Path, problems: &mut Problems) {
    let path = images_dir.join(format!("{name}.yaml"));
    if path.is_file() {
        return;
    }
    let known = list_yaml_stems(images_dir);
    let known_refs: Vec<&str> = known.iter().map(String::as_str).collect();
    problems
        .error(loc, format!("image `{name}` is not defined: there is no {}", crate::diagnostics::display_path(&path)))
        .label("unknown image")
        .hint(format!("{}; or use an AMI id such as `ami-0abcdef1234567890`", expected_one_of(name, &known_refs)));
}

/// File names without `.yaml` of a directory's YAML files, sorted.
pub fn list_yaml_stems(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            (path.extension()? == "yaml").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

/// Name lookups shared by the reference checks.
struct References<'a> {
    env: &'a Environment,
    security_groups: Vec<&'a str>,
    node_groups: Vec<&'a str>,
    tiers: Vec<&'a str>,
    zones: Vec<&'a str>,
}

impl<'a> References<'a> {
    fn new(env: &'a Environment) -> Self {
        References {
            env,
            security_groups: env.security_groups.iter().map(|g| g.name.value.as_str()).collect(),
            node_groups: env.node_groups.iter().map(|g| g.name.value.as_str()).collect(),
            tiers: env.network.subnet_tiers.iter().map(|t| t.name.value.as_str()).collect(),
            zones: env.network.availability_zones.iter().map(|z| z.value.as_str()).collect(),
        }
    }

    fn dangling(&self, name: &Spanned<String>, what: &'static str, known: &[&str], problems: &mut Problems) {
        // An entry that failed to decode exists; its own problems are already reported.
        if self.env.undecoded.contains(&(what, name.value.clone())) {
            return;
        }
        problems
            .error(name.loc, format!("{what} `{}` is not defined", name.value))
            .label(format!("unknown {what}"))
            .hint(expected_one_of(&name.value, known));
    }

    fn security_group(&self, name: &Spanned<String>, problems: &mut Problems) {
        if !self.security_groups.contains(&name.value.as_str()) {
            self.dangling(name, "security group", &self.security_groups, problems);
        }
    }

    fn security_groups(&self, names: &[Spanned<String>], problems: &mut Problems) {
        for (i, name) in names.iter().enumerate() {
            self.security_group(name, problems);
            if names[..i].iter().any(|n| n.value == name.value) {
                problems.error(name.loc, format!("security group `{}` is listed twice", name.value)).hint("remove the repeated name");
            }
        }
    }

    fn node_group(&self, name: &Spanned<String>, problems: &mut Problems) {
        if !self.node_groups.contains(&name.value.as_str()) {
            self.dangling(name, "node group", &self.node_groups, problems);
        }
    }

    fn subnets(&self, selection: &SubnetSelection, problems: &mut Problems) {
        if !self.tiers.contains(&selection.tier.value.as_str()) {
            self.dangling(&selection.tier, "subnet tier", &self.tiers, problems);
        }
        for zone in &selection.zones {
            if !self.zones.contains(&zone.value.as_str()) {
                self.dangling(zone, "availability zone", &self.zones, problems);
            }
        }
    }

    fn iam_role_with_profile(&self, name: &Spanned<String>, problems: &mut Problems) {
        let roles: Vec<&str> = self.env.iam_roles.iter().map(|r| r.name.value.as_str()).collect();
        match self.env.iam_roles.iter().find(|r| r.name.value == name.value) {
            None => self.dangling(name, "IAM role", &roles, problems),
            Some(role) if !role.instance_profile => {
                problems.error(name.loc, format!("IAM role `{}` has no instance profile", name.value)).hint(format!(
                    "node groups use a role through its instance profile; remove `instance_profile: false` from role `{}` (line {})",
                    name.value, role.name.loc.line
                ));
            }
            Some(_) => {}
        }
    }
}

/// Renders each roll hook with stand-in values, so a typo surfaces at `validate`, not after
/// the first surge of a roll.
fn check_roll_hooks(env: &Environment, problems: &mut Problems) {
    use minijinja::Value;
    let renderer = crate::template::Renderer::with_hint(ROLL_HOOK_HINT);
    let group = env.node_groups.first().map_or("group", |g| g.name.value.as_str());
    let instance = Value::from_iter([("id", "i-0123456789abcdef0"), ("address", "10.0.0.1"), ("name", "ip-10-0-0-1.ec2.internal")]);
    for (name, hook) in env.roll_hooks.named() {
        let Some(hook) = hook else { continue };
        let mut context =
            std::collections::BTreeMap::from([("env".to_owned(), Value::from(env.name.as_str())), ("group".to_owned(), Value::from(group))]);
        if name != "validate" {
            context.insert("instance".to_owned(), instance.clone());
        }
        renderer.render(&hook.command, &context, problems);
    }
}

/// What roll hooks see, for problems in them.
pub const ROLL_HOOK_HINT: &str = "roll hooks see `env`, `group` and, except `validate`, `instance` (`id`, `address`, `name`)";
