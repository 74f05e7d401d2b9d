//! `list-backups`: every backup under `<path>/<cluster>/`, newest first, with a status
//! derived from which objects exist (see [`crate::layout`]). Reading another cluster's
//! prefix is allowed (that is how a restore into a new cluster finds its source) and is
//! read-only.
//!
//! A `running` backup whose every open upload is older than `abandoned-after-hours`
//! (default 24) is shown as `abandoned`: its agent is gone, and `prune-backups` aborts
//! the upload.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::state::{params, AgentState};
use crate::backup_id::BackupId;
use crate::error::OpError;
use crate::fetch::{check_manifest, list_prefix, seen};
use crate::layout::{
    group, upload_times, BackupStatus, FailureRecord, Found, Layout, ManifestCheck, VerifyRecord,
};
use crate::protocol::{BackupEntry, LastVerify, ListBackupsParams, ListBackupsResult};
use crate::retention;
use crate::storage::{get_json, ObjectStore, StoreError};
use crate::timefmt::rfc3339;

/// How many of a backup's newest verification records are read to find one that is
/// really its own.
const VERIFY_RECORDS_TRIED: usize = 3;

/// Records fetched at once while listing.
const FETCH_CONCURRENCY: usize = 8;

/// Backups described when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most backups one answer describes (a Juju action result is bounded in size).
pub const MAX_LIMIT: u32 = 1000;

