//! `prune-backups`: delete the backups a retention policy no longer keeps, and abort the
//! multipart uploads of agents that are gone. A dry run unless `confirm` is true.
//!
//! What it never deletes: the newest restorable backup (a manifest counts only when it
//! parses, describes its backup and the data object has the recorded size; otherwise
//! the backup is `damaged` and ranks with failed ones); running backups; any backup with
//! an object version under retention or legal hold (on a bucket with Object Lock, every
//! version's lock state is read with HeadObject; when one cannot be read the whole backup
//! is skipped and the result says so); a backup this unit is restoring right now;
//! anything outside `<path>/<cluster>/` or outside a valid backup directory. The
//! selection itself, ranked by the id's and the store's clocks, is [`crate::retention`]; this module
//! does the I/O.
//!
//! Cost, for a history of N backups: one listing of the prefix (keys, sizes and
//! LastModified, 1,000 per page), one of the open uploads, one manifest read per finished
//! backup the policy keeps (the restorable check, 32 at a time; a backup it deletes is
//! deleted whatever its manifest says), one GetBucketVersioning and one
//! GetObjectLockConfiguration, one ListObjectVersions walk of the prefix, HeadObject per
//! candidate version only on Object Lock buckets, and DeleteObjects in batches of 1,000.
//!
//! Backups are deleted version by version (with VersionId on versioned buckets, so no
//! delete marker is left; by key elsewhere), all candidates together, one step at a time
//! in an order that keeps every intermediate state honest if the prune is interrupted:
//! `manifest.json` first (so a manifest never points to a deleted snapshot: the backup
//! shows as `incomplete`), then verification records and any other object, then the data
//! object, and `failure.json` last (a failed backup stays `failed` until its last object
//! is gone); real versions of each step before its delete markers. A store without
//! DeleteObjects gets one DeleteObject per version. A backup with a version the store
//! refuses leaves the later steps and is reported skipped.
//!
//! Locking, by phase. The unit lock (`flock`) is what keeps a backup and a restore of one
//! unit apart; a prune needs none of what it protects for most of its run:
//! * listing, checking and selecting only read: no lock (a dry run is nothing more);
//! * a confirmed prune holds the unit's prune lock from start to end, so two prunes of
//!   one unit never interleave (prunes of other units can: every delete is idempotent and
//!   only touches backups every prune agrees are outside the policy);
//! * deleting touches only backups that exist and were selected: never a running backup
//!   (its upload is open) nor one still finishing (incomplete for less than the abandoned
//!   age), so a backup running meanwhile on this unit is never in the way. What must not
//!   happen is deleting the backup a restore of this unit is reading: the candidates are
//!   claimed, under the same mutex that records the unit lock's holder, before the first
//!   delete ([`AgentState::claim_for_deletion`]); one being restored is left out, and a
//!   restore asked for a claimed backup meanwhile gets `busy`.
//!
//! So a long prune never makes a scheduled backup miss its slot.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::state::{params, AgentState};
use crate::backup_id::BackupId;
use crate::config::keep_days_hint;
use crate::error::OpError;
use crate::fetch::{check_manifest, list_prefix, seen};
use crate::layout::{
    group, upload_times, BackupStatus, Found, Layout, ManifestCheck, FAILURE_OBJECT,
    MANIFEST_OBJECT,
};
use crate::lock::{LockError, LockHolder};
use crate::protocol::{
    AbortedUpload, PruneBackupsParams, PrunePolicy, PruneResult, PrunedBackup, SparedBackup,
};
use crate::retention::{self, Listed, Policy, Verdict, VersionLock};
use crate::storage::{self, compat, ObjectMeta, ObjectStore, StoreError, StoredVersion};
use crate::timefmt::rfc3339;

/// What to prune: the op's params, and what the scheduler asks for after a backup.
pub type PruneParams = PruneBackupsParams;

/// Applies the retention policy: reports what goes and why, and deletes only with
/// `confirm`.
pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<PruneResult, OpError> {
    prune(state, params(raw)?).await
}

