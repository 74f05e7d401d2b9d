//! The pure logic of scheduled backups: the `schedule` and `retention` sections of
//! `configure`, cron parsing, slot arithmetic, claim naming and who may claim a slot.
//!
//! No I/O here: the task that sleeps, claims and backs up is [`crate::scheduler`].
//!
//! * A **slot** is one instant the cron expression names (UTC, second precision). Every
//!   unit of a cluster computes the same slots from the same configuration, so a slot is
//!   a name all units agree on without talking to each other.
//! * A slot is taken by writing its **claim** object once (`If-None-Match: *`) under
//!   `<path>/<cluster>/claims/<slot>.json`: the store, not a coordinator, picks the one
//!   unit that backs up.
//! * Who tries, and when, is [`claim_delay`]: with `from: replica` healthy replicas claim
//!   at the slot and the primary only after `primary-delay-seconds`, so it takes the slot
//!   only when no replica did.

use std::str::FromStr;
use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::timefmt::rfc3339;

/// Folder under `<path>/<cluster>/` that holds one claim object per taken slot. Not a
/// valid backup id, so listing and pruning never take it for a backup.
pub const CLAIMS_DIR: &str = "claims";

/// Default wait of a primary before it claims a slot when `from` is `replica`.
pub const DEFAULT_PRIMARY_DELAY_SECONDS: u64 = 60;

/// Which units of a cluster take scheduled backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackupFrom {
    /// Healthy replicas first; the primary only when no replica claimed the slot in
    /// time (a snapshot costs the primary a fork).
    #[default]
    Replica,
    /// Only the primary.
    Primary,
    /// Whichever unit claims first.
    Any,
}

impl BackupFrom {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupFrom::Replica => "replica",
            BackupFrom::Primary => "primary",
            BackupFrom::Any => "any",
        }
    }
}

/// `configure`'s `schedule` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Five fields (minute precision) or six with seconds first; always UTC.
    pub cron: String,
    #[serde(default)]
    pub from: BackupFrom,
    /// How long the primary waits for a replica's claim when `from` is `replica`.
    #[serde(default = "default_primary_delay")]
    pub primary_delay_seconds: u64,
    /// When to verify the newest finished backup by loading it into a scratch server
    /// (`verify-backup load=true`), e.g. weekly; off when absent. Same claims, same `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_cron: Option<String>,
}

fn default_primary_delay() -> u64 {
    DEFAULT_PRIMARY_DELAY_SECONDS
}

/// `configure`'s `retention` section: applied after every successful scheduled backup,
/// by the same code as `prune-backups confirm=true`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RetentionSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<f64>,
}

/// Why a `schedule` section was refused; the text names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("must have 5 fields (minute hour day month weekday) or 6 with seconds first; got {0}")]
    FieldCount(usize),
    #[error("is not a valid cron expression: {0}")]
    Cron(String),
    #[error("never fires")]
    NeverFires,
    #[error("fires more often than once per second")]
    TooOften,
}

/// A parsed cron expression and what follows from it.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    expression: String,
}

impl Schedule {
    /// Parses a 5-field (seconds are 0) or 6-field (seconds first) expression.
    pub fn parse(expression: &str) -> Result<Schedule, ScheduleError> {
        let fields = expression.split_whitespace().count();
        // Aliases such as `@daily` are one field and croner knows them.
        let alias = fields == 1 && expression.trim_start().starts_with('@');
        if !alias && !(5..=6).contains(&fields) {
            return Err(ScheduleError::FieldCount(fields));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression.trim())
            .map_err(|e| ScheduleError::Cron(e.to_string()))?;
        let schedule = Schedule {
            cron,
            expression: expression.trim().to_owned(),
        };
        // An expression that parses but names no instant (Feb 30th) must fail here, not
        // leave a scheduler that silently never backs up.
        let first = schedule
            .next_after(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000))
            .ok_or(ScheduleError::NeverFires)?;
        schedule
            .next_after(first)
            .ok_or(ScheduleError::NeverFires)?;
        Ok(schedule)
    }

    /// The expression as configured.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first slot strictly after `t` (second precision), `None` if there is none.
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let start = chrono::DateTime::from_timestamp(t.unix_timestamp(), 0)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
    }

    /// The slots in `(after, before)`, oldest first, at most `limit` of them.
    pub fn slots_between(
        &self,
        after: OffsetDateTime,
        before: OffsetDateTime,
        limit: usize,
    ) -> Vec<OffsetDateTime> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(s) if s < before => {
                    out.push(s);
                    t = s;
                }
                _ => break,
            }
        }
        out
    }

    /// The longest gap between consecutive slots over the next 64 slots after `from`:
    /// what "the schedule allows" between two backups (a `0 3 * * 1-5` schedule allows
    /// three days over a weekend).
    pub fn period(&self, from: OffsetDateTime) -> Option<Duration> {
        let mut prev = self.next_after(from)?;
        let mut longest = Duration::ZERO;
        for _ in 0..64 {
            let next = self.next_after(prev)?;
            longest = longest.max((next - prev).unsigned_abs());
            prev = next;
        }
        Some(longest)
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

/// A slot's name: `YYYYMMDDTHHMMSSZ` (sorts by time, like backup ids).
pub fn slot_name(slot: OffsetDateTime) -> String {
    crate::timefmt::compact(slot)
}

/// The claim object's key for `slot` under the cluster prefix `<path>/<cluster>/`.
pub fn claim_key(cluster_prefix: &str, slot: OffsetDateTime) -> String {
    format!("{cluster_prefix}{CLAIMS_DIR}/{}.json", slot_name(slot))
}

/// The claim object's key for a verification slot (`verify-cron`).
pub fn verify_claim_key(cluster_prefix: &str, slot: OffsetDateTime) -> String {
    format!(
        "{cluster_prefix}{CLAIMS_DIR}/verify-{}.json",
        slot_name(slot)
    )
}

/// What a unit is, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// A replica whose link to its primary is up (its data is current).
    HealthyReplica,
    /// A replica that lost its primary: its data may be stale.
    StaleReplica,
}

