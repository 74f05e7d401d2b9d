//! `prune-backups`: delete the backups a retention policy no longer keeps, and abort the
//! multipart uploads of agents that are gone. A dry run unless `confirm` is true.
//!
//! What it never deletes: the newest restorable backup (a manifest counts only when it
//! parses, describes its backup and the data object has the recorded size; otherwise
//! the backup is `damaged` and ranks with failed ones); running backups; any backup with
//! an object version under retention or legal hold (checked per version with HeadObject;
//! when a version's lock state cannot be read the whole backup is skipped and the result
//! says so); anything outside `<path>/<cluster>/` or outside a valid backup directory.
//! The selection itself is [`crate::retention`]; this module does the I/O.
//!
//! A backup is deleted version by version (DeleteObject with VersionId on versioned
//! buckets, so no delete marker is left; plain DeleteObject elsewhere), in an order that
//! keeps every intermediate state honest if the prune is interrupted: `manifest.json`
//! first (so a manifest never points to a deleted snapshot: the backup shows as
//! `incomplete`), then verification records and any other object, then `data.rdb`, and
//! `failure.json` last (a failed backup stays `failed` until its last object is gone).
//!
//! Deleting takes the unit lock, so a prune never races a backup or restore of this unit;
//! a dry run reads only and takes no lock.

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
use crate::protocol::{
    AbortedUpload, PruneBackupsParams, PrunePolicy, PruneResult, PrunedBackup, SparedBackup,
};
use crate::retention::{self, Policy, Verdict, VersionLock};
use crate::storage::{self, compat, ObjectStore, StoreError, StoredVersion};
use crate::timefmt::rfc3339;

/// What to prune: the op's params, and what the scheduler asks for after a backup.
pub type PruneParams = PruneBackupsParams;

