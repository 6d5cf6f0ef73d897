//! `kstack import` and `kstack generate`: taking over resources another tool made. The
//! resources found (in a Terraform state, in a VPC, or named on the command line) are matched
//! to the model's addresses and planned as if state recorded them: the plan shows, for each,
//! what the model would change. Carrying it out changes nothing but kstack's tags: each
//! resource gets the environment's tags (a DNS record its owner record) and its record in
//! state; the changes the plan showed are left to `kstack apply`, reviewed on their own.
//! `generate` writes the model from the same resources, read as refresh reads them.

use std::path::Path;

use serde::Serialize;

use super::load::{compiled, Compiled};
use super::session::{Desired, Session};
use super::{Notice, OpsError};
use crate::aws::{self, Cloud, Observed};
use crate::compile::compile;
use crate::diagnostics::Problems;
use crate::identity::Owner;
use crate::import::generate::{environment_yaml, resource_tags_yaml, Existing};
use crate::import::terraform::{self, TerraformState};
use crate::import::{given, match_to_model, Adoption, Found};
use crate::model::environment_from_text;
use crate::model::AwsAccess;
use crate::model::Project;
use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_IDENTITY, TAG_PROJECT};
use crate::plan::{Action, ActionKind, Change};
use crate::resource::Spec;
use crate::resource::{Address, Kind};
use crate::stop::Stop;
use std::collections::BTreeMap;

/// Where the resources to take over are named.
pub struct ImportRequest<'a> {
    /// `address=id` pairs.
    pub pairs: &'a [String],
    /// A Terraform state file (format 4).
    pub terraform: Option<&'a Path>,
    /// A VPC to take over with what is in it.
    pub vpc: Option<&'a str>,
    /// Hosted zones whose records for the VPC's load balancers `generate --vpc` describes.
    pub dns_zones: &'a [String],
}

/// One resource to adopt, and what the model would then change of it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedAdoption {
    pub address: Address,
    pub id: String,
    pub origin: String,
    /// `update` or `replace` once adopted, or `no_op`.
    pub then: ActionKind,
    /// What differs from the model, kstack's own tags aside.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub adopt: usize,
    pub change: usize,
    pub replace: usize,
}

/// A take-over, planned.
pub struct ImportPlan {
    session: Session,
    pub adoptions: Vec<PlannedAdoption>,
    pub summary: ImportSummary,
    /// Found resources that match no address of the model: left alone.
    pub unmatched: Vec<Found>,
    /// Model addresses nothing was found for: the next apply creates them.
    pub missing: Vec<Address>,
    /// What Terraform should forget once the import is done: the adopted resources'
    /// Terraform addresses and those folded into them.
    pub terraform_forgets: Vec<String>,
    /// Terraform's resources kstack does not model: they stay Terraform's.
    pub terraform_keeps: Vec<String>,
}

impl ImportPlan {
    /// Matches what `request` names to the model and plans the take-over, under the
    /// environment's lock.
    pub async fn open(
        project: &Project,
        env: &str,
        request: &ImportRequest<'_>,
        command: &str,
        stop: &Stop,
        notice: &dyn Notice,
    ) -> Result<ImportPlan, OpsError> {
        let model = compiled(project, env, notice)?;
        let given =
            given(request.pairs, &model.graph).map_err(|e| OpsError::Invalid { message: e.to_string(), hint: crate::hint::Hint::hint(&e) })?;
        let terraform = match request.terraform {
            Some(path) => terraform::read(path).map_err(|e| OpsError::Invalid { message: e.to_string(), hint: crate::hint::Hint::hint(&e) })?,
            None => TerraformState::default(),
        };
        let mut found = terraform.found.clone();
        if let Some(vpc) = request.vpc {
            found.extend(discover(&model, vpc).await?);
        }
        let (adoptions, unmatched) = match_to_model(&found, &model.graph, given, &model.checked.environment.name);
        if adoptions.is_empty() {
            return Err(OpsError::Invalid {
                message: format!("nothing to import into `{env}`: no resource named matches an address of its model"),
                hint: Some(String::from("name them as ADDRESS=ID, or check that the model describes what Terraform made")),
            });
        }
        let session = Session::open(project, env, command, Desired::Adopting(adoptions.clone()), stop, notice).await?;
        let not_found: Vec<String> = adoptions
            .iter()
            .filter(|a| !session.observed.iter().any(|o| o.address == a.address && o.id == a.id))
            .map(|a| format!("{} ({}, from {})", a.address, a.id, a.origin))
            .collect();
        if !not_found.is_empty() {
            return Err(OpsError::failed(
                format!("these cannot be read in {} as resources of `{env}`: {}", session.cloud.region, not_found.join(", ")),
                "each must exist in the environment's region and account, and carry no other environment's kstack tags",
            ));
        }
        let planned: Vec<PlannedAdoption> =
            adoptions.iter().map(|a| planned(a, session.plan.actions.iter().find(|x| x.address == a.address))).collect();
        let summary = ImportSummary {
            adopt: planned.len(),
            change: planned.iter().filter(|p| p.then == ActionKind::Update).count(),
            replace: planned.iter().filter(|p| p.then == ActionKind::Replace).count(),
        };
        let from_terraform: std::collections::BTreeSet<&str> = terraform.found.iter().map(|f| f.origin.as_str()).collect();
        let adopted_from_terraform = adoptions.iter().map(|a| a.origin.clone()).filter(|o| from_terraform.contains(o.as_str()));
        let mut terraform_forgets: Vec<String> = adopted_from_terraform.chain(terraform.folded).collect();
        terraform_forgets.sort();
        terraform_forgets.dedup();
        let missing = session.plan.actions.iter().filter(|a| a.action == ActionKind::Create).map(|a| a.address.clone()).collect();
        Ok(ImportPlan { session, adoptions: planned, summary, unmatched, missing, terraform_forgets, terraform_keeps: terraform.unmodelled })
    }

