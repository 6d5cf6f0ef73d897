//! What the `state` commands do besides reading: a record moved to another address (`kstack
//! state mv`) or forgotten (`kstack state rm`), the resource's kstack tags following in AWS
//! first and the state written once after; a resource adopted; a lost state's identity
//! recovered; the state migrated between the local file and S3. Each under the lock.

use std::collections::BTreeMap;

use super::{Notice, OpsError};
use crate::aws::{self, Cloud, Observed};
use crate::identity::Identity;
use crate::model::AwsAccess;
use crate::model::{Project, StateBackend, StateLocation};
use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_IDENTITY, TAG_PROJECT};
use crate::resource::{Address, Kind};
use crate::state::{State, StateStore};
use crate::stop::Stop;

/// What a move or a removal did to one record.
pub struct Surgery {
    /// The resource's AWS id.
    pub id: String,
    /// Whether its tags in AWS changed (kinds without tags of their own keep none).
    pub retagged: bool,
}

/// Moves the record at `from` to `to`: the resource stays, and the model's `to` is it from
/// now on. Its `kstack:address` tag follows; state's record is what counts, so a resource
/// whose address cannot be tagged (a launch configuration, a DNS record's owner record)
/// moves all the same.
/// `command` is what the lock says holds it.
pub async fn move_record(
    store: &StateStore,
    access: &AwsAccess,
    from: &Address,
    to: &Address,
    command: &str,
    notice: &dyn Notice,
) -> Result<Surgery, OpsError> {
    let _lock = store.lock(command, &Stop::default())?;
    let mut state = store.load()?;
    let record = record(&state, from)?.clone();
    if let Some(there) = state.resources.get(to) {
        return Err(OpsError::failed(
            format!("the state of `{}` already records {} at {to}", state.environment, there.id),
            "two resources never share an address: move or remove that one first",
        ));
    }
    if !to.is_kind(record.kind) {
        return Err(OpsError::Invalid {
            message: format!("`{to}` is not an address of a {}: a record keeps its kind", record.kind.prefix()),
            hint: Some(format!("name it `{}.<name>`", record.kind.prefix())),
        });
    }
    let mut tags = record.tags.clone();
    let retagged = record.kind.has_own_tags();
    if retagged {
        tags.insert(TAG_ADDRESS.to_owned(), to.to_string());
        let cloud = connect(&state, access).await?;
        aws::retag(&cloud, &record, &tags).await.map_err(OpsError::aws(&cloud.region, "moving the kstack:address tag"))?;
    }
    state.resources.remove(from);
    state.resources.insert(to.clone(), Observed { address: to.clone(), tags, ..record.clone() });
    store.save(&mut state)?;
    warn_of_referrers(&state, from, notice);
    Ok(Surgery { id: record.id, retagged })
}

/// Forgets the record at `address`: the resource stays in AWS, its kstack tags removed, and
/// the environment no longer plans, changes or deletes it.
pub async fn remove_record(
    store: &StateStore,
    access: &AwsAccess,
    address: &Address,
    command: &str,
    notice: &dyn Notice,
) -> Result<Surgery, OpsError> {
    let _lock = store.lock(command, &Stop::default())?;
    let mut state = store.load()?;
    let record = record(&state, address)?.clone();
    let retagged = record.kind.has_own_tags();
    if retagged {
        let kstack_tags = [TAG_ENVIRONMENT, TAG_ADDRESS, TAG_IDENTITY, TAG_PROJECT];
        let tags: BTreeMap<String, String> =
            record.tags.iter().filter(|(k, _)| !kstack_tags.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        let cloud = connect(&state, access).await?;
        aws::retag(&cloud, &record, &tags).await.map_err(OpsError::aws(&cloud.region, "removing the kstack tags"))?;
    }
    state.resources.remove(address);
    state.intents.remove(address);
    store.save(&mut state)?;
    warn_of_referrers(&state, address, notice);
    Ok(Surgery { id: record.id, retagged })
}

/// The record at `address`, or an error naming the closest recorded address.
pub fn record<'a>(state: &'a State, address: &Address) -> Result<&'a Observed, OpsError> {
    state.resources.get(address).ok_or_else(|| {
        let known = state.resources.keys().map(Address::as_str);
        let hint = crate::diagnostics::did_you_mean(address.as_str(), known)
            .map(|close| format!("did you mean `{close}`?"))
            .unwrap_or_else(|| format!("`kstack state list {}` shows every address", state.environment));
        OpsError::Invalid { message: format!("`{address}` is not in the state of `{}`", state.environment), hint: Some(hint) }
    })
}