/// Lock-state reads (HeadObject) in flight at once.
const HEAD_CONCURRENCY: usize = 8;

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

    let _held = if p.confirm {
        Some(
            state
                .lock_unit("prune-backups", format!("prune of {}", config.cluster))
                .await?,
        )
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
    let listed: Vec<(BackupId, BackupStatus)> = grouped
        .iter()
        .map(|(id, found)| {
            let status = found.status().expect("grouped entries have a status");
            let times = initiated.get(id).map(Vec::as_slice).unwrap_or_default();
            let status = retention::shown_status(status, id, times, now, abandoned_after);
            (id.clone(), status)
        })
        .collect();
    // "Finished" must mean restorable before any rule counts it: a manifest whose data is
    // gone, or that does not parse, must not take the place of the newest backup.
    let damaged = damaged_backups(&*store, &layout, &grouped, &listed).await?;
    let backups: Vec<(BackupId, BackupStatus)> = listed
        .into_iter()
        .map(|(id, status)| match damaged.contains_key(&id) {
            true => (id, BackupStatus::Damaged),
            false => (id, status),
        })
        .collect();
    let mut decisions = retention::select(&backups, &policy, now);
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
        let age_hours = (now - d.id.started_at()).as_seconds_f64() / 3600.0;
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
    let status_of: HashMap<&BackupId, BackupStatus> =
        backups.iter().map(|(i, s)| (i, *s)).collect();
    let any_candidate = decisions
        .iter()
        .any(|d| matches!(d.verdict, Verdict::Delete(_)));
    // Only decides how a `null` version id is named (see `inspect`).
    let versioned = any_candidate && store.versioning().await?;

    let mut out = Outcome::default();
    for d in decisions {
        let why = match d.verdict {
            Verdict::Keep(why) => {
                // An abandoned backup has nothing but its upload: it is reported under
                // aborted-uploads, not as "kept".
                if d.status != BackupStatus::Abandoned {
                    out.kept.push(spared(&d.id, d.status, why));
                }
                continue;
            }
            Verdict::Delete(why) => why,
        };
        if state.shutdown.is_cancelled() {
            return Err(OpError::Cancelled);
        }
        let plan = match inspect(&*store, &layout, versioned, &d.id, &keys, now).await {
            Inspection::Delete(plan) => plan,
            Inspection::Locked(reason) => {
                out.kept.push(spared(
                    &d.id,
                    d.status,
                    format!("{reason}; the policy alone would delete it ({why})"),
                ));
                continue;
            }
            Inspection::Unreadable(reason) => {
                out.skipped.push(spared(&d.id, d.status, reason));
                continue;
            }
        };
        let objects = plan
            .iter()
            .map(|v| v.key.as_str())
            .collect::<BTreeSet<_>>()
            .len();
        if p.confirm {
            if let Err(reason) = delete(&*store, &layout, &d.id, &plan).await {
                out.skipped.push(spared(&d.id, d.status, reason));
                continue;
            }
            info!(backup_id = %d.id, objects, versions = plan.len(), why = %why, "backup pruned");
        }
        out.deleted.push(PrunedBackup {
            backup_id: d.id.to_string(),
            status: d.status,
            objects,
            versions: plan.len(),
            why,
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
        let since = retention::upload_started(u.initiated, id.started_at());
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

fn spared(id: &BackupId, status: BackupStatus, why: String) -> SparedBackup {
    SparedBackup {
        backup_id: id.to_string(),
        status,
        why,
    }
}

/// Manifest reads in flight at once while checking finished backups.
const MANIFEST_CONCURRENCY: usize = 16;

/// The backups listed as finished whose manifest does not make them restorable, with
/// the reason (see [`crate::layout::ManifestV1::unrestorable_reason`]).
async fn damaged_backups(
    store: &dyn ObjectStore,
    layout: &Layout,
    grouped: &HashMap<BackupId, Found>,
    listed: &[(BackupId, BackupStatus)],
) -> Result<HashMap<BackupId, String>, OpError> {
    let finished: Vec<(BackupId, Option<u64>)> = listed
        .iter()
        .filter(|(_, s)| *s == BackupStatus::Finished)
        .map(|(id, _)| (id.clone(), grouped.get(id).and_then(|f| f.data_size)))
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

/// What the store says about deleting one candidate.
enum Inspection {
    /// Every version, in deletion order.
    Delete(Vec<StoredVersion>),
    /// A version is under retention or legal hold: the backup stays whole.
    Locked(String),
    /// Versions or lock state could not be read: the backup is left alone.
    Unreadable(String),
}

/// Lists every version of the backup's objects and reads each one's lock state.
///
/// Versions come from ListObjectVersions; a store that does not implement it (Garage)
/// has one version per listed key. A key of the backup's current listing that the
/// version listing misses is added as such on stores not known to keep versions (so a
/// backup is never reported deleted while objects remain), and makes the backup skipped
/// on those that do. A version id `null` (an object written while versioning was off) is
/// named only on buckets that have versioning: elsewhere some stores refuse a version id
/// altogether.
async fn inspect(
    store: &dyn ObjectStore,
    layout: &Layout,
    versioned: bool,
    id: &BackupId,
    keys: &[(String, u64)],
    now: OffsetDateTime,
) -> Inspection {
    let prefix = layout.backup_prefix(id);
    let mine = |key: &str| layout.parse_key(key).is_some_and(|(k, _)| &k == id);
    let mut versions: Vec<StoredVersion> = match storage::list_versions(store, &prefix).await {
        Ok(v) => v
            .into_iter()
            .filter(|v| mine(&v.key))
            .map(|mut v| {
                v.version_id = compat::version_id_to_send(v.version_id, versioned);
                v
            })
            .collect(),
        // No version listing (Garage): one version per key. Not on a bucket known to keep
        // versions, where deleting by key alone would leave them behind a delete marker.
        Err(StoreError::Unsupported { .. }) if !versioned => Vec::new(),
        Err(e) => {
            return Inspection::Unreadable(format!(
                "cannot list its object versions ({e}); nothing deleted"
            ))
        }
    };
    let listed: BTreeSet<String> = versions
        .iter()
        .filter(|v| !v.delete_marker)
        .map(|v| v.key.clone())
        .collect();
    for (key, _) in keys.iter().filter(|(k, _)| mine(k)) {
        if !listed.contains(key) {
            if versioned {
                let object = key.strip_prefix(&prefix).unwrap_or(key);
                return Inspection::Unreadable(format!(
                    "the store's version listing misses {object}; skipped, nothing deleted"
                ));
            }
            versions.push(StoredVersion {
                key: key.clone(),
                version_id: None,
                delete_marker: false,
            });
        }
    }
    // Owned items: borrowing futures in a buffered stream trip the `Send` check of the
    // server's spawned connection task.
    let objects: Vec<(String, Option<String>)> = versions
        .iter()
        .filter(|v| !v.delete_marker)
        .map(|v| (v.key.clone(), v.version_id.clone()))
        .collect();
    let heads: Vec<(String, Result<VersionLock, StoreError>)> = stream::iter(objects)
        .map(|(key, version_id)| async move {
            let lock = store
                .head(&key, version_id.as_deref())
                .await
                .map(|m| VersionLock {
                    mode: m.lock.mode,
                    retain_until: m.lock.retain_until,
                    legal_hold: m.lock.legal_hold,
                });
            (key, lock)
        })
        .buffered(HEAD_CONCURRENCY)
        .collect()
        .await;
    let mut locks = Vec::with_capacity(heads.len());
    for (key, lock) in heads {
        match lock {
            Ok(l) => locks.push(l),
            Err(e) => {
                let object = key.strip_prefix(&prefix).unwrap_or(&key);
                return Inspection::Unreadable(format!(
                    "the lock state of {object} cannot be read ({e}); skipped, nothing deleted"
                ));
            }
        }
    }
    if let Some(reason) = retention::lock_reason(&locks, now) {
        return Inspection::Locked(reason);
    }
    let mut plan = versions;
    plan.sort_by_key(|v| {
        let object = v.key.strip_prefix(&prefix).unwrap_or(&v.key).to_owned();
        // Real versions before delete markers: removing a marker first would bring an
        // older version of, say, the manifest back into view if the prune stopped there.
        (delete_rank(&object), object, v.delete_marker)
    });
    Inspection::Delete(plan)
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

/// Deletes `plan` in order; on the first failure stops and says what is left.
async fn delete(
    store: &dyn ObjectStore,
    layout: &Layout,
    id: &BackupId,
    plan: &[StoredVersion],
) -> Result<(), String> {
    let prefix = layout.backup_prefix(id);
    for (done, v) in plan.iter().enumerate() {
        if let Err(e) = store.delete_version(&v.key, v.version_id.as_deref()).await {
            let object = v.key.strip_prefix(&prefix).unwrap_or(&v.key);
            warn!(backup_id = %id, object, error = %e, "prune stopped");
            return Err(format!(
                "deleting {object} failed ({e}) after {done} of {} versions; what is left stays listed",
                plan.len()
            ));
        }
    }
    Ok(())
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
