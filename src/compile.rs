//! Compiles a checked environment into its resource graph. Pure: no I/O.

use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_PROJECT};
use crate::resource::{
    AutoScalingGroupSpec, DnsRecordSpec, ElasticIpSpec, IamRoleSpec, InstanceProfileSpec, InternetGatewaySpec, LoadBalancerSpec, NatGatewaySpec,
    RouteTableSpec, SecurityGroupRulesSpec, SecurityGroupSpec, SubnetSpec, VpcSpec,
};
use std::collections::BTreeMap;

use crate::diagnostics::{ProblemBuilder, Problems, Spanned};
use crate::graph::ResourceGraph;
use crate::model::network::{SubnetLayout, SubnetPlace};
use crate::model::{Checked, Environment, ImageRef, LaunchMechanism, NatGateways, NodeGroup, RecordTarget, Rule, SubnetSelection, Vpc};
use crate::resource::{Address, ImageSpec, Kind, LaunchSpec, Peer, Resource, Route, RuleSpec, Spec, UserData};
use crate::template::Renderer;
use crate::user_data;

pub fn compile(checked: &Checked, problems: &mut Problems) -> Option<ResourceGraph> {
    let mut compiler = Compiler { env: &checked.environment, subnets: &checked.subnets, resources: Vec::new() };
    let existing = match &checked.environment.network.vpc {
        Vpc::Cidr(_) => {
            compiler.network();
            BTreeMap::new()
        }
        Vpc::Existing(id) => compiler.existing_network(&id.value),
    };
    compiler.security_groups();
    compiler.iam();
    compiler.load_balancers();
    compiler.node_groups(problems);
    compiler.dns();
    compiler.resource_tags(problems);
    match ResourceGraph::build_with_existing(compiler.resources, existing) {
        Ok(graph) => {
            check_protected(&checked.environment.protect, &graph, problems);
            Some(graph)
        }
        Err(error) => {
            problems
                .general(format!("internal error while building the resource graph: {error}"))
                .hint("this is a bug in kstack; please report it with the environment file");
            None
        }
    }
}

/// Every address `protect:` lists is a resource of the model: a typo protects nothing.
fn check_protected(protect: &crate::model::Protection, graph: &ResourceGraph, problems: &mut Problems) {
    let crate::model::Protection::Addresses(addresses) = protect else { return };
    for address in addresses.iter().filter(|a| graph.get(&Address::from(a.value.as_str())).is_none()) {
        not_a_resource(address, graph.in_dependency_order().map(|r| r.address.as_str()), problems).label("nothing to protect");
    }
}

/// The problem of an address written in the model (`protect:`, `resource_tags:`) that names no
/// resource of it, with the closest of `known`.
fn not_a_resource<'a, 'p>(address: &Spanned<String>, known: impl IntoIterator<Item = &'a str>, problems: &'p mut Problems) -> ProblemBuilder<'p> {
    let hint = match crate::diagnostics::did_you_mean(&address.value, known) {
        Some(close) => format!("did you mean `{close}`?"),
        None => String::from("`kstack graph <env> --format json` lists every address"),
    };
    problems.error(address.loc, format!("`{}` is not a resource of this environment", address.value)).hint(hint)
}

struct Compiler<'a> {
    env: &'a Environment,
    subnets: &'a [SubnetLayout],
    resources: Vec<Resource>,
}

fn vpc() -> Address {
    Address::new(Kind::Vpc, "main")
}

fn subnet_address(tier: &str, zone: &str) -> Address {
    Address::new(Kind::Subnet, &format!("{tier}.{zone}"))
}

fn security_group_address(name: &str) -> Address {
    Address::new(Kind::SecurityGroup, name)
}

