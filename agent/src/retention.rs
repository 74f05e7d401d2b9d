//! Retention: which backups a policy keeps, which it would delete, and why.
//!
//! Pure logic, no I/O: `prune-backups` lists the store, hands the backups (id, status and
//! the store's write time) and the policy to [`select`], then does the deleting itself.
//! Keeping this apart means every rule (the newest finished backup always stays, running
//! backups are never touched, failed ones follow the finished ones) is unit-tested
//! without a store.
//!
//! Two clocks date a backup, and neither is trusted alone. The time in its id is when its
//! snapshot started by the clock of the unit that named it, which can run ahead or behind,
//! and an id can be forged. The LastModified of the object that gives it its status (the
//! manifest of a finished backup, `failure.json` of a failed one) is stamped by the store,
//! but the store restamps every object a bucket migration (`aws s3 sync`, rclone) or an
//! in-place copy (re-encryption, a storage-class change) touches, in the order it copied
//! them. So a finished backup is ranked and aged by both ([`id_time`], [`store_time`]) and
//! kept when *either* keeps it: among the `keep-last` newest by either clock, younger than
//! `keep-days` by either, or the newest by either. Keeping one backup too many is safe;
//! deleting the newest data because one clock lied is not. With `keep-last N` at most 2N
//! finished backups are kept by that rule.
//!
//! The one correction made to an id's time: an id more than an hour after its store time
//! ([`ID_AHEAD_LIMIT_SECS`]) cannot be honest (a unit names a backup before writing any of
//! it), so it ranks at the store's time: a 2099 id never outranks real backups. An id
//! more than a day behind its store time ([`ID_BEHIND_LIMIT_SECS`]) is flagged, but ranks
//! by its own time: the store's clock keeps it anyway when it is new by the store's word.

use std::collections::HashSet;

use time::OffsetDateTime;

use crate::backup_id::BackupId;
use crate::protocol::BackupStatus;

/// The default for `abandoned-after-hours`: an upload open this long has no agent left.
pub const DEFAULT_ABANDONED_AFTER_HOURS: f64 = 24.0;

const SECS_PER_DAY: f64 = 86_400.0;
const SECS_PER_HOUR: f64 = 3_600.0;

/// How far an id's time may be after the store's time of its record before the id is
/// flagged and ranked at the store's time: a backup is named before anything of it is
/// written, so a later id means a clock that ran ahead (or a forged id); an hour absorbs
/// ordinary skew between clocks.
pub const ID_AHEAD_LIMIT_SECS: i64 = 3_600;
/// How far an id's time may be before the store's time of its record before the id is
/// flagged (a warning only): the manifest is written when the backup ends, so a long
/// backup legitimately has its manifest hours after its id; a day apart is a clock that
/// ran behind, or a copied bucket.
pub const ID_BEHIND_LIMIT_SECS: i64 = 86_400;
/// How far an id's time may be after the pruning unit's clock and still be the floor of
/// its upload's age ([`upload_started`]): a unit whose clock runs an hour or two fast
/// names real, live backups; an id a day or more ahead is not a clock to age anything by.
pub const UPLOAD_ID_FUTURE_LIMIT_SECS: i64 = 86_400;

/// The time a backup ranks by on its id's clock, and a warning when its id is far from
/// the store's time `stored_at` (the LastModified of its record): the id's own time,
/// except when it is more than [`ID_AHEAD_LIMIT_SECS`] after `stored_at`: then
/// `stored_at`, flagged [`Skew::Ahead`]. An id more than [`ID_BEHIND_LIMIT_SECS`] before
/// `stored_at` is flagged [`Skew::Behind`] and keeps its own time. This is the time
/// decisions and `list-backups` are ordered and shown by.
pub fn id_time(id: &BackupId, stored_at: Option<OffsetDateTime>) -> (OffsetDateTime, Skew) {
    let named = id.started_at();
    let Some(stored) = stored_at else {
        return (named, Skew::None);
    };
    let ahead = (named - stored).whole_seconds();
    if ahead > ID_AHEAD_LIMIT_SECS {
        let warning = format!(
            "its id says {} but the store wrote it at {}: the id is {} ahead of the store (a unit's clock ran ahead, or the id is forged); ranked and aged by the store's time",
            crate::timefmt::rfc3339(named),
            crate::timefmt::rfc3339(stored),
            span(ahead)
        );
        (stored, Skew::Ahead(warning))
    } else if -ahead > ID_BEHIND_LIMIT_SECS {
        let warning = format!(
            "its id says {} but the store wrote it at {}: the id is {} behind the store (a unit's clock ran behind, or the backup was copied); listed by its id's time, and retention keeps it when either time keeps it",
            crate::timefmt::rfc3339(named),
            crate::timefmt::rfc3339(stored),
            span(-ahead)
        );
        (named, Skew::Behind(warning))
    } else {
        (named, Skew::None)
    }
}

/// The time a backup ranks by on the store's clock: `stored_at` (the LastModified of its
/// record), or the id's time when there is none (a running backup has no record yet).
pub fn store_time(id: &BackupId, stored_at: Option<OffsetDateTime>) -> OffsetDateTime {
    stored_at.unwrap_or_else(|| id.started_at())
}

/// Whether a backup's id agrees with the store's time (see [`id_time`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skew {
    None,
    /// The id is dated more than an hour after its record was written; the text says by
    /// how much. The backup ranks at the store's time.
    Ahead(String),
    /// The id is dated more than a day before its record was written; the text says by
    /// how much. A warning only.
    Behind(String),
}

impl Skew {
    /// The warning to show, if any.
    pub fn warning(&self) -> Option<&str> {
        match self {
            Skew::None => None,
            Skew::Ahead(w) | Skew::Behind(w) => Some(w),
        }
    }
}

