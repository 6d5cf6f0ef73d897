//! Terraform's state file (format version 4, as Terraform 0.12 and later write it): the AWS
//! provider's resources kstack models, each as a [`Found`] with what matches it to the model,
//! and the resources kstack folds into others (associations, rules, policies, attachments).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Found, ImportError};
use crate::resource::Kind;

#[derive(Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    resources: Vec<StateResource>,
}

#[derive(Deserialize)]
struct StateResource {
    #[serde(default)]
    module: Option<String>,
    mode: String,
    #[serde(rename = "type")]
    resource_type: String,
    name: String,
    #[serde(default)]
    instances: Vec<StateInstance>,
}

#[derive(Deserialize)]
struct StateInstance {
    #[serde(default)]
    index_key: Option<Value>,
    #[serde(default)]
    attributes: Value,
}

/// What a Terraform state holds for kstack.
#[derive(Debug, Default)]
pub struct TerraformState {
    /// Resources of kinds kstack models.
    pub found: Vec<Found>,
    /// Terraform addresses of what kstack keeps as part of another resource (a subnet's route
    /// table association, a group's rules, a role's policies, a balancer's instances): they
    /// leave Terraform's state with the resources they belong to.
    pub folded: Vec<String>,
    /// Terraform addresses of resources kstack does not model: they stay Terraform's.
    pub unmodelled: Vec<String>,
}

/// The kind a Terraform resource type is, and the attribute holding the id kstack records.
fn modelled(resource_type: &str) -> Option<(Kind, &'static str)> {
    Some(match resource_type {
        "aws_vpc" => (Kind::Vpc, "id"),
        "aws_subnet" => (Kind::Subnet, "id"),
        "aws_internet_gateway" => (Kind::InternetGateway, "id"),
        "aws_eip" => (Kind::ElasticIp, "allocation_id"),
        "aws_nat_gateway" => (Kind::NatGateway, "id"),
        "aws_route_table" => (Kind::RouteTable, "id"),
        "aws_security_group" => (Kind::SecurityGroup, "id"),
        "aws_iam_role" => (Kind::IamRole, "arn"),
        "aws_iam_instance_profile" => (Kind::InstanceProfile, "arn"),
        "aws_launch_template" => (Kind::LaunchTemplate, "id"),
        "aws_launch_configuration" => (Kind::LaunchConfiguration, "name"),
        "aws_autoscaling_group" => (Kind::AutoScalingGroup, "name"),
        "aws_elb" => (Kind::LoadBalancer, "name"),
        "aws_route53_record" => (Kind::DnsRecord, "id"),
        _ => return None,
    })
}

/// Types kstack holds as part of another resource.
const FOLDED: &[&str] = &[
    "aws_route_table_association",
    "aws_route",
    "aws_security_group_rule",
    "aws_vpc_security_group_ingress_rule",
    "aws_vpc_security_group_egress_rule",
    "aws_iam_role_policy",
    "aws_iam_role_policy_attachment",
    "aws_elb_attachment",
    "aws_autoscaling_attachment",
    "aws_internet_gateway_attachment",
];

pub fn read(path: &Path) -> Result<TerraformState, ImportError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|error| ImportError::Unreadable { path: shown.clone(), error: error.to_string() })?;
    let file: StateFile =
        serde_json::from_slice(&text).map_err(|error| ImportError::NotTerraformState { path: shown.clone(), error: error.to_string() })?;
    if file.version != 4 {
        return Err(ImportError::TerraformVersion { path: shown, version: file.version });
    }
    let mut state = TerraformState::default();
    // Which subnets each route table serves, from the associations.
    let mut associations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for resource in file.resources.iter().filter(|r| r.mode == "managed") {
        for instance in &resource.instances {
            let address = terraform_address(resource, instance);
            let attributes = &instance.attributes;
            if resource.resource_type == "aws_route_table_association" {
                if let (Some(table), Some(subnet)) = (text_of(attributes, "route_table_id"), text_of(attributes, "subnet_id")) {
                    associations.entry(table).or_default().push(subnet);
                }
            }
            if FOLDED.contains(&resource.resource_type.as_str()) {
                state.folded.push(address);
                continue;
            }
            let Some((kind, id_attribute)) = modelled(&resource.resource_type) else {
                state.unmodelled.push(address);
                continue;
            };
            let Some(id) = text_of(attributes, id_attribute) else { continue };
            let id = if kind == Kind::DnsRecord { dns_record_id(attributes).unwrap_or(id) } else { id };
            let mut names = vec![resource.name.clone()];
            names.extend(text_of(attributes, "name"));
            names.extend(attributes["tags"]["Name"].as_str().map(str::to_owned));
            state.found.push(Found {
                kind,
                id,
                origin: address,
                names,
                cidr: text_of(attributes, "cidr_block"),
                subnet: text_of(attributes, "subnet_id"),
                allocation: text_of(attributes, "allocation_id").filter(|_| kind == Kind::NatGateway),
                record: (kind == Kind::DnsRecord)
                    .then(|| (normal(attributes["name"].as_str().unwrap_or_default()), text_of(attributes, "type").unwrap_or_default())),
                subnets: Vec::new(),
            });
        }
    }
    for found in state.found.iter_mut().filter(|f| f.kind == Kind::RouteTable) {
        found.subnets = associations.remove(&found.id).unwrap_or_default();
    }
    Ok(state)
}

