//! State surgery: a record moved to another address (`kstack state mv`) or forgotten
//! (`kstack state rm`), each under the environment's lock, the resource's kstack tags
//! following in AWS first and the state written once after.

use std::collections::BTreeMap;

use super::{Notice, OpsError};
use crate::aws::{self, Cloud, Observed};
use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_IDENTITY, TAG_PROJECT};
use crate::resource::Address;
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
pub async fn move_record(store: &StateStore, from: &Address, to: &Address, command: &str, notice: &dyn Notice) -> Result<Surgery, OpsError> {
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
        let cloud = connect(&state).await?;
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
pub async fn remove_record(store: &StateStore, address: &Address, command: &str, notice: &dyn Notice) -> Result<Surgery, OpsError> {
    let _lock = store.lock(command, &Stop::default())?;
    let mut state = store.load()?;
    let record = record(&state, address)?.clone();
    let retagged = record.kind.has_own_tags();
    if retagged {
        let kstack_tags = [TAG_ENVIRONMENT, TAG_ADDRESS, TAG_IDENTITY, TAG_PROJECT];
        let tags: BTreeMap<String, String> =
            record.tags.iter().filter(|(k, _)| !kstack_tags.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        let cloud = connect(&state).await?;
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
async fn connect(state: &State) -> Result<Cloud, OpsError> {
    let Some(region) = state.region.clone() else {
        return Err(OpsError::failed(format!("the state of `{}` names no region", state.environment), "plan or apply the environment first"));
    };
    Ok(Cloud::connect(&region, state.owner()).await)
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
