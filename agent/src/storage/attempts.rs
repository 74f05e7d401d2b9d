//! Says so when an attempt of an S3 request fails on the way (no answer in time, a
//! broken connection, a 5xx answer). The SDK retries those by itself and silently: a
//! store that leaves a part upload unanswered until the read timeout (120 s) otherwise
//! shows only as a backup that took two minutes longer. Each such attempt is logged at
//! `warn` with the operation, the attempt's number and what failed; never the request,
//! its key or its headers. Answers the agent expects to see (404 on a read-back, 412 on
//! a write-once key) are not failures here and stay quiet.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// What went wrong in one attempt, when it is the transport's or the store's fault.
pub fn failed_attempt(
    timed_out: bool,
    connection_failed: bool,
    status: Option<u16>,
) -> Option<String> {
    if timed_out {
        Some("no answer in time".into())
    } else if connection_failed {
        Some("the connection failed".into())
    } else {
        status
            .filter(|s| *s >= 500)
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
        if let Some(what) = failed_attempt(err.is_timeout_error(), err.is_connector_error(), status)
        {
            let operation = cfg
                .load::<Metadata>()
                .map(|m| m.name())
                .unwrap_or("request");
            let attempt = cfg.load::<RequestAttempts>().map(|a| a.attempts());
            tracing::warn!(
                operation,
                attempt,
                "an S3 request attempt failed: {what}; the client retries it while attempts remain"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_transport_and_5xx_answers_count() {
        assert_eq!(
            failed_attempt(true, false, None).as_deref(),
            Some("no answer in time")
        );
        assert_eq!(
            failed_attempt(false, true, None).as_deref(),
            Some("the connection failed")
        );
        assert_eq!(
            failed_attempt(false, false, Some(503)).as_deref(),
            Some("the store answered 503")
        );
        for expected in [404, 412, 409, 403] {
            assert_eq!(failed_attempt(false, false, Some(expected)), None);
        }
        assert_eq!(failed_attempt(false, false, None), None);
    }
}
