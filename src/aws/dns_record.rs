//! Route53 records in hosted zones the environment uses but does not own. Records cannot be
//! tagged, so each record kstack makes has an owner record beside it, made and removed in the
//! same atomic change: a TXT record `_kstack-<type>.<name>` holding the environment, address and
//! identity. Refresh lists each zone once (paginated) and keeps the records whose owner record
//! names this environment; any other record is never changed. A record's id is
//! `<zone id>|<name>|<type>`.

use crate::resource::DnsRecordSpec;
use std::collections::BTreeMap;

use aws_sdk_route53::types::{AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
use serde_json::json;

use super::{AwsError, Cloud, Ids, Observed};
use crate::model::RecordType;
use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT, TAG_IDENTITY};
use crate::resource::{Kind, Resource};

fn build_error(error: impl std::fmt::Display) -> AwsError {
    AwsError::internal(error.to_string())
}

/// A name as Route53 answers it (`\052.apps.example.com.`), as the model writes it.
pub(super) fn normal(name: &str) -> String {
    name.replace("\\052", "*").trim_end_matches('.').to_ascii_lowercase()
}

/// The owner record's name for the record `name` of type `record_type`.
fn owner_name(name: &str, record_type: &str) -> String {
    let name = match name.strip_prefix("*.") {
        Some(rest) => format!("_wildcard.{rest}"),
        None => name.to_owned(),
    };
    format!("_kstack-{}.{name}", record_type.to_ascii_lowercase())
}

/// The owner record's value: what the tags of a taggable resource would say.
fn owner_value(tags: &BTreeMap<String, String>) -> String {
    let field = |key: &str| format!("{key}={}", tags.get(key).map_or("", String::as_str));
    format!("\"{} {} {}\"", field(TAG_ENVIRONMENT), field(TAG_ADDRESS), field(TAG_IDENTITY))
}