/// `module.net.aws_subnet.private[0]`, as Terraform names an instance.
fn terraform_address(resource: &StateResource, instance: &StateInstance) -> String {
    let module = resource.module.as_ref().map(|m| format!("{m}.")).unwrap_or_default();
    let index = match &instance.index_key {
        Some(Value::String(key)) => format!("[\"{key}\"]"),
        Some(key) => format!("[{key}]"),
        None => String::new(),
    };
    format!("{module}{}.{}{index}", resource.resource_type, resource.name)
}

fn text_of(attributes: &Value, name: &str) -> Option<String> {
    attributes[name].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A DNS name as kstack records it: lowercase, without the final dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// kstack's id of a record set, `<zone id>|<name>|<type>`.
fn dns_record_id(attributes: &Value) -> Option<String> {
    let (zone, name, record_type) = (text_of(attributes, "zone_id")?, text_of(attributes, "name")?, text_of(attributes, "type")?);
    Some(format!("{zone}|{}|{record_type}", normal(&name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_gives_kstack_ids_folds_associations_and_keeps_the_rest_terraforms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("terraform.tfstate");
        let state = serde_json::json!({
            "version": 4, "terraform_version": "1.5.7", "serial": 3, "lineage": "x", "outputs": {},
            "resources": [
                {"mode": "managed", "type": "aws_subnet", "name": "private", "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
                 "instances": [{"index_key": 0, "schema_version": 1, "attributes": {"id": "subnet-1", "cidr_block": "10.0.0.0/19"}}]},
                {"mode": "managed", "type": "aws_route_table", "name": "private", "provider": "p",
                 "instances": [{"schema_version": 0, "attributes": {"id": "rtb-1"}}]},
                {"mode": "managed", "type": "aws_route_table_association", "name": "private", "provider": "p",
                 "instances": [{"index_key": 0, "schema_version": 0, "attributes": {"id": "rtbassoc-1", "route_table_id": "rtb-1", "subnet_id": "subnet-1"}}]},
                {"mode": "managed", "type": "aws_route53_record", "name": "api", "provider": "p",
                 "instances": [{"schema_version": 2, "attributes": {"id": "Z1_API.dev.example.com_A", "zone_id": "Z1", "name": "API.dev.example.com.", "type": "A"}}]},
                {"mode": "managed", "type": "aws_s3_bucket", "name": "logs", "provider": "p",
                 "instances": [{"schema_version": 0, "attributes": {"id": "logs"}}]},
                {"mode": "data", "type": "aws_ami", "name": "ubuntu", "provider": "p", "instances": [{"attributes": {"id": "ami-1"}}]}
            ]
        });
        std::fs::write(&path, state.to_string()).unwrap();
        let read = read(&path).unwrap();
        let found: Vec<(Kind, &str, &str)> = read.found.iter().map(|f| (f.kind, f.id.as_str(), f.origin.as_str())).collect();
        assert_eq!(
            found,
            [
                (Kind::Subnet, "subnet-1", "aws_subnet.private[0]"),
                (Kind::RouteTable, "rtb-1", "aws_route_table.private"),
                (Kind::DnsRecord, "Z1|api.dev.example.com|A", "aws_route53_record.api"),
            ]
        );
        assert_eq!(read.found[1].subnets, ["subnet-1"], "the table serves the subnet its association names");
        assert_eq!(read.folded, ["aws_route_table_association.private[0]"]);
        assert_eq!(read.unmodelled, ["aws_s3_bucket.logs"], "data sources are not Terraform's resources");
        std::fs::write(&path, r#"{"version": 3, "resources": []}"#).unwrap();
        assert!(matches!(super::read(&path), Err(ImportError::TerraformVersion { version: 3, .. })));
    }
}
