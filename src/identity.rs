//! Which resources are an environment's own. Names and the `kstack:environment` tag are not
//! enough: `dev` and `dev-eu` share a prefix, and two projects (or regions, for IAM) can each
//! have a `dev`. So every environment gets an [`Identity`] at its first plan or apply, a
//! random id kept in its state and tagged on everything it creates (`kstack:id`), and used
//! in the names AWS requires to be unique. Refresh, adoption and destroy go by [`Owner`]:
//! tags say whose a resource claims to be (anyone allowed to tag can copy them); state says
//! what kstack made. A resource is the environment's only if state recorded its id, or a
//! create journalled in state made it; one that merely wears the identity is left alone until
//! a person adopts it. Knows nothing of AWS calls.

use crate::naming::{TAG_ADDRESS, TAG_IDENTITY};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::ResourceGraph;
use crate::resource::{Address, Kind};

/// An environment's identity: 32 lowercase hex digits (128 random bits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Identity(String);

impl Identity {
    pub fn generate() -> Identity {
        Identity(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part that keeps AWS names apart (`dev-workers-3f9a2c7d`). Ownership is never
    /// decided by it alone where a tag can carry the whole identity.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl TryFrom<String> for Identity {
    type Error = String;

    fn try_from(text: String) -> Result<Identity, String> {
        if text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Identity(text))
        } else {
            Err(format!("`{text}` is not a kstack identity (32 lowercase hex digits)"))
        }
    }
}

impl From<Identity> for String {
    fn from(identity: Identity) -> String {
        identity.0
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a resource found under the environment's tag relates to the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// It carries the environment's identity and state recorded it, or a create journalled
    /// in state made it (its reply lost, or the run killed before recording it).
    Ours,
    /// It carries no identity, but state recorded it: made before identities existed, it is
    /// taken over (tagged) by the next apply.
    Recorded,
    /// It carries the environment's identity, but kstack never recorded making it: tags can
    /// be written by anyone allowed to tag, so it is left alone until adopted explicitly.
    Unrecorded,
    /// Another environment's: another identity, or none and unknown to state.
    Foreign { identity: Option<String> },
}

/// Whose resources a run may read, adopt, change and delete. Tags say whose a resource
/// claims to be; state says what kstack made.
#[derive(Debug, Clone)]
pub struct Owner {
    pub environment: String,
    /// None until the environment's first plan or apply: it then owns nothing by tag.
    pub identity: Option<Identity>,
    /// AWS ids state recorded (names, for launch configurations and groups).
    recorded: BTreeSet<String>,
    /// The address state records each resource at, by kind and id: what a resource's address
    /// is, whatever its `kstack:address` tag (or a launch configuration's name) says, so a
    /// record moved by `kstack state mv` moves the resource.
    addresses: BTreeMap<(Kind, String), Address>,
    /// Addresses of creates journalled in state and not yet recorded.
    intended: BTreeSet<String>,
    /// Everything carrying the identity counts as recorded: only for an explicit adoption.
    adopting: bool,
}

impl Owner {
    /// `records` are what state records: each resource's address, kind and AWS id.
    pub fn new(environment: &str, identity: Option<Identity>, records: impl IntoIterator<Item = (Address, Kind, String)>) -> Owner {
        let addresses: BTreeMap<(Kind, String), Address> = records.into_iter().map(|(address, kind, id)| ((kind, id), address)).collect();
        Owner {
            environment: environment.to_owned(),
            identity,
            recorded: addresses.keys().map(|(_, id)| id.clone()).collect(),
            addresses,
            intended: BTreeSet::new(),
            adopting: false,
        }
    }

    /// The ids of `kind` state records.
    pub fn recorded_ids(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.addresses.keys().filter(move |(k, _)| *k == kind).map(|(_, id)| id.as_str())
    }

    /// The address state records a resource of `kind` with `id` at.
    pub fn recorded_address(&self, kind: Kind, id: &str) -> Option<&Address> {
        self.addresses.get(&(kind, id.to_owned()))
    }

    /// With the addresses of creates journalled in state (see `state::State::intents`).
    pub fn with_intents(mut self, addresses: impl IntoIterator<Item = String>) -> Owner {
        self.intended = addresses.into_iter().collect();
        self
    }

    /// Takes everything carrying the identity as the environment's: what `kstack state adopt`
    /// and `kstack state identity --recover` read, a person having said so.
    pub fn adopting(mut self) -> Owner {
        self.adopting = true;
        self
    }