/// The tags an owner record's value holds.
fn owner_tags(value: &str) -> BTreeMap<String, String> {
    value.trim_matches('"').split_whitespace().filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The id of the hosted zone named `zone`, if the account has one.
pub(super) async fn zone_id(cloud: &Cloud, zone: &str) -> Result<Option<String>, AwsError> {
    let found = cloud.route53.list_hosted_zones_by_name().dns_name(zone).max_items(1).send().await?;
    Ok(found.hosted_zones().iter().find(|z| normal(z.name()) == zone).map(|z| z.id().trim_start_matches("/hostedzone/").to_owned()))
}

/// Whether the account has a hosted zone named `zone`.
pub async fn zone_exists(cloud: &Cloud, zone: &str) -> Result<bool, AwsError> {
    Ok(zone_id(cloud, zone).await?.is_some())
}

/// Every record set of a zone: one paginated listing.
pub(super) async fn record_sets(cloud: &Cloud, zone_id: &str) -> Result<Vec<ResourceRecordSet>, AwsError> {
    let mut sets = Vec::new();
    let (mut name, mut kind, mut identifier) = (None, None, None);
    loop {
        let page = cloud
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .set_start_record_name(name)
            .set_start_record_type(kind)
            .set_start_record_identifier(identifier)
            .send()
            .await?;
        sets.extend(page.resource_record_sets().iter().cloned());
        if !page.is_truncated() {
            return Ok(sets);
        }
        name = page.next_record_name().map(str::to_owned);
        kind = page.next_record_type().cloned();
        identifier = page.next_record_identifier().map(str::to_owned);
    }
}

/// A record set in a zone, whoever made it: `(zone, name, type)`, with its id.
pub(super) type RecordKey = (String, String, String);
pub(super) type RecordsInUse = BTreeMap<RecordKey, String>;

/// The zones named by the environment's model and state, each listed once: the records whose
/// owner record names the environment, and every record set the zones hold (so a plan never
/// creates over one a person or another tool made).
pub(super) async fn read(cloud: &Cloud) -> Result<(Vec<Observed>, RecordsInUse), AwsError> {
    let mut found = Vec::new();
    let mut in_use = RecordsInUse::new();
    for zone in &cloud.dns_zones {
        // A zone that does not exist holds nothing of the environment (planning says so).
        let Some(id) = zone_id(cloud, zone).await? else { continue };
        let sets = record_sets(cloud, &id).await?;
        in_use.extend(sets.iter().map(|s| {
            let (name, record_type) = (normal(s.name()), s.r#type().as_str().to_owned());
            let id = format!("{id}|{name}|{record_type}");
            ((zone.clone(), name, record_type), id)
        }));
        // Each record by the name its owner record would have.
        let by_owner: BTreeMap<String, &ResourceRecordSet> = sets.iter().map(|s| (owner_name(&normal(s.name()), s.r#type().as_str()), s)).collect();
        let mut owned = std::collections::BTreeSet::new();
        for owner in sets.iter().filter(|s| *s.r#type() == RrType::Txt && normal(s.name()).starts_with("_kstack-")) {
            let tags = owner_tags(owner.resource_records().first().map_or("", ResourceRecord::value));
            if tags.get(TAG_ENVIRONMENT).map(String::as_str) != Some(cloud.environment()) {
                continue;
            }
            let Some(record) = by_owner.get(&normal(owner.name())) else { continue };
            let (record_id, attributes) = observe(zone, &id, record);
            owned.insert(record_id.clone());
            found.extend(super::tags::observed(&cloud.owner, Kind::DnsRecord, &record_id, tags, attributes));
        }
        // Records state records without an owner record (imported from another tool).
        for record in &sets {
            let (record_id, attributes) = observe(zone, &id, record);
            if !owned.contains(&record_id) && cloud.owner.recorded_address(Kind::DnsRecord, &record_id).is_some() {
                found.extend(super::tags::observed(&cloud.owner, Kind::DnsRecord, &record_id, BTreeMap::new(), attributes));
            }
        }
    }
    Ok((found, in_use))
}

/// A record set's id (`<zone id>|<name>|<type>`) and attributes, as the model writes them.
fn observe(zone: &str, zone_id: &str, record: &ResourceRecordSet) -> (String, serde_json::Value) {
    let (name, record_type) = (normal(record.name()), record.r#type().as_str().to_owned());
    let mut attributes = json!({ "zone": zone, "name": name, "type": record_type });
    match record.alias_target() {
        // The load balancer's DNS name; refresh swaps it for the balancer's address.
        Some(alias) => attributes["alias"] = json!(normal(alias.dns_name()).trim_start_matches("dualstack.")),
        None => {
            attributes["ttl"] = json!(record.ttl());
            let values: Vec<String> = record.resource_records().iter().map(|r| unquoted(record.r#type(), r.value())).collect();
            attributes["values"] = json!(values);
        }
    }
    (format!("{zone_id}|{name}|{record_type}"), attributes)
}

/// TXT values travel in quotes; the model writes them bare.
fn unquoted(kind: &RrType, value: &str) -> String {
    if *kind == RrType::Txt {
        value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_owned()
    } else {
        value.to_owned()
    }
}

fn quoted(kind: RecordType, value: &str) -> String {
    if kind == RecordType::TXT && !value.starts_with('"') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

/// The record set `resource` wants, with its alias's load balancer looked up.
async fn wanted(cloud: &Cloud, spec: &DnsRecordSpec, ids: &Ids) -> Result<ResourceRecordSet, AwsError> {
    let DnsRecordSpec { name, record_type, alias, ttl, values, .. } = spec;
    let set = ResourceRecordSet::builder().name(name).r#type(RrType::from(record_type.as_str()));
    let set = match alias {
        Some(balancer) => {
            let balancer = super::id_of(ids, balancer)?;
            let described = cloud.elb.describe_load_balancers().load_balancer_names(balancer).send().await?;
            let found = described.load_balancer_descriptions().first().ok_or_else(|| AwsError::missing("DescribeLoadBalancers", balancer))?;
            let target = AliasTarget::builder()
                .dns_name(found.dns_name().unwrap_or_default())
                .hosted_zone_id(found.canonical_hosted_zone_name_id().unwrap_or_default())
                .evaluate_target_health(false)
                .build()
                .map_err(build_error)?;
            set.alias_target(target)
        }
        None => {
            let records = values.iter().map(|v| ResourceRecord::builder().value(quoted(*record_type, v)).build()).collect::<Result<Vec<_>, _>>();
            set.ttl(i64::from(ttl.unwrap_or(300))).set_resource_records(Some(records.map_err(build_error)?))
        }
    };
    set.build().map_err(build_error)
}

fn owner_set(name: &str, record_type: &str, tags: &BTreeMap<String, String>) -> Result<ResourceRecordSet, AwsError> {
    let value = ResourceRecord::builder().value(owner_value(tags)).build().map_err(build_error)?;
    ResourceRecordSet::builder().name(owner_name(name, record_type)).r#type(RrType::Txt).ttl(300).resource_records(value).build().map_err(build_error)
}

fn change(action: ChangeAction, set: ResourceRecordSet) -> Result<Change, AwsError> {
    Change::builder().action(action).resource_record_set(set).build().map_err(build_error)
}

/// Applies `changes` to the zone in one atomic batch: all or none.
async fn submit(cloud: &Cloud, zone_id: &str, changes: Vec<Change>) -> Result<(), AwsError> {
    let batch = ChangeBatch::builder().set_changes(Some(changes)).comment("kstack").build().map_err(build_error)?;
    cloud.route53.change_resource_record_sets().hosted_zone_id(zone_id).change_batch(batch).send().await?;
    Ok(())
}

/// Creates the record and its owner record together. Route53 refuses to create a name and
/// type that exists, so a record made by hand is never taken over.
pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &DnsRecordSpec, ids: &Ids) -> Result<String, AwsError> {
    let DnsRecordSpec { zone, name, record_type, .. } = spec;
    let zone_id = zone_id(cloud, zone).await?.ok_or_else(|| AwsError::internal(format!("hosted zone {zone} does not exist")))?;
    let record = wanted(cloud, spec, ids).await?;
    let owner = owner_set(name, record_type.as_str(), &resource.tags)?;
    submit(cloud, &zone_id, vec![change(ChangeAction::Create, record)?, change(ChangeAction::Create, owner)?]).await?;
    Ok(format!("{zone_id}|{name}|{}", record_type.as_str()))
}

/// The record as it is now, and its owner record: a change deletes exactly these, so one made
/// since by someone else makes the whole batch fail rather than be overwritten.
pub(super) async fn current(cloud: &Cloud, id: &str) -> Result<(String, Option<ResourceRecordSet>, Option<ResourceRecordSet>), AwsError> {
    let mut parts = id.split('|');
    let (Some(zone_id), Some(name), Some(record_type)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AwsError::internal(format!("`{id}` is not a DNS record id")));
    };
    let find =
        |sets: &[ResourceRecordSet], name: &str, kind: &str| sets.iter().find(|s| normal(s.name()) == name && s.r#type().as_str() == kind).cloned();
    let sets = record_sets(cloud, zone_id).await?;
    Ok((zone_id.to_owned(), find(&sets, name, record_type), find(&sets, &owner_name(name, record_type), "TXT")))
}

/// Replaces the record's values or alias in one batch: the current record out, the new in.
pub(super) async fn update(cloud: &Cloud, spec: &DnsRecordSpec, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
    let (zone_id, record, _) = current(cloud, &actual.id).await?;
    let mut changes = Vec::new();
    if let Some(record) = record {
        changes.push(change(ChangeAction::Delete, record)?);
    }
    changes.push(change(ChangeAction::Create, wanted(cloud, spec, ids).await?)?);
    submit(cloud, &zone_id, changes).await
}

/// Gives the record `id` (made by someone else, with no owner record) an owner record with
/// `tags`, in one change that fails if an owner record appeared meanwhile: what `kstack state
/// adopt` does, a person having said the record is the environment's. Returns its zone's name.
pub async fn take_over(cloud: &Cloud, id: &str, tags: &BTreeMap<String, String>) -> Result<String, AwsError> {
    let (zone_id, record, owner) = current(cloud, id).await?;
    let Some(record) = record else { return Err(AwsError::missing("ListResourceRecordSets", id)) };
    if owner.is_none() {
        let (name, record_type) = (normal(record.name()), record.r#type().as_str().to_owned());
        submit(cloud, &zone_id, vec![change(ChangeAction::Create, owner_set(&name, &record_type, tags)?)?]).await?;
    }
    let zone = cloud.route53.get_hosted_zone().id(&zone_id).send().await?;
    Ok(zone.hosted_zone().map(|z| normal(z.name())).unwrap_or_default())
}

/// Deletes the record and its owner record together, if the owner record is still this
/// environment's.
pub(super) async fn delete(cloud: &Cloud, actual: &Observed) -> Result<(), AwsError> {
    let (zone_id, record, owner) = current(cloud, &actual.id).await?;
    let Some(owner) = owner else { return Ok(()) };
    let tags = owner_tags(owner.resource_records().first().map_or("", ResourceRecord::value));
    if !cloud.owner.owns(&actual.id, &tags) {
        return Err(AwsError::internal(format!("{} is now owned by another environment; left alone", actual.id)));
    }
    let mut changes = vec![change(ChangeAction::Delete, owner)?];
    if let Some(record) = record {
        changes.push(change(ChangeAction::Delete, record)?);
    }
    submit(cloud, &zone_id, changes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_records_name_their_record_and_carry_its_tags() {
        assert_eq!(owner_name("*.apps.dev.example.com", "A"), "_kstack-a._wildcard.apps.dev.example.com");
        assert_eq!(owner_name("dev.example.com", "TXT"), "_kstack-txt.dev.example.com");
        assert_eq!(normal("\\052.Apps.Example.com."), "*.apps.example.com");
        let tags = BTreeMap::from([
            (TAG_ENVIRONMENT.to_owned(), "dev".to_owned()),
            (TAG_ADDRESS.to_owned(), "dns_record.apps".to_owned()),
            (TAG_IDENTITY.to_owned(), "abc".to_owned()),
        ]);
        assert_eq!(owner_tags(&owner_value(&tags)), tags);
    }
}
