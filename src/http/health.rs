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

/// 200 when the database, the session store and the signing keys are
/// usable; else 503 naming what is not.
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
            "ready": report.ready(),
            "checks": {
                "database": report.database,
                "session_store": report.session_store,
                "signing_keys": report.signing_keys,
            },
            "not_ready": report.failing(),
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
