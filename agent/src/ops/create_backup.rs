//! `create-backup`: stream a snapshot (built-in replication client or `valkey-cli --rdb -`,
//! see [`crate::source`]) through the validator into a write-once upload, then write the
//! manifest.
//!
//! The order of events is the product's promise:
//!
//! 1. take the unit lock (a second request gets `busy` naming this backup);
//! 2. `INFO` — an early, clear answer for unreachable servers and bad passwords, the
//!    server version for the manifest, and a size estimate for part planning;
//! 3. stream: every byte passes the [`crate::rdb::RdbValidator`] and SHA-256 before it joins a part;
//!    parts upload while the stream continues, at most `concurrency` at once;
//! 4. at the end: the stream must have ended exactly (the built-in source's framing, or the
//!    cli's exit status 0) *and* the trailer must check out, and only
//!    then is the upload completed (`If-None-Match: *`), then `manifest.json` written once;
//! 5. on any failure (cli, stream, S3, shutdown): kill the cli, abort the multipart
//!    upload, write `failure.json` once, release the lock. No partial object remains.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{params, rfc3339, AgentState, NoParams, UnitGuard};
use crate::backup_id::BackupId;
use crate::config::{AgentConfig, S3Settings};
use crate::error::OpError;
use crate::parts::PartPlan;
use crate::progress::{EventSink, ProgressReporter};
use crate::rdb::Validated;
use crate::s3::Store;
use crate::source::{Snapshot, ValkeyAdmin};
use crate::store::{FailureRecord, Layout, ManifestV1, MANIFEST_FORMAT};
use crate::upload::ObjectUpload;
use crate::valkey::ServerInfo;

/// The most one chunk of the snapshot can be.
const READ_BUF: usize = crate::replication::READ_BUF;
/// Room past a part's size: one read plus the validator's held-back tail may land in a
/// part buffer before it is cut, and a buffer must never reallocate (that would double it).
const PART_SLACK: usize = READ_BUF + crate::rdb::HOLD_BACK;

pub async fn run(state: &Arc<AgentState>, raw: Value, events: EventSink) -> Result<Value, OpError> {
    let _: NoParams = params(raw)?;
    let (config, s3) = state.storage()?;
    let started = OffsetDateTime::now_utc();
    let id =
        BackupId::generate(started, &config.unit).map_err(|e| OpError::Internal(e.to_string()))?;
    let guard = state.lock_unit("create-backup", id.to_string()).await?;
    backup(state, &config, &s3, &id, started, guard, events).await
}

/// Takes backup `id` while `guard` holds the unit lock, and releases it at the end. The
/// one backup path: `create-backup` and the scheduler (which must hold the lock before it
/// claims a slot) both come here, so both record the same outcome, objects and metrics.
pub async fn backup(
    state: &Arc<AgentState>,
    config: &AgentConfig,
    s3: &S3Settings,
    id: &BackupId,
    started: OffsetDateTime,
    guard: UnitGuard,
    events: EventSink,
) -> Result<Value, OpError> {
    let store = Store::new(s3)?;
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    state.metrics.backup_started(started.unix_timestamp());
    let mut run = BackupRun {
        config,
        store: &store,
        layout: &layout,
        id,
        started,
        phase: "connecting",
        bytes: 0,
        process: None,
        upload: None,
        reporter: ProgressReporter::new(events, Some(id.to_string())),
    };
    let outcome = run.execute(state).await;
    let elapsed = run.reporter.elapsed().as_secs_f64();
    let result = match outcome {
        Ok(data) => {
            state.set_last_backup(json!({
                "backup-id": id.to_string(), "status": "finished",
                "finished-at": data["finished-at"].clone(), "code": null,
            }));
            state.metrics.backup_succeeded(
                OffsetDateTime::now_utc().unix_timestamp(),
                elapsed,
                data["size-bytes"].as_u64().unwrap_or(0),
            );
            Ok(data)
        }
        Err(err) => {
            run.clean_up().await;
            run.record_failure(&err).await;
            state.set_last_backup(json!({
                "backup-id": id.to_string(), "status": "failed",
                "finished-at": rfc3339(OffsetDateTime::now_utc()), "code": err.code().as_str(),
            }));
            state.metrics.backup_failed(err.code().as_str(), elapsed);
            Err(err)
        }
    };
    drop(guard);
    state.metrics.save().await;
    result
}