    /// Judges a resource found under the environment's tag, name or IAM path by its AWS id
    /// and tags (its address is its `kstack:address` tag).
    pub fn judge(&self, id: &str, tags: &BTreeMap<String, String>) -> Ownership {
        let recorded = self.recorded.contains(id);
        match (tags.get(TAG_IDENTITY), &self.identity) {
            (Some(tagged), Some(ours)) if tagged == ours.as_str() => {
                let intended = tags.get(TAG_ADDRESS).is_some_and(|address| self.intended.contains(address));
                if recorded || intended || self.adopting {
                    Ownership::Ours
                } else {
                    Ownership::Unrecorded
                }
            }
            (Some(tagged), _) => Ownership::Foreign { identity: Some(tagged.clone()) },
            (None, _) if recorded => Ownership::Recorded,
            (None, _) => Ownership::Foreign { identity: None },
        }
    }

    pub fn owns(&self, id: &str, tags: &BTreeMap<String, String>) -> bool {
        matches!(self.judge(id, tags), Ownership::Ours | Ownership::Recorded)
    }

    /// Whether state recorded this id (a recorded resource wins over another claiming its
    /// address).
    pub fn recorded(&self, id: &str) -> bool {
        self.recorded.contains(id)
    }

    /// Whether an instance is one of the environment's: launched by a group state recorded
    /// (`aws:autoscaling:groupName` is AWS's own tag, which no one else can write), and not
    /// carrying another identity.
    pub fn owns_instance(&self, tags: &BTreeMap<String, String>, group: Option<&str>) -> bool {
        let other_identity = tags.get(TAG_IDENTITY).is_some_and(|tagged| self.identity.as_ref().is_none_or(|ours| ours.as_str() != tagged));
        !other_identity && group.is_some_and(|g| self.recorded.contains(g))
    }

    /// The IAM path of the environment's roles and instance profiles: IAM is global, so the
    /// path names the identity, not just the environment.
    pub fn iam_path(&self) -> Option<String> {
        self.identity.as_ref().map(|identity| format!("/kstack/{}/{identity}/", self.environment))
    }

    /// Where the environment's roles and profiles of every identity are listed (roles from
    /// before identities live right there).
    pub fn iam_path_prefix(&self) -> String {
        format!("/kstack/{}/", self.environment)
    }

    /// The group of a launch configuration named `<env>-<group>-<digest>-<short>` (or without
    /// `-<short>` before identities), if it is the environment's. Launch configurations cannot
    /// be tagged: a name is the environment's only if it parses exactly and carries the
    /// identity's short form, or if state recorded it.
    pub fn launch_configuration_group<'a>(&self, name: &'a str) -> Option<&'a str> {
        let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let rest = name.strip_prefix(&self.environment)?.strip_prefix('-')?;
        let (rest, short) = match rest.rsplit_once('-') {
            Some((front, last)) if is_hex(last, 8) => (front, Some(last)),
            _ => (rest, None),
        };
        let (group, digest) = rest.rsplit_once('-')?;
        let carries_identity = short.is_some() && short == self.identity.as_ref().map(Identity::short);
        let ours = carries_identity || self.recorded.contains(name);
        (ours && is_hex(digest, 12) && !group.is_empty()).then_some(group)
    }
}

/// The length AWS allows the names of kinds it requires to be unique in an account (IAM) or
/// region: these names carry the identity's short form so that environments named alike
/// never collide.
fn unique_name_limit(kind: Kind) -> Option<usize> {
    match kind {
        Kind::LoadBalancer => Some(32),
        Kind::IamRole => Some(64),
        Kind::InstanceProfile | Kind::LaunchTemplate => Some(128),
        Kind::LaunchConfiguration | Kind::AutoScalingGroup => Some(255),
        _ => None,
    }
}

/// The length of the short form, and of the digest a shortened name carries.
const SHORT: usize = 8;

/// How much of a name a shortened one keeps: the rest holds `-<digest>-<short>`.
fn kept_start(name: &str, limit: usize) -> &str {
    let end = name.char_indices().nth(limit - 2 * (1 + SHORT)).map_or(name.len(), |(i, _)| i);
    name[..end].trim_end_matches('-')
}

/// `<name>-<short>`; a name too long for that keeps its start (for people) and a digest of
/// the whole (so long names sharing a start stay apart): `<start>-<digest>-<short>`.
fn unique_name(name: &str, identity: &Identity, limit: usize) -> String {
    let short = identity.short();
    if name.len() + 1 + short.len() <= limit {
        return format!("{name}-{short}");
    }
    use sha2::{Digest, Sha256};
    let digest = format!("{:x}", Sha256::digest(name.as_bytes()));
    format!("{}-{}-{short}", kept_start(name, limit), &digest[..SHORT])
}

