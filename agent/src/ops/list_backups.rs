//! `list-backups`: every backup under `<path>/<cluster>/`, newest first, with a status
//! derived from which objects exist (see [`crate::store`]). Reading another cluster's
//! prefix is allowed (that is how a restore into a new cluster finds its source) and is
//! read-only.
//!
//! A `running` backup whose every open upload is older than `abandoned-after-hours`
//! (default 24) is shown as `abandoned`: its agent is gone, and `prune-backups` aborts
//! the upload.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{params, rfc3339, AgentState};
use crate::backup_id::BackupId;
use crate::error::OpError;
use crate::retention;
use crate::s3::{S3Error, Store};
use crate::store::{
    group, BackupStatus, FailureRecord, Found, Layout, ManifestCheck, OpenUpload, VerifyRecord,
    DATA_OBJECT,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ListParams {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    abandoned_after_hours: Option<f64>,
}

/// How many of a backup's newest verification records are read to find one that is
/// really its own.
const VERIFY_RECORDS_TRIED: usize = 3;

/// Records fetched at once while listing.
const FETCH_CONCURRENCY: usize = 8;

pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<Value, OpError> {
    let p: ListParams = params(raw)?;
    let abandoned_after =
        retention::abandoned_after_hours(p.abandoned_after_hours).map_err(OpError::BadRequest)?;
    let (config, s3) = state.storage()?;
    let cluster = config.cluster_or(p.cluster.as_deref())?;
    let store = Store::new(&s3)?;
    let layout = Layout::new(s3.clean_path(), &cluster);
    let keys = store.list_keys(layout.prefix()).await?;
    let uploads = store.list_uploads(layout.prefix()).await?;
    let grouped = group(&layout, &keys, &uploads);
    let initiated = upload_times(&layout, &uploads);
    let now = time::OffsetDateTime::now_utc();
    let entries: Vec<Result<Value, S3Error>> = stream::iter(grouped)
        .map(|(id, found)| {
            let times = initiated.get(&id).map(Vec::as_slice).unwrap_or_default();
            let status = found.status().expect("grouped entries have a status");
            let status = retention::shown_status(status, &id, times, now, abandoned_after);
            let abandoned = (status == BackupStatus::Abandoned).then(|| {
                let newest = times
                    .iter()
                    .map(|t| retention::upload_started(*t, id.started_at()))
                    .max();
                abandoned_reason(newest, abandoned_after)
            });
            describe(&store, &layout, id, found, status, abandoned)
        })
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let backups = entries.into_iter().collect::<Result<Vec<_>, _>>()?;
    let schedule = state.schedule_report().to_json(
        config.schedule.as_ref(),
        state.metrics.snapshot().last_success,
        now,
    );
    let mut result = json!({"cluster": cluster, "backups": backups});
    if !schedule.is_null() {
        result["schedule"] = schedule;
    }
    Ok(result)
}

/// When each backup's open data uploads were initiated (Unix seconds, when known).
pub fn upload_times(
    layout: &Layout,
    uploads: &[OpenUpload],
) -> HashMap<BackupId, Vec<Option<i64>>> {
    let mut out: HashMap<BackupId, Vec<Option<i64>>> = HashMap::new();
    for u in uploads {
        if let Some((id, DATA_OBJECT)) = layout.parse_key(&u.key) {
            out.entry(id).or_default().push(u.initiated);
        }
    }
    out
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
    store: &Store,
    layout: &Layout,
    id: BackupId,
    found: Found,
    status: BackupStatus,
    abandoned_reason: Option<String>,
) -> Result<Value, S3Error> {
    let mut entry = json!({
        "backup-id": id.to_string(),
        "status": status,
        "unit": unit_from_id(&id),
        "size-bytes": found.data_size,
        "started-at": rfc3339(id.started_at()),
        "finished-at": null,
        "source-version": null,
        "code": null,
        "reason": abandoned_reason,
        "verify-records": found.verify_records.len(),
        "last-verify": null,
    });
    match status {
        BackupStatus::Finished => {
            let m = match store.check_manifest(layout, &id, found.data_size).await? {
                ManifestCheck::Restorable(m) => Some(m),
                ManifestCheck::Damaged(why) => {
                    entry["status"] = json!(BackupStatus::Damaged);
                    entry["reason"] = json!(format!("not restorable: {why}"));
                    None
                }
            };
            if let Some(m) = m {
                entry["unit"] = json!(m.unit);
                entry["size-bytes"] = json!(m.stored_size_bytes);
                entry["started-at"] = json!(m.started_at);
                entry["finished-at"] = json!(m.finished_at);
                entry["source-version"] = json!(format!("{} {}", m.source_kind, m.source_version));
                entry["rdb-version"] = json!(m.rdb_version);
                entry["sha256"] = json!(m.sha256);
            }
            // Names sort by time, so the newest comes first. A record that does not
            // parse or names another backup (copied, forged) is passed over, so that it
            // cannot hide the real latest verification; a few are tried at most.
            let mut names: Vec<&String> = found.verify_records.iter().collect();
            names.sort_unstable_by(|a, b| b.cmp(a));
            for name in names.into_iter().take(VERIFY_RECORDS_TRIED) {
                let key = format!("{}{name}", layout.backup_prefix(&id));
                match store.get_record::<VerifyRecord>(&key).await {
                    Ok(Some(v)) if v.backup_id == id.as_str() => {
                        entry["last-verify"] = json!({
                            "checked-at": v.checked_at, "ok": v.ok, "code": v.code,
                        });
                        break;
                    }
                    Ok(_) | Err(S3Error::BadRecord { .. }) => {
                        tracing::warn!(backup_id = %id, record = %name, "ignoring a verification record that is not this backup's");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        BackupStatus::Failed => {
            let got = store
                .get_record::<FailureRecord>(&layout.failure_key(&id))
                .await;
            if let Some(f) = readable(got, &mut entry)? {
                entry["unit"] = json!(f.unit);
                entry["finished-at"] = json!(f.failed_at);
                entry["code"] = json!(f.code);
                entry["reason"] = json!(f.reason);
            }
        }
        BackupStatus::Running
        | BackupStatus::Abandoned
        | BackupStatus::Incomplete
        | BackupStatus::Damaged => {}
    }
    Ok(entry)
}

/// A record that exists but cannot be parsed must not hide every other backup: the
/// entry says so and the listing goes on. Store errors (access, reachability) still fail.
fn readable<T>(got: Result<Option<T>, S3Error>, entry: &mut Value) -> Result<Option<T>, S3Error> {
    match got {
        Err(e @ S3Error::BadRecord { .. }) => {
            entry["reason"] = json!(e.to_string());
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
