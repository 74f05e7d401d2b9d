//! Prometheus metrics: what this unit's backups did, and an HTTP endpoint that serves
//! them at `/metrics` when `configure` has `"metrics": {"listen": "<addr>:<port>"}`.
//!
//! * The numbers live in [`Metrics`] (updated by `create-backup`, `verify-backup` and the
//!   scheduler, whoever started them) and are kept in `metrics.json` under the state
//!   directory, so a restart does not make the last success look like "never".
//! * Every series carries `cluster` and `unit` labels and nothing else from the
//!   configuration: no endpoint, bucket or key can reach a label. `failures_total` adds
//!   the stable error `code`, a closed set.
//! * The text is encoded by `prometheus-client` (OpenMetrics text, which Prometheus and
//!   the Grafana agent scrape); the HTTP server is hyper, already in the tree through the
//!   S3 client. The endpoint answers `GET /metrics` only and reads no request body.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tracing::warn;

const METRICS_FILE: &str = "metrics.json";
/// The content type of OpenMetrics text, which `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `configure`'s `metrics` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MetricsSettings {
    /// `<ip>:<port>` to serve `/metrics` on (an IP, not a name: nothing to resolve).
    pub listen: String,
}

impl MetricsSettings {
    /// The address to bind, or why it is not one.
    pub fn addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|_| "must be <ip>:<port>, e.g. 10.0.0.5:9187 or [::]:9187".to_owned())
    }
}

/// The numbers behind the metrics (Unix seconds for times). Absent values are not
/// exported: "never" is no series, not a zero that would look like 1970.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Snapshot {
    pub last_success: Option<i64>,
    pub last_attempt: Option<i64>,
    pub last_duration_seconds: Option<f64>,
    pub last_size_bytes: Option<u64>,
    /// Whether the latest backup attempt on this unit failed.
    pub last_failed: bool,
    pub failures: BTreeMap<String, u64>,
    pub last_verify_success: Option<i64>,
    pub missed_slots: u64,
    #[serde(skip)]
    pub running: bool,
    /// From the configuration at the time of the scrape.
    #[serde(skip)]
    pub next_slot: Option<i64>,
    /// From the configuration at the time of the scrape.
    #[serde(skip)]
    pub period_seconds: Option<u64>,
    /// Since when this unit follows the configured schedule (the scheduler's state), so
    /// that a cluster that never succeeded also counts as late.
    #[serde(skip)]
    pub schedule_since: Option<i64>,
}

/// The live metrics of this agent.
#[derive(Debug, Default)]
pub struct Metrics {
    snapshot: Mutex<Snapshot>,
    file: Option<PathBuf>,
    /// Held from a save's snapshot to its rename, so that saves land in the order they
    /// took their snapshots (two at once could otherwise leave the older one on disk,
    /// and counters would go back after a restart).
    saving: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// Metrics kept in `state_dir` (an unreadable file starts them afresh: metrics must
    /// never keep the agent from starting).
    pub fn load(state_dir: &Path) -> Metrics {
        let file = state_dir.join(METRICS_FILE);
        let snapshot = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(error = %e, "ignoring an unreadable metrics.json");
                Snapshot::default()
            }),
            Err(_) => Snapshot::default(),
        };
        Metrics {
            snapshot: Mutex::new(snapshot),
            file: Some(file),
            saving: tokio::sync::Mutex::new(()),
        }
    }

    /// A copy of the current numbers.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().expect("metrics lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().expect("metrics lock"));
    }

    /// A backup started at `at`.
    pub fn backup_started(&self, at: i64) {
        self.update(|s| {
            s.running = true;
            s.last_attempt = Some(at);
        });
    }

    /// The backup that started last finished at `at`.
    pub fn backup_succeeded(&self, at: i64, duration_seconds: f64, size_bytes: u64) {
        self.update(|s| {
            s.running = false;
            s.last_success = Some(at);
            s.last_duration_seconds = Some(duration_seconds);
            s.last_size_bytes = Some(size_bytes);
            s.last_failed = false;
        });
    }

    /// The backup that started last failed with the protocol error `code`.
    pub fn backup_failed(&self, code: &str, duration_seconds: f64) {
        self.update(|s| {
            s.running = false;
            s.last_failed = true;
            s.last_duration_seconds = Some(duration_seconds);
            *s.failures.entry(code.to_owned()).or_default() += 1;
        });
    }

    /// A verification of a stored backup passed at `at`.
    pub fn verify_succeeded(&self, at: i64) {
        self.update(|s| s.last_verify_success = Some(at));
    }

    /// A scheduled slot that no unit of the cluster took.
    pub fn slot_missed(&self) {
        self.update(|s| s.missed_slots += 1);
    }

    /// Writes the durable numbers to `metrics.json` (temp file and rename; best effort:
    /// a full disk must not fail a backup that succeeded).
    pub async fn save(&self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let _saving = self.saving.lock().await;
        let body = match serde_json::to_vec(&self.snapshot()) {
            Ok(b) => b,
            Err(_) => return,
        };
        // A temp name of its own: saves from concurrent tasks must not share one.
        if let Err(e) = crate::statefile::replace(&file, &body, crate::statefile::Flush::Lazy).await
        {
            warn!(error = %e, "could not store metrics.json");
        }
    }

    /// The OpenMetrics text for this unit.
    pub fn render(&self, cluster: &str, unit: &str) -> String {
        render(&self.snapshot(), cluster, unit)
    }
}