/// What every name of `kind` that `environment` makes starts with (`<env>-`, shortened as a
/// long name is), for listings that cannot filter by tag (classic ELBs).
pub fn name_prefix(environment: &str, kind: Kind) -> String {
    let prefix = format!("{environment}-");
    match unique_name_limit(kind) {
        // A shortened name keeps less than the whole prefix.
        Some(limit) if prefix.chars().count() > limit - 2 * (1 + SHORT) => kept_start(&prefix, limit).to_owned(),
        _ => prefix,
    }
}

/// Written in a tag's value, the environment's identity: a name no other environment, project
/// or region shares, such as the Kubernetes cluster name IAM conditions compare
/// (`KubernetesCluster: dev-${kstack:id}`).
pub const IDENTITY_IN_TAG: &str = "${kstack:id}";

/// Stamps the identity on a compiled graph: the `kstack:id` tag on every resource and the
/// short form on unique names. Runs after images are resolved (which renames launch
/// configurations for their content).
pub fn stamp(graph: &mut ResourceGraph, identity: &Identity) {
    for resource in graph.resources_mut() {
        for value in resource.tags.values_mut().filter(|v| v.contains(IDENTITY_IN_TAG)) {
            *value = value.replace(IDENTITY_IN_TAG, identity.as_str());
        }
        resource.tags.insert(TAG_IDENTITY.to_owned(), identity.as_str().to_owned());
        match unique_name_limit(resource.kind()) {
            // Launch configurations are found by parsing their names: never shortened (env
            // and group names are far below the limit).
            Some(_) if resource.kind() == Kind::LaunchConfiguration => resource.name = format!("{}-{}", resource.name, identity.short()),
            Some(limit) => resource.name = unique_name(&resource.name, identity, limit),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::VpcSpec;

    fn identity(text: &str) -> Identity {
        Identity::try_from(format!("{text:0<32}")).unwrap()
    }

    /// State's records of `ids`, each as a resource of `kind`.
    fn records(kind: Kind, ids: &[&str]) -> Vec<(Address, Kind, String)> {
        ids.iter().map(|id| (Address::new(kind, id), kind, (*id).to_owned())).collect()
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn identities_are_32_hex_digits() {
        assert_eq!(Identity::generate().as_str().len(), 32);
        assert_ne!(Identity::generate(), Identity::generate());
        assert!(Identity::try_from(String::from("dev")).is_err());
        assert!(Identity::try_from("A".repeat(32)).is_err());
        assert_eq!(identity("3f9a2c7d").short(), "3f9a2c7d");
    }

    #[test]
    fn only_a_record_or_a_journalled_create_makes_a_resource_ours_never_tags_alone() {
        let owner = Owner::new("dev", Some(identity("aa")), records(Kind::Vpc, &["vpc-recorded"])).with_intents([String::from("vpc.new")]);
        let ours = tags(&[(TAG_IDENTITY, identity("aa").as_str()), (TAG_ADDRESS, "vpc.main")]);
        let intended = tags(&[(TAG_IDENTITY, identity("aa").as_str()), (TAG_ADDRESS, "vpc.new")]);
        let theirs = tags(&[(TAG_IDENTITY, identity("bb").as_str())]);
        assert_eq!(owner.judge("vpc-recorded", &ours), Ownership::Ours);
        assert_eq!(owner.judge("vpc-1", &intended), Ownership::Ours, "made by a create state journalled");
        assert_eq!(owner.judge("vpc-1", &ours), Ownership::Unrecorded, "the identity's tags alone, which anyone can write");
        assert!(!owner.owns("vpc-1", &ours));
        assert_eq!(owner.clone().adopting().judge("vpc-1", &ours), Ownership::Ours, "adopted explicitly");
        assert_eq!(owner.judge("vpc-recorded", &tags(&[])), Ownership::Recorded);
        assert_eq!(owner.judge("vpc-2", &tags(&[])), Ownership::Foreign { identity: None });
        // A recorded id never makes another environment's tagged resource ours.
        assert!(matches!(owner.judge("vpc-recorded", &theirs), Ownership::Foreign { identity: Some(_) }));
        assert!(!owner.owns("vpc-recorded", &theirs));
        // Before its first plan an environment owns only what state recorded.
        let fresh = Owner::new("dev", None, []);
        assert!(!fresh.owns("vpc-1", &ours));
    }

    #[test]
    fn instances_are_ours_when_a_recorded_group_launched_them() {
        let owner = Owner::new("dev", Some(identity("aa")), records(Kind::AutoScalingGroup, &["dev-workers"]));
        let ours = tags(&[(TAG_IDENTITY, identity("aa").as_str())]);
        assert!(owner.owns_instance(&tags(&[]), Some("dev-workers")));
        assert!(owner.owns_instance(&ours, Some("dev-workers")));
        assert!(!owner.owns_instance(&ours, Some("dev-workers-bbbbbbbb")), "the identity's tag without a recorded group");
        assert!(!owner.owns_instance(&ours, None));
        let theirs = tags(&[(TAG_IDENTITY, identity("bb").as_str())]);
        assert!(!owner.owns_instance(&theirs, Some("dev-workers")));
    }

    #[test]
    fn iam_paths_name_the_identity() {
        let owner = Owner::new("dev", Some(identity("aa")), []);
        assert_eq!(owner.iam_path().unwrap(), format!("/kstack/dev/{}/", identity("aa")));
        assert!(owner.iam_path().unwrap().starts_with(&owner.iam_path_prefix()));
        assert!(!format!("/kstack/dev-eu/{}/", identity("aa")).starts_with(&owner.iam_path_prefix()));
    }

    #[test]
    fn launch_configuration_names_match_exactly_never_by_prefix() {
        let recorded = String::from("dev-workers-0123456789ab");
        let owner = Owner::new("dev", Some(identity("aa")), records(Kind::LaunchConfiguration, &[&recorded, "dev-web-0123456789ab-cc000000"]));
        assert_eq!(owner.launch_configuration_group("dev-workers-0123456789ab-aa000000"), Some("workers"));
        assert_eq!(owner.launch_configuration_group("dev-spot-workers-0123456789ab-aa000000"), Some("spot-workers"));
        assert_eq!(owner.launch_configuration_group(&recorded), Some("workers"));
        assert_eq!(owner.launch_configuration_group("dev-web-0123456789ab-cc000000"), Some("web"), "recorded");
        // Another environment's: another identity, another environment sharing the prefix, or
        // an old-style name state never recorded.
        assert_eq!(owner.launch_configuration_group("dev-workers-0123456789ab-bb000000"), None);
        assert_eq!(owner.launch_configuration_group("dev-eu-workers-0123456789ab-bb000000"), None);
        assert_eq!(owner.launch_configuration_group("devx-workers-0123456789ab-aa000000"), None);
        assert_eq!(owner.launch_configuration_group("dev-masters-0123456789ab"), None);
        assert_eq!(owner.launch_configuration_group("dev-workers"), None);
    }

    #[test]
    fn stamping_tags_everything_and_suffixes_unique_names() {
        use crate::resource::{Address, Resource, Spec};
        let vpc = Resource {
            address: Address::new(Kind::Vpc, "main"),
            name: String::from("dev"),
            tags: tags(&[("KubernetesCluster", "dev-${kstack:id}")]),
            spec: Spec::Vpc(VpcSpec { cidr: "10.0.0.0/16".parse().unwrap() }),
            after: Vec::new(),
        };
        let mut graph = ResourceGraph::build(vec![vpc]).unwrap();
        stamp(&mut graph, &identity("aa"));
        let vpc = graph.in_dependency_order().next().unwrap();
        assert_eq!(vpc.tags[TAG_IDENTITY], identity("aa").as_str());
        assert_eq!(vpc.tags["KubernetesCluster"], format!("dev-{}", identity("aa")), "the identity where a tag names it");
        assert_eq!(vpc.name, "dev", "VPC names need not be unique");
    }

    #[test]
    fn unique_names_fit_their_limit_and_stay_apart() {
        let id = identity("3f9a2c7d");
        assert_eq!(unique_name("dev-ingress", &id, 32), "dev-ingress-3f9a2c7d");
        let long = unique_name("staging-eu-west-public-ingress-for-the-cluster", &id, 32);
        let other = unique_name("staging-eu-west-public-ingress-for-the-admins", &id, 32);
        assert_eq!(long.len(), 32, "{long}");
        assert!(long.starts_with("staging-eu-wes-") && long.ends_with("-3f9a2c7d"), "{long}");
        assert_ne!(long, other);
        assert_eq!(unique_name("staging-eu-west-public-ingress-for-the-cluster", &id, 32), long, "stable");
        // A listing by prefix finds every name an environment makes, long or short.
        for (environment, name) in [
            ("dev", "ingress"),
            ("staging-eu-west", "public-ingress-for-the-cluster"),
            ("production-eu1", "ingress-internal"),
            ("a-very-long-environment-name-indeed", "web"),
        ] {
            let made = unique_name(&format!("{environment}-{name}"), &id, 32);
            assert!(made.len() <= 32, "{made}");
            assert!(made.starts_with(&name_prefix(environment, Kind::LoadBalancer)), "{made} vs {}", name_prefix(environment, Kind::LoadBalancer));
        }
    }
}