impl Role {
    /// From `INFO`'s `role` and `master_link_status` fields.
    pub fn from_info(role: Option<&str>, master_link_up: Option<bool>) -> Role {
        match role {
            Some("slave") | Some("replica") => match master_link_up {
                Some(true) => Role::HealthyReplica,
                _ => Role::StaleReplica,
            },
            _ => Role::Primary,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::HealthyReplica => "replica",
            Role::StaleReplica => "stale-replica",
        }
    }
}

/// How long after the slot a unit of `role` tries to claim it, or `None` when it never
/// does. The write-once claim settles every race; the delay only orders the attempts so
/// that the preferred units win when they are alive.
pub fn claim_delay(from: BackupFrom, role: Role, primary_delay: Duration) -> Option<Duration> {
    match (from, role) {
        (BackupFrom::Any, _) => Some(Duration::ZERO),
        (BackupFrom::Primary, Role::Primary) => Some(Duration::ZERO),
        (BackupFrom::Primary, _) => None,
        (BackupFrom::Replica, Role::HealthyReplica) => Some(Duration::ZERO),
        (BackupFrom::Replica, Role::Primary) => Some(primary_delay),
        // A replica cut off from its primary would back up stale data; the primary,
        // after its delay, is the better source.
        (BackupFrom::Replica, Role::StaleReplica) => None,
    }
}

/// Whether the newest success (or none) is older than the schedule allows at `now`: more
/// than the schedule's longest gap plus `margin` (room for the backup itself) ago.
/// `since` is when the schedule was set up, for a cluster that has no success yet.
pub fn too_old(
    last_success: Option<OffsetDateTime>,
    since: OffsetDateTime,
    period: Duration,
    margin: Duration,
    now: OffsetDateTime,
) -> bool {
    // A success from before the schedule was set up does not make it late at once.
    let reference = last_success.map_or(since, |s| s.max(since));
    now - reference > period + margin
}

/// The margin [`too_old`] allows past the schedule's period: the same as the
/// `ValkeyBackupTooOld` alert's, so the unit status and the alert agree.
pub fn too_old_margin(period: Duration) -> Duration {
    // A tenth of the period, at least a minute and at most an hour: a daily backup may
    // take a while, a test schedule of seconds must not wait an hour.
    (period / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// What one unit did with one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SlotOutcome {
    /// The slot, RFC 3339.
    pub slot: String,
    pub result: SlotResult,
    /// The unit that took the slot, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// This unit's role at the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The error code of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What retention did after a backup: counts, or why it did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Value>,
    /// When this unit finished with the slot.
    pub at: String,
}

/// What one unit did with one slot (see docs/protocol.md, `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotResult {
    /// This unit claimed the slot and the backup finished.
    BackedUp,
    /// This unit claimed the slot and the backup failed (`code`, `message`).
    Failed,
    /// Another unit's claim is the one stored (`taken-by`).
    TakenByOther,
    /// This unit's role may not back up under `from`.
    NotEligible,
    /// The unit lock was held: this unit did not claim, another may.
    Busy,
    /// The server did not answer `INFO`.
    ValkeyUnreachable,
    /// The claim could not be written (`code`).
    ClaimFailed,
    /// No S3 storage is configured.
    NotConfigured,
    /// The agent shut down first.
    Cancelled,
    /// This unit claimed a verification slot and the newest backup passed.
    Verified,
    /// A verification slot found no finished backup to verify.
    NothingToVerify,
}