/// One backup in progress: what must be cleaned up if it fails.
struct BackupRun<'a> {
    config: &'a AgentConfig,
    store: &'a Store,
    layout: &'a Layout,
    id: &'a BackupId,
    started: OffsetDateTime,
    phase: &'static str,
    bytes: u64,
    process: Option<Snapshot>,
    upload: Option<ObjectUpload>,
    reporter: ProgressReporter,
}

impl BackupRun<'_> {
    async fn execute(&mut self, state: &AgentState) -> Result<Value, OpError> {
        let cancel = state.shutdown.clone();
        let cli = ValkeyAdmin::new(&self.config.valkey);
        self.reporter.update("connecting", 0, None, true);
        let info = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = cli.info() => r?,
        };
        let tuning = self.config.backup;
        let plan = PartPlan::new(
            tuning.part_size_bytes,
            tuning.upload_concurrency,
            info.used_memory,
        );
        let part_size = plan.part_size as usize;
        info!(backup_id = %self.id, part_size = plan.part_size, concurrency = plan.concurrency,
              memory_bound = plan.memory_bound(), source = %info.version, "streaming snapshot");

        self.phase = "streaming";
        let stall = std::time::Duration::from_secs(tuning.stall_timeout_seconds);
        let snapshot = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = Snapshot::open(&self.config.valkey, &info, stall) => r?,
        };
        let source = snapshot.source();
        let mut validator = snapshot.validator();
        self.process = Some(snapshot);
        let data_key = self.layout.data_key(self.id);
        self.upload = Some(ObjectUpload::new(
            self.store.clone(),
            data_key.clone(),
            "application/octet-stream",
            plan.concurrency,
        ));

        let mut sha = Sha256::new();
        let mut part = BytesMut::with_capacity(part_size + PART_SLACK);
        loop {
            let snapshot = self.process.as_mut().expect("opened above");
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return Err(OpError::Cancelled),
                r = tokio::time::timeout(stall, snapshot.next_chunk()) => match r {
                    Ok(read) => read?,
                    Err(_) => return Err(Snapshot::stalled(source, stall).into()),
                },
            };
            let Some(chunk) = chunk else {
                break;
            };
            self.bytes += chunk.len() as u64;
            validator.push(chunk, |released| {
                sha.update(released);
                part.extend_from_slice(released);
            })?;
            while part.len() >= part_size {
                let full = take_part(&mut part, part_size);
                self.push(full, &cancel).await?;
            }
            let parts = self.upload.as_ref().map(ObjectUpload::parts_done);
            self.reporter.update("streaming", self.bytes, parts, false);
        }
        let finished = validator.finish();
        // The cli's exit status first: when it failed, its own message says more than
        // "truncated stream".
        let snapshot = self.process.as_mut().expect("opened above");
        tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = snapshot.finish(stall) => r?,
        }
        if let Some(done) = self.process.take() {
            done.stop().await;
        }
        // Same counts before and after the snapshot: the manifest can state them as exact.
        let keyspace_exact = match cli.info().await {
            Ok(after) => after.keyspace == info.keyspace,
            Err(_) => false,
        };
        let validated: Validated = finished?;
        sha.update(&validated.tail);
        part.extend_from_slice(&validated.tail);
        if part.len() > part_size {
            let full = take_part(&mut part, part_size);
            self.push(full, &cancel).await?;
        }

        self.phase = "completing";
        let parts_so_far = self.upload.as_ref().map(ObjectUpload::parts_done);
        self.reporter
            .update("completing", self.bytes, parts_so_far, true);
        let upload = self.upload.take().expect("created above");
        let uploaded = match upload.complete(part.freeze()).await {
            Ok(u) => u,
            Err((e, upload)) => {
                self.upload = Some(upload);
                return Err(e.into());
            }
        };
        debug_assert_eq!(uploaded.bytes, validated.rdb_bytes);

        self.phase = "manifest";
        let finished_at = OffsetDateTime::now_utc();
        let manifest = self.manifest(
            source.as_str(),
            &info,
            keyspace_exact,
            &validated,
            &sha.finalize(),
            uploaded.parts,
            plan.part_size,
            finished_at,
        );
        self.store
            .put_record(&self.layout.manifest_key(self.id), &manifest)
            .await?;
        self.reporter
            .update("finished", self.bytes, Some(uploaded.parts), true);
        Ok(json!({
            "backup-id": manifest.backup_id,
            "cluster": manifest.cluster,
            "status": "finished",
            "size-bytes": manifest.stored_size_bytes,
            "sha256": manifest.sha256,
            "crc64": manifest.crc64,
            "rdb-magic": manifest.rdb_magic,
            "rdb-version": manifest.rdb_version,
            "source": source.as_str(),
            "source-kind": manifest.source_kind,
            "source-version": manifest.source_version,
            "parts": manifest.parts,
            "part-size-bytes": manifest.part_size_bytes,
            "memory-bound-bytes": plan.memory_bound(),
            "duration-seconds": (self.reporter.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            "started-at": manifest.started_at,
            "finished-at": manifest.finished_at,
            "data-key": data_key,
        }))
    }

    /// Hands a full part to the upload, giving up promptly on shutdown.
    async fn push(
        &mut self,
        part: Bytes,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), OpError> {
        let upload = self.upload.as_mut().expect("upload exists while streaming");
        tokio::select! {
            _ = cancel.cancelled() => Err(OpError::Cancelled),
            r = upload.push_part(part) => r.map_err(OpError::from),
        }
    }

    #[allow(clippy::too_many_arguments)] // one record, assembled from every phase
    fn manifest(
        &self,
        source: &str,
        info: &ServerInfo,
        keyspace_exact: bool,
        v: &Validated,
        sha: &[u8],
        parts: u64,
        part_size: u64,
        finished_at: OffsetDateTime,
    ) -> ManifestV1 {
        ManifestV1 {
            format_version: MANIFEST_FORMAT,
            backup_id: self.id.to_string(),
            cluster: self.config.cluster.clone(),
            unit: self.config.unit.clone(),
            started_at: rfc3339(self.started),
            finished_at: rfc3339(finished_at),
            source_kind: info.kind.clone(),
            source_version: info.version.clone(),
            rdb_magic: v.format.magic.to_owned(),
            rdb_version: v.format.version,
            data_key: self.layout.data_key(self.id),
            compression: "none".into(),
            stored_size_bytes: v.rdb_bytes,
            raw_size_bytes: v.rdb_bytes,
            sha256: hex::encode(sha),
            crc64: format!("{:016x}", v.crc64),
            parts,
            part_size_bytes: part_size,
            eof_mark_stripped: v.eof_mark_stripped,
            source: Some(source.to_owned()),
            keyspace_at_start: info.keyspace.iter().cloned().collect::<BTreeMap<_, _>>(),
            keyspace_exact,
            agent_version: crate::AGENT_VERSION.into(),
        }
    }

    /// Stops the transfer (kills the cli or closes the connection) and aborts the upload;
    /// safe to call whatever the state.
    async fn clean_up(&mut self) {
        if let Some(p) = self.process.take() {
            p.stop().await;
        }
        if let Some(upload) = self.upload.take() {
            let key = upload.key().to_owned();
            let was_open = upload.is_open();
            if let Err(e) = upload.abort().await {
                warn!(backup_id = %self.id, key = %key, error = %e, "could not abort the multipart upload; prune will");
            } else if was_open {
                info!(backup_id = %self.id, "multipart upload aborted");
            }
        }
    }

    /// Writes `failure.json` (best effort: the store may be what failed).
    async fn record_failure(&self, err: &OpError) {
        let record = FailureRecord {
            format_version: MANIFEST_FORMAT,
            backup_id: self.id.to_string(),
            cluster: self.config.cluster.clone(),
            unit: self.config.unit.clone(),
            started_at: rfc3339(self.started),
            failed_at: rfc3339(OffsetDateTime::now_utc()),
            phase: self.phase.into(),
            code: err.code().as_str().into(),
            reason: err.to_string(),
            bytes_streamed: self.bytes,
            agent_version: crate::AGENT_VERSION.into(),
        };
        if let Err(e) = self
            .store
            .put_record(&self.layout.failure_key(self.id), &record)
            .await
        {
            warn!(backup_id = %self.id, error = %e, "could not write failure.json");
        }
    }
}

/// Splits off exactly `size` bytes as a part, keeping the rest in a fresh buffer so that
/// every part owns one allocation of bounded size.
fn take_part(part: &mut BytesMut, size: usize) -> Bytes {
    let mut next = BytesMut::with_capacity(size + PART_SLACK);
    next.extend_from_slice(&part[size..]);
    part.truncate(size);
    std::mem::replace(part, next).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_part_splits_exactly() {
        let mut b = BytesMut::from(&b"abcdefgh"[..]);
        let p = take_part(&mut b, 5);
        assert_eq!(&p[..], b"abcde");
        assert_eq!(&b[..], b"fgh");
    }
}
