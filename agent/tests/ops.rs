//! Every op against the in-memory store, with the fault wrapper around it: success and
//! failure paths in seconds, without a server. The snapshot comes from a test source of
//! bytes built here (a valid RDB is a header, a body, `0xFF` and the CRC64 of all before).
//!
//! The real-server suite (tests/integration) still proves the product on moto, Garage
//! and Valkey; these tests pin down what each op does with every answer a store can give.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use valkey_backup_agent::config::{AgentConfig, ValkeySettings};
use valkey_backup_agent::error::OpError;
use valkey_backup_agent::ops::{self, AgentState};
use valkey_backup_agent::protocol::{ErrorCode, Op, Reply};
use valkey_backup_agent::rdb::crc64_digest;
use valkey_backup_agent::source::{SnapshotReader, SnapshotSource};
use valkey_backup_agent::storage::fault::{Calls, Fault, Faulty, Operation};
use valkey_backup_agent::storage::memory::InMemory;
use valkey_backup_agent::storage::{DynStore, ObjectLock, ObjectStore, StoreError};
use valkey_backup_agent::valkey::ServerInfo;

const MIB: usize = 1024 * 1024;
const PREFIX: &str = "valkey/m.valkey/";

/// A valid RDB of about `len` bytes.
fn rdb(len: usize) -> Vec<u8> {
    let mut v = b"VALKEY080".to_vec();
    let mut x: u32 = 0x1234_5678;
    while v.len() < len.saturating_sub(9) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v.push(0xFF);
    let mut crc = crc64_digest();
    crc.update(&v);
    v.extend_from_slice(&crc.finalize().to_le_bytes());
    v
}

/// What the test source does at the end of the stream.
#[derive(Clone)]
enum End {
    Clean,
    Fails(&'static str),
    /// Sends its bytes, then nothing more, without ever ending the stream.
    Hangs,
    /// Ends cleanly, framed exactly (as the built-in replication source is).
    Exact,
}

/// A snapshot source of fixed bytes: `INFO` answers with one database of 10 keys.
struct Bytes {
    data: Vec<u8>,
    end: End,
    killed: Arc<Mutex<bool>>,
    /// The writing end of a hanging stream, kept open.
    open_end: Option<tokio::io::DuplexStream>,
}

#[async_trait::async_trait]
impl SnapshotSource for Bytes {
    fn name(&self) -> &'static str {
        "the test source"
    }
    fn kind(&self) -> &'static str {
        "cli"
    }
    fn exact(&self) -> bool {
        matches!(self.end, End::Exact)
    }
    async fn info(&mut self) -> Result<ServerInfo, OpError> {
        Ok(ServerInfo {
            kind: "valkey".into(),
            version: "8.1.8".into(),
            used_memory: Some(self.data.len() as u64),
            role: Some("master".into()),
            keyspace: vec![("db0".into(), 10)],
            ..ServerInfo::default()
        })
    }
    async fn open(
        &mut self,
        _info: &ServerInfo,
        _stall: Duration,
    ) -> Result<SnapshotReader, OpError> {
        let data = std::mem::take(&mut self.data);
        if let End::Hangs = self.end {
            use tokio::io::AsyncReadExt;
            let (mut tx, rx) = tokio::io::duplex(64);
            let head = std::io::Cursor::new(data);
            tokio::io::AsyncWriteExt::write_all(&mut tx, &[])
                .await
                .unwrap();
            self.open_end = Some(tx);
            return Ok(Box::new(head.chain(rx)));
        }
        Ok(Box::new(std::io::Cursor::new(data)))
    }
    async fn finish(&mut self, _stall: Duration) -> Result<(), OpError> {
        match self.end {
            End::Clean | End::Hangs | End::Exact => Ok(()),
            End::Fails(why) => Err(OpError::Internal(why.into())),
        }
    }
    async fn kill(&mut self) {
        *self.killed.lock().unwrap() = true;
    }
}

/// One agent on a temporary state directory, an in-memory bucket and a fault wrapper.
struct World {
    _dir: tempfile::TempDir,
    state: Arc<AgentState>,
    memory: Arc<InMemory>,
    store: Arc<Faulty>,
    data: Arc<Mutex<(Vec<u8>, End)>>,
    killed: Arc<Mutex<bool>>,
}

fn config(dir: &Path) -> AgentConfig {
    let cli = dir.join("valkey-cli");
    std::fs::write(&cli, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    AgentConfig::from_params(json!({
        "cluster": "m.valkey", "unit": "valkey/0",
        "s3": {"endpoint": "http://127.0.0.1:9", "bucket": "bkt", "path": "valkey",
               "access-key": "a", "secret-key": "s"},
        "valkey": {"cli": cli},
        "backup": {"part-size-bytes": 5 * MIB, "upload-concurrency": 2}
    }))
    .unwrap()
}

impl World {
    fn new(memory: InMemory) -> World {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(memory);
        let store = Faulty::new(Arc::clone(&memory) as DynStore);
        let data = Arc::new(Mutex::new((rdb(1000), End::Clean)));
        let killed = Arc::new(Mutex::new(false));
        let (for_stores, for_sources, k) =
            (Arc::clone(&store), Arc::clone(&data), Arc::clone(&killed));
        let state = AgentState::with_backends(
            dir.path().to_owned(),
            Some(config(dir.path())),
            CancellationToken::new(),
            Box::new(move |_| Ok(Arc::clone(&for_stores) as DynStore)),
            Box::new(move |_: &ValkeySettings| {
                let (data, end) = for_sources.lock().unwrap().clone();
                Box::new(Bytes {
                    data,
                    end,
                    killed: Arc::clone(&k),
                    open_end: None,
                }) as Box<dyn SnapshotSource>
            }),
        );
        World {
            _dir: dir,
            state,
            memory,
            store,
            data,
            killed,
        }
    }

    fn source(&self, data: Vec<u8>, end: End) {
        *self.data.lock().unwrap() = (data, end);
    }

    async fn call(&self, op: Op, params: Value) -> Result<Reply, OpError> {
        let (tx, _rx) = tokio::sync::mpsc::channel(1024);
        ops::dispatch(&self.state, op, params, tx).await
    }

    async fn ok(&self, op: Op, params: Value) -> Value {
        match self.call(op, params).await {
            Ok(r) => r.to_value(),
            Err(e) => panic!("{} failed: {e} ({})", op.as_str(), e.code()),
        }
    }

    async fn backup(&self) -> Value {
        self.ok(Op::CreateBackup, json!({})).await
    }

    /// Keys under the cluster's prefix, without it.
    fn objects(&self) -> Vec<String> {
        self.memory
            .keys()
            .into_iter()
            .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
            .collect()
    }

    fn record(&self, key: &str) -> Value {
        serde_json::from_slice(&self.memory.object(&format!("{PREFIX}{key}")).unwrap()).unwrap()
    }
}

fn code(r: Result<Reply, OpError>) -> (ErrorCode, String) {
    match r {
        Ok(v) => panic!("expected an error, got {:?}", v.to_value()),
        Err(e) => (e.code(), e.to_string()),
    }
}

fn unreachable() -> StoreError {
    StoreError::Unreachable {
        endpoint: "memory://".into(),
        detail: "connection reset".into(),
    }
}

// ---- create-backup -------------------------------------------------------------------

#[tokio::test]
async fn a_small_backup_is_one_write_of_the_exact_bytes_then_its_manifest() {
    let w = World::new(InMemory::new());
    let data = rdb(300_000);
    w.source(data.clone(), End::Clean);
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap();
    assert_eq!(r["status"], "finished");
    assert_eq!(r["size-bytes"], data.len());
    assert_eq!(r["parts"], 1);
    assert_eq!(
        w.objects(),
        vec![format!("{id}/data.rdb"), format!("{id}/manifest.json")]
    );
    assert_eq!(
        w.memory.object(&format!("{PREFIX}{id}/data.rdb")).unwrap(),
        data
    );
    let m = w.record(&format!("{id}/manifest.json"));
    assert_eq!(m["sha256"], r["sha256"]);
    assert_eq!(m["keyspace-at-start"], json!({"db0": 10}));
    assert_eq!(m["keyspace-exact"], true);
    assert_eq!(w.store.calls(Operation::CreateMultipart), 0);
    let status = w.ok(Op::Status, json!({})).await;
    assert_eq!(status["last-backup"]["status"], "finished");
    assert_eq!(status["busy"], false);
}

#[tokio::test]
async fn a_large_backup_is_cut_into_equal_parts_and_completed_once() {
    let w = World::new(InMemory::new());
    let data = rdb(12 * MIB);
    w.source(data.clone(), End::Clean);
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap();
    assert_eq!(r["parts"], 3);
    assert_eq!(r["part-size-bytes"], 5 * MIB);
    assert_eq!(w.store.calls(Operation::PutPart), 3);
    assert_eq!(w.store.calls(Operation::CompleteMultipart), 1);
    assert_eq!(
        w.memory.object(&format!("{PREFIX}{id}/data.rdb")).unwrap(),
        data
    );
    assert!(w.memory.open_uploads().is_empty());
}

/// After a failed backup the bucket holds exactly its failure record: no data object,
/// no open upload.
fn assert_failed_cleanly(w: &World, code: &str) {
    let objects = w.objects();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].ends_with("/failure.json"), "{objects:?}");
    assert!(w.memory.open_uploads().is_empty());
    let f = w.record(&objects[0]);
    assert_eq!(f["code"], code);
}