/// `90061` → "1 day 1 hour", `7200` → "2 hours", `59` → "59 seconds".
fn span(secs: i64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    let unit = |n: i64, u: &str| match n {
        1 => format!("1 {u}"),
        n => format!("{n} {u}s"),
    };
    match (d, h, m) {
        (0, 0, 0) => unit(secs, "second"),
        (0, 0, m) => unit(m, "minute"),
        (0, h, _) => unit(h, "hour"),
        (d, 0, _) => unit(d, "day"),
        (d, h, _) => format!("{} {}", unit(d, "day"), unit(h, "hour")),
    }
}

/// One listed backup, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: BackupId,
    pub status: BackupStatus,
    /// The store's LastModified of the record that gives the backup its status (manifest,
    /// `failure.json`, the data object), when there is one.
    pub stored_at: Option<OffsetDateTime>,
}

/// A validated retention policy: at least one rule is set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    keep_last: Option<u32>,
    keep_days: Option<f64>,
}

impl Policy {
    /// `keep-last` keeps the N newest finished backups (N ≥ 1); `keep-days` keeps those
    /// started less than D days ago (D ≥ 0), each on both clocks ([`select`]). A backup is
    /// kept when either rule keeps it.
    pub fn new(keep_last: Option<u32>, keep_days: Option<f64>) -> Result<Policy, String> {
        if keep_last == Some(0) {
            return Err("keep-last must be at least 1".into());
        }
        if let Some(d) = keep_days {
            if !d.is_finite() || d < 0.0 {
                return Err("keep-days must be a number of days, 0 or more".into());
            }
        }
        if keep_last.is_none() && keep_days.is_none() {
            return Err("give keep-last or keep-days".into());
        }
        Ok(Policy {
            keep_last,
            keep_days,
        })
    }

    pub fn keep_last(&self) -> Option<u32> {
        self.keep_last
    }

    pub fn keep_days(&self) -> Option<f64> {
        self.keep_days
    }
}

/// What the policy says about one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stays; the text says which rule keeps it.
    Keep(String),
    /// Outside the policy; the text says why. (The caller still checks Object Lock.)
    Delete(String),
}

/// One backup's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: BackupId,
    pub status: BackupStatus,
    pub verdict: Verdict,
    /// Its time on the id's clock ([`id_time`]): decisions come newest first by it.
    pub at: OffsetDateTime,
    /// Its time on the store's clock ([`store_time`]).
    pub stored: OffsetDateTime,
    /// Set when its id is far from the store's time ([`id_time`]).
    pub warning: Option<String>,
}

impl Decision {
    /// The younger of its two times: how old it is at most, whichever clock is right.
    pub fn youngest_time(&self) -> OffsetDateTime {
        self.at.max(self.stored)
    }
}

/// Applies `policy` at `now` to `backups` (any order); returns one decision per backup,
/// newest first by its time on the id's clock ([`id_time`]; ties: by id).
///
/// * Finished: kept when *either* clock keeps it: among the `keep-last` N newest finished
///   backups by [`id_time`] or among the N newest by [`store_time`] (ties by id; so at
///   most 2N), or younger than `keep-days` by either; the newest finished backup by each
///   clock is kept whatever the policy. The verdict names the store's clock when only it
///   keeps the backup ("among the 3 newest finished backups by the store's time").
/// * Failed, incomplete and damaged (a manifest without a restorable backup behind it):
///   deleted when older than `keep-days` by both clocks; with `keep-last` alone, when
///   older on both clocks than the oldest of the N newest finished backups on that clock
///   (they hold nothing a restore can use, but they are the record of what went wrong
///   recently).
/// * Running and abandoned: never deleted here (an open upload is aborted by the
///   abandoned-upload rule, not by retention).
pub fn select(backups: &[Listed], policy: &Policy, now: OffsetDateTime) -> Vec<Decision> {
    struct Ranked<'a> {
        b: &'a Listed,
        at: OffsetDateTime,
        stored: OffsetDateTime,
        skew: Skew,
    }
    let mut ranked: Vec<Ranked> = backups
        .iter()
        .map(|b| {
            let (at, skew) = id_time(&b.id, b.stored_at);
            let stored = store_time(&b.id, b.stored_at);
            Ranked {
                b,
                at,
                stored,
                skew,
            }
        })
        .collect();
    ranked.sort_by(|x, y| (y.at, &y.b.id).cmp(&(x.at, &x.b.id)));
    let by_id: Vec<&Ranked> = ranked
        .iter()
        .filter(|r| r.b.status == BackupStatus::Finished)
        .collect();
    let mut by_store = by_id.clone();
    by_store.sort_by(|x, y| (y.stored, &y.b.id).cmp(&(x.stored, &x.b.id)));
    let keep_n = policy.keep_last.map(|n| n as usize).unwrap_or(0);
    let last_by_id: HashSet<&BackupId> = by_id.iter().take(keep_n).map(|r| &r.b.id).collect();
    let last_by_store: HashSet<&BackupId> = by_store.iter().take(keep_n).map(|r| &r.b.id).collect();
    let newest_by_id = by_id.first().map(|r| &r.b.id);
    let newest_by_store = by_store.first().map(|r| &r.b.id);
    // For failed backups under keep-last alone: the oldest that keep-last keeps on each
    // clock.
    let floor_by_id = by_id[..keep_n.min(by_id.len())]
        .last()
        .map(|r| (r.at, &r.b.id));
    let floor_by_store = by_store[..keep_n.min(by_store.len())]
        .last()
        .map(|r| (r.stored, &r.b.id));
    let younger = |at: OffsetDateTime, d: f64| (now - at).as_seconds_f64() < d * SECS_PER_DAY;

    let mut decisions = Vec::with_capacity(ranked.len());
    for r in &by_id {
        let id = &r.b.id;
        let mut keeps = Vec::new();
        let mut drops = Vec::new();
        if let Some(n) = policy.keep_last {
            let rule = match n {
                1 => "the newest finished backup".to_owned(),
                n => format!("among the {n} newest finished backups"),
            };
            if last_by_id.contains(id) {
                keeps.push(rule);
            } else if last_by_store.contains(id) {
                keeps.push(format!("{rule} by the store's time"));
            } else if n == 1 {
                drops.push("not the newest finished backup".to_owned());
            } else {
                drops.push(format!("not {rule}"));
            }
        }
        if let Some(d) = policy.keep_days {
            if younger(r.at, d) {
                keeps.push(format!("younger than {}", days(d)));
            } else if younger(r.stored, d) {
                keeps.push(format!("younger than {} by the store's time", days(d)));
            } else {
                drops.push(format!("older than {}", days(d)));
            }
        }
        let verdict = if !keeps.is_empty() {
            Verdict::Keep(keeps.join(" and "))
        } else if Some(id) == newest_by_id {
            Verdict::Keep("the newest finished backup is always kept".into())
        } else if Some(id) == newest_by_store {
            Verdict::Keep("the newest finished backup by the store's time is always kept".into())
        } else {
            // Days first: "older than 7 days and not among the 3 newest finished backups".
            drops.reverse();
            Verdict::Delete(drops.join(" and "))
        };
        decisions.push(Decision {
            id: id.clone(),
            status: r.b.status,
            verdict,
            at: r.at,
            stored: r.stored,
            warning: r.skew.warning().map(str::to_owned),
        });
    }

    for r in ranked
        .iter()
        .filter(|r| r.b.status != BackupStatus::Finished)
    {
        let status = r.b.status;
        let what = status_word(status);
        let verdict = match status {
            BackupStatus::Running => Verdict::Keep(
                "running: its upload is open; only the abandoned-upload rule touches it".into(),
            ),
            BackupStatus::Abandoned => Verdict::Keep(
                "abandoned: no objects to delete; its open upload is aborted separately".into(),
            ),
            _ => match (policy.keep_days, floor_by_id.zip(floor_by_store)) {
                (Some(d), _) => {
                    if younger(r.at, d) {
                        Verdict::Keep(format!("{what} backup younger than {}", days(d)))
                    } else if younger(r.stored, d) {
                        Verdict::Keep(format!(
                            "{what} backup younger than {} by the store's time",
                            days(d)
                        ))
                    } else {
                        Verdict::Delete(format!("{what} backup older than {}", days(d)))
                    }
                }
                (None, Some(((id_at, id_floor), (store_at, store_floor)))) => {
                    if (r.at, &r.b.id) >= (id_at, id_floor) {
                        Verdict::Keep(format!(
                            "{what} backup not older than the oldest kept finished backup ({id_floor})"
                        ))
                    } else if (r.stored, &r.b.id) >= (store_at, store_floor) {
                        Verdict::Keep(format!(
                            "{what} backup not older, by the store's time, than the oldest finished backup kept by that time ({store_floor})"
                        ))
                    } else {
                        Verdict::Delete(format!(
                            "{what} backup older than the oldest kept finished backup ({id_floor})"
                        ))
                    }
                }
                (None, None) => Verdict::Keep(format!(
                    "{what} backup: no finished backup to compare with (give keep-days to prune it)"
                )),
            },
        };
        decisions.push(Decision {
            id: r.b.id.clone(),
            status,
            verdict,
            at: r.at,
            stored: r.stored,
            warning: r.skew.warning().map(str::to_owned),
        });
    }
    decisions.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    decisions
}

