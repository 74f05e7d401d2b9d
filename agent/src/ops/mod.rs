//! The operations, one module each, and the dispatcher.
//!
//! Every op has the same shape: `run(state, params, events) -> Result<result, OpError>`.
//! Params are parsed by the op itself into its type in [`crate::protocol`], which refuses
//! unknown keys, so the dispatcher stays ignorant of any op's details. What the ops
//! share lives in [`state`]; the ops import it, never this module.

use std::sync::Arc;

use serde_json::Value;

use crate::error::OpError;
use crate::progress::EventSink;
use crate::protocol::{Op, Reply};

pub mod configure;
pub mod create_backup;
pub mod list_backups;
pub mod prune_backups;
pub mod restore_backup;
pub mod state;
pub mod status;
pub mod verify_backup;

pub use state::{AgentState, SessionSlot, StoreFactory, UnitGuard};

/// Runs `op` with `params`, sending progress to `events`.
pub async fn dispatch(
    state: &Arc<AgentState>,
    op: Op,
    params: Value,
    events: EventSink,
) -> Result<Reply, OpError> {
    Ok(match op {
        Op::Status => Reply::Status(status::run(state, params).await?),
        Op::Configure => Reply::Configure(configure::run(state, params).await?),
        Op::CreateBackup => Reply::CreateBackup(create_backup::run(state, params, events).await?),
        Op::ListBackups => Reply::ListBackups(list_backups::run(state, params).await?),
        Op::RestoreBackup => {
            Reply::RestoreBackup(restore_backup::run(state, params, events).await?)
        }
        Op::VerifyBackup => Reply::VerifyBackup(verify_backup::run(state, params, events).await?),
        Op::PruneBackups => Reply::PruneBackups(prune_backups::run(state, params).await?),
    })
}