#[tokio::test]
async fn a_failed_part_upload_aborts_the_upload_and_records_the_failure() {
    let w = World::new(InMemory::new());
    w.source(rdb(16 * MIB), End::Clean);
    w.store.fail_nth(Operation::PutPart, 2, unreachable());
    let (c, msg) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Unreachable, "{msg}");
    assert_failed_cleanly(&w, "s3-unreachable");
    assert!(w.store.calls(Operation::AbortMultipart) >= 1);
    assert!(*w.killed.lock().unwrap(), "the source is stopped");
    let status = w.ok(Op::Status, json!({})).await;
    assert_eq!(status["last-backup"]["code"], "s3-unreachable");
}

#[tokio::test]
async fn a_refused_completion_leaves_no_object_and_no_upload() {
    let w = World::new(InMemory::new());
    w.source(rdb(11 * MIB), End::Clean);
    w.store.fail_nth(
        Operation::CompleteMultipart,
        1,
        StoreError::Answer {
            operation: "CompleteMultipartUpload",
            detail: "InternalError (HTTP 500)".into(),
        },
    );
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Error);
    assert_failed_cleanly(&w, "s3-error");
}

#[tokio::test]
async fn a_completion_whose_answer_was_lost_is_confirmed_by_size() {
    let w = World::new(InMemory::new());
    w.source(rdb(11 * MIB), End::Clean);
    w.store
        .fail_after_nth(Operation::CompleteMultipart, 1, unreachable());
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap();
    assert_eq!(
        w.objects(),
        vec![format!("{id}/data.rdb"), format!("{id}/manifest.json")]
    );
    assert!(w.store.calls(Operation::Head) >= 1);
}

#[tokio::test]
async fn a_manifest_write_that_conflicts_fails_the_backup() {
    let w = World::new(InMemory::new());
    w.source(rdb(1000), End::Clean);
    // Put 1 is the data, put 2 the manifest.
    w.store.fail_nth(
        Operation::Put,
        2,
        StoreError::AlreadyExists {
            key: "manifest.json".into(),
        },
    );
    let (c, msg) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Conflict);
    assert!(msg.contains("never overwrite"), "{msg}");
    let objects = w.objects();
    assert!(objects.iter().any(|o| o.ends_with("/failure.json")));
    assert!(!objects.iter().any(|o| o.ends_with("/manifest.json")));
    // It lists as failed, never as finished.
    let list = w.ok(Op::ListBackups, json!({})).await;
    assert_eq!(list["backups"][0]["status"], "failed");
}

#[tokio::test]
async fn a_manifest_write_whose_answer_was_lost_is_confirmed_by_reading_it_back() {
    let w = World::new(InMemory::new());
    w.source(rdb(1000), End::Clean);
    // Put 1 is the data, put 2 the manifest: it is stored, the answer never arrives.
    w.store.fail_after_nth(Operation::Put, 2, unreachable());
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap();
    assert_eq!(r["status"], "finished");
    assert_eq!(
        w.objects(),
        vec![format!("{id}/data.rdb"), format!("{id}/manifest.json")]
    );
    assert!(
        w.store.calls(Operation::Get) >= 1,
        "the manifest was read back"
    );
}

#[tokio::test]
async fn a_multipart_creation_whose_answer_was_lost_leaves_no_upload_open() {
    let w = World::new(InMemory::new());
    w.source(rdb(11 * MIB), End::Clean);
    // The store creates the upload; the agent never learns its id.
    w.store
        .fail_after_nth(Operation::CreateMultipart, 1, unreachable());
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Unreachable);
    assert_failed_cleanly(&w, "s3-unreachable");
    assert!(w.store.calls(Operation::ListUploads) >= 1);
}

#[tokio::test]
async fn a_manifest_that_cannot_be_written_withdraws_the_data_object() {
    let w = World::new(InMemory::new());
    w.source(rdb(1000), End::Clean);
    // Every write after the data fails: the manifest (tried again) and the failure record.
    w.store
        .inject(Operation::Put, Calls::From(2), Fault::Fail(unreachable()));
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Unreachable);
    assert!(
        w.store.calls(Operation::Put) >= 4,
        "the manifest was tried again"
    );
    // A failed backup leaves no data object: nothing lists as finished or incomplete.
    assert_eq!(w.objects(), Vec::<String>::new());
    assert!(w.memory.open_uploads().is_empty());
}

#[tokio::test]
async fn a_stream_that_is_not_an_rdb_fails_before_any_upload() {
    let w = World::new(InMemory::new());
    w.source(b"-ERR this is not a snapshot at all".to_vec(), End::Clean);
    let (c, msg) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::StreamInvalid, "{msg}");
    assert_eq!(w.store.calls(Operation::CreateMultipart), 0);
    assert_eq!(w.store.calls(Operation::Put), 1, "only the failure record");
    assert_failed_cleanly(&w, "stream-invalid");
}

#[tokio::test]
async fn a_truncated_stream_aborts_the_parts_already_uploaded() {
    let w = World::new(InMemory::new());
    let mut data = rdb(12 * MIB);
    data.truncate(11 * MIB);
    w.source(data, End::Clean);
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::StreamInvalid);
    assert_eq!(
        w.store.calls(Operation::CreateMultipart),
        1,
        "parts were on their way"
    );
    assert_eq!(w.store.calls(Operation::AbortMultipart), 1);
    assert_eq!(w.store.calls(Operation::CompleteMultipart), 0);
    assert_failed_cleanly(&w, "stream-invalid");
}

#[tokio::test]
async fn the_sources_own_failure_wins_over_a_truncated_stream() {
    let w = World::new(InMemory::new());
    let mut data = rdb(4000);
    data.truncate(2000);
    w.source(data, End::Fails("the cli exited 1"));
    let (_, msg) = code(w.call(Op::CreateBackup, json!({})).await);
    assert!(msg.contains("the cli exited 1"), "{msg}");
}

#[tokio::test]
async fn a_store_that_fails_every_write_still_leaves_nothing_behind() {
    let w = World::new(InMemory::new());
    w.source(rdb(1000), End::Clean);
    w.store.fail_always(Operation::Put, unreachable());
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::S3Unreachable);
    assert!(w.objects().is_empty());
}

