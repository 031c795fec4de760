//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde_json::json;

use crate::app::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

/// 200 while Check decisions can be made (session store and signing keys
/// usable), whatever the database's state; else 503. The body names every
/// dependency and its state, e.g.
/// `{"status":"degraded","ready":true,"checks":{"database":"down",…},"not_ready":[],"degraded":["database"]}`.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let report = state.readiness().await;
    let status = if report.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": report.status(),
            "ready": report.ready(),
            "checks": {
                "database": report.database,
                "session_store": report.session_store,
                "signing_keys": report.signing_keys,
            },
            "not_ready": report.not_ready(),
            "degraded": report.degraded(),
        })),
    )
        .into_response()
}

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
