//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::problems;
use crate::app::AppState;

problems!(NoProblems = []);

/// 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "the process runs", content_type = "text/plain", body = String), NoProblems)
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Each dependency's state (`ok`, `down`, `incompatible`) and what follows.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `degraded` (ready, the /user API is not) or `unavailable`.
    status: &'static str,
    ready: bool,
    checks: Checks,
    /// Dependencies without which Check decisions cannot be made.
    not_ready: Vec<&'static str>,
    /// Dependencies that are down while decisions can still be made (the
    /// database: the /user API is degraded).
    degraded: Vec<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    database: &'static str,
    session_store: &'static str,
    signing_keys: &'static str,
}

/// 200 while Check decisions can be made (session store and signing keys
/// usable), whatever the database's state; else 503. The body names every
/// dependency and its state, e.g.
/// `{"status":"degraded","ready":true,"checks":{"database":"down",…},"not_ready":[],"degraded":["database"]}`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Check decisions can be made", body = Readiness),
        (status = 503, description = "Check decisions cannot be made", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let report = state.readiness().await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: report.status(),
            ready: report.ready(),
            checks: Checks {
                database: report.database,
                session_store: report.session_store,
                signing_keys: report.signing_keys,
            },
            not_ready: report.not_ready(),
            degraded: report.degraded(),
        }),
    )
        .into_response()
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