type GaugeF = Gauge<f64, AtomicU64>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value {
        let g = GaugeF::default();
        g.set(v);
        registry.register(name, help, g);
    }
}

/// Encodes `s` with the `cluster` and `unit` labels on every series.
pub fn render(s: &Snapshot, cluster: &str, unit: &str) -> String {
    let labels = [
        (Cow::Borrowed("cluster"), Cow::Owned(cluster.to_owned())),
        (Cow::Borrowed("unit"), Cow::Owned(unit.to_owned())),
    ];
    let mut r = Registry::with_labels(labels.into_iter());
    let f = |v: Option<i64>| v.map(|t| t as f64);
    gauge(
        &mut r,
        "valkey_backup_last_success_timestamp_seconds",
        "When this unit's newest successful backup finished",
        f(s.last_success),
    );
    gauge(
        &mut r,
        "valkey_backup_last_attempt_timestamp_seconds",
        "When this unit's newest backup attempt started",
        f(s.last_attempt),
    );
    gauge(
        &mut r,
        "valkey_backup_last_duration_seconds",
        "How long this unit's newest finished or failed backup took",
        s.last_duration_seconds,
    );
    gauge(
        &mut r,
        "valkey_backup_last_size_bytes",
        "Stored size of this unit's newest successful backup",
        s.last_size_bytes.map(|b| b as f64),
    );
    gauge(
        &mut r,
        "valkey_backup_last_failed",
        "1 when this unit's newest backup attempt failed",
        Some(if s.last_failed { 1.0 } else { 0.0 }),
    );
    gauge(
        &mut r,
        "valkey_backup_running",
        "1 while this unit streams a backup",
        Some(if s.running { 1.0 } else { 0.0 }),
    );
    gauge(
        &mut r,
        "valkey_backup_schedule_next_timestamp_seconds",
        "The schedule's next slot (absent without a schedule)",
        f(s.next_slot),
    );
    gauge(
        &mut r,
        "valkey_backup_schedule_period_seconds",
        "The schedule's longest gap between two slots (absent without a schedule)",
        s.period_seconds.map(|p| p as f64),
    );
    gauge(
        &mut r,
        "valkey_backup_schedule_since_timestamp_seconds",
        "Since when this unit follows the configured schedule (absent without one)",
        f(s.schedule_since),
    );
    gauge(
        &mut r,
        "valkey_backup_last_verify_success_timestamp_seconds",
        "When a verification on this unit last passed",
        f(s.last_verify_success),
    );
    let failures = Family::<Vec<(String, String)>, Counter>::default();
    for (code, n) in &s.failures {
        failures
            .get_or_create(&vec![("code".to_owned(), code.clone())])
            .inc_by(*n);
    }
    r.register(
        "valkey_backup_failures",
        "Failed backups on this unit by error code",
        failures,
    );
    let missed = Counter::<u64>::default();
    missed.inc_by(s.missed_slots);
    r.register(
        "valkey_backup_missed_slots",
        "Scheduled slots this unit saw no unit of the cluster take",
        missed,
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_times_are_absent_series_and_labels_are_only_cluster_and_unit() {
        let text = render(&Snapshot::default(), "m.valkey", "valkey/0");
        assert!(!text.contains("last_success_timestamp"), "{text}");
        assert!(text.contains(r#"valkey_backup_running{cluster="m.valkey",unit="valkey/0"} 0"#));
        assert!(text
            .contains(r#"valkey_backup_missed_slots_total{cluster="m.valkey",unit="valkey/0"} 0"#));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn outcomes_move_the_documented_series() {
        let m = Metrics::default();
        m.backup_started(100);
        assert!(m
            .render("c", "u/0")
            .contains(r#"valkey_backup_running{cluster="c",unit="u/0"} 1"#));
        m.backup_succeeded(110, 10.0, 4096);
        m.backup_started(200);
        m.backup_failed("valkey-unreachable", 0.5);
        let text = m.render("c", "u/0");
        for line in [
            r#"valkey_backup_last_success_timestamp_seconds{cluster="c",unit="u/0"} 110.0"#,
            r#"valkey_backup_last_attempt_timestamp_seconds{cluster="c",unit="u/0"} 200.0"#,
            r#"valkey_backup_last_size_bytes{cluster="c",unit="u/0"} 4096.0"#,
            r#"valkey_backup_last_failed{cluster="c",unit="u/0"} 1.0"#,
            r#"valkey_backup_failures_total{cluster="c",unit="u/0",code="valkey-unreachable"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn listen_must_be_an_ip_and_port() {
        let ok = MetricsSettings {
            listen: "127.0.0.1:9187".into(),
        };
        assert!(ok.addr().is_ok());
        for bad in ["localhost:9187", "127.0.0.1", ":9187", ""] {
            let s = MetricsSettings { listen: bad.into() };
            assert!(s.addr().is_err(), "{bad}");
        }
    }
}