/// The `abandoned-after-hours` parameter: default 24, a number of hours 0 or more.
pub fn abandoned_after_hours(param: Option<f64>) -> Result<f64, String> {
    match param {
        None => Ok(DEFAULT_ABANDONED_AFTER_HOURS),
        Some(h) if h.is_finite() && h >= 0.0 => Ok(h),
        Some(_) => Err("abandoned-after-hours must be a number of hours, 0 or more".into()),
    }
}

/// When an open upload started, as far as can be trusted: the store's `Initiated`, but
/// never earlier than the start time in the backup's id (the agent creates the upload
/// after it has named the backup, so an earlier date is a store's error: moto, for one,
/// reports a fixed date in 2010). That floor holds for an id up to
/// [`UPLOAD_ID_FUTURE_LIMIT_SECS`] (a day) after `now`, so the live upload of a unit whose
/// clock runs an hour or two fast is not taken for abandoned. An id further ahead does not
/// count: it would put the start in the future, and its upload (a unit whose clock says
/// 2099, a forged id) would never be abandoned; `Initiated` stands alone.
/// Unknown `Initiated`: the backup's start time (nothing else to go by; an
/// `abandoned-after-hours` of 0 still takes every upload).
pub fn upload_started(
    initiated: Option<i64>,
    backup_started: OffsetDateTime,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let future = (backup_started - now).whole_seconds() > UPLOAD_ID_FUTURE_LIMIT_SECS;
    match initiated.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()) {
        Some(t) if future => t,
        Some(t) => t.max(backup_started),
        None => backup_started,
    }
}

/// Whether an open multipart upload belongs to an agent that is gone: it started (see
/// [`upload_started`]) at least `after_hours` ago. `0` makes every upload abandoned,
/// whatever the difference between the store's clock and ours.
pub fn upload_is_abandoned(
    initiated: Option<i64>,
    backup_started: OffsetDateTime,
    now: OffsetDateTime,
    after_hours: f64,
) -> bool {
    if after_hours <= 0.0 {
        return true;
    }
    let since = upload_started(initiated, backup_started, now);
    (now - since).as_seconds_f64() >= after_hours * SECS_PER_HOUR
}

/// The status shown for a backup: `running` becomes `abandoned` when every one of its
/// open uploads is abandoned (see [`upload_is_abandoned`]).
pub fn shown_status(
    status: BackupStatus,
    id: &BackupId,
    upload_initiated: &[Option<i64>],
    now: OffsetDateTime,
    after_hours: f64,
) -> BackupStatus {
    if status == BackupStatus::Running
        && !upload_initiated.is_empty()
        && upload_initiated
            .iter()
            .all(|t| upload_is_abandoned(*t, id.started_at(), now, after_hours))
    {
        BackupStatus::Abandoned
    } else {
        status
    }
}

/// The Object Lock state of one object version, as the store reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: Option<String>,
    /// Unix seconds.
    pub retain_until: Option<i64>,
    pub legal_hold: bool,
}

