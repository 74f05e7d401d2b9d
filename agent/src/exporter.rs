//! The `/metrics` HTTP endpoint: serves [`crate::metrics`]' numbers on the configured
//! address while the agent runs, following `configure`. Kept apart from the numbers so
//! that they (used by the ops) never depend on the agent's state, which holds them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{render, CONTENT_TYPE};
use crate::ops::AgentState;

/// Serves `/metrics` on the configured address while the agent runs, following
/// `configure` (rebinds when the address changes, stops when the section goes away).
pub async fn run_endpoint(state: Arc<AgentState>, shutdown: CancellationToken) {
    let mut changes = state.subscribe_config();
    loop {
        let listen = state
            .config_if_any()
            .and_then(|c| c.metrics)
            .and_then(|m| m.addr().ok());
        let listener = match listen {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(l) => {
                    info!(listen = %addr, "serving metrics");
                    state.set_metrics_error(None);
                    Some(l)
                }
                Err(e) => {
                    warn!(listen = %addr, error = %e, "cannot serve metrics");
                    state.set_metrics_error(Some(format!("cannot listen on {addr}: {e}")));
                    None
                }
            },
        };
        let stop = shutdown.child_token();
        let server =
            listener.map(|l| tokio::spawn(accept_loop(l, Arc::clone(&state), stop.clone())));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = changes.changed() => {}
        }
        stop.cancel();
        if let Some(s) = server {
            let _ = s.await;
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Scrapes answered at once; more connections wait in the accept queue. A scrape is
/// one small response, so a handful is plenty, and a flood cannot grow tasks without end.
const MAX_CONNECTIONS: usize = 8;

async fn accept_loop(listener: TcpListener, state: Arc<AgentState>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(Duration::from_secs(30), conn) => {}
            }
        });
    }
}

fn answer(state: &AgentState, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let config = state.config_if_any();
    let (cluster, unit) = config
        .as_ref()
        .map(|c| (c.cluster.clone(), c.unit.clone()))
        .unwrap_or_default();
    let mut snapshot = state.metrics.snapshot();
    // The schedule's numbers come from the configuration itself: right from the moment
    // `configure` returned, whatever the scheduler task is doing.
    let settings = config.and_then(|c| c.schedule);
    let schedule = settings
        .as_ref()
        .and_then(|s| crate::schedule::Schedule::parse(&s.cron).ok());
    if let (Some(schedule), Some(settings)) = (schedule, settings) {
        let now = time::OffsetDateTime::now_utc();
        snapshot.next_slot = schedule.next_after(now).map(|t| t.unix_timestamp());
        snapshot.period_seconds = schedule.period(now).map(|p| p.as_secs());
        // Only the scheduler's state of this very expression says since when it runs.
        let followed = state.schedule_report().persisted;
        snapshot.schedule_since =
            (followed.cron == settings.cron && followed.since > 0).then_some(followed.since);
    }
    reply(
        StatusCode::OK,
        CONTENT_TYPE,
        render(&snapshot, &cluster, &unit),
    )
}
