//! Errors as OpenAI sends them: a status code and `{"error": {"message", "type", "param",
//! "code"}}`. Engine errors are mapped to a status in one place, [`ApiError::into_response`].

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub enum ApiError {
    /// From the engine or scheduler.
    Engine(edgellm::Error),
    /// A request the server itself refuses (bad JSON, unsupported field, missing key).
    Request {
        /// HTTP status.
        status: StatusCode,
        /// Human-readable message.
        message: String,
        /// The offending request field.
        param: Option<String>,
        /// OpenAI's machine-readable code.
        code: Option<&'static str>,
    },
}

impl ApiError {
    /// 400 for the request field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::Request {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// The status, OpenAI error type, param and code of this error.
    fn parts(&self) -> (StatusCode, &'static str, Option<String>, Option<&'static str>) {
        use edgellm::Error as E;
        match self {
            ApiError::Request { status, param, code, .. } => {
                let kind = match *status {
                    StatusCode::UNAUTHORIZED => "authentication_error",
                    StatusCode::NOT_FOUND => "not_found_error",
                    s if s.is_server_error() => "server_error",
                    _ => "invalid_request_error",
                };
                (*status, kind, param.clone(), *code)
            }
            ApiError::Engine(e) => match e {
                E::Invalid { what, why } => {
                    let code =
                        (*what == "prompt" && why.contains("context")).then_some("context_length_exceeded");
                    (StatusCode::BAD_REQUEST, "invalid_request_error", Some(what.to_string()), code)
                }
                // the messages could not be rendered or tokenized: the request's fault
                E::Template(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_request_error", Some("messages".into()), None)
                }
                E::Tokenizer(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, None),
                E::Busy { .. } | E::KvFull { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "server_error", None, Some("server_busy"))
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, None),
            },
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The OpenAI error body.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, param, code) = self.parts();
        let message = match self {
            ApiError::Engine(e) => e.to_string(),
            ApiError::Request { message, .. } => message.clone(),
        };
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }
}

impl From<edgellm::Error> for ApiError {
    fn from(e: edgellm::Error) -> Self {
        ApiError::Engine(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // OpenAI answers a body that does not fit the schema with 400, not axum's 422
        let status = match r.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        ApiError::Request { status, message: r.body_text(), param: None, code: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let e = ApiError::from(edgellm::Error::Invalid {
            what: "prompt",
            why: "600 prompt tokens exceed the context of 512 tokens".into(),
        });
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body["error"]["code"], "context_length_exceeded");
        assert_eq!(body["error"]["param"], "prompt");
        assert!(body["error"]["message"].as_str().unwrap().contains("512"));

        let e = ApiError::from(edgellm::Error::Busy { waiting: 3, limit: 3 });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body()["error"]["type"], "server_error");

        let e = ApiError::from(edgellm::Error::SchedulerStopped);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