    pub fn environment(&self) -> &str {
        &self.session.environment
    }

    /// Gives each resource the environment's tags and records it in state, one state write
    /// after each; nothing else changes. How many were adopted.
    pub async fn apply(self) -> Result<usize, OpsError> {
        let Session { cloud, observed, store, mut state, environment, .. } = self.session;
        let identity = state.identity.clone().ok_or_else(|| OpsError::failed(format!("`{environment}` has no identity"), "plan it first"))?;
        let region = cloud.region.clone();
        let mut adopted = 0;
        for adoption in &self.adoptions {
            let Some(found) = observed.iter().find(|o| o.address == adoption.address && o.id == adoption.id) else { continue };
            let mut tags = found.tags.clone();
            tags.insert(TAG_ENVIRONMENT.to_owned(), environment.clone());
            tags.insert(TAG_ADDRESS.to_owned(), adoption.address.to_string());
            tags.insert(TAG_IDENTITY.to_owned(), identity.to_string());
            if let Some(project) = &state.project {
                tags.insert(TAG_PROJECT.to_owned(), project.clone());
            }
            if found.kind.has_own_tags() {
                aws::retag(&cloud, found, &tags).await.map_err(OpsError::aws(&region, "tagging a resource to adopt"))?;
            } else if found.kind == crate::resource::Kind::DnsRecord {
                aws::take_over_dns_record(&cloud, &found.id, &tags).await.map_err(OpsError::aws(&region, "giving a record its owner record"))?;
            }
            let tags = if found.kind.has_own_tags() { tags } else { found.tags.clone() };
            state.resources.insert(adoption.address.clone(), Observed { tags, ..found.clone() });
            store.save(&mut state)?;
            adopted += 1;
        }
        Ok(adopted)
    }
}

/// What is in `vpc` (in the model's region), and the model's DNS records that exist.
async fn discover(model: &Compiled, vpc: &str) -> Result<Vec<Found>, OpsError> {
    let environment = &model.checked.environment;
    let region = &environment.region.value;
    let (cloud, _) = super::account::connect(&environment.aws, region, Owner::new(&environment.name, None, []), None).await?;
    let records: Vec<(String, String, String)> = model
        .graph
        .in_dependency_order()
        .filter_map(|r| match &r.spec {
            Spec::DnsRecord(d) => Some((d.zone.clone(), d.name.clone(), d.record_type.as_str().to_owned())),
            _ => None,
        })
        .collect();
    aws::discover::in_vpc(&cloud, vpc, &records, &[]).await.map_err(OpsError::aws(region, "finding what is in the VPC"))
}

/// An adoption and what the plan does with its resource once state records it.
fn planned(adoption: &Adoption, action: Option<&Action>) -> PlannedAdoption {
    let kstack_tag = |path: &str| path.strip_prefix("tags.").is_some_and(|tag| tag.starts_with("kstack:"));
    let changes: Vec<Change> = action.map(|a| a.changes.iter().filter(|c| !kstack_tag(&c.path)).cloned().collect()).unwrap_or_default();
    let then = match action.map(|a| a.action) {
        Some(ActionKind::Replace) => ActionKind::Replace,
        _ if changes.is_empty() => ActionKind::NoOp,
        _ => ActionKind::Update,
    };
    PlannedAdoption { address: adoption.address.clone(), id: adoption.id.clone(), origin: adoption.origin.clone(), then, changes }
}