/// AWS as the environment's state knows it.
async fn connect(state: &State, access: &AwsAccess) -> Result<Cloud, OpsError> {
    let Some(region) = state.region.clone() else {
        return Err(OpsError::failed(format!("the state of `{}` names no region", state.environment), "plan or apply the environment first"));
    };
    Ok(super::account::connect(access, &region, state.owner(), state.account.as_deref()).await?.0)
}

/// Records that still refer to `address`: the next plan makes them refer to whatever the
/// model puts there.
fn warn_of_referrers(state: &State, address: &Address, notice: &dyn Notice) {
    let needle = serde_json::Value::String(address.to_string());
    let referrers: Vec<&str> = state.resources.values().filter(|r| refers_to(&r.attributes, &needle)).map(|r| r.address.as_str()).collect();
    if !referrers.is_empty() {
        notice.warning(&format!(
            "{} still refer to {address} in AWS: the next plan shows them changed to what the model puts there",
            referrers.join(", ")
        ));
    }
}

fn refers_to(value: &serde_json::Value, needle: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(items) => items.iter().any(|v| refers_to(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| refers_to(v, needle)),
        other => other == needle,
    }
}

/// Records in state what carries the environment's identity and `chosen` picks, in one state
/// write (the caller holds the lock). `cloud` reads as [`Owner::adopting`] does; `zones` are
/// hosted zones to list besides those state knows of. What was adopted.
///
/// [`Owner::adopting`]: crate::identity::Owner::adopting
async fn adopt(
    store: &StateStore,
    state: &mut State,
    cloud: Cloud,
    zones: &[String],
    chosen: impl Fn(&Observed) -> bool,
) -> Result<Vec<Observed>, OpsError> {
    let cloud = cloud.with_dns_zones(state.dns_zones().chain(zones.iter().map(String::as_str)));
    let refreshed = aws::refresh(&cloud).await.map_err(OpsError::aws(&cloud.region, "looking for the resources to adopt"))?;
    let adopted: Vec<Observed> = refreshed.observed.into_iter().filter(|o| !state.resources.contains_key(&o.address)).filter(|o| chosen(o)).collect();
    for resource in &adopted {
        state.resources.insert(resource.address.clone(), resource.clone());
    }
    if !adopted.is_empty() {
        store.save(state)?;
    }
    Ok(adopted)
}

/// Makes the resource `id` carrying the environment's tags at `address` its own (`kstack
/// state adopt`); a DNS record made by hand gets its owner record first.
pub async fn adopt_one(store: &StateStore, location: &StateLocation, address: &Address, id: &str, command: &str) -> Result<(), OpsError> {
    let env = &location.name;
    let _lock = store.lock(command, &Stop::default())?;
    let mut state = store.load()?;
    let (Some(identity), Some(region)) = (state.identity.clone(), location.region.clone().or_else(|| state.region.clone())) else {
        return Err(OpsError::failed(format!("`{env}` has no identity yet: nothing can carry it"), "plan or apply it first"));
    };
    if let Some(recorded) = state.resources.get(address) {
        return Err(OpsError::failed(
            format!("the state of `{env}` records {} at {address}; two resources never share an address", recorded.id),
            "the recorded one stays the environment's; remove the other by hand if it is not wanted",
        ));
    }
    let (cloud, _) = super::account::connect(&location.aws, &region, state.owner().adopting(), state.account.as_deref()).await?;
    // A record made by hand has no owner record to carry the tags: adopting it writes one.
    let mut zones = Vec::new();
    if address.is_kind(Kind::DnsRecord) {
        let tags = BTreeMap::from([
            (TAG_ENVIRONMENT.to_owned(), env.clone()),
            (TAG_ADDRESS.to_owned(), address.to_string()),
            (TAG_IDENTITY.to_owned(), identity.to_string()),
        ]);
        let zone = aws::take_over_dns_record(&cloud, id, &tags).await.map_err(OpsError::aws(&region, "giving the record an owner record"))?;
        zones.push(zone);
    }
    let adopted = adopt(store, &mut state, cloud, &zones, |o| &o.address == address && o.id == id).await?;
    if adopted.is_empty() {
        return Err(OpsError::failed(
            format!("{region} has no resource {id} tagged as {address} of `{env}`"),
            format!("kstack adopts only what carries kstack:environment={env}, kstack:address={address} and kstack:id={identity}"),
        ));
    }
    Ok(())
}