/// The whole prune, dry run or not: `prune-backups` and the scheduler's retention after
/// a backup both run exactly this (same selection, same safety, same unit lock).
pub async fn prune(state: &Arc<AgentState>, p: PruneBackupsParams) -> Result<PruneResult, OpError> {
    let abandoned_after =
        retention::abandoned_after_hours(p.abandoned_after_hours).map_err(OpError::BadRequest)?;
    let (config, s3) = state.storage()?;
    // The s3-integrator's delete-older-than-days is the default keep-days.
    let (keep_days, keep_days_from) = match (p.keep_last, p.keep_days) {
        (None, None) => {
            let hint = s3.delete_older_than_days.as_ref().and_then(keep_days_hint);
            (
                hint.map(|d| d as f64),
                hint.map(|_| "s3.delete-older-than-days"),
            )
        }
        (_, d) => (d, d.map(|_| "request")),
    };
    let policy = Policy::new(p.keep_last, keep_days).map_err(|e| {
        if p.keep_last.is_none() && keep_days.is_none() {
            OpError::BadRequest(format!(
                "{e} (no s3.delete-older-than-days is configured to default to)"
            ))
        } else {
            OpError::BadRequest(e)
        }
    })?;

    // A confirmed prune keeps other prunes of this unit out for its whole run. It does
    // not hold the unit lock (see the module docs): backups and restores go on meanwhile.
    let _pruning = if p.confirm {
        Some(state.pruning.try_lock().map_err(|_| {
            OpError::Lock(LockError::Busy(Some(LockHolder {
                op: "prune-backups".into(),
                backup_id: format!("prune of {}", config.cluster),
                started_at: "earlier".into(),
                pid: std::process::id(),
            })))
        })?)
    } else {
        None
    };

    let store = state.open_store(&s3)?;
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    let now = OffsetDateTime::now_utc();
    let (keys, open_uploads) = list_prefix(&*store, &layout).await?;
    let uploads = seen(&open_uploads);
    let grouped: HashMap<BackupId, Found> = group(&layout, &keys, &uploads).into_iter().collect();
    let initiated = upload_times(&layout, &uploads);
    let listed: Vec<Listed> = grouped
        .iter()
        .map(|(id, found)| {
            let status = found.status().expect("grouped entries have a status");
            let times = initiated.get(id).map(Vec::as_slice).unwrap_or_default();
            Listed {
                id: id.clone(),
                status: retention::shown_status(status, id, times, now, abandoned_after),
                stored_at: found.stored_at(),
            }
        })
        .collect();
    // "Finished" must mean restorable before any rule counts it: a manifest whose data is
    // gone, or that does not parse, must not take the place of the newest backup. Only
    // the backups the policy keeps as finished need their manifest read: one it deletes
    // as finished it would delete as damaged too (a damaged backup goes once older than
    // `keep-days`, or than the oldest kept finished one, which every finished backup
    // outside the kept ones is). So: select, read the manifests of the finished backups
    // kept and not yet read, mark the damaged ones, select again, until every kept
    // finished backup is known to be restorable. Usually one round of keep-last reads.
    let mut damaged: HashMap<BackupId, String> = HashMap::new();
    let mut checked: BTreeSet<BackupId> = BTreeSet::new();
    let mut decisions = loop {
        let backups: Vec<Listed> = listed
            .iter()
            .cloned()
            .map(|mut b| {
                if damaged.contains_key(&b.id) {
                    b.status = BackupStatus::Damaged;
                }
                b
            })
            .collect();
        let decisions = retention::select(&backups, &policy, now);
        let unread: Vec<BackupId> = decisions
            .iter()
            .filter(|d| {
                d.status == BackupStatus::Finished
                    && matches!(d.verdict, Verdict::Keep(_))
                    && !checked.contains(&d.id)
            })
            .map(|d| d.id.clone())
            .collect();
        if unread.is_empty() {
            break decisions;
        }
        damaged.extend(damaged_backups(&*store, &layout, &grouped, &unread).await?);
        checked.extend(unread);
    };
    let backups: Vec<Listed> = listed
        .into_iter()
        .map(|mut b| {
            if damaged.contains_key(&b.id) {
                b.status = BackupStatus::Damaged;
            }
            b
        })
        .collect();
    for d in &mut decisions {
        if let Some(why) = damaged.get(&d.id) {
            match &mut d.verdict {
                Verdict::Keep(w) | Verdict::Delete(w) => {
                    *w = format!("{w} (not restorable: {why})")
                }
            }
        }
    }
    // Data without a manifest is also what another unit's backup looks like in the moment
    // between completing its upload and writing its manifest: young ones are left alone.
    for d in &mut decisions {
        // Its age by the younger of its two times: a unit whose clock runs behind may be
        // finishing it right now.
        let age_hours = (now - d.youngest_time()).as_seconds_f64() / 3600.0;
        if d.status == BackupStatus::Incomplete
            && matches!(d.verdict, Verdict::Delete(_))
            && age_hours < abandoned_after.max(1.0)
        {
            d.verdict = Verdict::Keep(format!(
                "incomplete for less than {}: it may still be finishing on another unit",
                retention::hours(abandoned_after.max(1.0))
            ));
        }
    }
    for d in decisions.iter().filter(|d| d.warning.is_some()) {
        warn!(backup_id = %d.id, warning = d.warning.as_deref().unwrap_or_default(), "a backup id disagrees with the store's time");
    }
    let status_of: HashMap<&BackupId, BackupStatus> =
        backups.iter().map(|b| (&b.id, b.status)).collect();
    let candidates: BTreeSet<BackupId> = decisions
        .iter()
        .filter(|d| matches!(d.verdict, Verdict::Delete(_)))
        .map(|d| d.id.clone())
        .collect();
    let mut inspections = if candidates.is_empty() {
        HashMap::new()
    } else {
        inspect_all(&*store, &layout, &candidates, &keys, now).await?
    };

    let mut out = Outcome::default();
    let mut plans: Vec<Planned> = Vec::new();
    for d in decisions {
        let warning = d.warning;
        let why = match d.verdict {
            Verdict::Keep(why) => {
                // An abandoned backup has nothing but its upload: it is reported under
                // aborted-uploads, not as "kept".
                if d.status != BackupStatus::Abandoned {
                    out.kept.push(spared(&d.id, d.status, why, warning));
                }
                continue;
            }
            Verdict::Delete(why) => why,
        };
        match inspections.remove(&d.id) {
            Some(Inspection::Delete(plan)) => plans.push(Planned {
                id: d.id,
                status: d.status,
                why,
                warning,
                plan,
            }),
            Some(Inspection::Locked(reason)) => out.kept.push(spared(
                &d.id,
                d.status,
                format!("{reason}; the policy alone would delete it ({why})"),
                warning,
            )),
            Some(Inspection::Unreadable(reason)) => {
                out.skipped.push(spared(&d.id, d.status, reason, warning))
            }
            None => out.skipped.push(spared(
                &d.id,
                d.status,
                "not inspected; nothing deleted".into(),
                warning,
            )),
        }
    }

    let failed = if p.confirm && !plans.is_empty() {
        delete_plans(state, &*store, &layout, &plans).await?
    } else {
        HashMap::new()
    };
    for Planned {
        id,
        status,
        why,
        warning,
        plan,
    } in plans
    {
        if let Some(reason) = failed.get(&id) {
            out.skipped
                .push(spared(&id, status, reason.clone(), warning));
            continue;
        }
        let objects = plan
            .iter()
            .map(|v| v.key.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        if p.confirm {
            info!(backup_id = %id, objects, versions = plan.len(), why = %why, "backup pruned");
        }
        out.deleted.push(PrunedBackup {
            backup_id: id.to_string(),
            status,
            objects,
            versions: plan.len(),
            why,
            warning,
        });
    }

    for u in &open_uploads {
        let Some((id, _)) = layout.parse_key(&u.key) else {
            continue;
        };
        if grouped.get(&id).is_some_and(|f| f.manifest)
            || !retention::upload_is_abandoned(u.initiated, id.started_at(), now, abandoned_after)
        {
            continue;
        }
        let since = retention::upload_started(u.initiated, id.started_at(), now);
        if p.confirm {
            if state.shutdown.is_cancelled() {
                return Err(OpError::Cancelled);
            }
            if let Err(e) = store.abort_multipart(&u.key, &u.upload_id).await {
                warn!(backup_id = %id, error = %e, "could not abort an abandoned upload");
                out.skipped.push(spared(
                    &id,
                    status_of
                        .get(&id)
                        .copied()
                        .unwrap_or(BackupStatus::Abandoned),
                    format!("could not abort its open upload: {e}"),
                    None,
                ));
                continue;
            }
            info!(backup_id = %id, "abandoned multipart upload aborted");
        }
        out.aborted_uploads.push(AbortedUpload {
            backup_id: id.to_string(),
            key: u.key.clone(),
            initiated: rfc3339(since),
            why: format!(
                "open since {}, longer than {}, with no manifest: its agent is gone",
                rfc3339(since),
                retention::hours(abandoned_after)
            ),
        });
    }

    Ok(PruneResult {
        dry_run: !p.confirm,
        cluster: config.cluster,
        policy: PrunePolicy {
            keep_last: policy.keep_last(),
            keep_days: policy.keep_days(),
            keep_days_from: keep_days_from.map(str::to_owned),
            abandoned_after_hours: abandoned_after,
        },
        deleted: out.deleted,
        kept: out.kept,
        skipped: out.skipped,
        aborted_uploads: out.aborted_uploads,
    })
}

fn spared(
    id: &BackupId,
    status: BackupStatus,
    why: String,
    warning: Option<String>,
) -> SparedBackup {
    SparedBackup {
        backup_id: id.to_string(),
        status,
        why,
        warning,
    }
}

/// Manifest reads in flight at once while checking finished backups.
const MANIFEST_CONCURRENCY: usize = 32;

/// Those of `ids` (listed as finished) whose manifest does not make them restorable,
/// with the reason (see [`crate::layout::ManifestV1::unrestorable_reason`]).
async fn damaged_backups(
    store: &dyn ObjectStore,
    layout: &Layout,
    grouped: &HashMap<BackupId, Found>,
    ids: &[BackupId],
) -> Result<HashMap<BackupId, String>, OpError> {
    let finished: Vec<(BackupId, Option<u64>)> = ids
        .iter()
        .map(|id| (id.clone(), grouped.get(id).and_then(|f| f.data_size)))
        .collect();
    let checks: Vec<(BackupId, Result<ManifestCheck, StoreError>)> = stream::iter(finished)
        .map(|(id, size)| async move {
            let check = check_manifest(store, layout, &id, size).await;
            (id, check)
        })
        .buffer_unordered(MANIFEST_CONCURRENCY)
        .collect()
        .await;
    let mut damaged = HashMap::new();
    for (id, check) in checks {
        if let ManifestCheck::Damaged(why) = check? {
            warn!(backup_id = %id, why = %why, "a backup with a manifest is not restorable");
            damaged.insert(id, why);
        }
    }
    Ok(damaged)
}

#[derive(Default)]
struct Outcome {
    deleted: Vec<PrunedBackup>,
    kept: Vec<SparedBackup>,
    skipped: Vec<SparedBackup>,
    aborted_uploads: Vec<AbortedUpload>,
}

/// A backup the policy deletes, with its versions in deletion order.
struct Planned {
    id: BackupId,
    status: BackupStatus,
    why: String,
    warning: Option<String>,
    plan: Vec<StoredVersion>,
}

/// What the store says about deleting one candidate.
enum Inspection {
    /// Every version, in deletion order.
    Delete(Vec<StoredVersion>),
    /// A version is under retention or legal hold: the backup stays whole.
    Locked(String),
    /// Versions or lock state could not be read: the backup is left alone.
    Unreadable(String),
}

/// Lock-state reads (HeadObject) in flight at once.
const HEAD_CONCURRENCY: usize = 16;

/// Plans the deletion of every candidate from one version listing of the cluster's
/// prefix, and reads lock states only where the bucket can hold locks.
///
/// Versions come from ListObjectVersions; a store that does not implement it (Garage)
/// has one version per listed key. A `null` version id (an object written while
/// versioning was off) is named only on buckets that have versioning: elsewhere some
/// stores refuse a version id altogether. Lock state (HeadObject per version) is read
/// only when the bucket has Object Lock enabled, or when that cannot be told: without
/// it no version can be retained or held, and skipping 10,000 HEADs is what makes a
/// large prune take seconds.
async fn inspect_all(
    store: &dyn ObjectStore,
    layout: &Layout,
    candidates: &BTreeSet<BackupId>,
    keys: &[ObjectMeta],
    now: OffsetDateTime,
) -> Result<HashMap<BackupId, Inspection>, OpError> {
    let versioned = store.versioning().await?;
    let locks_possible = match store.object_lock_enabled().await {
        Ok(enabled) => enabled,
        Err(e) => {
            warn!(error = %e, "cannot tell whether the bucket has Object Lock; reading every version's lock state");
            true
        }
    };
    let all: Option<Vec<StoredVersion>> = match storage::list_versions(store, layout.prefix()).await
    {
        Ok(v) => Some(v),
        // No version listing (Garage): one version per key. Not on a bucket known to
        // keep versions, where deleting by key alone would leave them behind a marker.
        Err(StoreError::Unsupported { .. }) if !versioned => None,
        Err(e) => {
            let why = format!("cannot list its object versions ({e}); nothing deleted");
            return Ok(candidates
                .iter()
                .map(|id| (id.clone(), Inspection::Unreadable(why.clone())))
                .collect());
        }
    };
    let mut versions_of: HashMap<BackupId, Vec<StoredVersion>> = HashMap::new();
    for v in all.iter().flatten() {
        if let Some((id, _)) = layout.parse_key(&v.key) {
            if candidates.contains(&id) {
                let mut v = v.clone();
                v.version_id = compat::version_id_to_send(v.version_id, versioned);
                versions_of.entry(id).or_default().push(v);
            }
        }
    }
    let mut keys_of: HashMap<BackupId, Vec<&str>> = HashMap::new();
    for k in keys {
        if let Some((id, _)) = layout.parse_key(&k.key) {
            if candidates.contains(&id) {
                keys_of.entry(id).or_default().push(&k.key);
            }
        }
    }
    let mut out = HashMap::new();
    for id in candidates {
        let listed = keys_of.remove(id).unwrap_or_default();
        let versions = versions_of.remove(id).unwrap_or_default();
        let inspection = match plan_versions(
            &layout.backup_prefix(id),
            versions,
            &listed,
            all.is_some(),
            versioned,
        ) {
            Ok(plan) => Inspection::Delete(plan),
            Err(why) => Inspection::Unreadable(why),
        };
        out.insert(id.clone(), inspection);
    }
    if locks_possible {
        read_locks(store, layout, &mut out, now).await;
    }
    Ok(out)
}

/// One backup's versions in deletion order, or why it cannot be planned. A key of the
/// backup's current listing that the version listing misses is added as such on stores
/// not known to keep versions (so a backup is never reported deleted while objects
/// remain), and makes the backup skipped on those that do.
fn plan_versions(
    prefix: &str,
    mut versions: Vec<StoredVersion>,
    listed: &[&str],
    had_version_listing: bool,
    versioned: bool,
) -> Result<Vec<StoredVersion>, String> {
    let present: BTreeSet<&str> = versions
        .iter()
        .filter(|v| !v.delete_marker)
        .map(|v| v.key.as_str())
        .collect();
    let mut missing = Vec::new();
    for key in listed.iter().filter(|k| !present.contains(**k)) {
        if versioned && had_version_listing {
            let object = key.strip_prefix(prefix).unwrap_or(key);
            return Err(format!(
                "the store's version listing misses {object}; skipped, nothing deleted"
            ));
        }
        missing.push(StoredVersion {
            key: (*key).to_owned(),
            version_id: None,
            delete_marker: false,
        });
    }
    versions.extend(missing);
    versions.sort_by_key(|v| {
        let object = v.key.strip_prefix(prefix).unwrap_or(&v.key).to_owned();
        // Real versions before delete markers: removing a marker first would bring an
        // older version of, say, the manifest back into view if the prune stopped there.
        (delete_rank(&object), v.delete_marker, object)
    });
    Ok(versions)
}

/// Reads the lock state of every version of every planned backup (HeadObject, a few at
/// a time); a backup with a version in force becomes `Locked`, one whose lock state
/// cannot be read `Unreadable`.
async fn read_locks(
    store: &dyn ObjectStore,
    layout: &Layout,
    inspections: &mut HashMap<BackupId, Inspection>,
    now: OffsetDateTime,
) {
    // Owned items: borrowing futures in a buffered stream trip the `Send` check of the
    // server's spawned connection task.
    let objects: Vec<(BackupId, String, Option<String>)> = inspections
        .iter()
        .filter_map(|(id, i)| match i {
            Inspection::Delete(plan) => Some((id, plan)),
            _ => None,
        })
        .flat_map(|(id, plan)| {
            plan.iter()
                .filter(|v| !v.delete_marker)
                .map(move |v| (id.clone(), v.key.clone(), v.version_id.clone()))
        })
        .collect();
    let heads: Vec<(BackupId, String, Result<VersionLock, StoreError>)> = stream::iter(objects)
        .map(|(id, key, version_id)| async move {
            let lock = store
                .head(&key, version_id.as_deref())
                .await
                .map(|m| VersionLock {
                    mode: m.lock.mode,
                    retain_until: m.lock.retain_until,
                    legal_hold: m.lock.legal_hold,
                });
            (id, key, lock)
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    let mut locks: HashMap<BackupId, Vec<VersionLock>> = HashMap::new();
    let mut unreadable: HashMap<BackupId, String> = HashMap::new();
    for (id, key, lock) in heads {
        match lock {
            Ok(l) => locks.entry(id).or_default().push(l),
            Err(e) => {
                let prefix = layout.backup_prefix(&id);
                let object = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
                unreadable.entry(id).or_insert_with(|| {
                    format!(
                        "the lock state of {object} cannot be read ({e}); skipped, nothing deleted"
                    )
                });
            }
        }
    }
    for (id, inspection) in inspections.iter_mut() {
        if !matches!(inspection, Inspection::Delete(_)) {
            continue;
        }
        if let Some(why) = unreadable.remove(id) {
            *inspection = Inspection::Unreadable(why);
        } else if let Some(reason) = locks.get(id).and_then(|l| retention::lock_reason(l, now)) {
            *inspection = Inspection::Locked(reason);
        }
    }
}

/// Deletion order; see the module docs for why.
fn delete_rank(object: &str) -> u8 {
    match object {
        MANIFEST_OBJECT => 0,
        FAILURE_OBJECT => 3,
        o if crate::layout::is_data_object(o) => 2,
        _ => 1,
    }
}

/// Deletes the planned backups step by step (see the module docs: all manifests first,
/// then the other records, the data objects, the failure records; real versions of each
/// step before its delete markers), every step in DeleteObjects batches. A backup with a
/// version the store refused leaves the later steps; the result maps it to what is left.
///
/// Before the first delete the backups are claimed ([`AgentState::claim_for_deletion`]):
/// one this unit is restoring right now is left out, and no restore of a claimed one can
/// start until the deletes are done.
async fn delete_plans(
    state: &Arc<AgentState>,
    store: &dyn ObjectStore,
    layout: &Layout,
    plans: &[Planned],
) -> Result<HashMap<BackupId, String>, OpError> {
    let mut failed: HashMap<BackupId, String> = HashMap::new();
    let ids: Vec<String> = plans.iter().map(|p| p.id.to_string()).collect();
    let (claim, in_use) = state.claim_for_deletion(ids);
    if let Some(id) = in_use.and_then(|i| BackupId::parse(&i).ok()) {
        failed.insert(
            id,
            "this unit is restoring it right now; left for a later prune, nothing deleted".into(),
        );
    }
    for rank in 0..=3u8 {
        for markers in [false, true] {
            if state.shutdown.is_cancelled() {
                return Err(OpError::Cancelled);
            }
            let step: Vec<StoredVersion> = plans
                .iter()
                .filter(|p| claim.holds(p.id.as_str()) && !failed.contains_key(&p.id))
                .flat_map(|p| {
                    let prefix = layout.backup_prefix(&p.id);
                    p.plan
                        .iter()
                        .filter(move |v| {
                            let object = v.key.strip_prefix(&prefix).unwrap_or(&v.key);
                            delete_rank(object) == rank && v.delete_marker == markers
                        })
                        .cloned()
                })
                .collect();
            if step.is_empty() {
                continue;
            }
            for (v, e) in storage::delete_versions(store, &step).await {
                let Some((id, object)) = layout.parse_key(&v.key) else {
                    continue;
                };
                warn!(backup_id = %id, object, error = %e, "prune could not delete a version");
                failed.entry(id).or_insert_with(|| {
                    format!("deleting {object} failed ({e}); what is left stays listed")
                });
            }
        }
    }
    drop(claim);
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_manifest_goes_first_and_the_snapshot_and_failure_record_last() {
        let mut objects = vec![
            "failure.json",
            "data.rdb",
            "verify/20261122T000000Z-abcdef.json",
            "manifest.json",
        ];
        objects.sort_by_key(|o| (delete_rank(o), o.to_string()));
        assert_eq!(
            objects,
            vec![
                "manifest.json",
                "verify/20261122T000000Z-abcdef.json",
                "data.rdb",
                "failure.json"
            ]
        );
    }

    #[test]
    fn params_refuse_unknown_keys_and_bad_values() {
        let bad = [
            json!({"keep-last": 1, "keep_last": 1}),
            json!({"keep-last": -1}),
            json!({"keep-last": 1.5}),
            json!({"confirm": "yes"}),
            json!({"cluster": "other"}),
        ];
        for raw in bad {
            assert!(params::<PruneBackupsParams>(raw.clone()).is_err(), "{raw}");
        }
        let p: PruneBackupsParams = params(json!({"keep-days": 0.5, "confirm": true})).unwrap();
        assert_eq!(p.keep_days, Some(0.5));
        assert!(p.confirm && p.keep_last.is_none() && p.abandoned_after_hours.is_none());
    }
}
