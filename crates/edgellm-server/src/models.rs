//! `GET /v1/models`: the one model this server runs.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// The handler.
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": &*state.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "edgellm",
            "max_model_len": state.scheduler.engine_config().max_context(),
        }],
    }))
}
