//! The `/user` API of INTERFACE.md section 5 (profiles, contacts, factors).

use std::sync::Arc;

use axum::Router;

use crate::app::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
