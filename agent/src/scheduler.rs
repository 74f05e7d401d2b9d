//! The scheduler: the task inside `serve` that takes scheduled backups.
//!
//! For each slot of the configured cron expression (see [`crate::schedule`]):
//!
//! 1. sleep until the slot, raced against shutdown and `configure` (a new schedule is
//!    picked up at once);
//! 2. look back: every earlier slot since the last look (and old enough that every unit
//!    had its chance to claim it) that has no claim object in the bucket was **missed**
//!    by the whole cluster (no unit took it: all down, all busy,
//!    none eligible). It is counted in `valkey_backup_missed_slots_total` and listed in
//!    `status`; slots whose claim names a finished backup move the cluster's last success;
//! 3. ask the server its role (`INFO`), wait the role's delay ([`claim_delay`]), take the
//!    unit lock (busy: this unit does not claim, another may), then write the slot's
//!    claim once (`If-None-Match: *`), unless it already exists. Only the unit whose write
//!    succeeded backs up; the others record who took it. On stores that ignore the
//!    condition (Garage) the claim is read back and only the unit whose claim is the one
//!    stored goes on;
//! 4. back up through [`create_backup::backup`], the same path as `create-backup`;
//! 5. after a success, apply the retention policy through [`prune_backups::prune`] with
//!    `confirm`, the same path as `prune-backups confirm=true` (it takes the unit lock
//!    again, so a manual operation that slipped in between makes it `busy`, reported).
//!
//! What the scheduler did is kept in `schedule.json` under the state directory (so a
//! restart knows which slots it has not looked at yet) and shown by `status` and
//! `list-backups`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backup_id::BackupId;
use crate::config::{keep_days_hint, AgentConfig, S3Settings};
use crate::error::OpError;
use crate::layout::{Layout, ManifestV1};
use crate::ops::{create_backup, list_backups, prune_backups, verify_backup, AgentState};
use crate::protocol::{BackupStatus, VerifyBackupParams};
use crate::schedule::{
    claim_delay, claim_key, slot_name, verify_claim_key, BackupFrom, Persisted, Role, Schedule,
    ScheduleSettings, SlotOutcome, SlotResult,
};
use crate::source::ValkeyAdmin;
use crate::storage::{get_json, put_json, DynStore, StoreError};
use crate::timefmt::rfc3339;

const STATE_FILE: &str = "schedule.json";
const VERIFY_STATE_FILE: &str = "verify-schedule.json";
/// Earlier slots looked at per slot at most (one GET each); older ones are not looked at.
const LOOK_BACK_LIMIT: usize = 50;
/// How long after its delay a unit's claim may take to appear in the bucket before the
/// look-back judges the slot.
const CLAIM_GRACE: Duration = Duration::from_secs(10);
/// The longest sleep between two looks at the wall clock.
const MAX_NAP: Duration = Duration::from_secs(30);
/// Missed slots remembered for `status`.
const RECENT_MISSED: usize = 10;

/// What a scheduler task takes care of: backups (`schedule.cron`) or the verification
/// of the newest backup (`schedule.verify-cron`). Both run the same loop and claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Backup,
    Verify,
}

impl Job {
    fn cron(self, settings: &ScheduleSettings) -> Option<&str> {
        match self {
            Job::Backup => Some(&settings.cron),
            Job::Verify => settings.verify_cron.as_deref(),
        }
    }

    fn state_file(self) -> &'static str {
        match self {
            Job::Backup => STATE_FILE,
            Job::Verify => VERIFY_STATE_FILE,
        }
    }

    fn claim_key(self, cluster_prefix: &str, slot: OffsetDateTime) -> String {
        match self {
            Job::Backup => claim_key(cluster_prefix, slot),
            Job::Verify => verify_claim_key(cluster_prefix, slot),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Verify => "verify",
        }
    }
}