impl Compiler<'_> {
    fn add(&mut self, kind: Kind, key: &str, aws_name: String, spec: Spec) -> Address {
        self.add_tagged(kind, key, aws_name, spec, &BTreeMap::new())
    }

    fn add_tagged(
        &mut self,
        kind: Kind,
        key: &str,
        aws_name: String,
        spec: Spec,
        extra_tags: &BTreeMap<String, crate::diagnostics::Spanned<String>>,
    ) -> Address {
        let address = Address::new(kind, key);
        let mut tags: BTreeMap<String, String> = self.env.tags.iter().chain(extra_tags).map(|(k, v)| (k.clone(), v.value.clone())).collect();
        tags.insert(String::from("Name"), aws_name.clone());
        tags.insert(TAG_ENVIRONMENT.to_owned(), self.env.name.clone());
        tags.insert(TAG_ADDRESS.to_owned(), address.to_string());
        if let Some(project) = &self.env.project {
            tags.insert(TAG_PROJECT.to_owned(), project.clone());
        }
        self.resources.push(Resource { address: address.clone(), name: aws_name, tags, spec, after: Vec::new() });
        address
    }

    fn aws_name(&self, name: &str) -> String {
        format!("{}-{name}", self.env.name)
    }

    /// `resource_tags:`: a resource's own tags in place of the environment's and its `Name`;
    /// kstack's own are kept.
    fn resource_tags(&mut self, problems: &mut Problems) {
        for (address, tags) in &self.env.resource_tags {
            let Some(resource) = self.resources.iter_mut().find(|r| r.address.as_str() == address.value) else {
                not_a_resource(address, self.resources.iter().map(|r| r.address.as_str()), problems);
                continue;
            };
            if !resource.kind().has_own_tags() {
                problems
                    .error(address.loc, format!("`{}` has no tags of its own", address.value))
                    .hint("launch configurations, security group rules and DNS records carry no tags");
                continue;
            }
            resource.tags.retain(|key, _| key.starts_with("kstack:"));
            resource.tags.extend(tags.iter().map(|(k, v)| (k.clone(), v.value.clone())));
        }
    }

    /// A VPC someone else owns and its subnets, at the addresses kstack's own would have, so
    /// what refers to them compiles alike: by address, with their ids.
    fn existing_network(&self, vpc_id: &str) -> BTreeMap<Address, String> {
        let subnets = self.subnets.iter().filter_map(|s| match &s.place {
            SubnetPlace::Existing(id) => Some((subnet_address(&s.tier, &s.zone), id.clone())),
            SubnetPlace::Block(_) => None,
        });
        std::iter::once((vpc(), vpc_id.to_owned())).chain(subnets).collect()
    }

    fn network(&mut self) {
        let env_name = self.env.name.clone();
        let network = &self.env.network;
        let Vpc::Cidr(vpc_cidr) = &network.vpc else { return };
        self.add(Kind::Vpc, "main", env_name.clone(), Spec::Vpc(VpcSpec { cidr: vpc_cidr.value }));
        let has_public = self.subnets.iter().any(|s| s.public);
        let internet_gateway =
            has_public.then(|| self.add(Kind::InternetGateway, "main", env_name.clone(), Spec::InternetGateway(InternetGatewaySpec { vpc: vpc() })));
        let nat_zones: Vec<&str> = match network.nat_gateways {
            NatGateways::None => Vec::new(),
            NatGateways::Single => network.availability_zones.iter().take(1).map(|z| z.value.as_str()).collect(),
            NatGateways::PerZone => network.availability_zones.iter().map(|z| z.value.as_str()).collect(),
        };
        let has_private = self.subnets.iter().any(|s| !s.public);
        let first_public_tier = self.subnets.iter().find(|s| s.public).map(|s| s.tier.clone());
        let mut nat_by_zone = BTreeMap::new();
        if let (true, Some(public_tier)) = (has_private, &first_public_tier) {
            for zone in &nat_zones {
                let eip = self.add(Kind::ElasticIp, &format!("nat.{zone}"), self.aws_name(&format!("nat-{zone}")), Spec::ElasticIp(ElasticIpSpec {}));
                let nat = self.add(
                    Kind::NatGateway,
                    zone,
                    self.aws_name(&format!("nat-{zone}")),
                    Spec::NatGateway(NatGatewaySpec { subnet: subnet_address(public_tier, zone), elastic_ip: eip }),
                );
                nat_by_zone.insert(zone.to_string(), nat);
            }
        }
        // Public tiers share one route table to the internet gateway. Private tiers get one
        // per zone when each zone has its own NAT gateway, so traffic stays in its zone.
        let tiers: Vec<(String, bool)> = network.subnet_tiers.iter().map(|t| (t.name.value.clone(), t.public)).collect();
        for (tier, public) in tiers {
            let per_zone = !public && nat_by_zone.len() > 1;
            let mut shared_table = None;
            for (subnet, cidr) in self.subnets.iter().filter(|s| s.tier == tier).filter_map(|s| Some((s, s.block()?))) {
                let target =
                    if public { internet_gateway.clone() } else { nat_by_zone.get(&subnet.zone).or_else(|| nat_by_zone.values().next()).cloned() };
                let routes: Vec<Route> =
                    target.into_iter().map(|target| Route { destination: "0.0.0.0/0".parse().expect("valid CIDR"), target }).collect();
                let table = match (&shared_table, per_zone) {
                    (Some(table), false) => Clone::clone(table),
                    _ => {
                        let key = if per_zone { format!("{tier}.{}", subnet.zone) } else { tier.clone() };
                        let name = self.aws_name(&key.replace('.', "-"));
                        let table = self.add(Kind::RouteTable, &key, name, Spec::RouteTable(RouteTableSpec { vpc: vpc(), routes }));
                        shared_table = Some(table.clone());
                        table
                    }
                };
                self.add(
                    Kind::Subnet,
                    &format!("{tier}.{}", subnet.zone),
                    self.aws_name(&format!("{tier}-{}", subnet.zone)),
                    Spec::Subnet(SubnetSpec { vpc: vpc(), cidr, zone: subnet.zone.clone(), map_public_ip_on_launch: public, route_table: table }),
                );
            }
        }
    }

    fn security_groups(&mut self) {
        for group in &self.env.security_groups {
            let name = &group.name.value;
            let address = self.add(
                Kind::SecurityGroup,
                name,
                self.aws_name(name),
                Spec::SecurityGroup(SecurityGroupSpec { vpc: vpc(), description: group.description.clone() }),
            );
            let rules = |rules: &[Rule]| -> Vec<RuleSpec> {
                let mut specs: Vec<RuleSpec> = rules.iter().flat_map(|r| rule_specs(r, &address)).collect();
                specs.sort();
                specs.dedup();
                specs
            };
            let spec = Spec::SecurityGroupRules(SecurityGroupRulesSpec {
                group: address.clone(),
                ingress: rules(&group.ingress),
                egress: group.egress.as_deref().map(rules),
            });
            self.add(Kind::SecurityGroupRules, name, self.aws_name(name), spec);
        }
    }

    fn iam(&mut self) {
        for role in &self.env.iam_roles {
            let name = &role.name.value;
            let assume_role_policy = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": role.assumed_by},
                    "Action": "sts:AssumeRole",
                }],
            });
            let address = self.add(
                Kind::IamRole,
                name,
                self.aws_name(name),
                Spec::IamRole(IamRoleSpec {
                    assume_role_policy,
                    managed_policies: role.managed_policies.iter().map(|p| p.value.clone()).collect(),
                    inline_policies: role.inline_policies.clone(),
                }),
            );
            if role.instance_profile {
                self.add(Kind::InstanceProfile, name, self.aws_name(name), Spec::InstanceProfile(InstanceProfileSpec { role: address }));
            }
        }
    }

    fn selected_subnets(&self, selection: &SubnetSelection) -> Vec<Address> {
        self.subnets
            .iter()
            .filter(|s| s.tier == selection.tier.value)
            .filter(|s| selection.zones.is_empty() || selection.zones.iter().any(|z| z.value == s.zone))
            .map(|s| subnet_address(&s.tier, &s.zone))
            .collect()
    }

    fn load_balancers(&mut self) {
        for lb in &self.env.load_balancers {
            let spec = Spec::LoadBalancer(LoadBalancerSpec {
                internal: lb.internal,
                subnets: self.selected_subnets(&lb.subnets),
                security_groups: lb.security_groups.iter().map(|g| security_group_address(&g.value)).collect(),
                listeners: lb.listeners.clone(),
                health_check: lb.health_check.clone(),
                connection_draining: lb.connection_draining,
                cross_zone: lb.cross_zone,
                idle_timeout: lb.idle_timeout,
            });
            let name = &lb.name.value;
            self.add(Kind::LoadBalancer, name, self.aws_name(name), spec);
        }
    }

    fn dns(&mut self) {
        for record in &self.env.dns {
            let (alias, ttl, values) = match &record.target {
                RecordTarget::Alias(balancer) => (Some(Address::new(Kind::LoadBalancer, &balancer.value)), None, Vec::new()),
                RecordTarget::Values { ttl, values } => (None, Some(*ttl), values.iter().map(|v| v.value.clone()).collect()),
            };
            let spec = Spec::DnsRecord(DnsRecordSpec {
                zone: record.zone.value.clone(),
                name: record.name.value.clone(),
                record_type: record.record_type.value,
                alias,
                ttl,
                values,
            });
            self.add(Kind::DnsRecord, &record.key.value, record.name.value.clone(), spec);
        }
    }

    fn node_groups(&mut self, problems: &mut Problems) {
        // A store's secret reaches a node by reference: the node reads it with its own role.
        let renderer = self.env.secrets.iter().filter(|(_, s)| s.source.in_store()).fold(Renderer::default(), |renderer, (name, secret)| {
            renderer.withholding(
                name,
                format!("user data never holds secret `{name}`: it comes from {}, which nodes read themselves", secret.source),
                format!("write `{{{{ secret_ref.{name} }}}}`, a command printing it on the node with the instance role's permission"),
            )
        });
        for group in &self.env.node_groups {
            let own = group.user_data.as_ref().and_then(|template| renderer.render(template, &self.template_context(group), problems));
            let user_data = match &group.image.value {
                ImageRef::Named(_) => Some(user_data::compose(&user_data::node_part(&self.env.name, &group.name.value), own.as_deref())),
                ImageRef::Ami(_) => own,
            }
            .map(UserData::new);
            let launch = LaunchSpec {
                image: match &group.image.value {
                    ImageRef::Ami(id) => ImageSpec::Ami(id.clone()),
                    ImageRef::Named(name) => ImageSpec::Named(name.clone()),
                },
                instance_type: group.instance_type.value.clone(),
                security_groups: group.security_groups.iter().map(|g| security_group_address(&g.value)).collect(),
                instance_profile: group.iam_role.as_ref().map(|r| Address::new(Kind::InstanceProfile, &r.value)),
                user_data,
                root_volume: group.root_volume.clone(),
                metadata: group.metadata.clone(),
                key_name: group.key_name.clone(),
            };
            let name = &group.name.value;
            let launch_address = match group.launch {
                LaunchMechanism::Template => {
                    self.add_tagged(Kind::LaunchTemplate, name, self.aws_name(name), Spec::LaunchTemplate(launch), &group.tags)
                }
                LaunchMechanism::Configuration => {
                    let aws_name = launch_configuration_name(&self.env.name, name, &launch);
                    self.add_tagged(Kind::LaunchConfiguration, name, aws_name, Spec::LaunchConfiguration(launch), &group.tags)
                }
            };
            let load_balancers = self
                .env
                .load_balancers
                .iter()
                .filter(|lb| lb.node_groups.iter().any(|g| g.value == *name))
                .map(|lb| Address::new(Kind::LoadBalancer, &lb.name.value))
                .collect();
            let spec = Spec::AutoScalingGroup(AutoScalingGroupSpec {
                min: group.min.value,
                max: group.max.value,
                desired: group.desired.value,
                asked: group.desired_written.then_some(group.desired.value),
                subnets: self.selected_subnets(&group.subnets),
                launch: launch_address,
                load_balancers,
                health_check: group.health_check.clone(),
            });
            self.add_tagged(Kind::AutoScalingGroup, name, self.aws_name(name), spec, &group.tags);
            let rules = group.security_groups.iter().map(|g| Address::new(Kind::SecurityGroupRules, &g.value)).collect();
            if let Some(asg) = self.resources.last_mut() {
                asg.after = rules;
            }
        }
    }

    /// What user data sees: never a store's secret, even one a run has read.
    fn template_context(&self, group: &NodeGroup) -> BTreeMap<String, minijinja::Value> {
        let in_store = |name: &String| self.env.secrets.get(name).is_some_and(|s| s.source.in_store());
        let variables = crate::variables::for_group(self.env, group).into_iter().filter(|(k, _)| !in_store(k));
        variables.map(|(k, v)| (k, minijinja::Value::from_serialize(&v))).collect()
    }
}