#[tokio::test]
async fn a_stalled_source_fails_after_the_stall_timeout_and_cleans_up() {
    let w = World::new(InMemory::new());
    let mut config = w.state.config().unwrap();
    config.backup.stall_timeout_seconds = 1;
    w.state.set_config(config);
    let mut data = rdb(7 * MIB);
    data.truncate(6 * MIB);
    w.source(data, End::Hangs);
    let (c, msg) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::ValkeyError);
    assert!(
        msg.contains("no data from the test source for 1 s"),
        "{msg}"
    );
    assert_failed_cleanly(&w, "valkey-error");
    assert!(*w.killed.lock().unwrap());
}

#[tokio::test]
async fn shutdown_mid_stream_cancels_the_backup_and_leaves_only_its_failure_record() {
    let w = Arc::new(World::new(InMemory::new()));
    let mut data = rdb(7 * MIB);
    data.truncate(6 * MIB);
    w.source(data, End::Hangs);
    let running = {
        let w = Arc::clone(&w);
        tokio::spawn(async move { w.call(Op::CreateBackup, json!({})).await })
    };
    // Wait until the first part is on its way, then stop the agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.store.calls(Operation::CreateMultipart) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.state.shutdown.cancel();
    let (c, _) = code(running.await.unwrap());
    assert_eq!(c, ErrorCode::Cancelled);
    assert_failed_cleanly(&w, "cancelled");
}

// ---- list-backups --------------------------------------------------------------------

#[tokio::test]
async fn listing_walks_every_page_and_derives_each_status() {
    let w = World::new(InMemory::new().with_page_size(2));
    let finished = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    w.source(b"garbage!garbage!".to_vec(), End::Clean);
    let _ = w.call(Op::CreateBackup, json!({})).await;
    let incomplete = "20260102T000000Z-valkey-3-bbbbbb";
    w.memory
        .insert(&format!("{PREFIX}{incomplete}/data.rdb"), &b"x"[..]);
    let running = "20260101T000000Z-valkey-3-aaaaaa";
    w.memory
        .start_upload_at(&format!("{PREFIX}{running}/data.rdb"), 0);
    w.memory.insert(&format!("{PREFIX}README.txt"), &b"x"[..]);
    let list = w.ok(Op::ListBackups, json!({})).await;
    let got: Vec<(String, String)> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backup-id"].as_str().unwrap().to_owned(),
                b["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    let status = |id: &str| got.iter().find(|(i, _)| i == id).unwrap().1.clone();
    assert_eq!(status(&finished), "finished");
    assert_eq!(status(incomplete), "incomplete");
    assert_eq!(status(running), "abandoned");
    assert!(got.iter().any(|(_, s)| s == "failed"));
    assert!(w.store.calls(Operation::List) >= 3, "several pages");
    // With a large age limit the old upload is merely running.
    let list = w
        .ok(Op::ListBackups, json!({"abandoned-after-hours": 1e9}))
        .await;
    assert!(list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["status"] == "running"));
}

#[tokio::test]
async fn a_listing_that_does_not_advance_is_an_error_not_a_loop() {
    let w = World::new(InMemory::new().with_page_size(1));
    w.backup().await;
    w.store
        .inject(Operation::List, Calls::Nth(2), Fault::RepeatToken);
    let (c, msg) = code(w.call(Op::ListBackups, json!({})).await);
    assert_eq!(c, ErrorCode::S3Error);
    assert!(msg.contains("does not advance"), "{msg}");
}