/// One line about a `schedule` object of `status`/`list-backups` for people:
/// `0 3 * * * from replica; next 2026-12-01T03:00:00Z; last slot 2026-11-30T03:00:00Z:
/// backed-up by valkey/1`. `None` without a schedule.
pub fn summary(schedule: &Value) -> Option<String> {
    let cron = schedule.get("cron")?.as_str()?;
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut line = format!(
        "{cron} (UTC) from {}",
        text(&schedule["from"]).unwrap_or_else(|| "-".into())
    );
    if let Some(next) = text(&schedule["next-slot"]) {
        line.push_str(&format!("; next {next}"));
    }
    let last = &schedule["last-scheduled"];
    if let (Some(slot), Some(result)) = (text(&last["slot"]), text(&last["result"])) {
        line.push_str(&format!("; last slot {slot}: {result}"));
        if let Some(unit) = text(&last["taken-by"]) {
            line.push_str(&format!(" by {unit}"));
        }
        if let Some(code) = text(&last["code"]) {
            line.push_str(&format!(" ({code})"));
        }
    }
    if schedule["too-old"] == Value::Bool(true) {
        line.push_str("; LATE: no success within the schedule");
    }
    let missed = schedule["recent-missed-slots"]
        .as_array()
        .map_or(0, Vec::len);
    if missed > 0 {
        line.push_str(&format!("; {missed} recently missed slot(s)"));
    }
    Some(line)
}

/// A slot's claim: which unit takes it. Written once; never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClaimRecord {
    pub format_version: u32,
    pub cluster: String,
    pub slot: String,
    pub unit: String,
    pub role: String,
    /// The backup the claiming unit takes; empty in a verification claim.
    pub backup_id: String,
    pub claimed_at: String,
    /// Random: tells this unit's claim from another's when a store ignored the
    /// write-once condition and kept the last write.
    pub nonce: String,
}

/// Runs the scheduler of `job` until `shutdown`.
pub async fn run(state: Arc<AgentState>, job: Job, shutdown: CancellationToken) {
    let mut changes = state.subscribe_config();
    let mut persisted = load(&state.state_dir, job).await;
    loop {
        changes.borrow_and_update();
        let config = state.config_if_any();
        let settings = config.as_ref().and_then(|c| c.schedule.clone());
        let cron = settings
            .as_ref()
            .and_then(|s| job.cron(s))
            .map(str::to_owned);
        let (Some(config), Some(settings), Some(cron)) = (config, settings, cron) else {
            publish(&state, job, &persisted);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => continue,
            }
        };
        let schedule = match Schedule::parse(&cron) {
            Ok(s) => s,
            Err(e) => {
                // Validated at configure; only a hand-edited file gets here.
                warn!(error = %e, "the stored schedule is invalid; not scheduling");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = changes.changed() => continue,
                }
            }
        };
        let now = OffsetDateTime::now_utc();
        if persisted.cron != cron {
            persisted = Persisted {
                cron: cron.clone(),
                since: now.unix_timestamp(),
                checked_through: now.unix_timestamp(),
                cluster_last_success: persisted.cluster_last_success,
                ..Persisted::default()
            };
            save(&state.state_dir, job, &persisted).await;
        }
        let Some(slot) = schedule.next_after(now) else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => continue,
            }
        };
        publish(&state, job, &persisted);
        // Short naps, each followed by a look at the wall clock: a clock that NTP steps
        // forward past the slot still takes it (late), one stepped back waits for it.
        let wait = (slot - now).unsigned_abs().min(MAX_NAP);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        // The monotonic clock may run ahead of the wall clock: a slot is due by the
        // wall clock, which is what every unit agrees on.
        if job == Job::Backup && persisted.pending_other.is_some() {
            learn_pending(&state, &config, &mut persisted).await;
        }
        if OffsetDateTime::now_utc() < slot {
            continue;
        }
        if job == Job::Backup {
            look_back(&state, &config, &schedule, slot, &mut persisted).await;
        }
        let outcome = take_slot(&state, &settings, job, slot, &shutdown).await;
        info!(job = job.as_str(), slot = %slot_name(slot), result = outcome.result.as_str(), taken_by = outcome.taken_by.as_deref().unwrap_or("-"), "scheduled slot");
        if job == Job::Backup && outcome.result == SlotResult::TakenByOther {
            persisted.pending_other = outcome.backup_id.clone();
            // The other unit may well have finished while this one waited its delay.
            learn_pending(&state, &config, &mut persisted).await;
        }
        if outcome.result == SlotResult::BackedUp {
            persisted.cluster_last_success = persisted
                .cluster_last_success
                .max(Some(OffsetDateTime::now_utc().unix_timestamp()));
        }
        persisted.last_scheduled = Some(outcome);
        save(&state.state_dir, job, &persisted).await;
        publish(&state, job, &persisted);
    }
}

