//! `status`: what the agent is configured for and doing. Cheap and local: it sends no
//! request to S3 or Valkey, so the charm can call it on every hook — except with
//! `check-valkey`, which runs `configure`'s Valkey check again (for `update-status`: a
//! password rotated in the principal shows before the next backup fails).

use std::sync::Arc;

use serde_json::Value;

use super::state::{params, AgentState};
use crate::error::OpError;
use crate::lock::UnitLock;
use crate::parts::PartPlan;
use crate::protocol::{MetricsStatus, RunningOp, StatusParams, StatusResult};

/// Reports configuration and activity without any network request.
pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<StatusResult, OpError> {
    let p: StatusParams = params(raw)?;
    let config = state.config_if_any();
    if let (true, Some(c)) = (p.check_valkey, &config) {
        state.set_valkey_check(crate::valkey_check::check(&c.valkey).await);
    }
    // The lock file tells about operations of other processes (e.g. a CLI-started agent)
    // too; the in-memory record covers this one.
    let dir = state.state_dir.clone();
    let probed = tokio::task::spawn_blocking(move || UnitLock::probe(&dir))
        .await
        .map_err(|e| OpError::Internal(e.to_string()))?;
    let running = state.running().or_else(|| probed.clone().flatten());
    let busy = running.is_some() || probed.is_some();
    let memory_bound = config.as_ref().map(|c| {
        PartPlan::new(c.backup.part_size_bytes, c.backup.upload_concurrency, None).memory_bound()
    });
    Ok(StatusResult {
        agent_version: crate::AGENT_VERSION.into(),
        configured: config.is_some(),
        s3_configured: config.as_ref().is_some_and(|c| c.s3.is_some()),
        cluster: config.as_ref().map(|c| c.cluster.clone()),
        unit: config.as_ref().map(|c| c.unit.clone()),
        bucket: config
            .as_ref()
            .and_then(|c| c.s3.as_ref().map(|s| s.bucket.clone())),
        valkey_source: config.as_ref().map(|c| c.valkey.source.as_str().to_owned()),
        busy,
        running: running.map(|h| RunningOp {
            op: h.op,
            backup_id: h.backup_id,
            started_at: h.started_at,
        }),
        last_backup: state.last_backup(),
        memory_bound_bytes: memory_bound,
        schedule: Some(state.schedule_report().to_json(
            config.as_ref().and_then(|c| c.schedule.as_ref()),
            state.metrics.snapshot().last_success,
            time::OffsetDateTime::now_utc(),
        ))
        .filter(|s| !s.is_null()),
        metrics: config
            .as_ref()
            .and_then(|c| c.metrics.as_ref())
            .map(|m| MetricsStatus {
                listen: m.listen.to_string(),
                error: state.metrics_error(),
            }),
        valkey_check: state.valkey_check().map(Box::new),
    })
}
