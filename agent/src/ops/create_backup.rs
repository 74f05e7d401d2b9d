//! `create-backup`: stream a snapshot (built-in replication client or `valkey-cli --rdb -`,
//! see [`crate::source`]) through the pipeline into a write-once upload, then write the
//! manifest.
//!
//! The order of events is the product's promise:
//!
//! 1. take the unit lock (a second request gets `busy` naming this backup);
//! 2. `INFO` — an early, clear answer for unreachable servers and bad passwords, the
//!    server version for the manifest, and a size estimate for part planning;
//! 3. stream ([`crate::pipeline`]): every byte passes the validator and SHA-256 before it
//!    is compressed and encrypted (when configured: [`Encoder`]) and joins a part; parts
//!    upload while the stream continues, at most `concurrency` at once;
//! 4. at the end: the stream must have ended exactly (the built-in source's framing, or the
//!    cli's exit status 0) *and* the trailer must check out, and only
//!    then is the upload completed (`If-None-Match: *`), then `manifest.json` written once;
//! 5. on any failure (cli, stream, S3, shutdown): kill the cli, abort the multipart
//!    upload, write `failure.json` once, release the lock. No partial object remains.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::state::{params, AgentState, NoParams, UnitGuard};
use crate::backup_id::BackupId;
use crate::codec::Codec;
use crate::config::{AgentConfig, S3Settings};
use crate::encrypt::fingerprint;
use crate::error::OpError;
use crate::layout::BackupStatus;
use crate::layout::{
    EncryptionRecord, FailureRecord, Layout, ManifestV1, MANIFEST_FORMAT, MANIFEST_FORMAT_ENCODED,
};
use crate::parts::PartPlan;
use crate::pipeline::encode::{Encoder, StoredStats};
use crate::pipeline::{check_stream, CheckedRdb, Encoded, StreamLimits};
use crate::progress::{EventSink, ProgressReporter};
use crate::protocol::{CreateBackupResult, LastBackup};
use crate::source::SnapshotSource;
use crate::storage::{put_json, put_multipart, withdraw, DynStore, PartWriter, StoreError};
use crate::timefmt::rfc3339;
use crate::valkey::ServerInfo;

/// Takes one backup (see the module docs for the order of events); on failure the
/// bucket holds only its `failure.json`.
/// How many times the manifest write is tried (each try is itself retried by the client).
const MANIFEST_ATTEMPTS: u32 = 3;
/// The pause before the second try (doubled before the third).
const MANIFEST_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(
    state: &Arc<AgentState>,
    raw: Value,
    events: EventSink,
) -> Result<CreateBackupResult, OpError> {
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
) -> Result<CreateBackupResult, OpError> {
    let store = state.open_store(s3)?;
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    state.metrics.backup_started(started.unix_timestamp());
    let mut run = BackupRun {
        config,
        store,
        layout: &layout,
        id,
        started,
        phase: "connecting",
        bytes: 0,
        source: state.open_source(&config.valkey),
        writer: None,
        unrecorded_data: None,
        reporter: ProgressReporter::new(events, Some(id.to_string())),
    };
    let outcome = run.execute(&state.shutdown).await;
    let elapsed = run.reporter.elapsed().as_secs_f64();
    let result = match outcome {
        Ok(data) => {
            state.set_last_backup(LastBackup {
                backup_id: id.to_string(),
                status: "finished".into(),
                finished_at: Some(data.finished_at.clone()),
                code: None,
            });
            state.metrics.backup_succeeded(
                OffsetDateTime::now_utc().unix_timestamp(),
                elapsed,
                data.size_bytes,
            );
            Ok(data)
        }
        Err(err) => {
            run.clean_up().await;
            run.record_failure(&err).await;
            state.set_last_backup(LastBackup {
                backup_id: id.to_string(),
                status: "failed".into(),
                finished_at: Some(rfc3339(OffsetDateTime::now_utc())),
                code: Some(err.code().as_str().into()),
            });
            state.metrics.backup_failed(err.code().as_str(), elapsed);
            Err(err)
        }
    };
    drop(guard);
    state.metrics.save().await;
    result
}

/// What a finished stream wrote: the RDB it checked, the object it stored, and to whom
/// that object is encrypted (none: in clear).
struct Written<'a> {
    rdb: &'a CheckedRdb,
    object: &'a StoredStats,
    recipients: &'a [age::x25519::Recipient],
}

/// One backup in progress: what must be cleaned up if it fails.
struct BackupRun<'a> {
    config: &'a AgentConfig,
    store: DynStore,
    layout: &'a Layout,
    id: &'a BackupId,
    started: OffsetDateTime,
    phase: &'static str,
    bytes: u64,
    source: Box<dyn SnapshotSource>,
    writer: Option<PartWriter>,
    /// The data object, from its completion until the manifest is written: if the backup
    /// fails in between, it is withdrawn, so that a failed backup leaves no data object.
    unrecorded_data: Option<String>,
    reporter: ProgressReporter,
}