fn publish(state: &AgentState, job: Job, persisted: &Persisted) {
    let mut report = state.schedule.lock().expect("schedule lock");
    match job {
        Job::Backup => report.persisted = persisted.clone(),
        Job::Verify => report.verify = persisted.clone(),
    }
}

/// Looks at the claims of the slots between the last look and `slot`: a slot without
/// one was missed by the cluster; a claimed one whose backup finished moves the
/// cluster's last success. A store that cannot be read leaves them for the next look.
async fn look_back(
    state: &AgentState,
    config: &AgentConfig,
    schedule: &Schedule,
    slot: OffsetDateTime,
    persisted: &mut Persisted,
) {
    let Some(s3) = config.s3.clone() else {
        return;
    };
    let Ok(after) = OffsetDateTime::from_unix_timestamp(persisted.checked_through) else {
        return;
    };
    // A slot is judged only once every unit had its chance to claim it: the primary's
    // delay (under `from: replica`) plus time for the claim itself.
    let delay = match config.schedule.as_ref() {
        Some(s) if s.from == BackupFrom::Replica => Duration::from_secs(s.primary_delay_seconds),
        _ => Duration::ZERO,
    };
    let horizon = slot - (delay + CLAIM_GRACE);
    let earlier = schedule.slots_between(after, horizon, LOOK_BACK_LIMIT);
    if earlier.is_empty() {
        return;
    }
    let Ok(store) = state.open_store(&s3) else {
        return;
    };
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    for p in earlier {
        match read_claim(&store, &layout, p).await {
            Ok(None) => {
                warn!(slot = %slot_name(p), "no unit took a scheduled slot");
                state.metrics.slot_missed();
                persisted.recent_missed.push(rfc3339(p));
                let excess = persisted.recent_missed.len().saturating_sub(RECENT_MISSED);
                persisted.recent_missed.drain(..excess);
            }
            Ok(Some(claim)) => {
                if let Ok(Some(f)) = finished_at(&store, &layout, &claim.backup_id).await {
                    persisted.cluster_last_success = persisted.cluster_last_success.max(Some(f));
                }
            }
            // Something is there but it is not a claim (damaged, or not written by an
            // agent): the slot was taken by someone, which backup is unknown. Waiting for
            // it to become readable would freeze the look-back at this slot for good.
            Err(StoreError::BadRecord { .. }) => {
                warn!(slot = %slot_name(p), "a slot's claim is not a readable claim record; counted as taken, its backup unknown");
            }
            Err(e) => {
                warn!(error = %e, "cannot look at earlier slots' claims; will look again");
                return;
            }
        }
        persisted.checked_through = p.unix_timestamp();
    }
    state.metrics.save().await;
}

/// When the backup `id` finished (Unix seconds), from its manifest; `Ok(None)` while it
/// has none (still running, failed) or `id` is not a backup id.
async fn finished_at(
    store: &DynStore,
    layout: &Layout,
    id: &str,
) -> Result<Option<i64>, StoreError> {
    let Ok(id) = BackupId::parse(id) else {
        return Ok(None);
    };
    let Some(m) = get_json::<ManifestV1>(&**store, &layout.manifest_key(&id)).await? else {
        return Ok(None);
    };
    let finished = OffsetDateTime::parse(
        &m.finished_at,
        &time::format_description::well_known::Rfc3339,
    );
    Ok(finished.ok().map(OffsetDateTime::unix_timestamp))
}