/// Gives an environment whose state was lost the identity its resources carry, so the next
/// plan finds them again, and adopts every resource carrying it; how many. Never over a state
/// that records resources: those would be orphaned.
pub async fn recover_identity(store: &StateStore, location: &StateLocation, identity: Identity, command: &str) -> Result<usize, OpsError> {
    let env = &location.name;
    let Some(region) = location.region.clone() else {
        return Err(OpsError::failed(format!("the region of `{env}` is unknown"), "fix the environment's `region:`"));
    };
    // One state write: nothing is half done if the run ends.
    let _lock = store.lock(command, &Stop::default())?;
    let mut state = store.load()?;
    if !state.resources.is_empty() && state.identity.as_ref() != Some(&identity) {
        return Err(OpsError::failed(
            format!(
                "the state of `{env}` records {} resources; its identity stays {}",
                state.resources.len(),
                state.identity.as_ref().map_or("unset", |i| i.as_str())
            ),
            "--recover is for a state that was lost; an environment's resources never change hands",
        ));
    }
    let (cloud, account) = super::account::connect(&location.aws, &region, state.owner().adopting(), state.account.as_deref()).await?;
    state.identity = Some(identity);
    state.region = Some(region.clone());
    state.account = Some(account);
    store.save(&mut state)?;
    // Asked for by a person who knows the identity: everything carrying it is adopted.
    let cloud = cloud.with_owner(state.owner().adopting());
    Ok(adopt(store, &mut state, cloud, &[], |_| true).await?.len())
}

/// Where `kstack state migrate` moves a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrateTo {
    Local,
    S3,
}

/// What a migration did: bytes copied, where to, and where the source was retired.
pub struct Migrated {
    pub bytes: usize,
    pub target: String,
    pub retired: String,
}

/// Copies the state byte for byte between the local file and the S3 object `location` names,
/// under both locks, reads the copy back, then retires the source.
pub fn migrate(project: &Project, location: &StateLocation, to: MigrateTo, command: &str) -> Result<Migrated, OpsError> {
    let env = &location.name;
    if location.state == StateBackend::Local {
        return Err(OpsError::failed(
            format!("`{env}` names no S3 location for its state"),
            "add `state: { backend: s3, bucket: <bucket>, key: <key> }` to the environment first: migrate moves state between it and the local file",
        ));
    }
    let s3 = super::load::open_store(project, location)?;
    let local = StateStore::local(&project.root, env, location.project.as_deref());
    let (source, target) = match to {
        MigrateTo::S3 => (local, s3),
        MigrateTo::Local => (s3, local),
    };
    // A few requests that change nothing in AWS: nothing needs to stop between them.
    let stop = Stop::default();
    let _source_lock = source.lock(command, &stop)?;
    let _target_lock = target.lock(command, &stop)?;
    let Some(bytes) = source.read_raw()? else {
        return Err(OpsError::failed(format!("there is no state of `{env}` in {}", source.location()), "nothing to migrate"));
    };
    match target.read_raw()? {
        Some(existing) if existing == bytes => {}
        Some(_) => {
            return Err(OpsError::failed(
                format!("{} already holds a different state of `{env}`; nothing was copied", target.location()),
                "compare the two (`kstack state list`), keep one, and move the other away first",
            ))
        }
        None => target.write_raw(&bytes)?,
    }
    // Read back what landed before the source goes.
    if target.read_raw()?.as_deref() != Some(bytes.as_slice()) {
        return Err(OpsError::Failed { message: format!("the copy in {} does not match; the source was kept", target.location()), hint: None });
    }
    let retired = source.retire()?;
    Ok(Migrated { bytes: bytes.len(), target: target.location(), retired })
}
