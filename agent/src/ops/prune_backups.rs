//! `prune-backups`: retention by keep-last / keep-days (placeholder: being written).

use std::sync::Arc;

use serde_json::Value;

use super::AgentState;
use crate::error::OpError;

pub async fn run(_state: &Arc<AgentState>, _raw: Value) -> Result<Value, OpError> {
    Err(OpError::Internal(
        "prune-backups is not implemented yet".into(),
    ))
}