/// Looks for the manifest of the backup another unit claimed the last slot for; once it
/// is there, the cluster's last success moves to it. A store error leaves it for the next
/// wake-up; a backup that never finishes is replaced by the next slot's.
async fn learn_pending(state: &AgentState, config: &AgentConfig, persisted: &mut Persisted) {
    let (Some(s3), Some(id)) = (config.s3.clone(), persisted.pending_other.clone()) else {
        return;
    };
    let Ok(store) = state.open_store(&s3) else {
        return;
    };
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    if let Ok(Some(f)) = finished_at(&store, &layout, &id).await {
        persisted.cluster_last_success = persisted.cluster_last_success.max(Some(f));
        persisted.pending_other = None;
        save(&state.state_dir, Job::Backup, persisted).await;
        publish(state, Job::Backup, persisted);
    }
}

async fn read_claim_at(store: &DynStore, key: &str) -> Result<Option<ClaimRecord>, StoreError> {
    get_json(&**store, key).await
}

/// Verifies the newest finished backup with a load into a scratch server, through the
/// `verify-backup` op itself (same checks, same record, same metrics). `Ok(None)`: there
/// is none yet.
async fn verify_newest(
    state: &Arc<AgentState>,
    events: crate::progress::EventSink,
) -> Result<Option<String>, (Option<String>, OpError)> {
    // The newest finished backups by the listing; the first whose manifest checks out.
    let listing = list_backups::run(state, json!({"status": "finished", "limit": 20}))
        .await
        .map_err(|e| (None, e))?;
    let newest = listing
        .backups
        .into_iter()
        .find(|e| e.status == BackupStatus::Finished)
        .map(|e| e.backup_id);
    let Some(id) = newest else {
        return Ok(None);
    };
    let params = VerifyBackupParams {
        backup_id: id.clone(),
        source_cluster: None,
        load: true,
        server: None,
    };
    let params = serde_json::to_value(params).expect("params serialise");
    verify_backup::run(state, params, events)
        .await
        .map_err(|e| (Some(id.clone()), e))?;
    Ok(Some(id))
}

async fn read_claim(
    store: &DynStore,
    layout: &Layout,
    slot: OffsetDateTime,
) -> Result<Option<ClaimRecord>, StoreError> {
    get_json(&**store, &claim_key(layout.prefix(), slot)).await
}

