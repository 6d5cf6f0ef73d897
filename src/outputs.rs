//! An environment's outputs: what other tools and people need from it once it exists (the
//! load balancers' DNS names, the network's ids, the groups and the images they run), taken
//! from what refresh observed. Knows nothing of the terminal: `cli/output.rs` prints them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::resource::Observed;
use crate::resource::{Address, Kind};

/// The JSON's shape: bumped when a field changes meaning or goes away (new fields may appear).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Outputs {
    pub environment: String,
    pub region: String,
    /// The AWS account it is in.
    pub account: String,
    /// The identity every resource of the environment is tagged with (`kstack:identity`).
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// Subnet ids by tier, then zone.
    pub subnet_ids: BTreeMap<String, BTreeMap<String, String>>,
    pub security_group_ids: BTreeMap<String, String>,
    pub load_balancers: BTreeMap<String, LoadBalancerOutput>,
    pub node_groups: BTreeMap<String, NodeGroupOutput>,
    /// The DNS records kstack keeps, by their name under `dns.records`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dns_records: BTreeMap<String, DnsRecordOutput>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsRecordOutput {
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: String,
    pub zone: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancerOutput {
    pub name: String,
    pub dns_name: String,
    /// The hosted zone of the load balancer's DNS name, for alias records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_zone_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeGroupOutput {
    pub auto_scaling_group: String,
    /// The AMI its launch template or configuration starts instances from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami: Option<String>,
}

/// The name a resource has in the model: its address without the kind.
fn model_name(address: &Address, kind: Kind) -> &str {
    address.as_str().strip_prefix(kind.prefix()).and_then(|rest| rest.strip_prefix('.')).unwrap_or(address.as_str())
}

impl Outputs {
    pub fn of(environment: &str, region: &str, account: &str, identity: &str, observed: &[Observed]) -> Outputs {
        let of_kind = |kind: Kind| observed.iter().filter(move |o| o.kind == kind);
        let by_address: BTreeMap<&Address, &Observed> = observed.iter().map(|o| (&o.address, o)).collect();
        let mut subnet_ids: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for subnet in of_kind(Kind::Subnet) {
            let name = model_name(&subnet.address, Kind::Subnet);
            let zone = subnet.attributes["zone"].as_str().unwrap_or_default();
            let tier = name.strip_suffix(zone).and_then(|t| t.strip_suffix('.')).unwrap_or(name);
            subnet_ids.entry(tier.to_owned()).or_default().insert(zone.to_owned(), subnet.id.clone());
        }
        let ami = |group: &Observed| {
            let launch = Address::from(group.attributes["launch"].as_str()?);
            by_address.get(&launch)?.attributes["image"]["ami"].as_str().map(str::to_owned)
        };
        Outputs {
            environment: environment.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            identity: identity.to_owned(),
            vpc_id: of_kind(Kind::Vpc).next().map(|v| v.id.clone()),
            subnet_ids,
            security_group_ids: of_kind(Kind::SecurityGroup)
                .map(|g| (model_name(&g.address, Kind::SecurityGroup).to_owned(), g.id.clone()))
                .collect(),
            load_balancers: of_kind(Kind::LoadBalancer)
                .map(|b| {
                    let balancer = LoadBalancerOutput {
                        name: b.id.clone(),
                        dns_name: b.assigned.get("dns_name").cloned().unwrap_or_default(),
                        hosted_zone_id: b.assigned.get("hosted_zone_id").cloned(),
                    };
                    (model_name(&b.address, Kind::LoadBalancer).to_owned(), balancer)
                })
                .collect(),
            node_groups: of_kind(Kind::AutoScalingGroup)
                .map(|g| {
                    (model_name(&g.address, Kind::AutoScalingGroup).to_owned(), NodeGroupOutput { auto_scaling_group: g.id.clone(), ami: ami(g) })
                })
                .collect(),
            dns_records: of_kind(Kind::DnsRecord)
                .map(|r| {
                    let text = |key: &str| r.attributes[key].as_str().unwrap_or_default().to_owned();
                    let record = DnsRecordOutput { name: text("name"), record_type: text("type"), zone: text("zone") };
                    (model_name(&r.address, Kind::DnsRecord).to_owned(), record)
                })
                .collect(),
        }
    }

    /// Every output as a dotted name and its text, in order: `load_balancers.ingress.dns_name`.
    pub fn flattened(&self) -> Vec<(String, String)> {
        fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, child) in map {
                        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                        walk(&name, child, out);
                    }
                }
                serde_json::Value::String(text) => out.push((prefix.to_owned(), text.clone())),
                serde_json::Value::Null => {}
                other => out.push((prefix.to_owned(), other.to_string())),
            }
        }
        let mut out = Vec::new();
        walk("", &serde_json::to_value(self).unwrap_or_default(), &mut out);
        out
    }

    /// One output by dotted name: a value, or an object of several.
    pub fn get(&self, name: &str) -> Option<serde_json::Value> {
        let mut value = serde_json::to_value(self).ok()?;
        for part in name.split('.') {
            value = value.get_mut(part)?.take();
        }
        Some(value)
    }

    /// The dotted names `get` answers, for a did-you-mean.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in self.flattened() {
            let parts: Vec<&str> = name.split('.').collect();
            for end in 1..=parts.len() {
                let prefix = parts[..end].join(".");
                if !names.contains(&prefix) {
                    names.push(prefix);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(kind: Kind, name: &str, id: &str, attributes: serde_json::Value) -> Observed {
        Observed { address: Address::new(kind, name), kind, id: id.into(), tags: BTreeMap::new(), attributes, assigned: BTreeMap::new() }
    }

    #[test]
    fn outputs_name_each_resource_by_its_model_name() {
        let mut balancer = observed(Kind::LoadBalancer, "ingress", "dev-ingress-1a2b", json!({}));
        balancer.assigned = BTreeMap::from([("dns_name".into(), "dev-ingress.elb.example".into()), ("hosted_zone_id".into(), "Z123".into())]);
        let resources = [
            observed(Kind::Vpc, "main", "vpc-1", json!({})),
            observed(Kind::Subnet, "private.eu-west-1a", "subnet-1", json!({ "zone": "eu-west-1a" })),
            observed(Kind::Subnet, "public.eu-west-1a", "subnet-2", json!({ "zone": "eu-west-1a" })),
            observed(Kind::SecurityGroup, "nodes", "sg-1", json!({})),
            balancer,
            observed(Kind::LaunchTemplate, "workers", "lt-1", json!({ "image": { "ami": "ami-1" } })),
            observed(Kind::AutoScalingGroup, "workers", "dev-workers", json!({ "launch": "launch_template.workers" })),
        ];
        let outputs = Outputs::of("dev", "eu-west-1", "123456789012", "id-1", &resources);
        assert_eq!(outputs.get("load_balancers.ingress.dns_name"), Some(json!("dev-ingress.elb.example")));
        assert_eq!(outputs.get("subnet_ids.private.eu-west-1a"), Some(json!("subnet-1")));
        assert_eq!(outputs.get("node_groups.workers"), Some(json!({ "auto_scaling_group": "dev-workers", "ami": "ami-1" })));
        assert_eq!(outputs.get("vpc_id"), Some(json!("vpc-1")));
        assert_eq!(outputs.get("nothing.here"), None);
        assert!(outputs.flattened().contains(&("security_group_ids.nodes".into(), "sg-1".into())));
        assert!(outputs.names().contains(&"load_balancers.ingress".to_owned()));
    }
}
