//! Human-readable renderings of results: the `list-backups` table and the
//! `prune-backups` summary, built from the typed results.

use crate::protocol::{ListBackupsResult, PruneResult};

/// Formats bytes with binary units (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// 7.0 → "7", 0.5 → "0.5".
fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// The wire name of a status (`finished`, `abandoned`…).
fn status_name<T: serde::Serialize>(status: &T) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "-".into(),
    }
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// The `prune-backups` summary: what was (or, in a dry run, would be) deleted and
/// aborted, and what stays, each with its reason.
pub fn prune_summary(result: &PruneResult) -> String {
    let dry = result.dry_run;
    let policy = &result.policy;
    let mut rules = Vec::new();
    if let Some(n) = policy.keep_last {
        rules.push(format!("keep-last {n}"));
    }
    if let Some(d) = policy.keep_days {
        let mut r = format!("keep-days {}", number(d));
        if policy.keep_days_from.as_deref() == Some("s3.delete-older-than-days") {
            r.push_str(" (from s3.delete-older-than-days)");
        }
        rules.push(r);
    }
    rules.push(format!(
        "uploads abandoned after {} h",
        number(policy.abandoned_after_hours)
    ));
    let mut out = format!("cluster: {}\n", result.cluster);
    if dry {
        out.push_str("DRY RUN: nothing was changed; run again with --confirm to do this.\n");
    }
    out.push_str(&format!("policy: {}\n", rules.join(", ")));
    let section = |out: &mut String, title: &str, lines: Vec<String>| {
        out.push_str(&format!("{title} ({}):\n", lines.len()));
        for l in lines {
            out.push_str(&format!("  {l}\n"));
        }
    };
    let (deleted, aborted) = if dry {
        ("would delete", "would abort uploads")
    } else {
        ("deleted", "aborted uploads")
    };
    section(
        &mut out,
        deleted,
        result
            .deleted
            .iter()
            .map(|r| {
                format!(
                    "{}  {}  {} objects, {} versions: {}",
                    r.backup_id,
                    status_name(&r.status),
                    r.objects,
                    r.versions,
                    r.why
                )
            })
            .collect(),
    );
    for (title, rows) in [("kept", &result.kept), ("skipped", &result.skipped)] {
        section(
            &mut out,
            title,
            rows.iter()
                .map(|r| format!("{}  {}: {}", r.backup_id, status_name(&r.status), r.why))
                .collect(),
        );
    }
    section(
        &mut out,
        aborted,
        result
            .aborted_uploads
            .iter()
            .map(|r| format!("{}  {}: {}", r.backup_id, r.key, r.why))
            .collect(),
    );
    out
}

/// The `list-backups` table.
/// How a backup is stored: its compression, `+age` when encrypted (`zstd+age`).
fn stored_as(compression: Option<&str>, encrypted: Option<bool>) -> String {
    match (compression, encrypted) {
        (Some(c), Some(true)) => format!("{c}+age"),
        (Some(c), _) => c.to_owned(),
        (None, _) => "-".into(),
    }
}

pub fn backups_table(result: &ListBackupsResult) -> String {
    let mut table: Vec<[String; 8]> = vec![[
        "BACKUP-ID".into(),
        "STATUS".into(),
        "UNIT".into(),
        "SIZE".into(),
        "STORED".into(),
        "STARTED".into(),
        "FINISHED".into(),
        "DETAIL".into(),
    ]];
    for b in &result.backups {
        let status = status_name(&b.status);
        let detail = if status == "failed" {
            format!(
                "{}: {}",
                or_dash(b.code.as_deref()),
                or_dash(b.reason.as_deref())
            )
        } else if status == "damaged" {
            or_dash(b.reason.as_deref())
        } else {
            or_dash(b.source_version.as_deref())
        };
        let detail = match &b.warning {
            Some(w) => format!("{detail} (warning: {w})"),
            None => detail,
        };
        table.push([
            b.backup_id.clone(),
            status,
            or_dash(b.unit.as_deref()),
            b.size_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            stored_as(b.compression.as_deref(), b.encrypted),
            b.started_at.clone(),
            or_dash(b.finished_at.as_deref()),
            detail,
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("cluster: {}\n", result.cluster);
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if result.backups.is_empty() {
        out.push_str("(no backups)\n");
    }
    if let Some(next) = result.next_offset {
        out.push_str(&format!(
            "shown: {} to {} of {}; --offset {next} for the next page\n",
            result.offset + 1,
            result.offset + result.backups.len(),
            result.total
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn table_shows_failures_with_their_code() {
        let v: ListBackupsResult = serde_json::from_value(json!({"cluster": "m.v", "backups": [
            {"backup-id": "id1", "status": "failed", "unit": "v/0", "size-bytes": null,
             "started-at": "t", "finished-at": "t2", "source-version": null,
             "code": "valkey-auth", "reason": "bad password",
             "verify-records": 0, "last-verify": null}]}))
        .unwrap();
        let t = backups_table(&v);
        assert!(t.contains("valkey-auth: bad password"), "{t}");
        assert!(t.starts_with("cluster: m.v\nBACKUP-ID"), "{t}");
        assert!(!t.contains("next page"), "{t}");
        let paged = ListBackupsResult {
            total: 250,
            offset: 100,
            next_offset: Some(101),
            ..v
        };
        let t = backups_table(&paged);
        assert!(
            t.ends_with("shown: 101 to 101 of 250; --offset 101 for the next page\n"),
            "{t}"
        );
    }

    #[test]
    fn prune_summary_says_dry_run_and_where_keep_days_came_from() {
        let v: PruneResult = serde_json::from_value(json!({
            "dry-run": true, "cluster": "m.v",
            "policy": {"keep-last": null, "keep-days": 7.0,
                       "keep-days-from": "s3.delete-older-than-days", "abandoned-after-hours": 24.0},
            "deleted": [{"backup-id": "a", "status": "finished", "objects": 2, "versions": 3,
                         "why": "older than 7 days"}],
            "kept": [], "skipped": [], "aborted-uploads": []}))
        .unwrap();
        let s = prune_summary(&v);
        assert!(s.contains("DRY RUN"), "{s}");
        assert!(
            s.contains("keep-days 7 (from s3.delete-older-than-days)"),
            "{s}"
        );
        assert!(
            s.contains(
                "would delete (1):\n  a  finished  2 objects, 3 versions: older than 7 days"
            ),
            "{s}"
        );
    }
}