/// An environment file written from what exists.
pub struct Generated {
    pub text: String,
    /// Resources it describes.
    pub described: usize,
}

/// Writes an environment file for `environment` in `region` from the resources the Terraform
/// state or the VPC `request` names, each read as refresh reads a recorded resource.
pub async fn generate(project: &Project, environment: &str, region: &str, request: &ImportRequest<'_>) -> Result<Generated, OpsError> {
    let mut found = match request.terraform {
        Some(path) => terraform::read(path).map_err(|e| OpsError::Invalid { message: e.to_string(), hint: crate::hint::Hint::hint(&e) })?.found,
        None => Vec::new(),
    };
    if let Some(vpc) = request.vpc {
        let cloud = Cloud::connect(&AwsAccess::default(), region, Owner::new(environment, None, [])).await;
        found.extend(aws::discover::in_vpc(&cloud, vpc, &[], request.dns_zones).await.map_err(OpsError::aws(region, "finding what is in the VPC"))?);
    }
    // Each read at `<kind>.<id>`, as if state recorded it there; a group's rules with it.
    let records = found.iter().flat_map(|f| {
        let rules = (f.kind == Kind::SecurityGroup).then(|| (Address::new(Kind::SecurityGroupRules, &f.id), Kind::SecurityGroupRules, f.id.clone()));
        std::iter::once((Address::new(f.kind, &f.id), f.kind, f.id.clone())).chain(rules)
    });
    let cloud = Cloud::connect(&AwsAccess::default(), region, Owner::new(environment, None, records.collect::<Vec<_>>())).await;
    // DNS records are read in the zones they are in.
    let zone_ids = found.iter().filter(|f| f.kind == Kind::DnsRecord).filter_map(|f| f.id.split('|').next().map(str::to_owned)).collect();
    let zones = aws::discover::zone_names(&cloud, &zone_ids).await.map_err(OpsError::aws(region, "reading hosted zones"))?;
    let cloud = cloud.with_dns_zones(zones.iter().map(String::as_str));
    let refreshed = aws::refresh(&cloud).await.map_err(OpsError::aws(region, "reading what exists"))?;
    let user_data = aws::discover::user_data(&cloud, &refreshed.observed).await.map_err(OpsError::aws(region, "reading user data"))?;
    let source = match (request.terraform, request.vpc) {
        (Some(path), _) => format!("--from-terraform {}", path.display()),
        (None, Some(vpc)) => format!("--vpc {vpc}"),
        (None, None) => String::new(),
    };
    let existing = Existing { environment, region, source: &source, observed: &refreshed.observed, found: &found, user_data: &user_data };
    let mut text = environment_yaml(&existing);
    text.push_str(&resource_tags_yaml(&own_tags(project, environment, &text, &found, &refreshed.observed)));
    Ok(Generated { text, described: refreshed.observed.iter().filter(|o| o.kind != Kind::SecurityGroupRules).count() })
}

/// The resources whose tags are not what the written model gives them (the environment's
/// `tags:` and kstack's `Name`), each with the tags it has: the model's `resource_tags`, so
/// importing changes no tag. Found by compiling the written model and matching what exists
/// to it as an import does; a model that does not compile gets none (`validate` says why).
fn own_tags(project: &Project, environment: &str, text: &str, found: &[Found], observed: &[Observed]) -> Vec<(Address, BTreeMap<String, String>)> {
    let graph = environment_from_text(project, environment, text).ok().and_then(|checked| compile(&checked, &mut Problems::default()));
    let Some(graph) = graph else { return Vec::new() };
    let theirs = |tags: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        tags.iter().filter(|(k, _)| !k.starts_with("kstack:") && !k.starts_with("aws:")).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let (adopted, _) = match_to_model(found, &graph, Vec::new(), environment);
    adopted
        .into_iter()
        .filter(|a| a.kind.has_own_tags())
        .filter_map(|a| {
            let has = theirs(&observed.iter().find(|o| o.kind == a.kind && o.id == a.id)?.tags);
            let given = theirs(&graph.get(&a.address)?.tags);
            (has != given).then_some((a.address, has))
        })
        .collect()
}