/// Why a backup whose versions have these lock states must stay (`None`: nothing is
/// locked). Any mode counts: the agent never bypasses governance retention.
pub fn lock_reason(locks: &[VersionLock], now: OffsetDateTime) -> Option<String> {
    let now = now.unix_timestamp();
    let held = locks.iter().any(|l| l.legal_hold);
    let retained = locks
        .iter()
        .filter(|l| l.retain_until.is_some_and(|t| t > now))
        .max_by_key(|l| l.retain_until);
    let retention = retained.map(|l| {
        let until = l
            .retain_until
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .map(crate::timefmt::rfc3339)
            .unwrap_or_default();
        match &l.mode {
            Some(m) => format!("retained until {until} ({m})"),
            None => format!("retained until {until}"),
        }
    });
    match (held, retention) {
        (true, Some(r)) => Some(format!("legal hold; {r}")),
        (true, None) => Some("legal hold".into()),
        (false, r) => r,
    }
}

fn status_word(s: BackupStatus) -> &'static str {
    match s {
        BackupStatus::Finished => "finished",
        BackupStatus::Failed => "failed",
        BackupStatus::Incomplete => "incomplete",
        BackupStatus::Damaged => "damaged",
        BackupStatus::Running => "running",
        BackupStatus::Abandoned => "abandoned",
    }
}

/// `7` → "7 days", `1` → "1 day", `0.5` → "0.5 days".
pub fn days(d: f64) -> String {
    plural(d, "day")
}

/// `24` → "24 hours", `1` → "1 hour".
pub fn hours(h: f64) -> String {
    plural(h, "hour")
}