impl SlotResult {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotResult::BackedUp => "backed-up",
            SlotResult::Failed => "failed",
            SlotResult::TakenByOther => "taken-by-other",
            SlotResult::NotEligible => "not-eligible",
            SlotResult::Busy => "busy",
            SlotResult::ValkeyUnreachable => "valkey-unreachable",
            SlotResult::ClaimFailed => "claim-failed",
            SlotResult::NotConfigured => "not-configured",
            SlotResult::Cancelled => "cancelled",
            SlotResult::Verified => "verified",
            SlotResult::NothingToVerify => "nothing-to-verify",
        }
    }
}

/// What the scheduler persists between restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Persisted {
    /// The expression this state belongs to; another one starts afresh.
    pub cron: String,
    /// When this schedule was first seen (Unix seconds).
    pub since: i64,
    /// Every slot up to this one (Unix seconds) has been looked at.
    pub checked_through: i64,
    /// The newest finished backup of the cluster this unit knows of.
    pub cluster_last_success: Option<i64>,
    pub last_scheduled: Option<SlotOutcome>,
    pub recent_missed: Vec<String>,
    /// The backup another unit claimed a slot for, while its manifest has not been seen:
    /// looked for on every wake-up so the cluster's last success moves as soon as it
    /// finishes (not only when the look-back reaches the slot), and a unit that does not
    /// take the slots is not shown late.
    pub pending_other: Option<String>,
}

/// What the scheduler did, as `status` and `list-backups` show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The backup job's state.
    pub persisted: Persisted,
    /// The verification job's state.
    pub verify: Persisted,
}

