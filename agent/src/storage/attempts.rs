//! Says so when an attempt of an S3 request fails on the way (no answer in time, a
//! broken connection, a 500/502/503/504 answer). The SDK retries those by itself and
//! silently: a store that leaves a part upload unanswered until the read timeout (120 s)
//! otherwise shows only as a backup that took two minutes longer. Each such attempt is
//! logged at `warn` with the operation, the attempt's number out of the most the client
//! makes, and what failed; never the request, its key or its headers. Answers the agent
//! expects (404 on a read-back, 412 on a write-once key, 501 from a store without an
//! operation it asks for) stay quiet.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{Metadata, OrchestratorError};
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;

/// What went wrong in one attempt, when it is the transport's or the store's fault.
/// The client's read and connect timeouts come as connector errors that say they timed
/// out; its attempt timeout as an orchestrator timeout. Of the answers, only the 5xx the
/// client retries count: a 501 is how a store says it lacks an operation, which the
/// agent asks on purpose (see `compat`).
pub fn failed_attempt<E>(err: &OrchestratorError<E>, status: Option<u16>) -> Option<String> {
    let timed_out =
        err.is_timeout_error() || err.as_connector_error().is_some_and(|c| c.is_timeout());
    if timed_out {
        Some("no answer in time".into())
    } else if err.is_connector_error() {
        Some("the connection failed".into())
    } else {
        status
            .filter(|s| matches!(s, 500 | 502 | 503 | 504))
            .map(|s| format!("the store answered {s}"))
    }
}

/// The interceptor the S3 client is built with.
#[derive(Debug)]
pub struct FailedAttempts;

impl Intercept for FailedAttempts {
    fn name(&self) -> &'static str {
        "FailedAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(Err(err)) = context.output_or_error() else {
            return Ok(());
        };
        let status = context.response().map(|r| r.status().as_u16());
        if let Some(what) = failed_attempt(err, status) {
            let operation = cfg
                .load::<Metadata>()
                .map(|m| m.name())
                .unwrap_or("request");
            let attempt = cfg.load::<RequestAttempts>().map(|a| a.attempts());
            let max_attempts = cfg.load::<RetryConfig>().map(|r| r.max_attempts());
            tracing::warn!(
                operation,
                attempt,
                max_attempts,
                "an S3 request attempt failed: {what} (the client retries while attempts and its retry budget remain)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;

    fn connector(e: ConnectorError) -> OrchestratorError<()> {
        OrchestratorError::connector(e)
    }

    #[test]
    fn timeouts_failed_connections_and_retried_5xx_count_and_nothing_else() {
        let said = |e: &OrchestratorError<()>, s| failed_attempt(e, s);
        // The client's read timeout (120 s) and connect timeout come as connector errors.
        let read_timeout = connector(ConnectorError::timeout("read timed out".into()));
        assert_eq!(
            said(&read_timeout, None).as_deref(),
            Some("no answer in time")
        );
        let attempt_timeout = OrchestratorError::<()>::timeout("attempt".into());
        assert_eq!(
            said(&attempt_timeout, None).as_deref(),
            Some("no answer in time")
        );
        let reset = connector(ConnectorError::io("connection reset".into()));
        assert_eq!(said(&reset, None).as_deref(), Some("the connection failed"));
        let answered = OrchestratorError::operation(());
        for retried in [500, 502, 503, 504] {
            let want = format!("the store answered {retried}");
            assert_eq!(said(&answered, Some(retried)), Some(want));
        }
        // Answers the agent expects: a missing key, a write-once refusal, a store
        // without the operation (Garage's ListObjectVersions).
        for expected in [404, 412, 409, 403, 501] {
            assert_eq!(said(&answered, Some(expected)), None, "{expected}");
        }
        assert_eq!(said(&answered, None), None);
    }
}
