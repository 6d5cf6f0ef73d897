//! What plan, apply and destroy share: the environment loaded and compiled (or only its state
//! found, for a destroy), its lock taken, AWS connected, images resolved, resources refreshed,
//! and the plan made.

use crate::resource::{Address, DnsRecordSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::load::{load_and_compile, open_store, state_location, Compiled, LoadedImage};
use super::{Notice, OpsError};
use crate::aws::{self, Cloud, Observed};
use crate::compile::{content_digest, image_names, resolve_images};
use crate::diagnostics::Problems;
use crate::graph::ResourceGraph;
use crate::identity::Identity;
use crate::import::Adoption;
use crate::model::{Project, Protection, StateLocation};
use crate::plan::saved::SavedPlan;
use crate::plan::{plan, ActionKind, Foreign, Plan, Scope};
use crate::state::{Lock, State, StateStore};
use crate::stop::Stop;

pub struct Session {
    pub environment: String,
    pub cloud: Cloud,
    pub desired: ResourceGraph,
    pub observed: Vec<Observed>,
    pub plan: Plan,
    pub store: StateStore,
    pub state: State,
    pub refresh: RefreshStats,
    /// The environment's model and images, for what follows an apply (reboot slots); no
    /// model for a destroy, which works from state.
    pub model: Option<crate::model::Environment>,
    pub images: BTreeMap<String, LoadedImage>,
    /// Held until the session ends, or kept for the roll that follows an apply.
    pub lock: Lock,
    /// The desired graph's digest before group sizes were settled against AWS: what a saved
    /// plan pins of the model (what AWS holds, an autoscaler's size among it, is pinned apart).
    pub model_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshStats {
    pub api_calls: u64,
    /// Calls by `service:Operation`.
    pub by_operation: BTreeMap<String, u64>,
    pub seconds: f64,
    pub resources: usize,
}

pub enum Desired {
    /// The environment as its model describes it, within a scope (`--target`, `--replace`).
    Model(Scope),
    /// Nothing: everything of the environment goes (what the scope allows of it).
    Nothing(Scope),
    /// The model, with resources another tool made read as if state recorded them at these
    /// addresses (`kstack import`); nothing is recorded until the import is carried out.
    Adopting(Vec<Adoption>),
}

/// Every hosted zone the model's DNS records name exists, or each record naming a missing one is
/// reported at its zone, all at once.
async fn check_dns_zones(cloud: &Cloud, environment: &crate::model::Environment, sources: &crate::diagnostics::Sources) -> Result<(), OpsError> {
    let zones: BTreeSet<&str> = environment.dns.iter().map(|r| r.zone.value.as_str()).collect();
    let mut problems = Problems::default();
    for zone in zones {
        let found = aws::dns_zone_exists(cloud, zone).await.map_err(OpsError::aws(&cloud.region, "looking up hosted zones"))?;
        if found {
            continue;
        }
        // One problem per place that names it: the `zone:` of `dns:` or of a record.
        let places: BTreeSet<_> = environment.dns.iter().filter(|r| r.zone.value == zone).map(|r| r.zone.loc).collect();
        for loc in places {
            problems
                .error(loc, format!("hosted zone `{zone}` does not exist in this account"))
                .label("no such hosted zone")
                .hint("create it (Route53 `create-hosted-zone`), or name a zone the account has; kstack keeps records, not zones");
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpsError::in_environment(&environment.name, problems, sources.clone()))
    }
}

/// A VPC someone else owns exists in the region, and each subnet the environment names is in
/// it; each one that is not is a problem at its place.
async fn check_existing_network(
    cloud: &Cloud,
    environment: &crate::model::Environment,
    sources: &crate::diagnostics::Sources,
) -> Result<(), OpsError> {
    let crate::model::Vpc::Existing(vpc) = &environment.network.vpc else { return Ok(()) };
    let subnets: Vec<&crate::diagnostics::Spanned<String>> = environment
        .network
        .subnet_tiers
        .iter()
        .flat_map(|t| match &t.cidrs {
            crate::model::SubnetCidrs::Existing(ids) => ids.iter().map(|(_, id)| id).collect(),
            _ => Vec::new(),
        })
        .collect();
    let ids: Vec<String> = subnets.iter().map(|s| s.value.clone()).collect();
    let region = &environment.region.value;
    let (vpc_exists, wrong) = aws::discover::check_existing(cloud, &vpc.value, &ids).await.map_err(OpsError::aws(region, "reading the VPC"))?;
    let mut problems = Problems::default();
    if !vpc_exists {
        problems.error(vpc.loc, format!("{region} has no VPC `{}`", vpc.value)).label("not found").hint("check the id and the region");
    }
    for (id, elsewhere) in wrong {
        let Some(subnet) = subnets.iter().find(|s| s.value == id) else { continue };
        match elsewhere {
            Some(other) => problems
                .error(subnet.loc, format!("subnet `{id}` is in {other}, not in {}", vpc.value))
                .hint("name a subnet of the environment's VPC"),
            None => problems.error(subnet.loc, format!("{region} has no subnet `{id}`")).label("not found").hint("check the id and the region"),
        };
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(OpsError::in_environment(&environment.name, problems, sources.clone())),
    }
}

/// A record of the model whose name and type (or a CNAME beside its name) the zone already
/// holds, made by someone else, is a problem at its place: kstack never takes or replaces a
/// record it did not make.
fn check_records_not_taken(
    environment: &crate::model::Environment,
    observed: &[Observed],
    in_use: &BTreeMap<(String, String, String), String>,
    sources: &crate::diagnostics::Sources,
) -> Result<(), OpsError> {
    let ours: BTreeSet<&str> = observed.iter().filter(|o| o.kind == crate::resource::Kind::DnsRecord).map(|o| o.id.as_str()).collect();
    let mut problems = Problems::default();
    for record in &environment.dns {
        let (zone, name, wanted) = (record.zone.value.as_str(), record.name.value.as_str(), record.record_type.value.as_str());
        let taken = in_use
            .iter()
            .find(|((z, n, t), id)| z == zone && n == name && (t == wanted || t == "CNAME" || wanted == "CNAME") && !ours.contains(id.as_str()));
        if let Some(((_, _, found), id)) = taken {
            problems
                .error(record.name.loc, format!("hosted zone `{zone}` already has a {found} record `{name}` that this environment did not make"))
                .label("made by someone else")
                .hint(format!(
                    "kstack never takes a record it did not make: rename this one, delete the other, or, if it is this \
                     environment's, adopt it: kstack state adopt {} dns_record.{} '{id}'",
                    environment.name, record.key.value
                ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpsError::in_environment(&environment.name, problems, sources.clone()))
    }
}

/// Resources being adopted, recorded in this session's state (never saved from here) so that
/// refresh reads them; an address or id state records otherwise is refused.
fn record_adoptions(state: &mut State, adopting: &[Adoption]) -> Result<(), OpsError> {
    let mut taken = Vec::new();
    for adoption in adopting {
        let elsewhere = state.resources.values().find(|r| r.kind == adoption.kind && r.id == adoption.id && r.address != adoption.address);
        match (state.resources.get(&adoption.address), elsewhere) {
            (Some(recorded), _) if recorded.id != adoption.id => taken.push(format!("{} is recorded as {}", adoption.address, recorded.id)),
            (_, Some(other)) => taken.push(format!("{} is recorded at {}", adoption.id, other.address)),
            (Some(_), None) => {}
            (None, None) => {
                let placeholder = Observed {
                    address: adoption.address.clone(),
                    kind: adoption.kind,
                    id: adoption.id.clone(),
                    tags: BTreeMap::new(),
                    attributes: serde_json::Value::Null,
                    assigned: BTreeMap::new(),
                };
                state.resources.insert(adoption.address.clone(), placeholder);
            }
        }
    }
    match taken.is_empty() {
        true => Ok(()),
        false => Err(OpsError::failed(
            format!("the state of `{}` already records otherwise: {}", state.environment, taken.join("; ")),
            "an address holds one resource: `kstack state rm` or `kstack state mv` the recorded one first",
        )),
    }
}

/// No protected resource is deleted or replaced unless the command names it.
fn check_protection(protect: &Protection, plan: &Plan) -> Result<(), OpsError> {
    let named = |action: &crate::plan::Action| {
        plan.scope.unprotect.contains(&action.address) || (action.replace_requested && plan.scope.replace.contains(&action.address))
    };
    let refused: Vec<&crate::plan::Action> = plan
        .actions
        .iter()
        .filter(|a| matches!(a.action, ActionKind::Delete | ActionKind::Replace) && protect.covers(a.address.as_str()) && !named(a))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = refused
        .iter()
        .map(|a| format!("  {} would be {}", a.address, if a.action == ActionKind::Delete { "destroyed" } else { "replaced" }))
        .collect();
    let flags: Vec<String> = refused.iter().map(|a| format!("--unprotect {}", a.address)).collect();
    Err(OpsError::failed(
        format!("`{}` protects what this plan would destroy or replace; nothing was changed:\n{}", plan.environment, lines.join("\n")),
        format!("if that is meant, name each: {} (or take it out of `protect:`)", flags.join(" ")),
    ))
}

/// Every address `--target` and `--replace` name is in the model or in AWS, and what is to be
/// replaced exists: a typo never narrows a plan to nothing.
fn check_scope(scope: &Scope, desired: &ResourceGraph, observed: &[Observed]) -> Result<(), OpsError> {
    let known: BTreeSet<&str> =
        desired.in_dependency_order().map(|r| r.address.as_str()).chain(observed.iter().map(|o| o.address.as_str())).collect();
    let mut wrong = Vec::new();
    let named = scope.targets.iter().map(|a| ("--target", a)).chain(scope.replace.iter().map(|a| ("--replace", a)));
    for (flag, address) in named.chain(scope.unprotect.iter().map(|a| ("--unprotect", a))) {
        if !known.contains(address.as_str()) {
            let close = crate::diagnostics::did_you_mean(address.as_str(), known.iter().copied());
            wrong.push(format!(
                "{flag} {address}: no resource of the model or in AWS has this address{}",
                close.map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
            ));
        } else if flag == "--replace" && !observed.iter().any(|o| &o.address == address) {
            wrong.push(format!("--replace {address}: it does not exist yet; the plan creates it"));
        }
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err(OpsError::Invalid { message: wrong.join("\n"), hint: Some(String::from("`kstack plan` without them lists every address")) }),
    }
}

impl Session {
    /// Opens the environment under its lock, which `stop` learns the loss of; a stop before
    /// the plan is made ends the (read-only) work at once.
    /// A destroy works from the environment's state and tags: it needs only where the state
    /// lives and the region, so problems elsewhere in the environment are warnings.
    pub async fn open(project: &Project, env: &str, command: &str, desired: Desired, stop: &Stop, notice: &dyn Notice) -> Result<Session, OpsError> {
        let model = |scope: Scope, adopting: Vec<Adoption>| {
            let (sources, result) = load_and_compile(project, env, notice);
            let compiled = result.map_err(|problems| OpsError::in_environment(env, problems, sources.clone()))?;
            Ok::<_, OpsError>((compiled.checked.environment.state_location(), Some((compiled, sources)), scope, adopting))
        };
        let (location, compiled, scope, adopting) = match desired {
            Desired::Model(scope) => model(scope, Vec::new())?,
            Desired::Adopting(adopting) => model(Scope::default(), adopting)?,
            Desired::Nothing(scope) => (state_location(project, env, notice)?, None, scope, Vec::new()),
        };
        let store = open_store(project, &location)?;
        let lock = store.lock(command, stop)?;
        tokio::select! {
            session = Session::read(location, compiled, &scope, &adopting, store, lock, notice) => session,
            reason = stop.stopped() => Err(OpsError::stopped_before_changes(reason)),
        }
    }

    /// With `compiled` (and the sources its problems point into), plans toward the
    /// environment's model; without, toward nothing.
    async fn read(
        location: StateLocation,
        compiled: Option<(Compiled, crate::diagnostics::Sources)>,
        scope: &Scope,
        adopting: &[Adoption],
        store: StateStore,
        lock: Lock,
        notice: &dyn Notice,
    ) -> Result<Session, OpsError> {
        let (environment, protect) = (location.name, location.protect);
        let mut state = store.load()?;
        let Some(region) = location.region.or_else(|| state.region.clone()) else {
            return Err(OpsError::failed(
                format!("the region of `{environment}` is unknown: its environment file does not say and its state does not record it"),
                "fix the environment's `region:` (`kstack validate` shows its problems)",
            ));
        };
        if let Some(recorded) = state.region.as_ref().filter(|recorded| **recorded != region && !state.resources.is_empty()) {
            return Err(OpsError::failed(
                format!(
                    "the state of `{environment}` records {} resources in {recorded}, but the environment says region {region}",
                    state.resources.len()
                ),
                format!(
                    "an environment does not move: destroy it in {recorded} first, or give the environment in {region} a state of its own (`key:` in `state:`)"
                ),
            ));
        }
        let (cloud, account) = super::account::connect(&location.aws, &region, state.owner(), state.account.as_deref()).await?;
        // The identity is kept before anything is created, so every resource carries it from
        // the start; the region and account, so a destroy finds them without the environment
        // file and another account's credentials never take them for nothing.
        let new_identity = state.identity.is_none();
        let identity = state.identity.get_or_insert_with(Identity::generate).clone();
        if new_identity || state.region.as_ref() != Some(&region) || state.account.as_ref() != Some(&account) {
            state.region = Some(region.clone());
            state.account = Some(account);
            store.save(&mut state)?;
        }
        record_adoptions(&mut state, adopting)?;
        let destroy = compiled.is_none();
        let cloud = cloud.with_owner(state.owner());
        if let Some((compiled, sources)) = &compiled {
            check_dns_zones(&cloud, &compiled.checked.environment, sources).await?;
            check_existing_network(&cloud, &compiled.checked.environment, sources).await?;
        }
        let (mut graph, images, model, sources) = match compiled {
            Some((compiled, sources)) => (compiled.graph, compiled.images, Some(compiled.checked.environment), Some(sources)),
            None => {
                let nothing = ResourceGraph::build(Vec::new())
                    .map_err(|_| OpsError::Failed { message: "cannot build an empty resource graph".into(), hint: None })?;
                (nothing, BTreeMap::new(), None, None)
            }
        };
        let wanted_zones = graph.in_dependency_order().filter_map(|r| match &r.spec {
            crate::resource::Spec::DnsRecord(DnsRecordSpec { zone, .. }) => Some(zone.as_str()),
            _ => None,
        });
        let cloud = cloud.with_dns_zones(wanted_zones.chain(state.dns_zones()));
        let names = image_names(&graph);
        if !names.is_empty() {
            let project = model.as_ref().and_then(|environment| environment.project.as_deref());
            let amis = resolve_named_images(&images, &cloud, &names, project, notice).await?;
            resolve_images(&mut graph, &environment, &amis);
        }
        crate::identity::stamp(&mut graph, &identity);
        let before = cloud.calls.snapshot();
        let started = Instant::now();
        let refreshed = aws::refresh(&cloud).await.map_err(OpsError::aws(&region, "refreshing"))?;
        let mut observed = refreshed.observed;
        aws::refer_to_existing(&mut observed, graph.existing());
        let by_operation: BTreeMap<String, u64> = cloud
            .calls
            .snapshot()
            .into_iter()
            .map(|(operation, count)| {
                let earlier = before.get(&operation).copied().unwrap_or(0);
                (operation, count - earlier)
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let refresh = RefreshStats {
            api_calls: by_operation.values().sum(),
            by_operation,
            seconds: round_millis(started.elapsed()),
            resources: observed.len(),
        };
        tracing::info!(api_calls = refresh.api_calls, seconds = refresh.seconds, "refreshed {} resources", observed.len());
        // Resources only state knows of (their tags were removed by hand) still belong to the
        // environment; deleting one that is already gone succeeds. One refresh saw carrying
        // another identity is that environment's now, whatever state recorded.
        for (address, known) in &state.resources {
            let theirs = refreshed.foreign.iter().any(|f| f.id == known.id);
            if !theirs && !observed.iter().any(|o| &o.address == address) && destroy {
                observed.push(known.clone());
            }
        }
        if let (Some(environment), Some(sources)) = (&model, &sources) {
            check_records_not_taken(environment, &observed, &refreshed.dns_in_use, sources)?;
        }
        // User data is serialized as its hash, so the digest covers its content too.
        let model_digest = content_digest(&graph.in_dependency_order().collect::<Vec<_>>());
        let capacity = crate::plan::settle_capacity(graph.resources_mut(), &observed, &state.resources);
        check_scope(scope, &graph, &observed)?;
        if scope.is_partial() {
            notice.warning(&format!(
                "resource targeting is in effect: the plan covers only {} and what they depend on, so it may not show every \
                 change the model asks for. --target is for exceptions (a mistake to correct, an error to work around); \
                 plan without it afterwards",
                scope.targets.iter().map(Address::as_str).collect::<Vec<_>>().join(", ")
            ));
        }
        let mut plan = plan(&environment, &graph, &observed, scope);
        check_protection(&protect, &plan)?;
        plan.capacity = capacity;
        plan.left_alone = refreshed.unrecorded.iter().map(Foreign::unrecorded).chain(refreshed.foreign.iter().map(Foreign::of)).collect();
        if state.resources.is_empty() {
            warn_of_lost_state(&environment, &region, &refreshed.foreign.iter().chain(&refreshed.unrecorded).collect::<Vec<_>>(), notice);
        }
        Ok(Session { environment, cloud, desired: graph, observed, plan, store, state, refresh, model, images, lock, model_digest })
    }

    /// The plan, pinned to the model and to what AWS held, for `kstack apply FILE`.
    pub fn saved(&self, source: &str) -> SavedPlan {
        SavedPlan::new(&self.environment, source, self.desired_digest(), content_digest(&self.observed), self.plan.clone())
    }

    pub fn desired_digest(&self) -> String {
        self.model_digest.clone()
    }
}

/// An empty state beside resources of an environment of the same name: another project's, or
/// this environment's with its state lost. Only a person can tell; each identity is shown with
/// what tells them apart (its project, how many resources of which kinds), and how to claim one.
fn warn_of_lost_state(environment: &str, region: &str, foreign: &[&Observed], notice: &dyn Notice) {
    let mut by_identity: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for resource in foreign {
        if let Some(identity) = resource.tags.get(crate::naming::TAG_IDENTITY) {
            by_identity.entry(identity).or_default().push(resource);
        }
    }
    if by_identity.is_empty() {
        return;
    }
    let described: Vec<String> = by_identity
        .iter()
        .map(|(identity, resources)| {
            let projects: BTreeSet<&str> = resources.iter().filter_map(|r| r.tags.get(crate::naming::TAG_PROJECT).map(String::as_str)).collect();
            let kinds: BTreeSet<&str> = resources.iter().map(|r| r.kind.prefix()).collect();
            let project = if projects.is_empty() {
                String::from("no project name")
            } else {
                format!("project {}", projects.into_iter().collect::<Vec<_>>().join(", "))
            };
            format!("identity {identity} ({project}, {region}, {} resources: {})", resources.len(), kinds.into_iter().collect::<Vec<_>>().join(", "))
        })
        .collect();
    notice.warning(&format!(
        "the state of `{environment}` records no resources, but {region} holds resources of an environment named \
         `{environment}`: {}. They are left alone. If they are this environment's and its state was \
         lost, `kstack state identity {environment} --recover <id>` makes them its own again.",
        described.join("; ")
    ));
}

/// Each image's AMI: the one baked from its current definition, or else the newest bake with
/// a warning that the definition changed since.
async fn resolve_named_images(
    images: &BTreeMap<String, LoadedImage>,
    cloud: &Cloud,
    names: &[String],
    project: Option<&str>,
    notice: &dyn Notice,
) -> Result<BTreeMap<String, String>, OpsError> {
    let definitions = images.iter().map(|(name, loaded)| (name.as_str(), (&loaded.image, loaded.roles.as_slice()))).collect();
    let resolved = crate::bake::resolve::resolve(cloud, &definitions, names, project).await?;
    for (name, found) in resolved.iter().filter(|(_, found)| found.stale) {
        notice.warning(&format!(
            "image `{name}` changed since its newest AMI {} was baked; planning with that AMI. \
             Run `kstack bake {name}` to bake the current definition.",
            found.ami
        ));
    }
    Ok(resolved.into_iter().map(|(name, found)| (name, found.ami)).collect())
}

fn round_millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}
