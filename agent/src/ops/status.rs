//! `status`: what the agent is configured for and doing. Cheap and local: it sends no
//! request to S3 or Valkey, so the charm can call it on every hook.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{params, AgentState, NoParams};
use crate::error::OpError;
use crate::lock::UnitLock;
use crate::parts::PartPlan;

pub async fn run(state: &Arc<AgentState>, raw: Value) -> Result<Value, OpError> {
    let _: NoParams = params(raw)?;
    let config = state.config_if_any();
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
    Ok(json!({
        "agent-version": crate::AGENT_VERSION,
        "configured": config.is_some(),
        "s3-configured": config.as_ref().is_some_and(|c| c.s3.is_some()),
        "cluster": config.as_ref().map(|c| c.cluster.clone()),
        "unit": config.as_ref().map(|c| c.unit.clone()),
        "bucket": config.as_ref().and_then(|c| c.s3.as_ref().map(|s| s.bucket.clone())),
        "valkey-source": config.as_ref().map(|c| c.valkey.source.as_str()),
        "busy": busy,
        "running": running.map(|h| json!({"op": h.op, "backup-id": h.backup_id, "started-at": h.started_at})),
        "last-backup": state.last_backup(),
        "memory-bound-bytes": memory_bound,
        "schedule": state.schedule_report().to_json(
            config.as_ref().and_then(|c| c.schedule.as_ref()),
            state.metrics.snapshot().last_success,
            time::OffsetDateTime::now_utc(),
        ),
        "metrics": config.as_ref().and_then(|c| c.metrics.as_ref()).map(|m| json!({
            "listen": m.listen, "error": state.metrics_error(),
        })),
    }))
}