/// One unit's part in one slot.
async fn take_slot(
    state: &Arc<AgentState>,
    settings: &ScheduleSettings,
    job: Job,
    slot: OffsetDateTime,
    shutdown: &CancellationToken,
) -> SlotOutcome {
    let mut out = SlotOutcome {
        slot: rfc3339(slot),
        result: SlotResult::Cancelled,
        taken_by: None,
        backup_id: None,
        role: None,
        code: None,
        message: None,
        retention: None,
        at: String::new(),
    };
    let finish = |mut o: SlotOutcome, result: SlotResult| {
        o.result = result;
        o.at = rfc3339(OffsetDateTime::now_utc());
        o
    };
    let (config, s3) = match state.storage() {
        Ok(c) => c,
        Err(e) => {
            out.message = Some(e.to_string());
            return finish(out, SlotResult::NotConfigured);
        }
    };
    // The configured client (built-in by default): a cli is optional and may be absent.
    let info = match ValkeyAdmin::new(&config.valkey).info().await {
        Ok(i) => i,
        Err(e) => {
            let e = OpError::from(e);
            out.code = Some(e.code().as_str().to_owned());
            out.message = Some(e.to_string());
            return finish(out, SlotResult::ValkeyUnreachable);
        }
    };
    let role = Role::from_info(info.role.as_deref(), info.master_link_up);
    out.role = Some(role.as_str().to_owned());
    let delay = Duration::from_secs(settings.primary_delay_seconds);
    let Some(delay) = claim_delay(settings.from, role, delay) else {
        return finish(out, SlotResult::NotEligible);
    };
    if !delay.is_zero() {
        tokio::select! {
            _ = shutdown.cancelled() => return finish(out, SlotResult::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let started = OffsetDateTime::now_utc();
    let id = match BackupId::generate(started, &config.unit) {
        Ok(id) => id,
        Err(e) => {
            out.message = Some(e.to_string());
            return finish(out, SlotResult::Failed);
        }
    };
    // The lock before the claim: a unit that cannot back up must not take the slot away
    // from one that can.
    let (op, subject) = match job {
        Job::Backup => ("create-backup", id.to_string()),
        Job::Verify => ("verify-backup", "scheduled verification".to_owned()),
    };
    let guard = match state.lock_unit(op, subject).await {
        Ok(g) => g,
        Err(e) => {
            out.code = Some(e.code().as_str().to_owned());
            out.message = Some(e.to_string());
            return finish(out, SlotResult::Busy);
        }
    };
    let store = match state.open_store(&s3) {
        Ok(s) => s,
        Err(e) => {
            out.code = Some(e.code().as_str().to_owned());
            out.message = Some(e.to_string());
            return finish(out, SlotResult::ClaimFailed);
        }
    };
    let layout = Layout::new(s3.clean_path(), &config.cluster);
    let claim = ClaimRecord {
        format_version: 1,
        cluster: config.cluster.clone(),
        slot: rfc3339(slot),
        unit: config.unit.clone(),
        role: role.as_str().to_owned(),
        // A verification claim names no backup: which one is newest is read after.
        backup_id: match job {
            Job::Backup => id.to_string(),
            Job::Verify => String::new(),
        },
        claimed_at: rfc3339(started),
        nonce: hex::encode(rand::random::<[u8; 16]>()),
    };
    let key = job.claim_key(layout.prefix(), slot);
    // A look first: on a store that ignores If-None-Match, a later write would replace
    // an earlier unit's claim and both would go on. (Where the condition holds, the
    // write below settles any race anyway.)
    if let Ok(Some(existing)) = read_claim_at(&store, &key).await {
        drop(guard);
        out.taken_by = Some(existing.unit);
        out.backup_id = Some(existing.backup_id).filter(|b| !b.is_empty());
        return finish(out, SlotResult::TakenByOther);
    }
    let mut put = put_json(&*store, &key, &claim).await;
    if matches!(put, Err(StoreError::AlreadyExists { .. })) {
        // Our own write, whose answer was lost, seen again by the client's retry: the
        // slot is ours. Another unit's claim (or an unreadable one) is not.
        if let Ok(Some(c)) = read_claim_at(&store, &key).await {
            if c.nonce == claim.nonce {
                put = Ok(());
            }
        }
    }
    match put {
        Ok(()) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            drop(guard);
            let other = read_claim_at(&store, &key).await.ok().flatten();
            out.backup_id = other.as_ref().map(|c| c.backup_id.clone());
            out.backup_id = out.backup_id.filter(|b| !b.is_empty());
            out.taken_by = other.map(|c| c.unit);
            return finish(out, SlotResult::TakenByOther);
        }
        Err(e) => {
            drop(guard);
            let e = OpError::from(e);
            out.code = Some(e.code().as_str().to_owned());
            out.message = Some(e.to_string());
            return finish(out, SlotResult::ClaimFailed);
        }
    }
    // A store that ignores If-None-Match keeps the last write: go on only if the stored
    // claim is ours.
    if let Ok(Some(stored)) = read_claim_at(&store, &key).await {
        if stored.nonce != claim.nonce {
            drop(guard);
            out.taken_by = Some(stored.unit);
            out.backup_id = Some(stored.backup_id).filter(|b| !b.is_empty());
            return finish(out, SlotResult::TakenByOther);
        }
    }
    out.taken_by = Some(config.unit.clone());
    let (events, _) = tokio::sync::mpsc::channel(1);
    if job == Job::Verify {
        // Verification needs no lock (it writes only a new record), and must not make
        // this unit `busy` for a backup slot meanwhile.
        drop(guard);
        return match verify_newest(state, events).await {
            Ok(Some(id)) => {
                out.backup_id = Some(id);
                finish(out, SlotResult::Verified)
            }
            Ok(None) => finish(out, SlotResult::NothingToVerify),
            Err((id, e)) => {
                out.backup_id = id;
                out.code = Some(e.code().as_str().to_owned());
                out.message = Some(e.to_string());
                finish(out, SlotResult::Failed)
            }
        };
    }
    out.backup_id = Some(id.to_string());
    match create_backup::backup(state, &config, &s3, &id, started, guard, events).await {
        Ok(_) => {
            out.retention = Some(retain(state, &config, &s3).await);
            finish(out, SlotResult::BackedUp)
        }
        Err(e) => {
            out.code = Some(e.code().as_str().to_owned());
            out.message = Some(e.to_string());
            finish(out, SlotResult::Failed)
        }
    }
}

/// Applies the retention policy after a successful scheduled backup; the summary says
/// what was deleted and kept, or why nothing was.
async fn retain(state: &Arc<AgentState>, config: &AgentConfig, s3: &S3Settings) -> Value {
    let params = match config.retention {
        Some(r) => prune_backups::PruneParams {
            keep_last: r.keep_last,
            keep_days: r.keep_days,
            confirm: true,
            abandoned_after_hours: None,
        },
        // No policy of its own: the s3-integrator's delete-older-than-days, if any (the
        // prune op defaults to it when neither rule is given).
        None if s3
            .delete_older_than_days
            .as_ref()
            .and_then(keep_days_hint)
            .is_some() =>
        {
            prune_backups::PruneParams {
                confirm: true,
                ..Default::default()
            }
        }
        None => return json!({"applied": false, "why": "no retention policy is configured"}),
    };
    match prune_backups::prune(state, params).await {
        Ok(r) => json!({
            "applied": true,
            "deleted": r.deleted.len(),
            "kept": r.kept.len(),
            "skipped": r.skipped.len(),
        }),
        Err(e) => {
            warn!(error = %e, "retention after a scheduled backup failed");
            json!({"applied": false, "code": e.code().as_str(), "why": e.to_string()})
        }
    }
}

async fn load(state_dir: &Path, job: Job) -> Persisted {
    match tokio::fs::read(state_dir.join(job.state_file())).await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!(error = %e, file = job.state_file(), "ignoring an unreadable scheduler state");
            Persisted::default()
        }),
        Err(_) => Persisted::default(),
    }
}