impl Report {
    /// The `schedule` object of `status` and `list-backups` for the configured
    /// `settings` (`null` without a schedule). The next slot and the period come from the
    /// configuration itself, so the answer is right the moment `configure` returns.
    /// `own_last_success` is this unit's own newest success (from its metrics).
    pub fn to_json(
        &self,
        settings: Option<&ScheduleSettings>,
        own_last_success: Option<i64>,
        now: OffsetDateTime,
    ) -> Value {
        let Some(settings) = settings else {
            return Value::Null;
        };
        let Ok(schedule) = Schedule::parse(&settings.cron) else {
            return Value::Null;
        };
        let p = &self.persisted;
        // State of another (earlier) expression says nothing about this one's lateness.
        let since = match p.cron == settings.cron {
            true => OffsetDateTime::from_unix_timestamp(p.since).unwrap_or(now),
            false => now,
        };
        let period = schedule.period(now);
        let last_success = p.cluster_last_success.max(own_last_success);
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).ok().map(rfc3339);
        let (too_old_now, allowed) = match period {
            Some(period) => {
                let margin = too_old_margin(period);
                let last = last_success.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
                (
                    too_old(last, since, period, margin, now),
                    Some((period + margin).as_secs()),
                )
            }
            None => (false, None),
        };
        json!({
            "cron": settings.cron,
            "from": settings.from.as_str(),
            "primary-delay-seconds": settings.primary_delay_seconds,
            "next-slot": schedule.next_after(now).map(rfc3339),
            "period-seconds": period.map(|p| p.as_secs()),
            "allowed-age-seconds": allowed,
            "last-success-at": last_success.and_then(at),
            "too-old": too_old_now,
            "last-scheduled": p.last_scheduled,
            "recent-missed-slots": p.recent_missed,
            "verify": settings.verify_cron.as_deref().and_then(|c| Schedule::parse(c).ok()).map(|v| json!({
                "cron": v.expression(),
                "next-slot": v.next_after(now).map(rfc3339),
                "last-scheduled": self.verify.last_scheduled,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn five_fields_fire_on_the_minute_and_six_fields_on_seconds() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        let t = datetime!(2026-11-30 20:07:16 UTC);
        assert_eq!(
            daily.next_after(t),
            Some(datetime!(2026-12-01 03:00:00 UTC))
        );
        let every3 = Schedule::parse("*/3 * * * * *").unwrap();
        assert_eq!(
            every3.next_after(t),
            Some(datetime!(2026-11-30 20:07:18 UTC))
        );
        // Strictly after: a slot is never returned for its own instant.
        let at = datetime!(2026-11-30 20:07:18 UTC);
        assert_eq!(
            every3.next_after(at),
            Some(datetime!(2026-11-30 20:07:21 UTC))
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        assert_eq!(
            Schedule::parse("* * *").unwrap_err(),
            ScheduleError::FieldCount(3)
        );
        assert_eq!(
            Schedule::parse("0 0 0 * * * 2030").unwrap_err(),
            ScheduleError::FieldCount(7)
        );
        assert!(matches!(
            Schedule::parse("61 * * * *").unwrap_err(),
            ScheduleError::Cron(_)
        ));
        assert_eq!(
            Schedule::parse("0 0 30 2 *").unwrap_err(),
            ScheduleError::NeverFires
        );
    }

    #[test]
    fn period_is_the_longest_gap() {
        let t = datetime!(2026-11-30 00:00:00 UTC);
        let daily = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(daily.period(t), Some(Duration::from_secs(86_400)));
        // Weekdays only: the weekend gap is three days.
        let weekdays = Schedule::parse("0 3 * * 1-5").unwrap();
        assert_eq!(weekdays.period(t), Some(Duration::from_secs(3 * 86_400)));
        let every2 = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(every2.period(t), Some(Duration::from_secs(2)));
    }

    #[test]
    fn slots_between_are_exclusive_and_bounded() {
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        let a = datetime!(2026-11-30 00:00:00 UTC);
        let b = datetime!(2026-11-30 00:01:00 UTC);
        let slots = s.slots_between(a, b, 100);
        assert_eq!(slots.len(), 5);
        assert_eq!(slots[0], datetime!(2026-11-30 00:00:10 UTC));
        assert_eq!(slots[4], datetime!(2026-11-30 00:00:50 UTC));
        assert_eq!(s.slots_between(a, b, 2).len(), 2);
    }

    #[test]
    fn claim_keys_sort_by_slot_and_are_not_backup_ids() {
        let k = claim_key("p/c/", datetime!(2026-01-02 03:04:05 UTC));
        assert_eq!(k, "p/c/claims/20260102T030405Z.json");
        let v = verify_claim_key("p/c/", datetime!(2026-01-02 03:04:05 UTC));
        assert_eq!(v, "p/c/claims/verify-20260102T030405Z.json");
        assert!(crate::backup_id::BackupId::parse(CLAIMS_DIR).is_err());
    }

    #[test]
    fn replicas_claim_first_and_the_primary_only_after_its_delay() {
        let d = Duration::from_secs(60);
        let zero = Some(Duration::ZERO);
        type F = BackupFrom;
        assert_eq!(claim_delay(F::Replica, Role::HealthyReplica, d), zero);
        assert_eq!(claim_delay(F::Replica, Role::Primary, d), Some(d));
        assert_eq!(claim_delay(F::Replica, Role::StaleReplica, d), None);
        assert_eq!(claim_delay(F::Primary, Role::Primary, d), zero);
        assert_eq!(claim_delay(F::Primary, Role::HealthyReplica, d), None);
        for role in [Role::Primary, Role::HealthyReplica, Role::StaleReplica] {
            assert_eq!(claim_delay(F::Any, role, d), zero);
        }
    }

    #[test]
    fn roles_come_from_info() {
        assert_eq!(Role::from_info(Some("master"), None), Role::Primary);
        assert_eq!(
            Role::from_info(Some("slave"), Some(true)),
            Role::HealthyReplica
        );
        assert_eq!(
            Role::from_info(Some("slave"), Some(false)),
            Role::StaleReplica
        );
        assert_eq!(Role::from_info(Some("slave"), None), Role::StaleReplica);
    }

    #[test]
    fn too_old_allows_the_period_plus_margin() {
        let p = Duration::from_secs(3600);
        let m = too_old_margin(p);
        assert_eq!(m, Duration::from_secs(360));
        let since = datetime!(2026-11-01 00:00:00 UTC);
        let last = datetime!(2026-11-30 00:00:00 UTC);
        let edge = last + p + m;
        assert!(!too_old(Some(last), since, p, m, edge));
        assert!(too_old(
            Some(last),
            since,
            p,
            m,
            edge + time::Duration::seconds(1)
        ));
        // No success yet, or an older one: counted from when the schedule was set.
        assert!(!too_old(None, last, p, m, edge));
        assert!(too_old(None, since, p, m, edge));
        assert!(!too_old(Some(since), last, p, m, edge));
        assert_eq!(
            too_old_margin(Duration::from_secs(2)),
            Duration::from_secs(60)
        );
        assert_eq!(
            too_old_margin(Duration::from_secs(86_400 * 7)),
            Duration::from_secs(3600)
        );
    }
}
