//! API errors: an HTTP status, a stable machine-readable code and a message, rendered as
//! `{"error": {"code": ..., "message": ..., "details": [...]}}`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::store::StoreError;

/// An error answered by the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (documented in docs/api.md).
    pub code: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// One line per problem (e.g. every invalid field of an apply).
    pub details: Vec<String>,
    /// Answer with `Connection: close` (the request's body was not read to its end).
    pub close: bool,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            close: false,
        }
    }
    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 422 `invalid-config`, one detail per problem.
    pub fn invalid_config(details: Vec<String>) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-config",
            format!(
                "configuration refused ({} problem{}); nothing was changed",
                details.len(),
                if details.len() == 1 { "" } else { "s" }
            ),
        );
        e.details = details;
        e
    }
    /// 404 `not-found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    /// 401: no token, or an unknown one.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403 `permission-denied`: the token does not grant what the request needs.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission-denied", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// The same error with another message.
    pub fn with_message(mut self, message: String) -> ApiError {
        self.message = message;
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::LeaseNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "lease-not-found", e.to_string())
            }
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                e.to_string(),
            ),
            StoreError::Invalid(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if !self.details.is_empty() {
            body["error"]["details"] = json!(self.details);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.close {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