/// A rule of the model split into one rule per peer.
fn rule_specs(rule: &Rule, own_group: &Address) -> Vec<RuleSpec> {
    let groups = rule.groups.iter().map(|g| security_group_address(&g.value));
    let peers = rule.cidrs.iter().map(|c| Peer::Cidr(c.value)).chain(groups.chain(rule.self_.then(|| own_group.clone())).map(Peer::Group));
    peers
        .map(|peer| RuleSpec {
            protocol: rule.protocol.value,
            ports: rule.ports.as_ref().map(|p| p.value),
            peer,
            description: rule.description.clone(),
        })
        .collect()
}

/// Launch configurations are immutable: each version gets a name of its own, so a change
/// creates the new one before the group lets go of the old.
fn launch_configuration_name(environment: &str, group: &str, launch: &LaunchSpec) -> String {
    format!("{environment}-{group}-{}", &content_digest(launch)[..12])
}

/// Replaces image names with the AMIs found for them (every name of `image_names`); a
/// launch configuration is renamed for its new content.
pub fn resolve_images(graph: &mut ResourceGraph, environment: &str, amis: &BTreeMap<String, String>) {
    for resource in graph.resources_mut() {
        let (Spec::LaunchTemplate(launch) | Spec::LaunchConfiguration(launch)) = &mut resource.spec else { continue };
        let ImageSpec::Named(name) = &launch.image else { continue };
        let Some(ami) = amis.get(name) else { continue };
        launch.image = ImageSpec::Ami(ami.clone());
        if let Spec::LaunchConfiguration(launch) = &resource.spec {
            let group = resource.address.as_str().split_once('.').map_or("", |(_, group)| group);
            resource.name = launch_configuration_name(environment, group, launch);
        }
    }
}

