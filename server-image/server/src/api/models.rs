//! `GET /v1/models` and `GET /v1/models/{model}`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::state::AppState;

fn card(state: &AppState) -> Value {
    json!({
        "id": state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "llmserve",
        "max_model_len": state.max_model_len,
        "architecture": state.loaded.get().map(|l| l.architecture.clone()),
    })
}

/// Lists the served model.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [card(&state)]}))
}

/// One model by id.
pub async fn get_one(State(state): State<AppState>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    if model == state.model_id {
        Ok(Json(card(&state)))
    } else {
        Err(ApiError::model_not_found(&model, &[&state.model_id]))
    }
}