#[tokio::test]
async fn a_manifest_without_its_data_lists_as_damaged() {
    let w = World::new(InMemory::new());
    let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    w.memory
        .delete_version(&format!("{PREFIX}{id}/data.rdb"), None)
        .await
        .unwrap();
    let list = w.ok(Op::ListBackups, json!({})).await;
    assert_eq!(list["backups"][0]["status"], "damaged");
    assert!(list["backups"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("data.rdb is missing"));
}

#[tokio::test]
async fn listing_params_are_refused_when_unknown() {
    let w = World::new(InMemory::new());
    let (c, _) = code(w.call(Op::ListBackups, json!({"clustr": "x"})).await);
    assert_eq!(c, ErrorCode::BadRequest);
}

// ---- verify-backup (without load) ----------------------------------------------------

#[tokio::test]
async fn verify_rereads_the_backup_and_writes_one_new_record() {
    let w = World::new(InMemory::new());
    let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    let r = w.ok(Op::VerifyBackup, json!({"backup-id": id})).await;
    assert_eq!(r["ok"], true);
    let key = r["record-key"].as_str().unwrap();
    let record = w.record(key.strip_prefix(PREFIX).unwrap());
    assert_eq!(record["ok"], true);
    let list = w.ok(Op::ListBackups, json!({})).await;
    assert_eq!(list["backups"][0]["verify-records"], 1);
    assert_eq!(list["backups"][0]["last-verify"]["ok"], true);
    // A newer record copied from another backup does not hide the real one.
    let mut forged = record.clone();
    forged["backup-id"] = json!("20260101T000000Z-valkey-0-aaaaaa");
    forged["ok"] = json!(false);
    w.memory.insert(
        &format!("{PREFIX}{id}/verify/29991231T235959Z-ffffff.json"),
        serde_json::to_vec(&forged).unwrap(),
    );
    let list = w.ok(Op::ListBackups, json!({})).await;
    assert_eq!(list["backups"][0]["verify-records"], 2);
    assert_eq!(list["backups"][0]["last-verify"]["ok"], true);
}

async fn verify_after_damage(damage: impl FnOnce(&mut Vec<u8>)) -> (World, String, String) {
    let w = World::new(InMemory::new());
    let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    let key = format!("{PREFIX}{id}/data.rdb");
    let mut data = w.memory.object(&key).unwrap().to_vec();
    damage(&mut data);
    w.memory.insert(&key, data);
    let (c, msg) = code(w.call(Op::VerifyBackup, json!({"backup-id": id})).await);
    assert_eq!(c, ErrorCode::StreamInvalid, "{msg}");
    let record = w
        .objects()
        .into_iter()
        .find(|o| o.contains("/verify/"))
        .expect("a verify record");
    let failed = w.record(&record)["failed-check"]
        .as_str()
        .unwrap()
        .to_owned();
    (w, msg, failed)
}

#[tokio::test]
async fn verify_names_a_flipped_byte_and_records_the_failed_check() {
    let (_, _, failed) = verify_after_damage(|d| d[500] ^= 1).await;
    assert_eq!(failed, "rdb");
}

#[tokio::test]
async fn verify_names_a_truncated_object_by_its_size() {
    let (_, msg, failed) = verify_after_damage(|d| d.truncate(d.len() - 3)).await;
    assert_eq!(failed, "size");
    assert!(msg.contains("truncated or padded"), "{msg}");
}

#[tokio::test]
async fn verify_of_a_missing_or_failed_backup_is_not_found() {
    let w = World::new(InMemory::new());
    let (c, _) = code(
        w.call(
            Op::VerifyBackup,
            json!({"backup-id": "20260101T000000Z-valkey-0-aaaaaa"}),
        )
        .await,
    );
    assert_eq!(c, ErrorCode::NotFound);
    let (c, _) = code(w.call(Op::VerifyBackup, json!({"backup-id": "../x"})).await);
    assert_eq!(c, ErrorCode::BadRequest);
}

#[tokio::test]
async fn verify_reports_a_store_that_cannot_be_read_without_writing_a_verdict() {
    let w = World::new(InMemory::new());
    let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    // Get 1 is the manifest, get 2 the data.
    w.store.fail_nth(Operation::Get, 2, unreachable());
    let (c, _) = code(w.call(Op::VerifyBackup, json!({"backup-id": id})).await);
    assert_eq!(c, ErrorCode::S3Unreachable);
    assert!(!w.objects().iter().any(|o| o.contains("/verify/")));
}

#[tokio::test]
async fn a_large_backup_is_verified_in_ranges_and_a_failed_range_fails_the_verify() {
    let w = World::new(InMemory::new());
    w.source(rdb(13 * MIB), End::Clean);
    let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    // 13 MiB and a few bytes: four ranges of 4 MiB.
    let r = w.ok(Op::VerifyBackup, json!({"backup-id": id})).await;
    assert_eq!(r["ok"], true);
    assert_eq!(w.store.calls(Operation::GetRange), 4);
    // The second range cannot be read: the verify fails with the store's code and
    // writes no verdict.
    let records = w.objects().len();
    w.store.fail_nth(Operation::GetRange, 6, unreachable());
    let (c, _) = code(w.call(Op::VerifyBackup, json!({"backup-id": id})).await);
    assert_eq!(c, ErrorCode::S3Unreachable);
    assert_eq!(w.objects().len(), records, "{:?}", w.objects());
}

// ---- restore-backup (the store side; the rest needs a server) ------------------------

#[tokio::test]
async fn restore_refuses_what_is_not_a_finished_backup_before_touching_the_server() {
    let w = World::new(InMemory::new());
    w.source(b"garbage!garbage!".to_vec(), End::Clean);
    let _ = w.call(Op::CreateBackup, json!({})).await;
    let failed = w.objects()[0].split('/').next().unwrap().to_owned();
    let (c, msg) = code(
        w.call(
            Op::RestoreBackup,
            json!({"step": "prepare", "backup-id": failed}),
        )
        .await,
    );
    assert_eq!(c, ErrorCode::NotFound);
    assert!(msg.contains("failed (stream-invalid)"), "{msg}");

    // A manifest that names another backup's data is refused as forged.
    w.source(rdb(1000), End::Clean);
    let good = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    let mut manifest = w.record(&format!("{good}/manifest.json"));
    let forged = "20260101T000000Z-valkey-0-ffffff";
    manifest["backup-id"] = json!(forged);
    w.memory.insert(
        &format!("{PREFIX}{forged}/manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    );
    let (c, msg) = code(
        w.call(
            Op::RestoreBackup,
            json!({"step": "prepare", "backup-id": forged}),
        )
        .await,
    );
    assert_eq!(c, ErrorCode::StreamInvalid, "{msg}");

    let (c, _) = code(w.call(Op::RestoreBackup, json!({"step": "commit"})).await);
    assert_eq!(c, ErrorCode::BadRequest);
    let (c, _) = code(
        w.call(
            Op::RestoreBackup,
            json!({"step": "finish", "restore-id": "r00000000"}),
        )
        .await,
    );
    assert_eq!(c, ErrorCode::NotFound);
    // Nothing holds the lock afterwards.
    assert_eq!(w.ok(Op::Status, json!({})).await["busy"], false);
}

// ---- prune-backups -------------------------------------------------------------------

/// Three finished backups with distinct ids (ids carry the second they started in).
async fn three_backups(w: &World) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(w.backup().await["backup-id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    stamp_in_id_order(w, &ids);
    ids
}

/// Gives the objects of `ids` (sorted) store times a minute apart in the same order, an
/// hour ago: backups taken within a second of each other would otherwise rank by
/// whichever manifest the store happened to stamp a second later.
fn stamp_in_id_order(w: &World, ids: &[String]) {
    let base = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    for (i, id) in ids.iter().enumerate() {
        for key in w.memory.keys() {
            if key.starts_with(&format!("{PREFIX}{id}/")) {
                w.memory.set_modified(&key, base + 60 * i as i64);
            }
        }
    }
}

#[tokio::test]
async fn prune_keeps_the_newest_and_deletes_the_rest_only_when_confirmed() {
    let w = World::new(InMemory::versioned());
    let ids = three_backups(&w).await;
    let dry = w.ok(Op::PruneBackups, json!({"keep-last": 1})).await;
    assert_eq!(dry["dry-run"], true);
    assert_eq!(dry["deleted"].as_array().unwrap().len(), 2);
    assert_eq!(w.store.calls(Operation::DeleteVersion), 0);
    let done = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(done["kept"][0]["backup-id"], ids[2].as_str());
    let left: Vec<String> = w.objects();
    assert!(left.iter().all(|o| o.starts_with(&ids[2])), "{left:?}");
    // Versions were deleted by id: no delete markers are left behind.
    assert_eq!(
        w.memory
            .version_count(&format!("{PREFIX}{}/data.rdb", ids[0])),
        0
    );
}

#[tokio::test]
async fn prune_never_deletes_a_locked_version() {
    let w = World::new(InMemory::with_object_lock());
    let ids = three_backups(&w).await;
    w.memory.set_lock(
        &format!("{PREFIX}{}/data.rdb", ids[0]),
        ObjectLock {
            mode: Some("COMPLIANCE".into()),
            retain_until: Some(4_000_000_000),
            legal_hold: false,
        },
    );
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    let kept: Vec<&str> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["why"].as_str().unwrap())
        .collect();
    assert!(kept.iter().any(|w| w.contains("COMPLIANCE")), "{kept:?}");
    assert!(w.objects().iter().any(|o| o.starts_with(&ids[0])));
    assert!(!w.objects().iter().any(|o| o.starts_with(&ids[1])));
}

#[tokio::test]
async fn a_delete_refused_midway_skips_those_backups_and_leaves_them_honest() {
    let w = World::new(InMemory::new());
    let ids = three_backups(&w).await;
    // The first step (manifests) goes through; the data objects' batch is refused.
    w.store.fail_nth(
        Operation::DeleteBatch,
        2,
        StoreError::AccessDenied {
            detail: "AccessDenied (HTTP 403)".into(),
        },
    );
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(r["skipped"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["deleted"].as_array().unwrap().len(), 0, "{r}");
    let why = r["skipped"][0]["why"].as_str().unwrap();
    assert!(
        why.starts_with("deleting data.rdb failed") && why.contains("stays listed"),
        "{why}"
    );
    // Their manifests went first: what is left lists as incomplete, never as finished.
    let listed = w.ok(Op::ListBackups, json!({})).await;
    let status: Vec<(&str, &str)> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backup-id"].as_str().unwrap(),
                b["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        vec![
            (ids[2].as_str(), "finished"),
            (ids[1].as_str(), "incomplete"),
            (ids[0].as_str(), "incomplete")
        ]
    );
}

#[tokio::test]
async fn prune_batches_its_deletes_and_reads_no_lock_state_on_a_bucket_without_object_lock() {
    let w = World::new(InMemory::versioned());
    for _ in 0..5 {
        w.backup().await;
    }
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(r["deleted"].as_array().unwrap().len(), 4, "{r}");
    // One listing of the prefix, one version listing, no HeadObject, one DeleteObjects
    // per step (manifests, data objects), no single deletes.
    assert_eq!(w.store.calls(Operation::List), 1);
    assert_eq!(w.store.calls(Operation::ListVersions), 1);
    assert_eq!(w.store.calls(Operation::Head), 0);
    assert_eq!(w.store.calls(Operation::DeleteBatch), 2);
    assert_eq!(w.store.calls(Operation::DeleteVersion), 0);
    assert_eq!(w.objects().len(), 2, "{:?}", w.objects());
}

#[tokio::test]
async fn prune_falls_back_to_single_deletes_on_a_store_without_delete_objects() {
    let w = World::new(InMemory::new().without_batch_delete());
    let ids = three_backups(&w).await;
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(r["deleted"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(w.store.calls(Operation::DeleteVersion), 4);
    assert!(w.objects().iter().all(|o| o.starts_with(&ids[2])));
}

/// Copies backup `from` under the id `to` with a manifest that describes `to` (as a
/// unit with a wrong clock would have written it), the store's time `at`.
fn forge_copy(w: &World, from: &str, to: &str, at: i64) {
    let mut m = w.record(&format!("{from}/manifest.json"));
    m["backup-id"] = json!(to);
    m["data-key"] = json!(format!("{PREFIX}{to}/data.rdb"));
    let data = w
        .memory
        .object(&format!("{PREFIX}{from}/data.rdb"))
        .unwrap();
    for (object, body) in [
        ("data.rdb", data.to_vec()),
        ("manifest.json", serde_json::to_vec(&m).unwrap()),
    ] {
        let key = format!("{PREFIX}{to}/{object}");
        w.memory.insert(&key, body);
        w.memory.set_modified(&key, at);
    }
}

#[tokio::test]
async fn an_id_dated_after_its_manifest_ranks_at_its_store_time_and_is_flagged() {
    let w = World::new(InMemory::new());
    let ids = three_backups(&w).await;
    // A unit whose clock said 2099 wrote a backup yesterday (by the store's clock).
    let forged = "20990101T000000Z-valkey-9-abcdef";
    let yesterday = time::OffsetDateTime::now_utc().unix_timestamp() - 86_400;
    forge_copy(&w, &ids[0], forged, yesterday);

    let listed = w.ok(Op::ListBackups, json!({})).await;
    let order: Vec<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup-id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![&ids[2], &ids[1], &ids[0], forged]);
    let entry = &listed["backups"][3];
    assert_eq!(entry["status"], "finished");
    let warning = entry["warning"].as_str().unwrap();
    assert!(
        warning.contains("2099-01-01T00:00:00Z") && warning.contains("ahead"),
        "{warning}"
    );
    assert!(listed["backups"][0].get("warning").is_none());
    assert!(listed["backups"][0]["stored-at"].is_string());

    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(r["kept"][0]["backup-id"], ids[2].as_str(), "{r}");
    let deleted: Vec<&str> = backup_ids(&r["deleted"]);
    assert_eq!(deleted, vec![&ids[1], &ids[0], forged]);
    assert!(r["deleted"][2]["warning"]
        .as_str()
        .unwrap()
        .contains("ahead"));
    assert!(w.objects().iter().all(|o| o.starts_with(&ids[2])));
}

/// The id a unit would name a backup with when its clock says `at`.
fn id_at(at: time::OffsetDateTime, unit: &str) -> String {
    valkey_backup_agent::backup_id::BackupId::generate(at, unit)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_new_backup_from_a_unit_whose_clock_runs_behind_is_kept_by_the_stores_time() {
    let w = World::new(InMemory::new());
    let real = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc();
    // Honest backups from ten and twenty days ago, and one written a minute ago by a
    // unit whose clock is a year behind; the real backup they were copied from is removed.
    let honest = id_at(now - time::Duration::days(10), "valkey/0");
    let older = id_at(now - time::Duration::days(20), "valkey/0");
    for (id, days) in [(&honest, 10), (&older, 20)] {
        let at = (now - time::Duration::days(days)).unix_timestamp() + 60;
        forge_copy(&w, &real, id, at);
    }
    let behind = id_at(now - time::Duration::days(365), "valkey/1");
    forge_copy(&w, &real, &behind, now.unix_timestamp() - 60);
    for object in ["data.rdb", "manifest.json"] {
        w.memory
            .delete_version(&format!("{PREFIX}{real}/{object}"), None)
            .await
            .unwrap();
    }

    // Listed by the id's time, with a warning.
    let listed = w.ok(Op::ListBackups, json!({})).await;
    let order: Vec<&str> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup-id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![honest.as_str(), older.as_str(), behind.as_str()]
    );
    let warning = listed["backups"][2]["warning"].as_str().unwrap();
    assert!(
        warning.contains("behind the store") && warning.contains("either time keeps it"),
        "{warning}"
    );
    assert!(listed["backups"][0].get("warning").is_none());

    // keep-days 7 keeps today's backup (by the store, a minute old) and deletes the
    // ten- and twenty-day-old ones (the ten-day one is kept as the newest by id).
    let r = w.ok(Op::PruneBackups, json!({"keep-days": 7})).await;
    let why = |r: &Value, list: &str| -> Vec<(String, String)> {
        r[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["backup-id"].as_str().unwrap().to_owned(),
                    k["why"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        why(&r, "kept"),
        vec![
            (
                honest.clone(),
                "the newest finished backup is always kept".to_owned()
            ),
            (
                behind.clone(),
                "younger than 7 days by the store's time".to_owned()
            ),
        ],
        "{r}"
    );
    assert!(r["kept"][1]["warning"].as_str().unwrap().contains("behind"));
    assert_eq!(
        why(&r, "deleted"),
        vec![(older.clone(), "older than 7 days".to_owned())]
    );
    // keep-last 1 keeps it too, as the newest by the store's time, beside the newest by
    // id; only the twenty-day-old one goes.
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(
        why(&r, "kept"),
        vec![
            (honest.clone(), "the newest finished backup".to_owned()),
            (
                behind.clone(),
                "the newest finished backup by the store's time".to_owned()
            ),
        ],
        "{r}"
    );
    assert_eq!(
        why(&r, "deleted"),
        vec![(older.clone(), "not the newest finished backup".to_owned())]
    );
    assert!(w
        .objects()
        .iter()
        .all(|o| o.starts_with(&behind) || o.starts_with(&honest)));
}

#[tokio::test]
async fn a_bucket_copied_in_reverse_order_keeps_the_newest_backup_by_id() {
    // A bucket migrated an hour ago, newest backup first: every id is days behind its
    // LastModified and the oldest backup was copied last.
    let w = World::new(InMemory::new());
    let real = w.backup().await["backup-id"].as_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc();
    let ids: Vec<String> = (2..=4)
        .map(|d| id_at(now - time::Duration::days(d), "valkey/0"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        forge_copy(&w, &real, id, now.unix_timestamp() - 3600 + 60 * i as i64);
    }
    for object in ["data.rdb", "manifest.json"] {
        w.memory
            .delete_version(&format!("{PREFIX}{real}/{object}"), None)
            .await
            .unwrap();
    }
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    let kept: Vec<&str> = backup_ids(&r["kept"]);
    assert_eq!(kept, vec![ids[0].as_str(), ids[2].as_str()], "{r}");
    assert_eq!(r["kept"][0]["why"], "the newest finished backup");
    assert_eq!(
        r["kept"][1]["why"],
        "the newest finished backup by the store's time"
    );
    assert_eq!(r["deleted"][0]["backup-id"], ids[1].as_str(), "{r}");
    assert_eq!(r["deleted"].as_array().unwrap().len(), 1, "{r}");
    assert!(w
        .objects()
        .iter()
        .all(|o| o.starts_with(&ids[0]) || o.starts_with(&ids[2])));
}

#[tokio::test]
async fn an_upload_left_under_a_far_future_id_is_abandoned_and_aborted() {
    let w = World::new(InMemory::new());
    w.backup().await;
    // A unit whose clock said 2099 opened an upload 30 hours ago (by the store) and died.
    let forged = "20990101T000000Z-valkey-9-abcdef";
    let opened = time::OffsetDateTime::now_utc().unix_timestamp() - 30 * 3600;
    w.memory
        .start_upload_at(&format!("{PREFIX}{forged}/data.rdb"), opened);
    let listed = w.ok(Op::ListBackups, json!({})).await;
    let entry = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backup-id"] == forged)
        .unwrap();
    assert_eq!(entry["status"], "abandoned", "{entry}");
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    assert_eq!(r["aborted-uploads"][0]["backup-id"], forged, "{r}");
    let initiated = time::OffsetDateTime::from_unix_timestamp(opened).unwrap();
    assert_eq!(
        r["aborted-uploads"][0]["initiated"],
        valkey_backup_agent::timefmt::rfc3339(initiated)
    );
    assert!(w.memory.open_uploads().is_empty());
}

#[tokio::test]
async fn list_backups_answers_one_bounded_page_with_counts() {
    let w = World::new(InMemory::new());
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(w.backup().await["backup-id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    stamp_in_id_order(&w, &ids);
    ids.reverse();
    let gets = w.store.calls(Operation::Get);
    let page = w.ok(Op::ListBackups, json!({"limit": 2})).await;
    let got: Vec<&str> = page["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup-id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![&ids[0], &ids[1]]);
    assert_eq!(page["total"], 5);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["next-offset"], 2);
    assert_eq!(page["counts"], json!({"finished": 5}));
    // Only the page's manifests were read.
    assert_eq!(w.store.calls(Operation::Get) - gets, 2);
    let last = w
        .ok(Op::ListBackups, json!({"limit": 2, "offset": 4}))
        .await;
    assert_eq!(last["backups"][0]["backup-id"], ids[4].as_str());
    assert!(last.get("next-offset").is_none(), "{last}");
    // A data object removed by hand: the counts say so from the listing alone.
    w.memory
        .delete_version(&format!("{PREFIX}{}/data.rdb", ids[1]), None)
        .await
        .unwrap();
    let damaged = w.ok(Op::ListBackups, json!({"status": "damaged"})).await;
    assert_eq!(damaged["counts"], json!({"damaged": 1, "finished": 4}));
    assert_eq!(damaged["total"], 1);
    assert_eq!(damaged["backups"][0]["backup-id"], ids[1].as_str());
    assert!(damaged["backups"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("missing"));
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"offset": -1}),
    ] {
        let (c, _) = code(w.call(Op::ListBackups, bad.clone()).await);
        assert_eq!(c, ErrorCode::BadRequest, "{bad}");
    }
}

#[tokio::test]
async fn a_confirmed_prune_does_not_hold_the_unit_lock_and_never_deletes_a_backup_being_restored() {
    let w = World::new(InMemory::new());
    let ids = three_backups(&w).await;
    // A restore of the oldest backup holds the unit lock (as between its steps).
    let guard = w
        .state
        .lock_unit("restore-backup", ids[0].clone())
        .await
        .unwrap();
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    let deleted: Vec<&str> = backup_ids(&r["deleted"]);
    assert_eq!(deleted, vec![&ids[1]], "{r}");
    assert_eq!(r["skipped"][0]["backup-id"], ids[0].as_str());
    assert!(r["skipped"][0]["why"]
        .as_str()
        .unwrap()
        .contains("restoring it right now"));
    assert!(w.objects().iter().any(|o| o.starts_with(&ids[0])));
    drop(guard);
    // While a prune has a backup claimed, a restore of it is refused busy.
    let (claim, in_use) = w.state.claim_for_deletion(vec![ids[0].clone()]);
    assert!(in_use.is_none());
    let refused = w.state.lock_unit("restore-backup", ids[0].clone()).await;
    assert_eq!(refused.err().map(|e| e.code()), Some(ErrorCode::Busy));
    assert!(w
        .state
        .lock_unit("create-backup", "other".into())
        .await
        .is_ok());
    drop(claim);
    assert!(w
        .state
        .lock_unit("restore-backup", ids[0].clone())
        .await
        .is_ok());
}

#[tokio::test]
async fn prune_on_a_store_without_version_listing_deletes_by_key() {
    let w = World::new(InMemory::new());
    let ids = three_backups(&w).await;
    w.store.fail_always(
        Operation::ListVersions,
        StoreError::Unsupported {
            operation: "ListObjectVersions",
        },
    );
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 2, "confirm": true}))
        .await;
    assert_eq!(r["deleted"][0]["backup-id"], ids[0].as_str());
    assert_eq!(r["deleted"][0]["objects"], 2);
    assert!(!w.objects().iter().any(|o| o.starts_with(&ids[0])));
}

#[tokio::test]
async fn prune_aborts_abandoned_uploads_and_never_counts_a_damaged_backup_as_newest() {
    let w = World::new(InMemory::new());
    let ids = three_backups(&w).await;
    // The newest backup loses its data: it is damaged, so keep-last 1 keeps the next one.
    w.memory
        .delete_version(&format!("{PREFIX}{}/data.rdb", ids[2]), None)
        .await
        .unwrap();
    let gone = "20260101T000000Z-valkey-3-aaaaaa";
    w.memory
        .start_upload_at(&format!("{PREFIX}{gone}/data.rdb"), 0);
    let r = w
        .ok(Op::PruneBackups, json!({"keep-last": 1, "confirm": true}))
        .await;
    let kept: Vec<&str> = backup_ids(&r["kept"]);
    assert!(kept.contains(&ids[1].as_str()), "{r}");
    assert_eq!(r["aborted-uploads"][0]["backup-id"], gone);
    assert!(w.memory.open_uploads().is_empty());
}

#[tokio::test]
async fn prune_needs_a_rule() {
    let w = World::new(InMemory::new());
    let (c, msg) = code(w.call(Op::PruneBackups, json!({})).await);
    assert_eq!(c, ErrorCode::BadRequest);
    assert!(msg.contains("keep-last or keep-days"), "{msg}");
}

// ---- configure and status ------------------------------------------------------------

#[tokio::test]
async fn configure_checks_the_bucket_then_stores_and_status_reports_it() {
    let w = World::new(InMemory::new());
    let cli = w.state.state_dir.join("valkey-cli");
    let params = json!({
        "cluster": "other.valkey", "unit": "valkey/1",
        "s3": {"endpoint": "http://127.0.0.1:9", "bucket": "bkt2", "access-key": "a", "secret-key": "s"},
        "valkey": {"cli": cli}
    });
    let r = w.ok(Op::Configure, params.clone()).await;
    assert_eq!(r["bucket"], "bkt2");
    assert_eq!(w.store.calls(Operation::EnsureBucket), 1);
    let s = w.ok(Op::Status, json!({})).await;
    assert_eq!(s["cluster"], "other.valkey");
    assert_eq!(s["s3-configured"], true);

    // A bucket that cannot be used leaves the previous configuration in force.
    w.store.fail_nth(
        Operation::EnsureBucket,
        2,
        StoreError::NoBucket {
            bucket: "b3".into(),
        },
    );
    let mut bad = params;
    bad["cluster"] = json!("third.valkey");
    let (c, _) = code(w.call(Op::Configure, bad).await);
    assert_eq!(c, ErrorCode::S3NoBucket);
    let s = w.ok(Op::Status, json!({})).await;
    assert_eq!(s["cluster"], "other.valkey");
}

#[tokio::test]
async fn status_of_an_unconfigured_agent_and_ops_that_need_storage() {
    let dir = tempfile::tempdir().unwrap();
    let state = AgentState::with_backends(
        dir.path().to_owned(),
        None,
        CancellationToken::new(),
        Box::new(|_| Ok(Arc::new(InMemory::new()) as DynStore)),
        valkey_backup_agent::source::configured_sources(),
    );
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let s = ops::dispatch(&state, Op::Status, json!({}), tx.clone())
        .await
        .unwrap()
        .to_value();
    assert_eq!(s["configured"], false);
    assert_eq!(s["memory-bound-bytes"], Value::Null);
    let e = ops::dispatch(&state, Op::ListBackups, json!({}), tx)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotConfigured);
}

// ---- a real snapshot -----------------------------------------------------------------

/// `SAVE` of a Valkey 9.1 server holding a string, a list, a hash, a key with a TTL and a
/// second database (made with the project's own components; 182 bytes).
const VALKEY9_RDB: &[u8] = include_bytes!("fixtures/valkey9.rdb");

#[tokio::test]
async fn a_real_snapshot_is_stored_byte_for_byte_and_verifies() {
    let w = World::new(InMemory::new());
    w.source(VALKEY9_RDB.to_vec(), End::Clean);
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap().to_owned();
    assert_eq!(r["rdb-version"], 80);
    assert_eq!(
        w.memory.object(&format!("{PREFIX}{id}/data.rdb")).unwrap(),
        VALKEY9_RDB
    );
    let m = w.record(&format!("{id}/manifest.json"));
    assert_eq!(m["rdb-magic"], "VALKEY");
    assert_eq!(m["eof-mark-stripped"], false);
    let v = w.ok(Op::VerifyBackup, json!({"backup-id": id})).await;
    assert_eq!(v["ok"], true);
}

#[tokio::test]
async fn an_exactly_framed_source_may_not_send_bytes_after_the_trailer() {
    let w = World::new(InMemory::new());
    w.source(VALKEY9_RDB.to_vec(), End::Exact);
    w.backup().await;
    let mut stream = VALKEY9_RDB.to_vec();
    stream.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567");
    w.source(stream, End::Exact);
    let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
    assert_eq!(c, ErrorCode::StreamInvalid);
}

#[tokio::test]
async fn a_diskless_eof_marker_after_a_real_snapshot_is_not_stored() {
    let w = World::new(InMemory::new());
    let mut stream = VALKEY9_RDB.to_vec();
    stream.extend_from_slice(b"0123456789abcdef0123456789abcdef01234567");
    w.source(stream, End::Clean);
    let r = w.backup().await;
    let id = r["backup-id"].as_str().unwrap().to_owned();
    assert_eq!(r["size-bytes"], VALKEY9_RDB.len());
    assert_eq!(
        w.memory.object(&format!("{PREFIX}{id}/data.rdb")).unwrap(),
        VALKEY9_RDB
    );
    assert_eq!(
        w.record(&format!("{id}/manifest.json"))["eof-mark-stripped"],
        true
    );
}

// ---- compressed and encrypted backups ------------------------------------------------

mod encoded {
    use super::*;
    use age::secrecy::ExposeSecret;
    use sha2::Digest;
    use std::io::Read;
    use valkey_backup_agent::codec::Codec;
    use valkey_backup_agent::config::EncryptionSettings;
    use valkey_backup_agent::encrypt::fingerprint;
    use valkey_backup_agent::secret::Secret;

    /// A key pair: the identity, its secret text and its public text.
    struct Key {
        id: age::x25519::Identity,
        secret: String,
        public: String,
    }

    fn key() -> Key {
        let id = age::x25519::Identity::generate();
        let secret = id.to_string().expose_secret().to_owned();
        let public = id.to_public().to_string();
        Key { id, secret, public }
    }

    /// Reconfigures the agent: compression, and encryption to `recipients` with
    /// `identities` (`None`: no encryption section at all).
    fn set(w: &World, codec: Codec, level: Option<i32>, keys: Option<(&[&Key], &[&Key])>) {
        let mut c = w.state.config().unwrap();
        c.backup.compression = codec;
        c.backup.compression_level = level;
        c.encryption = keys.map(|(recipients, identities)| EncryptionSettings {
            recipients: recipients.iter().map(|k| k.public.clone()).collect(),
            identities: identities.iter().map(|k| Secret::new(&k.secret)).collect(),
        });
        c.validate().unwrap();
        w.state.set_config(c);
    }

    /// Opens a stored object the way an operator would with the stock tools.
    fn open_stored(stored: &[u8], codec: Codec, id: Option<&age::x25519::Identity>) -> Vec<u8> {
        let plain: Box<dyn Read> = match id {
            Some(id) => Box::new(
                age::Decryptor::new(stored)
                    .unwrap()
                    .decrypt(std::iter::once(id as &dyn age::Identity))
                    .unwrap(),
            ),
            None => Box::new(stored),
        };
        let mut raw: Box<dyn Read> = match codec {
            Codec::None => plain,
            Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(plain)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(plain).unwrap()),
        };
        let mut out = Vec::new();
        raw.read_to_end(&mut out).unwrap();
        out
    }

    /// A compressible RDB (JSON-like values) of about `len` bytes.
    fn json_rdb(len: usize) -> Vec<u8> {
        let mut v = b"VALKEY080".to_vec();
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"user-{}\",\"active\":true}}",
                    i % 1000
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.push(0xFF);
        let mut crc = crc64_digest();
        crc.update(&v);
        v.extend_from_slice(&crc.finalize().to_le_bytes());
        v
    }

    #[tokio::test]
    async fn every_codec_clear_or_encrypted_is_stored_in_the_tools_format_and_verifies() {
        let k = key();
        for (codec, level, suffix) in [
            (Codec::None, None, ""),
            (Codec::Lz4, None, ".lz4"),
            (Codec::Zstd, Some(7), ".zst"),
        ] {
            for encrypted in [false, true] {
                let w = World::new(InMemory::new());
                let data = json_rdb(2 * MIB + 12345);
                w.source(data.clone(), End::Clean);
                let keys: &[&Key] = &[&k];
                set(&w, codec, level, encrypted.then_some((keys, keys)));
                let r = w.backup().await;
                let id = r["backup-id"].as_str().unwrap().to_owned();
                let name = format!("data.rdb{suffix}{}", if encrypted { ".age" } else { "" });
                assert_eq!(r["data-key"], format!("{PREFIX}{id}/{name}"));
                assert_eq!(r["compression"], codec.as_str());
                assert_eq!(r["encrypted"], encrypted);
                assert_eq!(r["raw-size-bytes"], data.len());
                let stored = w.memory.object(&format!("{PREFIX}{id}/{name}")).unwrap();
                assert_eq!(r["size-bytes"], stored.len());
                if codec != Codec::None {
                    assert!(stored.len() < data.len() / 3, "{codec:?}: {}", stored.len());
                }
                assert_eq!(
                    open_stored(&stored, codec, encrypted.then_some(&k.id)),
                    data
                );

                let m = w.record(&format!("{id}/manifest.json"));
                let plain = codec == Codec::None && !encrypted;
                assert_eq!(m["format-version"], if plain { 1 } else { 2 });
                assert_eq!(m["compression"], codec.as_str());
                assert_eq!(m["stored-size-bytes"], stored.len());
                assert_eq!(m["raw-size-bytes"], data.len());
                assert_eq!(m["sha256"], hex::encode(sha2::Sha256::digest(&stored)));
                let raw_sha = hex::encode(sha2::Sha256::digest(&data));
                if plain {
                    assert_eq!(m["sha256"], raw_sha);
                    assert!(m.get("raw-sha256").is_none());
                } else {
                    assert_eq!(m["raw-sha256"], raw_sha);
                }
                if encrypted {
                    assert_eq!(m["encryption"]["scheme"], "age-x25519");
                    assert_eq!(
                        m["encryption"]["recipients"],
                        json!([fingerprint(&k.id.to_public())])
                    );
                } else {
                    assert!(m.get("encryption").is_none());
                }
                // No secret in any object of the bucket.
                for o in w.memory.keys() {
                    let body = w.memory.object(&o).unwrap();
                    assert!(
                        !body.windows(20).any(|x| x == &k.secret.as_bytes()[..20]),
                        "{o}"
                    );
                }

                let v = w.ok(Op::VerifyBackup, json!({"backup-id": id})).await;
                assert_eq!(v["ok"], true, "{codec:?} {encrypted}");
                let list = w.ok(Op::ListBackups, json!({})).await;
                let entry = &list["backups"][0];
                assert_eq!(entry["status"], "finished");
                assert_eq!(entry["compression"], codec.as_str());
                assert_eq!(entry["encrypted"], encrypted);
            }
        }
    }

    /// Backs up with `codec` (encrypted to `k` when given), flips the byte at each of
    /// `positions` (fractions of the stored size) in turn and returns the failed checks.
    async fn flipped(codec: Codec, k: Option<&Key>, positions: &[f64]) -> Vec<String> {
        let w = World::new(InMemory::new());
        w.source(json_rdb(MIB), End::Clean);
        let keys: Vec<&Key> = k.into_iter().collect();
        set(&w, codec, None, k.map(|_| (&keys[..], &keys[..])));
        let r = w.backup().await;
        let id = r["backup-id"].as_str().unwrap().to_owned();
        let key = r["data-key"].as_str().unwrap().to_owned();
        let good = w.memory.object(&key).unwrap().to_vec();
        let mut checks = Vec::new();
        for p in positions {
            let mut bad = good.clone();
            let at = ((bad.len() as f64 * p) as usize).min(bad.len() - 1);
            bad[at] ^= 0x10;
            w.memory.insert(&key, bad);
            let (c, msg) = code(w.call(Op::VerifyBackup, json!({"backup-id": id})).await);
            assert_eq!(c, ErrorCode::StreamInvalid, "{codec:?} at {at}: {msg}");
            let latest = w
                .objects()
                .into_iter()
                .filter(|o| o.contains("/verify/"))
                .map(|o| w.record(&o))
                .find(|r| r["reason"] == json!(msg))
                .expect("a verify record for this failure");
            assert_eq!(latest["ok"], false);
            checks.push(latest["failed-check"].as_str().unwrap().to_owned());
        }
        w.memory.insert(&key, good);
        let v = w.ok(Op::VerifyBackup, json!({"backup-id": id})).await;
        assert_eq!(v["ok"], true);
        checks
    }

    const POSITIONS: &[f64] = &[0.0, 0.001, 0.01, 0.3, 0.5, 0.9, 0.999, 1.0];

    #[tokio::test]
    async fn a_flipped_byte_anywhere_in_a_compressed_object_is_refused() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let checks = flipped(codec, None, POSITIONS).await;
            assert!(
                checks
                    .iter()
                    .all(|c| ["decompress", "rdb", "sha256"].contains(&c.as_str())),
                "{checks:?}"
            );
            assert!(checks.iter().any(|c| c == "decompress"), "{checks:?}");
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_anywhere_in_an_encrypted_object_fails_authentication() {
        let k = key();
        for codec in [Codec::None, Codec::Zstd] {
            let checks = flipped(codec, Some(&k), POSITIONS).await;
            assert!(
                checks.iter().all(|c| c == "decrypt"),
                "{codec:?}: {checks:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_or_wrong_key_is_decrypt_failed_and_no_verdict_is_written() {
        let (a, b) = (key(), key());
        let w = World::new(InMemory::new());
        w.source(json_rdb(MIB), End::Clean);
        set(&w, Codec::Zstd, None, Some((&[&a], &[&a])));
        let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
        for keys in [
            None,
            Some((&[&b][..], &[&b][..])),
            Some((&[&a][..], &[][..])),
        ] {
            set(&w, Codec::Zstd, None, keys);
            let (c, msg) = code(w.call(Op::VerifyBackup, json!({"backup-id": id})).await);
            assert_eq!(c, ErrorCode::DecryptFailed, "{msg}");
            assert!(msg.contains(&fingerprint(&a.id.to_public())), "{msg}");
            assert!(
                !msg.contains(&a.secret) && !msg.contains(&b.secret),
                "{msg}"
            );
            let restore = json!({"step": "prepare", "backup-id": id});
            let (c, _) = code(w.call(Op::RestoreBackup, restore).await);
            assert_eq!(c, ErrorCode::DecryptFailed);
        }
        assert!(!w.objects().iter().any(|o| o.contains("/verify/")));
    }

    #[tokio::test]
    async fn rotation_old_backups_open_with_the_old_identity_new_ones_without_it() {
        let (a, b) = (key(), key());
        let w = World::new(InMemory::new());
        w.source(json_rdb(MIB), End::Clean);
        set(&w, Codec::Lz4, None, Some((&[&a], &[&a])));
        let old = w.backup().await["backup-id"].as_str().unwrap().to_owned();
        // Rotated: new backups go to B; A stays as an identity for the old ones. No
        // recipients: the first identity's public key is the recipient.
        set(&w, Codec::Lz4, None, Some((&[], &[&b, &a])));
        w.source(json_rdb(MIB), End::Clean);
        let r = w.backup().await;
        let new = r["backup-id"].as_str().unwrap().to_owned();
        assert_eq!(r["recipients"], json!([fingerprint(&b.id.to_public())]));
        for id in [&old, &new] {
            assert_eq!(
                w.ok(Op::VerifyBackup, json!({"backup-id": id})).await["ok"],
                true
            );
        }
        // A retired: the new backup still opens, the old one names the key it needs.
        set(&w, Codec::Lz4, None, Some((&[&b], &[&b])));
        assert_eq!(
            w.ok(Op::VerifyBackup, json!({"backup-id": new})).await["ok"],
            true
        );
        let (c, _) = code(w.call(Op::VerifyBackup, json!({"backup-id": old})).await);
        assert_eq!(c, ErrorCode::DecryptFailed);
    }

    #[tokio::test]
    async fn a_plain_backup_still_verifies_once_compression_and_encryption_are_on() {
        let k = key();
        let w = World::new(InMemory::new());
        let id = w.backup().await["backup-id"].as_str().unwrap().to_owned();
        assert!(w.objects().contains(&format!("{id}/data.rdb")));
        set(&w, Codec::Zstd, Some(19), Some((&[&k], &[&k])));
        assert_eq!(
            w.ok(Op::VerifyBackup, json!({"backup-id": id})).await["ok"],
            true
        );
        let list = w.ok(Op::ListBackups, json!({})).await;
        assert_eq!(list["backups"][0]["compression"], "none");
        assert_eq!(list["backups"][0]["encrypted"], false);
    }

    #[tokio::test]
    async fn a_failed_encoded_backup_leaves_only_its_failure_record() {
        let k = key();
        let w = World::new(InMemory::new());
        let mut data = json_rdb(12 * MIB);
        let n = data.len();
        data[n - 3] ^= 1; // bad CRC: the trailer check fails after parts went up
        w.source(data, End::Clean);
        set(&w, Codec::Zstd, Some(1), Some((&[&k], &[&k])));
        let (c, _) = code(w.call(Op::CreateBackup, json!({})).await);
        assert_eq!(c, ErrorCode::StreamInvalid);
        assert_failed_cleanly(&w, "stream-invalid");
    }

    #[test]
    fn configuration_refuses_bad_levels_and_keys_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = serde_json::to_value(config(dir.path())).unwrap();
        let with = |patch: Value| {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            AgentConfig::from_params(v)
        };
        let k = key();
        let bad = [
            json!({"backup": {"compression": "zstd", "compression-level": 20}}),
            json!({"backup": {"compression": "lz4", "compression-level": 3}}),
            json!({"backup": {"compression": "brotli"}}),
            json!({"encryption": {}}),
            json!({"encryption": {"recipients": ["age1notakey"]}}),
            json!({"encryption": {"identities": [format!("{}x", k.secret)]}}),
            json!({"encryption": {"identities": [k.public]}}),
        ];
        for patch in bad {
            let err = with(patch.clone()).expect_err(&patch.to_string());
            assert!(!err.to_string().contains(&k.secret[16..]), "{err}");
        }
        let ok = with(
            json!({"backup": {"compression": "zstd", "compression-level": 19},
                             "encryption": {"identities": [k.secret]}}),
        )
        .unwrap();
        assert_eq!(ok.recipients().unwrap(), vec![k.id.to_public()]);
        assert!(!format!("{ok:?}").contains(&k.secret[16..]));
    }
}

/// The `backup-id`s of a result's list (`kept`, `deleted`, `backups`, ...), in order.
fn backup_ids(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["backup-id"].as_str().unwrap())
        .collect()
}