/// Names of the images of `images/` that the graph's launch settings use.
pub fn image_names(graph: &ResourceGraph) -> Vec<String> {
    let mut names: Vec<String> = graph
        .in_dependency_order()
        .filter_map(|r| match &r.spec {
            Spec::LaunchTemplate(launch) | Spec::LaunchConfiguration(launch) => match &launch.image {
                ImageSpec::Named(name) => Some(name.clone()),
                ImageSpec::Ami(_) => None,
            },
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A stable hex digest of a value's JSON form.
pub fn content_digest(value: &impl serde::Serialize) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(value).unwrap_or_default();
    format!("{:x}", Sha256::digest(json))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{load_environment, Project};

    /// The shipped `dev` environment, compiled.
    fn dev() -> ResourceGraph {
        let project = Project { root: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")) };
        let checked = load_environment(&project, "dev").result.unwrap_or_else(|problems| panic!("{problems:?}"));
        let mut problems = Problems::default();
        let graph = compile(&checked, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        graph.unwrap()
    }

    fn addresses(graph: &ResourceGraph, kind: Kind) -> BTreeSet<String> {
        graph.in_dependency_order().filter(|r| r.kind() == kind).map(|r| r.address.to_string()).collect()
    }

    #[test]
    fn every_resource_is_tagged_with_its_environment_and_address() {
        for resource in dev().in_dependency_order() {
            assert_eq!(resource.tags.get(TAG_ENVIRONMENT).map(String::as_str), Some("dev"), "{}", resource.address);
            assert_eq!(resource.tags.get(TAG_ADDRESS), Some(&resource.address.to_string()), "{}", resource.address);
            assert_eq!(resource.tags.get("CostCenter").map(String::as_str), Some("platform-dev"), "{}: the environment's tags", resource.address);
        }
    }

    #[test]
    fn each_node_group_launches_from_its_template_into_its_tier_after_its_rules() {
        let graph = dev();
        let groups = addresses(&graph, Kind::AutoScalingGroup);
        assert_eq!(groups, BTreeSet::from(["asg.ingress", "asg.masters", "asg.workers"].map(String::from)));
        let private_subnets: BTreeSet<String> = addresses(&graph, Kind::Subnet).into_iter().filter(|s| s.starts_with("subnet.private.")).collect();
        assert_eq!(private_subnets.len(), 3, "one per zone");
        for group in ["ingress", "masters", "workers"] {
            let asg = graph.get(&Address::new(Kind::AutoScalingGroup, group)).unwrap();
            let dependencies: BTreeSet<String> = asg.dependencies().map(|a| a.to_string()).collect();
            assert!(dependencies.contains(&format!("launch_template.{group}")), "{group}: {dependencies:?}");
            assert!(dependencies.contains(&format!("security_group_rules.{group}")), "{group}: instances boot with their rules in place");
            assert!(private_subnets.is_subset(&dependencies), "{group}: {dependencies:?}");
        }
    }

    #[test]
    fn a_single_nat_gateway_serves_every_private_subnet() {
        let graph = dev();
        assert_eq!(addresses(&graph, Kind::NatGateway).len(), 1, "`nat_gateways: single`");
        assert_eq!(addresses(&graph, Kind::ElasticIp).len(), 1);
        let private = graph.get(&Address::new(Kind::RouteTable, "private")).unwrap();
        assert!(private.dependencies().any(|a| a.is_kind(Kind::NatGateway)), "the private route goes through the NAT gateway");
    }

    #[test]
    fn groups_running_a_kstack_image_are_told_their_environment_and_group_at_boot() {
        let graph = dev();
        let template = graph.get(&Address::new(Kind::LaunchTemplate, "workers")).unwrap();
        let Spec::LaunchTemplate(launch) = &template.spec else { panic!("{template:?}") };
        let user_data = launch.user_data.as_ref().expect("user data");
        assert!(user_data.content.contains("KSTACK_ENVIRONMENT=dev") && user_data.content.contains("KSTACK_GROUP=workers"), "{}", user_data.content);
    }
}