async fn save(state_dir: &Path, job: Job, persisted: &Persisted) {
    let Ok(body) = serde_json::to_vec_pretty(persisted) else {
        return;
    };
    let file = state_dir.join(job.state_file());
    // A temp name of its own: saves from concurrent tasks must not share one.
    if let Err(e) = crate::statefile::replace(&file, &body, crate::statefile::Flush::Lazy).await {
        warn!(error = %e, file = job.state_file(), "could not store the scheduler state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Report;
    use time::macros::datetime;

    fn settings() -> ScheduleSettings {
        ScheduleSettings {
            cron: "0 3 * * *".into(),
            from: crate::schedule::BackupFrom::Replica,
            primary_delay_seconds: 60,
            verify_cron: None,
        }
    }

    fn report(last_success: Option<i64>) -> Report {
        Report {
            persisted: Persisted {
                cron: "0 3 * * *".into(),
                since: datetime!(2026-11-01 00:00:00 UTC).unix_timestamp(),
                checked_through: 0,
                cluster_last_success: last_success,
                last_scheduled: Some(SlotOutcome {
                    slot: "2026-11-30T03:00:00Z".into(),
                    result: SlotResult::TakenByOther,
                    taken_by: Some("valkey/1".into()),
                    backup_id: None,
                    role: Some("primary".into()),
                    code: None,
                    message: None,
                    retention: None,
                    at: "2026-11-30T03:01:00Z".into(),
                }),
                recent_missed: vec!["2026-11-29T03:00:00Z".into()],
                pending_other: None,
            },
            verify: Persisted::default(),
        }
    }

    #[test]
    fn status_shows_the_schedule_and_whether_it_is_late() {
        let now = datetime!(2026-11-30 12:00:00 UTC);
        let on_time = report(Some(datetime!(2026-11-30 03:05:00 UTC).unix_timestamp()));
        let s = settings();
        let v = on_time.to_json(Some(&s), None, now);
        assert_eq!(v["next-slot"], "2026-12-01T03:00:00Z");
        assert_eq!(v["period-seconds"], 86_400);
        assert_eq!(v["allowed-age-seconds"], 86_400 + 3_600);
        assert_eq!(v["too-old"], false);
        assert_eq!(v["last-scheduled"]["taken-by"], "valkey/1");
        // The unit's own success counts as well as the cluster's.
        let late = report(Some(datetime!(2026-11-28 03:00:00 UTC).unix_timestamp()));
        assert_eq!(late.to_json(Some(&s), None, now)["too-old"], true);
        let own = datetime!(2026-11-30 03:00:00 UTC).unix_timestamp();
        assert_eq!(late.to_json(Some(&s), Some(own), now)["too-old"], false);
        // A new expression is judged from when it was set, not by the old one's state.
        let other = ScheduleSettings {
            cron: "0 4 * * *".into(),
            ..settings()
        };
        assert_eq!(late.to_json(Some(&other), None, now)["too-old"], false);
        assert_eq!(late.to_json(None, None, now), Value::Null);
        assert_eq!(v["verify"], Value::Null);
        let weekly = ScheduleSettings {
            verify_cron: Some("0 4 * * 0".into()),
            ..settings()
        };
        let v = on_time.to_json(Some(&weekly), None, now);
        assert_eq!(v["verify"]["cron"], "0 4 * * 0");
        assert_eq!(v["verify"]["next-slot"], "2026-12-06T04:00:00Z");
    }

    #[tokio::test]
    async fn an_unreadable_claim_does_not_freeze_the_look_back() {
        use crate::storage::memory::InMemory;
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::from_params(json!({
            "cluster": "m.valkey", "unit": "valkey/0",
            "s3": {"endpoint": "http://127.0.0.1:9", "bucket": "bkt", "path": "p",
                   "access-key": "a", "secret-key": "s"},
            "valkey": {},
            "schedule": {"cron": "* * * * *", "from": "any"}
        }))
        .unwrap();
        let memory = Arc::new(InMemory::new());
        let store: DynStore = memory.clone();
        let state = AgentState::with_backends(
            dir.path().to_owned(),
            Some(config.clone()),
            CancellationToken::new(),
            Box::new(move |_| Ok(Arc::clone(&store))),
            crate::source::configured_sources(),
        );
        let schedule = Schedule::parse("* * * * *").unwrap();
        let t0 = datetime!(2026-11-30 10:00:00 UTC);
        let minute: time::Duration = time::Duration::minutes(1);
        let layout = Layout::new("p", "m.valkey");
        // The 10:01 slot has something under its claim's key that is not a claim.
        memory.insert(
            &claim_key(layout.prefix(), t0 + minute),
            &b"not a claim"[..],
        );
        let mut persisted = Persisted {
            checked_through: t0.unix_timestamp(),
            ..Persisted::default()
        };
        look_back(
            &state,
            &config,
            &schedule,
            t0 + time::Duration::minutes(5),
            &mut persisted,
        )
        .await;
        // 10:01 counts as taken; 10:02 to 10:04 had no claim: missed. The look goes on.
        assert_eq!(
            persisted.checked_through,
            (t0 + time::Duration::minutes(4)).unix_timestamp()
        );
        assert_eq!(
            persisted.recent_missed,
            vec![
                "2026-11-30T10:02:00Z",
                "2026-11-30T10:03:00Z",
                "2026-11-30T10:04:00Z"
            ]
        );
    }

    #[test]
    fn the_summary_line_names_the_last_slot_and_missed_ones() {
        let now = datetime!(2026-11-30 12:00:00 UTC);
        let line = summary(&report(None).to_json(Some(&settings()), None, now)).unwrap();
        assert_eq!(
            line,
            "0 3 * * * (UTC) from replica; next 2026-12-01T03:00:00Z; \
             last slot 2026-11-30T03:00:00Z: taken-by-other by valkey/1; \
             LATE: no success within the schedule; 1 recently missed slot(s)"
        );
        assert_eq!(summary(&Value::Null), None);
    }
}