fn plural(v: f64, unit: &str) -> String {
    if v == 1.0 {
        format!("1 {unit}")
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{} {unit}s", v as i64)
    } else {
        format!("{v} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::Duration;

    const NOW: OffsetDateTime = datetime!(2026-11-21 12:00:00 UTC);

    /// A backup started `days_ago` days before NOW, its record written in the same second.
    fn b(days_ago: f64, status: BackupStatus) -> Listed {
        let t = NOW - Duration::seconds_f64(days_ago * SECS_PER_DAY);
        let id = BackupId::generate(t, "valkey/0").unwrap();
        Listed {
            stored_at: Some(id.started_at()),
            id,
            status,
        }
    }

    fn verdicts(backups: &[Listed], p: &Policy) -> Vec<(f64, bool, String)> {
        // (age in days, deleted?, reason), newest first
        select(backups, p, NOW)
            .into_iter()
            .map(|d| {
                let age = ((NOW - d.id.started_at()).as_seconds_f64() / SECS_PER_DAY * 100.0)
                    .round()
                    / 100.0;
                match d.verdict {
                    Verdict::Keep(r) => (age, false, r),
                    Verdict::Delete(r) => (age, true, r),
                }
            })
            .collect()
    }

    fn deleted_ages(backups: &[Listed], p: &Policy) -> Vec<f64> {
        verdicts(backups, p)
            .into_iter()
            .filter(|v| v.1)
            .map(|v| v.0)
            .collect()
    }

    use BackupStatus::{Abandoned, Damaged, Failed, Finished, Incomplete, Running};

    #[test]
    fn policy_needs_a_rule_and_sane_values() {
        assert_eq!(
            Policy::new(None, None).unwrap_err(),
            "give keep-last or keep-days"
        );
        assert!(Policy::new(Some(0), None).is_err());
        assert!(Policy::new(None, Some(-1.0)).is_err());
        assert!(Policy::new(None, Some(f64::NAN)).is_err());
        assert!(Policy::new(None, Some(f64::INFINITY)).is_err());
        assert!(Policy::new(None, Some(0.0)).is_ok());
        assert!(Policy::new(Some(1), None).is_ok());
    }

    #[test]
    fn keep_last_keeps_the_n_newest_finished_and_says_why() {
        let bs = [
            b(1.0, Finished),
            b(2.0, Finished),
            b(3.0, Finished),
            b(4.0, Finished),
        ];
        let v = verdicts(&bs, &Policy::new(Some(2), None).unwrap());
        assert_eq!(
            v,
            vec![
                (1.0, false, "among the 2 newest finished backups".into()),
                (2.0, false, "among the 2 newest finished backups".into()),
                (3.0, true, "not among the 2 newest finished backups".into()),
                (4.0, true, "not among the 2 newest finished backups".into()),
            ]
        );
    }

    #[test]
    fn a_damaged_newest_backup_never_takes_the_place_of_the_newest_restorable_one() {
        // The newest backup has a manifest but no restorable data: keep-last 1 must keep
        // the older, intact backup, and the damaged one ranks with failed ones.
        let bs = [b(1.0, Damaged), b(2.0, Finished), b(3.0, Finished)];
        let v = verdicts(&bs, &Policy::new(Some(1), None).unwrap());
        assert_eq!(
            v,
            vec![
                (
                    1.0,
                    false,
                    "damaged backup not older than the oldest kept finished backup (".to_owned()
                        + bs[1].id.as_str()
                        + ")"
                ),
                (2.0, false, "the newest finished backup".into()),
                (3.0, true, "not the newest finished backup".into()),
            ]
        );
        // With every finished-looking backup damaged, nothing counts as the newest.
        let bs = [b(1.0, Damaged), b(2.0, Damaged)];
        let p = Policy::new(None, Some(0.0)).unwrap();
        assert_eq!(deleted_ages(&bs, &p), vec![1.0, 2.0]);
    }

    #[test]
    fn keep_last_one_reads_naturally() {
        let bs = [b(1.0, Finished), b(2.0, Finished)];
        let v = verdicts(&bs, &Policy::new(Some(1), Some(0.0)).unwrap());
        assert_eq!(v[0].2, "the newest finished backup");
        assert_eq!(
            v[1].2,
            "older than 0 days and not the newest finished backup"
        );
    }

    #[test]
    fn keep_days_keeps_younger_backups_only() {
        let bs = [
            b(0.5, Finished),
            b(6.9, Finished),
            b(7.0, Finished),
            b(30.0, Finished),
        ];
        let p = Policy::new(None, Some(7.0)).unwrap();
        assert_eq!(deleted_ages(&bs, &p), vec![7.0, 30.0]);
        let v = verdicts(&bs, &p);
        assert_eq!(v[1].2, "younger than 7 days");
        assert_eq!(v[2].2, "older than 7 days");
    }

    #[test]
    fn either_rule_keeps_a_backup() {
        let bs = [
            b(1.0, Finished),
            b(2.0, Finished),
            b(10.0, Finished),
            b(20.0, Finished),
        ];
        // keep-last 3 keeps the 10-day-old one although keep-days 7 would drop it.
        let p = Policy::new(Some(3), Some(7.0)).unwrap();
        let v = verdicts(&bs, &p);
        assert_eq!(deleted_ages(&bs, &p), vec![20.0]);
        assert_eq!(
            v[0].2,
            "among the 3 newest finished backups and younger than 7 days"
        );
        assert_eq!(v[2].2, "among the 3 newest finished backups");
        assert_eq!(
            v[3].2,
            "older than 7 days and not among the 3 newest finished backups"
        );
        // keep-days 30 keeps everything that keep-last 1 would drop.
        let p = Policy::new(Some(1), Some(30.0)).unwrap();
        assert!(deleted_ages(&bs, &p).is_empty());
    }

    #[test]
    fn the_newest_finished_backup_is_always_kept() {
        let bs = [
            b(1.0, Failed),
            b(40.0, Finished),
            b(50.0, Finished),
            b(60.0, Incomplete),
        ];
        let p = Policy::new(None, Some(0.0)).unwrap();
        let v = verdicts(&bs, &p);
        assert_eq!(
            v[1],
            (
                40.0,
                false,
                "the newest finished backup is always kept".into()
            )
        );
        assert_eq!(deleted_ages(&bs, &p), vec![1.0, 50.0, 60.0]);
        // Also when it is older than some failures and keep-days is 0.
        assert!(!v[1].1);
    }

    #[test]
    fn no_finished_backup_means_nothing_finished_to_delete() {
        assert!(select(&[], &Policy::new(Some(1), None).unwrap(), NOW).is_empty());
        let bs = [b(5.0, Failed), b(9.0, Incomplete)];
        let p = Policy::new(Some(3), None).unwrap();
        let v = verdicts(&bs, &p);
        assert!(v.iter().all(|x| !x.1), "{v:?}");
        assert!(v[0].2.contains("give keep-days"), "{v:?}");
        // keep-days prunes them.
        let p = Policy::new(Some(3), Some(7.0)).unwrap();
        assert_eq!(deleted_ages(&bs, &p), vec![9.0]);
    }

    #[test]
    fn failures_follow_keep_days_or_the_oldest_kept_finished_backup() {
        let bs = [
            b(1.0, Finished),
            b(2.0, Failed),
            b(3.0, Finished),
            b(4.0, Incomplete),
            b(5.0, Finished),
            b(6.0, Failed),
        ];
        // keep-last 2 keeps the finished ones at 1 and 3 days; failures older than the
        // 3-day one go, the 2-day failure stays.
        let p = Policy::new(Some(2), None).unwrap();
        let v = verdicts(&bs, &p);
        assert_eq!(deleted_ages(&bs, &p), vec![4.0, 5.0, 6.0]);
        assert!(
            v[1].2
                .starts_with("failed backup not older than the oldest kept"),
            "{v:?}"
        );
        assert!(
            v[3].2
                .starts_with("incomplete backup older than the oldest kept"),
            "{v:?}"
        );
        // With keep-days, failures follow the age rule alone.
        let p = Policy::new(Some(2), Some(1.5)).unwrap();
        let v = verdicts(&bs, &p);
        assert_eq!(deleted_ages(&bs, &p), vec![2.0, 4.0, 5.0, 6.0]);
        assert_eq!(v[1].2, "failed backup older than 1.5 days");
    }

    #[test]
    fn running_and_abandoned_backups_are_never_deleted() {
        let bs = [b(100.0, Running), b(200.0, Abandoned), b(300.0, Finished)];
        let p = Policy::new(Some(1), Some(0.0)).unwrap();
        let v = verdicts(&bs, &p);
        assert!(v.iter().all(|x| !x.1), "{v:?}");
        assert!(v[0].2.starts_with("running"));
        assert!(v[1].2.starts_with("abandoned"));
    }

    #[test]
    fn decisions_come_newest_first_whatever_the_input_order() {
        let bs = [b(3.0, Finished), b(1.0, Failed), b(2.0, Finished)];
        let p = Policy::new(Some(1), None).unwrap();
        let ages: Vec<f64> = verdicts(&bs, &p).iter().map(|v| v.0).collect();
        assert_eq!(ages, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn future_dated_backups_count_as_young() {
        let bs = [b(-1.0, Finished), b(10.0, Finished), b(11.0, Finished)];
        let p = Policy::new(None, Some(0.0)).unwrap();
        assert_eq!(deleted_ages(&bs, &p), vec![10.0, 11.0]);
    }

    /// A finished backup named at `named` whose record the store wrote at `stored`.
    fn at(named: OffsetDateTime, stored: OffsetDateTime, unit: &str) -> Listed {
        Listed {
            id: BackupId::generate(named, unit).unwrap(),
            status: Finished,
            stored_at: Some(stored),
        }
    }

    fn kept_ids(bs: &[Listed], p: &Policy) -> Vec<BackupId> {
        select(bs, p, NOW)
            .into_iter()
            .filter(|d| matches!(d.verdict, Verdict::Keep(_)))
            .map(|d| d.id)
            .collect()
    }

    #[test]
    fn a_far_future_id_ranks_at_its_store_time_and_displaces_no_newer_backup() {
        // A unit whose clock said 2099 wrote a backup 3 days ago; two real backups since.
        let forged = Listed {
            id: BackupId::parse("20990101T000000Z-valkey-9-abcdef").unwrap(),
            status: Finished,
            stored_at: Some(NOW - Duration::days(3)),
        };
        let bs = [forged.clone(), b(1.0, Finished), b(2.0, Finished)];
        let d = select(&bs, &Policy::new(Some(1), None).unwrap(), NOW);
        // Ranked by the store's time on both clocks: the oldest, and deleted.
        let order: Vec<&BackupId> = d.iter().map(|d| &d.id).collect();
        assert_eq!(order, vec![&bs[1].id, &bs[2].id, &forged.id]);
        assert_eq!(
            d[0].verdict,
            Verdict::Keep("the newest finished backup".into())
        );
        assert_eq!(
            d[2].verdict,
            Verdict::Delete("not the newest finished backup".into())
        );
        let w = d[2].warning.as_deref().unwrap();
        assert!(
            w.contains("2099-01-01T00:00:00Z") && w.contains("ahead"),
            "{w}"
        );
        assert!(d[0].warning.is_none() && d[1].warning.is_none());
        assert_eq!(
            (d[2].at, d[2].stored),
            (NOW - Duration::days(3), NOW - Duration::days(3))
        );
        // keep-last 2 keeps the two real ones, not the forged one.
        assert_eq!(
            kept_ids(&bs, &Policy::new(Some(2), None).unwrap()),
            vec![bs[1].id.clone(), bs[2].id.clone()]
        );
        // keep-days ages it by the store's time too: 3 days old is older than 2 days.
        let p = Policy::new(None, Some(2.0)).unwrap();
        let d = select(&[forged.clone(), b(1.0, Finished)], &p, NOW);
        assert!(matches!(d[1].verdict, Verdict::Delete(ref w) if w == "older than 2 days"));

        // Written most recently, it is the newest by the store's word and takes the
        // keep-last slot there; the real backups written before it rank after it.
        let recent = Listed {
            stored_at: Some(NOW - Duration::hours(1)),
            ..forged
        };
        let bs = [recent.clone(), b(1.0, Finished), b(2.0, Finished)];
        let v = verdicts(&bs, &Policy::new(Some(1), None).unwrap());
        assert_eq!(v[0].2, "the newest finished backup");
        assert!(v[1].1 && v[2].1, "{v:?}");
    }

    #[test]
    fn a_unit_an_hour_fast_has_its_backups_ranked_at_the_store_time_and_kept() {
        // Every backup of a unit whose clock is 61 minutes fast is flagged ahead; they
        // still take keep-last slots, at their store times.
        let bs: Vec<Listed> = (1..=10)
            .map(|day| {
                let stored = NOW - Duration::days(day);
                at(stored + Duration::minutes(61), stored, "valkey/0")
            })
            .collect();
        let d = select(&bs, &Policy::new(Some(7), None).unwrap(), NOW);
        let kept: Vec<&Decision> = d
            .iter()
            .filter(|d| matches!(d.verdict, Verdict::Keep(_)))
            .collect();
        assert_eq!(kept.len(), 7, "{d:?}");
        assert!(kept
            .iter()
            .all(|d| d.verdict == Verdict::Keep("among the 7 newest finished backups".into())));
        assert_eq!(
            d.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            bs.iter().map(|b| b.id.clone()).collect::<Vec<_>>()
        );
        assert!(d
            .iter()
            .all(|d| d.warning.as_deref().unwrap().contains("1 hour ahead")));
        // keep-days 3.5 keeps the three younger than that by the store's clock.
        let p = Policy::new(None, Some(3.5)).unwrap();
        assert_eq!(kept_ids(&bs, &p).len(), 3);
    }

    #[test]
    fn a_bulk_copy_in_reverse_order_keeps_the_newest_backup_by_id() {
        // A bucket migrated today, newest backup first: every id is days behind its
        // LastModified, and the oldest backup was copied last.
        let bs: Vec<Listed> = (2..=6)
            .map(|day| {
                let named = NOW - Duration::days(day);
                at(named, NOW - Duration::minutes(60 - day), "valkey/0")
            })
            .collect();
        let (newest, last_copied) = (&bs[0].id, &bs[4].id);
        let d = select(&bs, &Policy::new(Some(1), None).unwrap(), NOW);
        // Listed by id; both clocks' newest are kept, the rest go.
        assert_eq!(&d[0].id, newest);
        assert_eq!(
            d[0].verdict,
            Verdict::Keep("the newest finished backup".into())
        );
        assert_eq!(&d[4].id, last_copied);
        assert_eq!(
            d[4].verdict,
            Verdict::Keep("the newest finished backup by the store's time".into())
        );
        assert!(d[1..4]
            .iter()
            .all(|d| d.verdict == Verdict::Delete("not the newest finished backup".into())));
        assert!(d
            .iter()
            .all(|d| d.warning.as_deref().unwrap().contains("behind the store")));
        // keep-last 2: at most four, the two newest by either clock.
        let kept = kept_ids(&bs, &Policy::new(Some(2), None).unwrap());
        assert_eq!(
            kept,
            vec![
                bs[0].id.clone(),
                bs[1].id.clone(),
                bs[3].id.clone(),
                bs[4].id.clone()
            ]
        );
        // keep-days 1 keeps all of them: by the store's time they are an hour old.
        let d = select(&bs, &Policy::new(None, Some(1.0)).unwrap(), NOW);
        assert!(d
            .iter()
            .all(|d| d.verdict == Verdict::Keep("younger than 1 day by the store's time".into())));
    }

    #[test]
    fn a_unit_twenty_hours_behind_keeps_its_newest_backup() {
        // Its backup was written an hour ago, its id says 21 hours ago (no flag: under a
        // day); another unit's honest backup is 5 hours old.
        let behind = at(
            NOW - Duration::hours(21),
            NOW - Duration::hours(1),
            "valkey/1",
        );
        let honest = b(5.0 / 24.0, Finished);
        let older = b(2.0, Finished);
        let bs = [older.clone(), behind.clone(), honest.clone()];
        let d = select(&bs, &Policy::new(Some(1), None).unwrap(), NOW);
        let order: Vec<&BackupId> = d.iter().map(|d| &d.id).collect();
        assert_eq!(order, vec![&honest.id, &behind.id, &older.id]);
        assert_eq!(
            d[0].verdict,
            Verdict::Keep("the newest finished backup".into())
        );
        assert_eq!(
            d[1].verdict,
            Verdict::Keep("the newest finished backup by the store's time".into())
        );
        assert!(matches!(d[2].verdict, Verdict::Delete(_)), "{d:?}");
        assert!(d.iter().all(|d| d.warning.is_none()));
        // keep-days: 21 hours by its id, an hour by the store: kept under 0.5 days.
        let p = Policy::new(None, Some(0.5)).unwrap();
        let d = select(&bs, &p, NOW);
        assert_eq!(
            d[1].verdict,
            Verdict::Keep("younger than 0.5 days by the store's time".into())
        );
    }

    #[test]
    fn ids_are_flagged_past_an_hour_ahead_or_a_day_behind_and_only_ahead_moves_the_rank() {
        let id = BackupId::parse("20261101T000000Z-valkey-0-abcdef").unwrap();
        let named = id.started_at();
        // A long backup: its manifest 20 hours after its id is no skew.
        assert_eq!(
            id_time(&id, Some(named + Duration::hours(20))),
            (named, Skew::None)
        );
        // More than a day behind: flagged, but it still ranks by its id.
        let (at, skew) = id_time(&id, Some(named + Duration::hours(25)));
        assert_eq!(at, named);
        assert!(
            matches!(skew, Skew::Behind(ref w) if w.contains("1 day 1 hour behind")
                && w.contains("either time keeps it")),
            "{skew:?}"
        );
        // Ahead: an hour is tolerated, more ranks at the store's time.
        assert_eq!(
            id_time(&id, Some(named - Duration::minutes(59))),
            (named, Skew::None)
        );
        let (at, skew) = id_time(&id, Some(named - Duration::minutes(61)));
        assert_eq!(at, named - Duration::minutes(61));
        assert!(
            matches!(skew, Skew::Ahead(ref w) if w.contains("1 hour ahead")),
            "{skew:?}"
        );
        // No store time (a running backup): the id's, on both clocks.
        assert_eq!(id_time(&id, None), (named, Skew::None));
        assert_eq!(store_time(&id, None), named);
        assert_eq!(
            store_time(&id, Some(named + Duration::days(3))),
            named + Duration::days(3)
        );
    }

    #[test]
    fn a_new_backup_from_a_unit_whose_clock_runs_behind_is_kept_by_the_store_clock() {
        // A unit whose clock is a year behind wrote a backup an hour ago; the honest
        // backups are 2 and 3 days old. By its id it is the oldest, by the store's time
        // the newest: keep-last 1 keeps it and the newest honest one.
        let behind = Listed {
            id: BackupId::generate(NOW - Duration::days(365), "valkey/1").unwrap(),
            status: Finished,
            stored_at: Some(NOW - Duration::hours(1)),
        };
        let bs = [b(2.0, Finished), behind.clone(), b(3.0, Finished)];
        let d = select(&bs, &Policy::new(Some(1), None).unwrap(), NOW);
        let order: Vec<&BackupId> = d.iter().map(|d| &d.id).collect();
        assert_eq!(order, vec![&bs[0].id, &bs[2].id, &behind.id]);
        assert_eq!(
            d[2].verdict,
            Verdict::Keep("the newest finished backup by the store's time".into())
        );
        assert_eq!(
            (d[2].at, d[2].stored),
            (behind.id.started_at(), NOW - Duration::hours(1))
        );
        let w = d[2].warning.as_deref().unwrap();
        assert!(w.contains("364 days 23 hours behind"), "{w}");
        assert_eq!(
            d[0].verdict,
            Verdict::Keep("the newest finished backup".into())
        );
        assert!(matches!(d[1].verdict, Verdict::Delete(_)), "{d:?}");
        // keep-days 1 keeps it alone, by the store's time.
        let p = Policy::new(None, Some(1.0)).unwrap();
        let d = select(&bs, &p, NOW);
        assert_eq!(
            d[2].verdict,
            Verdict::Keep("younger than 1 day by the store's time".into()),
            "{d:?}"
        );
        assert_eq!(
            d[0].verdict,
            Verdict::Keep("the newest finished backup is always kept".into())
        );
        assert_eq!(d[1].verdict, Verdict::Delete("older than 1 day".into()));
        // A failure recorded today by that unit is young too.
        let failed = Listed {
            status: Failed,
            ..behind.clone()
        };
        let d = select(&[failed.clone(), b(3.0, Finished)], &p, NOW);
        assert_eq!(
            d[1].verdict,
            Verdict::Keep("failed backup younger than 1 day by the store's time".into())
        );
        // With keep-last alone it is not older, by the store's time, than the oldest
        // finished backup kept by that time.
        let d = select(
            &[failed, b(3.0, Finished), b(4.0, Finished)],
            &Policy::new(Some(1), None).unwrap(),
            NOW,
        );
        assert!(
            matches!(d[2].verdict, Verdict::Keep(ref w) if w.starts_with("failed backup not older, by the store's time")),
            "{d:?}"
        );
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(59), "59 seconds");
        assert_eq!(span(61), "1 minute");
        assert_eq!(span(7_200), "2 hours");
        assert_eq!(span(86_400), "1 day");
        assert_eq!(span(90_061), "1 day 1 hour");
        assert_eq!(span(2 * 86_400 + 7_200), "2 days 2 hours");
    }

    #[test]
    fn abandoned_age_defaults_to_a_day_and_must_be_sane() {
        assert_eq!(abandoned_after_hours(None), Ok(24.0));
        assert_eq!(abandoned_after_hours(Some(0.0)), Ok(0.0));
        assert_eq!(abandoned_after_hours(Some(1.5)), Ok(1.5));
        assert!(abandoned_after_hours(Some(-1.0)).is_err());
    }

    #[test]
    fn uploads_are_abandoned_after_the_age_limit() {
        let started = NOW - Duration::hours(30);
        let at = |h: i64| Some((NOW - Duration::hours(h)).unix_timestamp());
        assert!(upload_is_abandoned(at(25), started, NOW, 24.0));
        assert!(upload_is_abandoned(at(24), started, NOW, 24.0));
        assert!(!upload_is_abandoned(at(23), started, NOW, 24.0));
        // Unknown initiation time: the backup's start time stands in.
        assert!(upload_is_abandoned(None, started, NOW, 24.0));
        assert!(!upload_is_abandoned(None, started, NOW, 48.0));
        // An upload cannot predate its backup: a store's older date does not count.
        let young_backup = NOW - Duration::hours(1);
        assert!(!upload_is_abandoned(at(20_000), young_backup, NOW, 24.0));
        assert_eq!(upload_started(at(20_000), young_backup, NOW), young_backup);
        assert_eq!(
            upload_started(at(1), young_backup, NOW).unix_timestamp(),
            at(1).unwrap()
        );
        // A backup named by a clock slightly ahead (within the hour) still moves the
        // start to its id's time.
        let soon = NOW + Duration::minutes(30);
        assert_eq!(upload_started(at(2), soon, NOW), soon);
        // 0: everything, even an upload "from the future" (clock skew).
        assert!(upload_is_abandoned(at(-1), NOW, NOW, 0.0));
    }

    #[test]
    fn an_upload_under_a_far_future_id_ages_by_the_stores_initiated() {
        // A unit whose clock said 2099 opened an upload 30 hours ago and died. Its id must
        // not push the start into the future: the upload is abandoned like any other.
        let id = BackupId::parse("20990101T000000Z-valkey-9-abcdef").unwrap();
        let at = |h: i64| Some((NOW - Duration::hours(h)).unix_timestamp());
        assert_eq!(
            upload_started(at(30), id.started_at(), NOW),
            NOW - Duration::hours(30)
        );
        assert!(upload_is_abandoned(at(30), id.started_at(), NOW, 24.0));
        assert!(!upload_is_abandoned(at(23), id.started_at(), NOW, 24.0));
        assert_eq!(shown_status(Running, &id, &[at(30)], NOW, 24.0), Abandoned);
        // Without the store's Initiated there is nothing else to age it by.
        assert!(!upload_is_abandoned(None, id.started_at(), NOW, 24.0));
        assert!(upload_is_abandoned(None, id.started_at(), NOW, 0.0));
    }

    #[test]
    fn a_live_upload_from_a_clock_two_hours_fast_is_not_abandoned() {
        // A unit whose clock is 2 hours fast is uploading now; the store reports a bogus
        // Initiated in 2010 (moto does). The id's time is the floor, so the upload is young.
        let id = BackupId::generate(NOW + Duration::hours(2), "valkey/0").unwrap();
        let bogus = Some(datetime!(2010-11-15 12:00:00 UTC).unix_timestamp());
        assert_eq!(upload_started(bogus, id.started_at(), NOW), id.started_at());
        assert!(!upload_is_abandoned(bogus, id.started_at(), NOW, 24.0));
        assert_eq!(shown_status(Running, &id, &[bogus], NOW, 24.0), Running);
        // Up to a day ahead the floor holds; beyond it, Initiated alone.
        let day = BackupId::generate(NOW + Duration::hours(23), "valkey/0").unwrap();
        assert!(!upload_is_abandoned(bogus, day.started_at(), NOW, 24.0));
        let far = BackupId::generate(NOW + Duration::hours(25), "valkey/0").unwrap();
        assert!(upload_is_abandoned(bogus, far.started_at(), NOW, 24.0));
    }

    #[test]
    fn running_is_shown_as_abandoned_only_when_every_upload_is() {
        let id = BackupId::generate(NOW - Duration::hours(30), "valkey/0").unwrap();
        let old = Some((NOW - Duration::hours(30)).unix_timestamp());
        let young = Some((NOW - Duration::hours(1)).unix_timestamp());
        let shown = |s, ups: &[Option<i64>], h| shown_status(s, &id, ups, NOW, h);
        assert_eq!(shown(Running, &[old], 24.0), Abandoned);
        assert_eq!(shown(Running, &[old, young], 24.0), Running);
        assert_eq!(shown(Running, &[young], 24.0), Running);
        assert_eq!(shown(Running, &[young], 0.0), Abandoned);
        assert_eq!(shown(Running, &[], 0.0), Running);
        // Other statuses are what they are.
        assert_eq!(shown(Failed, &[old], 0.0), Failed);
        assert_eq!(shown(Finished, &[old], 0.0), Finished);
    }

    #[test]
    fn locks_in_force_keep_a_backup_with_a_reason() {
        let until = (NOW + Duration::days(1)).unix_timestamp();
        let past = (NOW - Duration::days(1)).unix_timestamp();
        let free = VersionLock::default();
        let retained = VersionLock {
            mode: Some("COMPLIANCE".into()),
            retain_until: Some(until),
            legal_hold: false,
        };
        let expired = VersionLock {
            mode: Some("GOVERNANCE".into()),
            retain_until: Some(past),
            legal_hold: false,
        };
        let held = VersionLock {
            legal_hold: true,
            ..Default::default()
        };
        assert_eq!(lock_reason(&[], NOW), None);
        assert_eq!(lock_reason(&[free.clone(), expired.clone()], NOW), None);
        assert_eq!(
            lock_reason(&[free.clone(), retained.clone()], NOW).as_deref(),
            Some("retained until 2026-11-22T12:00:00Z (COMPLIANCE)")
        );
        assert_eq!(
            lock_reason(&[held.clone(), free], NOW).as_deref(),
            Some("legal hold")
        );
        assert_eq!(
            lock_reason(&[held, retained, expired], NOW).as_deref(),
            Some("legal hold; retained until 2026-11-22T12:00:00Z (COMPLIANCE)")
        );
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(days(1.0), "1 day");
        assert_eq!(days(7.0), "7 days");
        assert_eq!(days(0.0), "0 days");
        assert_eq!(days(0.5), "0.5 days");
        assert_eq!(hours(24.0), "24 hours");
    }
}
