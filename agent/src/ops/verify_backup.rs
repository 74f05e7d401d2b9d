//! placeholder

use std::sync::Arc;

use serde_json::Value;

use super::AgentState;
use crate::error::OpError;
use crate::progress::EventSink;

pub async fn run(
    _state: &Arc<AgentState>,
    _raw: Value,
    _events: EventSink,
) -> Result<Value, OpError> {
    Err(OpError::Internal("not implemented yet".into()))
}
