//! `list-backups`: every backup under `<path>/<cluster>/`, newest first, with a status
//! derived from which objects exist (see [`crate::store`]). Reading another cluster's
//! prefix is allowed (that is how a restore into a new cluster finds its source) and is
//! read-only.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{params, rfc3339, AgentState};
use crate::backup_id::BackupId;
use crate::error::OpError;
use crate::s3::{S3Error, Store};
use crate::store::{group, BackupStatus, FailureRecord, Found, Layout, ManifestV1, VerifyRecord};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ListParams {
    #[serde(default)]
    cluster: Option<String>,
}

/// Records fetched at once while listing.
const FETCH_CONCURRENCY: usize = 8;

pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<Value, OpError> {
    let p: ListParams = params(raw)?;
    let config = state.config()?;
    let s3 = config
        .s3
        .as_ref()
        .ok_or_else(|| OpError::NotConfigured("no S3 storage is configured".into()))?;
    let cluster = match p.cluster {
        Some(c) => {
            let mut probe = config.clone();
            probe.cluster = c.clone();
            probe.validate()?;
            c
        }
        None => config.cluster.clone(),
    };
    let store = Store::new(s3)?;
    let layout = Layout::new(s3.clean_path(), &cluster);
    let keys = store.list_keys(layout.prefix()).await?;
    let uploads = store.list_uploads(layout.prefix()).await?;
    let grouped = group(&layout, &keys, &uploads);
    let entries: Vec<Result<Value, S3Error>> = stream::iter(grouped)
        .map(|(id, found)| describe(&store, &layout, id, found))
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let backups = entries.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"cluster": cluster, "backups": backups}))
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
) -> Result<Value, S3Error> {
    let status = found.status().expect("grouped entries have a status");
    let mut entry = json!({
        "backup-id": id.to_string(),
        "status": status,
        "unit": unit_from_id(&id),
        "size-bytes": found.data_size,
        "started-at": rfc3339(id.started_at()),
        "finished-at": null,
        "source-version": null,
        "code": null,
        "reason": null,
        "verify-records": found.verify_records.len(),
        "last-verify": null,
    });
    match status {
        BackupStatus::Finished => {
            let got = store
                .get_record::<ManifestV1>(&layout.manifest_key(&id))
                .await;
            if let Some(m) = readable(got, &mut entry)? {
                entry["unit"] = json!(m.unit);
                entry["size-bytes"] = json!(m.stored_size_bytes);
                entry["started-at"] = json!(m.started_at);
                entry["finished-at"] = json!(m.finished_at);
                entry["source-version"] = json!(format!("{} {}", m.source_kind, m.source_version));
                entry["rdb-version"] = json!(m.rdb_version);
                entry["sha256"] = json!(m.sha256);
            }
            // Names sort by time, so the last one is the latest verification.
            if let Some(newest) = found.verify_records.iter().max() {
                let key = format!("{}{newest}", layout.backup_prefix(&id));
                let got = store.get_record::<VerifyRecord>(&key).await;
                if let Some(v) = readable(got, &mut entry)? {
                    entry["last-verify"] = json!({
                        "checked-at": v.checked_at, "ok": v.ok, "code": v.code,
                    });
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
        BackupStatus::Running | BackupStatus::Incomplete => {}
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
