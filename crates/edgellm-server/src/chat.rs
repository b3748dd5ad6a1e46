//! `POST /v1/chat/completions`: messages rendered with the model's chat template, answered
//! whole or streamed as `chat.completion.chunk` events.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::GeneratedToken;
use edgellm::ChatMessage;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{self, CommonFields};
use crate::respond::{respond, Shape};
use crate::AppState;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Return the sampled tokens' log-probabilities.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// And this many alternatives per position (needs `logprobs: true`).
    pub top_logprobs: Option<usize>,
    /// Newer spelling of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<usize>,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

impl ChatRequest {
    /// The prompt and sampling parameters, validated.
    pub fn into_parts(self) -> Result<(Prompt, edgellm::SamplingParams, CommonFields), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (true, n) => Some(n.unwrap_or(0)),
            (false, Some(_)) => {
                return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"))
            }
            (false, None) => None,
        };
        let max_tokens = self.max_completion_tokens.or(self.common.max_tokens);
        let params = self.common.params(max_tokens, logprobs)?;
        Ok((Prompt::Chat(self.messages), params, self.common))
    }
}

/// The `chat.completion` shape.
pub struct Chat;

/// One token's entry of OpenAI's chat logprobs.
fn logprob_entry(state: &AppState, t: &GeneratedToken) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = openai::token_text(state, id);
        json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
    };
    let mut v = entry(t.id, t.logprob.unwrap_or(0.0));
    v["top_logprobs"] = t.top_logprobs.iter().map(|a| entry(a.id, a.logprob)).collect();
    v
}

impl Shape for Chat {
    type Logprobs = Vec<Value>;
    const ID_PREFIX: &'static str = "chatcmpl";
    const OBJECT: &'static str = "chat.completion";
    const CHUNK_OBJECT: &'static str = "chat.completion.chunk";

    fn push_logprob(&self, state: &AppState, logprobs: &mut Vec<Value>, token: &GeneratedToken) {
        logprobs.push(logprob_entry(state, token));
    }

    fn logprobs_value(&self, logprobs: Vec<Value>) -> Value {
        json!({ "content": logprobs })
    }

    fn choice(&self, c: &Completion, logprobs: Value) -> Value {
        json!({
            "index": 0,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": logprobs,
            "finish_reason": c.finish_reason.as_str(),
        })
    }

    fn chunk_choice(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        let delta = if finish.is_some() { json!({}) } else { json!({ "content": text }) };
        json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
    }

    fn opening_choice(&self) -> Option<Value> {
        let delta = json!({ "role": "assistant", "content": "" });
        Some(json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": null }))
    }
}

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let (prompt, params, common) = request.into_parts()?;
    respond(state, Chat, prompt, params, common).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(Prompt, edgellm::SamplingParams, CommonFields), ApiError> {
        serde_json::from_str::<ChatRequest>(json).unwrap().into_parts()
    }

    #[test]
    fn chat_request_parsing() {
        let (prompt, params, common) = parse(
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "max_completion_tokens": 8, "logprobs": true, "top_logprobs": 2, "stream": true}"#,
        )
        .unwrap();
        assert!(matches!(prompt, Prompt::Chat(m) if m.len() == 1 && m[0].role == "user"));
        assert_eq!((params.max_tokens, params.logprobs), (Some(8), Some(2)));
        assert!(common.stream && !common.include_usage());

        let (_, params, _) =
            parse(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}"#).unwrap();
        assert_eq!((params.max_tokens, params.logprobs, params.temperature), (Some(5), None, 1.0));

        let err = |json: &str| parse(json).err().unwrap().body()["error"]["param"].clone();
        assert_eq!(err(r#"{"messages": []}"#), "messages");
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#),
            "top_logprobs"
        );
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 30}"#),
            "logprobs"
        );
    }
}