/// Lists the backups of the configured (or the named) cluster, newest first (by the time
/// retention ranks them on the id's clock: [`retention::id_time`]), one page at a time.
///
/// One listing of the prefix (keys, sizes, LastModified) and one of the open uploads
/// give every backup's status, rank and the counts; only the backups on the page asked
/// for are described further (their manifest, failure or verification records read),
/// so the cost and the size of the answer follow `limit`, not the length of the history.
pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<ListBackupsResult, OpError> {
    let p: ListBackupsParams = params(raw)?;
    let abandoned_after =
        retention::abandoned_after_hours(p.abandoned_after_hours).map_err(OpError::BadRequest)?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(OpError::BadRequest(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let offset = p.offset.unwrap_or(0) as usize;
    let (config, s3) = state.storage()?;
    let cluster = config.cluster_or(p.cluster.as_deref())?;
    let store = state.open_store(&s3)?;
    let layout = Layout::new(s3.clean_path(), &cluster);
    let (keys, uploads) = list_prefix(&*store, &layout).await?;
    let uploads = seen(&uploads);
    let initiated = upload_times(&layout, &uploads);
    let now = time::OffsetDateTime::now_utc();
    let mut listed: Vec<Listing> = group(&layout, &keys, &uploads)
        .into_iter()
        .map(|(id, found)| {
            let times = initiated.get(&id).map(Vec::as_slice).unwrap_or_default();
            let status = found.status().expect("grouped entries have a status");
            let mut status = retention::shown_status(status, &id, times, now, abandoned_after);
            // What the listing alone tells: a manifest without its data object.
            if status == BackupStatus::Finished && found.data_size.is_none() {
                status = BackupStatus::Damaged;
            }
            let abandoned = (status == BackupStatus::Abandoned).then(|| {
                let newest = times
                    .iter()
                    .map(|t| retention::upload_started(*t, id.started_at(), now))
                    .max();
                abandoned_reason(newest, abandoned_after)
            });
            let (at, skew) = retention::id_time(&id, found.stored_at());
            Listing {
                id,
                found,
                status,
                abandoned,
                at,
                warning: skew.warning().map(str::to_owned),
            }
        })
        .collect();
    listed.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in &listed {
        *counts.entry(status_name(l.status)).or_default() += 1;
    }
    let matching: Vec<Listing> = listed
        .into_iter()
        .filter(|l| p.status.is_none_or(|s| s == l.status))
        .collect();
    let total = matching.len();
    let page: Vec<Listing> = matching
        .into_iter()
        .skip(offset)
        .take(limit as usize)
        .collect();
    let next_offset = (offset + page.len() < total).then_some(offset + page.len());
    let entries: Vec<Result<BackupEntry, StoreError>> = stream::iter(page)
        .map(|l| describe(&*store, &layout, l))
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let backups = entries.into_iter().collect::<Result<Vec<_>, _>>()?;
    let schedule = state.schedule_report().to_json(
        config.schedule.as_ref(),
        state.metrics.snapshot().last_success,
        now,
    );
    Ok(ListBackupsResult {
        cluster,
        backups,
        total,
        offset,
        next_offset,
        counts,
        schedule: (!schedule.is_null()).then_some(schedule),
    })
}

/// One backup as the listing found it, before it is described.
struct Listing {
    id: BackupId,
    found: Found,
    status: BackupStatus,
    abandoned: Option<String>,
    /// What it is listed by ([`retention::id_time`]).
    at: time::OffsetDateTime,
    warning: Option<String>,
}

/// The wire name of a status (`finished`, `damaged`…).
fn status_name(status: BackupStatus) -> String {
    match serde_json::to_value(status) {
        Ok(Value::String(s)) => s,
        _ => format!("{status:?}"),
    }
}

fn abandoned_reason(newest_upload: Option<time::OffsetDateTime>, after_hours: f64) -> String {
    let since = newest_upload
        .map(|t| format!(" since {}", rfc3339(t)))
        .unwrap_or_default();
    format!(
        "multipart upload open{since}, longer than {}: its agent is gone; prune-backups aborts it",
        retention::hours(after_hours)
    )
}

/// `valkey-0` → `valkey/0` (ids hold the unit with its slash replaced).
fn unit_from_id(id: &BackupId) -> Option<String> {
    let slug = id.as_str().get(17..)?.rsplit_once('-')?.0;
    let (app, n) = slug.rsplit_once('-')?;
    n.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("{app}/{n}"))
}

async fn describe(
    store: &dyn ObjectStore,
    layout: &Layout,
    listing: Listing,
) -> Result<BackupEntry, StoreError> {
    let Listing {
        id,
        found,
        status,
        abandoned: abandoned_reason,
        at: _,
        warning,
    } = listing;
    let stored_at = found.stored_at().map(rfc3339);
    let mut entry = BackupEntry {
        backup_id: id.to_string(),
        status,
        unit: unit_from_id(&id),
        size_bytes: found.data_size,
        started_at: rfc3339(id.started_at()),
        finished_at: None,
        source_version: None,
        code: None,
        reason: abandoned_reason,
        verify_records: found.verify_records.len(),
        last_verify: None,
        rdb_version: None,
        sha256: None,
        compression: None,
        encrypted: None,
        stored_at,
        warning,
    };
    match status {
        // A manifest without data (the listing told): what the manifest says is shown.
        BackupStatus::Finished | BackupStatus::Damaged => {
            let m = match check_manifest(store, layout, &id, found.data_size).await? {
                ManifestCheck::Restorable(m) => Some(m),
                ManifestCheck::Damaged(why) => {
                    entry.status = BackupStatus::Damaged;
                    entry.reason = Some(format!("not restorable: {why}"));
                    None
                }
            };

            if let Some(m) = m {
                entry.unit = Some(m.unit);
                entry.size_bytes = Some(m.stored_size_bytes);
                entry.started_at = m.started_at;
                entry.finished_at = Some(m.finished_at);
                entry.source_version = Some(format!("{} {}", m.source_kind, m.source_version));
                entry.rdb_version = Some(m.rdb_version);
                entry.compression = Some(m.compression.clone());
                entry.encrypted = Some(m.encryption.is_some());
                entry.sha256 = Some(m.sha256);
            }
            // Names sort by time, so the newest comes first. A record that does not
            // parse or names another backup (copied, forged) is passed over, so that it
            // cannot hide the real latest verification; a few are tried at most.
            let mut names: Vec<&String> = found.verify_records.iter().collect();
            names.sort_unstable_by(|a, b| b.cmp(a));
            for name in names.into_iter().take(VERIFY_RECORDS_TRIED) {
                let key = format!("{}{name}", layout.backup_prefix(&id));
                match get_json::<VerifyRecord>(store, &key).await {
                    Ok(Some(v)) if v.backup_id == id.as_str() => {
                        entry.last_verify = Some(LastVerify {
                            checked_at: v.checked_at,
                            ok: v.ok,
                            code: v.code,
                        });
                        break;
                    }
                    Ok(_) | Err(StoreError::BadRecord { .. }) => {
                        tracing::warn!(backup_id = %id, record = %name, "ignoring a verification record that is not this backup's");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        BackupStatus::Failed => {
            let got = get_json::<FailureRecord>(store, &layout.failure_key(&id)).await;
            if let Some(f) = readable(got, &mut entry)? {
                entry.unit = Some(f.unit);
                entry.finished_at = Some(f.failed_at);
                entry.code = Some(f.code);
                entry.reason = Some(f.reason);
            }
        }
        BackupStatus::Running | BackupStatus::Abandoned | BackupStatus::Incomplete => {}
    }
    Ok(entry)
}

/// A record that exists but cannot be parsed must not hide every other backup: the
/// entry says so and the listing goes on. Store errors (access, reachability) still fail.
fn readable<T>(
    got: Result<Option<T>, StoreError>,
    entry: &mut BackupEntry,
) -> Result<Option<T>, StoreError> {
    match got {
        Err(e @ StoreError::BadRecord { .. }) => {
            entry.reason = Some(e.to_string());
            Ok(None)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_recovered_from_the_id() {
        let id = BackupId::parse("20261121T193000Z-my-valkey-12-abcdef").unwrap();
        assert_eq!(unit_from_id(&id).as_deref(), Some("my-valkey/12"));
    }
}