impl BackupRun<'_> {
    /// The backup as orchestration: facts, stream through the pipeline into the part
    /// writer, complete, manifest.
    async fn execute(&mut self, cancel: &CancellationToken) -> Result<CreateBackupResult, OpError> {
        self.reporter.update("connecting", 0, None, true);
        let info = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = self.source.info() => r?,
        };
        let tuning = self.config.backup;
        let plan = PartPlan::new(
            tuning.part_size_bytes,
            tuning.upload_concurrency,
            info.used_memory,
        );
        info!(backup_id = %self.id, part_size = plan.part_size, concurrency = plan.concurrency,
              memory_bound = plan.memory_bound(), source = %info.version,
              compression = tuning.compression.as_str(), encrypted = self.config.encryption.is_some(),
              "streaming snapshot");

        self.phase = "streaming";
        let stall = Duration::from_secs(tuning.stall_timeout_seconds);
        let reader = tokio::select! {
            _ = cancel.cancelled() => return Err(OpError::Cancelled),
            r = self.source.open(&info, stall) => r?,
        };
        let recipients = self.config.recipients()?;
        let encrypted = !recipients.is_empty();
        let mut encoder = Encoder::new(tuning.compression, tuning.level(), &recipients)?;
        let data_key = self
            .layout
            .data_key_for(self.id, tuning.compression, encrypted);
        // The part writer hashes the parts on a thread of its own; for a plain backup
        // they are the RDB, so the reading task does not hash at all.
        let writer = self.writer.insert(
            put_multipart(
                &self.store,
                data_key.clone(),
                "application/octet-stream",
                plan.part_size as usize,
                plan.concurrency,
            )
            .with_sha256()?,
        );
        let source = &mut self.source;
        let source_name = source.name();
        let exact = source.exact();
        let reporter = &mut self.reporter;
        let bytes = &mut self.bytes;
        let streamed = check_stream(
            reader,
            &mut Encoded {
                encoder: &mut encoder,
                sink: writer,
            },
            || source.finish(stall),
            StreamLimits {
                stall: Some(stall),
                source_name,
                exact,
                cancel,
            },
            |done, parts| {
                *bytes = done;
                reporter.update("streaming", done, parts, false);
            },
        )
        .await?;
        self.bytes = streamed.received;
        // Same counts before and after the snapshot: the manifest can state them as exact.
        let keyspace_exact = match self.source.info().await {
            Ok(after) => after.keyspace == info.keyspace,
            Err(_) => false,
        };
        let mut checked = streamed.rdb?;
        let writer = self.writer.as_mut().expect("created above");
        let (rest, encoded) = encoder.finish().await?;
        if !rest.is_empty() {
            writer.write(&rest).await?;
        }

        self.phase = "completing";
        self.reporter
            .update("completing", self.bytes, Some(writer.parts_done()), true);
        // Not cancellable: a completion cut short could still take effect at the store,
        // leaving a complete object beside a failure record. It is one short request.
        let uploaded = writer.finish().await?;
        self.unrecorded_data = Some(writer.key().to_owned());
        self.writer = None;
        // What the part writer hashed is the stored object; for a plain backup that is
        // the RDB, which the reading task then left unhashed.
        let object_sha256 = uploaded
            .sha256
            .clone()
            .ok_or_else(|| OpError::Internal("the part writer did not hash the object".into()))?;
        if checked.sha256.is_empty() {
            checked.sha256 = object_sha256.clone();
        }
        let stored = encoded.unwrap_or_else(|| StoredStats {
            bytes: checked.rdb_bytes,
            sha256: checked.sha256.clone(),
        });
        if stored.sha256 != object_sha256 || uploaded.bytes != stored.bytes {
            return Err(OpError::Internal(
                "the uploaded object differs from the encoded stream".into(),
            ));
        }

        self.phase = "manifest";
        let finished_at = OffsetDateTime::now_utc();
        let manifest = self.manifest(
            &info,
            keyspace_exact,
            Written {
                rdb: &checked,
                object: &stored,
                recipients: &recipients,
            },
            (uploaded.parts, plan.part_size),
            finished_at,
        );
        self.write_manifest(&manifest).await?;
        self.unrecorded_data = None;
        self.reporter
            .update("finished", self.bytes, Some(uploaded.parts), true);
        Ok(CreateBackupResult {
            backup_id: manifest.backup_id,
            cluster: manifest.cluster,
            status: BackupStatus::Finished,
            source: self.source.kind().to_owned(),
            size_bytes: manifest.stored_size_bytes,
            sha256: manifest.sha256,
            crc64: manifest.crc64,
            rdb_magic: manifest.rdb_magic,
            rdb_version: manifest.rdb_version,
            source_kind: manifest.source_kind,
            source_version: manifest.source_version,
            parts: manifest.parts,
            part_size_bytes: manifest.part_size_bytes,
            memory_bound_bytes: plan.memory_bound(),
            duration_seconds: (self.reporter.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            started_at: manifest.started_at,
            finished_at: manifest.finished_at,
            data_key,
            compression: manifest.compression,
            raw_size_bytes: manifest.raw_size_bytes,
            encrypted,
            recipients: manifest
                .encryption
                .map(|e| e.recipients)
                .unwrap_or_default(),
        })
    }

    fn manifest(
        &self,
        info: &ServerInfo,
        keyspace_exact: bool,
        written: Written<'_>,
        (parts, part_size): (u64, u64),
        finished_at: OffsetDateTime,
    ) -> ManifestV1 {
        let Written {
            rdb: v,
            object: stored,
            recipients,
        } = written;
        let tuning = self.config.backup;
        let codec = tuning.compression;
        let encrypted = !recipients.is_empty();
        let plain = codec == Codec::None && !encrypted;
        ManifestV1 {
            format_version: if plain {
                MANIFEST_FORMAT
            } else {
                MANIFEST_FORMAT_ENCODED
            },
            backup_id: self.id.to_string(),
            cluster: self.config.cluster.clone(),
            unit: self.config.unit.clone(),
            started_at: rfc3339(self.started),
            finished_at: rfc3339(finished_at),
            source_kind: info.kind.clone(),
            source_version: info.version.clone(),
            rdb_magic: v.format.magic.to_owned(),
            rdb_version: v.format.version,
            data_key: self.layout.data_key_for(self.id, codec, encrypted),
            compression: codec.as_str().into(),
            compression_level: (codec == Codec::Zstd).then(|| tuning.level()),
            encryption: encrypted.then(|| EncryptionRecord {
                scheme: crate::encrypt::SCHEME.into(),
                recipients: recipients.iter().map(fingerprint).collect(),
            }),
            stored_size_bytes: stored.bytes,
            raw_size_bytes: v.rdb_bytes,
            sha256: stored.sha256.clone(),
            raw_sha256: (!plain).then(|| v.sha256.clone()),
            crc64: format!("{:016x}", v.crc64),
            parts,
            part_size_bytes: part_size,
            eof_mark_stripped: v.eof_mark_stripped,
            source: Some(self.source.kind().to_owned()),
            keyspace_at_start: info.keyspace.iter().cloned().collect::<BTreeMap<_, _>>(),
            keyspace_exact,
            agent_version: crate::AGENT_VERSION.into(),
        }
    }

    /// Writes the manifest once. The data object is complete by now, so a store that
    /// fails for a moment gets a few more chances (with a pause) before the backup is
    /// given up; an ambiguous write is resolved by `put_json` reading back.
    async fn write_manifest(&self, manifest: &ManifestV1) -> Result<(), OpError> {
        let key = self.layout.manifest_key(self.id);
        let mut attempt = 0u32;
        loop {
            match put_json(&*self.store, &key, manifest).await {
                Ok(()) => return Ok(()),
                // Another object under our unique key: never retried, never ours.
                Err(e @ StoreError::AlreadyExists { .. }) => return Err(e.into()),
                Err(e) if attempt + 1 >= MANIFEST_ATTEMPTS => return Err(e.into()),
                Err(e) => {
                    warn!(backup_id = %self.id, error = %e, "writing the manifest failed; trying again");
                }
            }
            attempt += 1;
            tokio::time::sleep(MANIFEST_RETRY_PAUSE * attempt).await;
        }
    }

    /// Stops the source and aborts the upload; safe to call whatever the state.
    async fn clean_up(&mut self) {
        self.source.kill().await;
        if let Some(key) = self.unrecorded_data.take() {
            match withdraw(&*self.store, &key).await {
                Ok(()) => {
                    info!(backup_id = %self.id, "data object withdrawn: the backup failed before its manifest")
                }
                Err(e) => {
                    warn!(backup_id = %self.id, error = %e, "could not withdraw the data object of a failed backup; it lists as incomplete until prune removes it")
                }
            }
        }
        if let Some(mut writer) = self.writer.take() {
            let was_open = writer.is_open();
            if let Err(e) = writer.abort().await {
                warn!(backup_id = %self.id, key = %writer.key(), error = %e, "could not abort the multipart upload; prune will");
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
        if let Err(e) = put_json(&*self.store, &self.layout.failure_key(self.id), &record).await {
            warn!(backup_id = %self.id, error = %e, "could not write failure.json");
        }
    }
}
