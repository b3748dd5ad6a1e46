//! `POST /v1/chat/completions`: messages rendered with the model's chat template, answered
//! whole or streamed as `chat.completion.chunk` events.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::{GeneratedToken, RequestEvent};
use edgellm::ChatMessage;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{self, CommonFields, Generation};
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

/// What every chunk or response of one request repeats.
struct Meta {
    state: AppState,
    id: String,
    created: u64,
    logprobs: bool,
    include_usage: bool,
}

impl Meta {
    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": &*self.state.model_name,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn logprob(&self, t: &GeneratedToken) -> Value {
        let entry = |id: u32, logprob: f32| {
            let token = openai::token_text(&self.state, id);
            json!({ "token": token, "logprob": logprob, "bytes": token.as_bytes() })
        };
        let mut v = entry(t.id, t.logprob.unwrap_or(0.0));
        v["top_logprobs"] = t.top_logprobs.iter().map(|a| entry(a.id, a.logprob)).collect();
        v
    }

    fn response(&self, c: &Completion, logprobs: Vec<Value>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": &*self.state.model_name,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": c.text },
                "logprobs": if self.logprobs { json!({ "content": logprobs }) } else { Value::Null },
                "finish_reason": c.finish_reason.as_str(),
            }],
            "usage": openai::usage(c),
        })
    }
}

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let (prompt, params, common) = request.into_parts()?;
    let meta = Meta {
        logprobs: params.logprobs.is_some(),
        include_usage: common.include_usage(),
        id: openai::response_id("chatcmpl"),
        created: openai::created(),
        state: state.clone(),
    };
    let generation = openai::start(&state, prompt, params, &common).await?;
    if common.stream {
        Ok(stream(Arc::new(meta), generation))
    } else {
        whole(meta, generation).await
    }
}

async fn whole(meta: Meta, mut generation: Generation) -> Result<Response, ApiError> {
    let mut logprobs = Vec::new();
    while let Some(event) = generation.events.recv().await {
        match event {
            RequestEvent::Token(t) if meta.logprobs => logprobs.push(meta.logprob(&t)),
            RequestEvent::Done(c) => return Ok(Json(meta.response(&c, logprobs)).into_response()),
            RequestEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
    }
    Err(edgellm::Error::SchedulerStopped.into())
}

fn stream(meta: Arc<Meta>, generation: Generation) -> Response {
    let first = meta.chunk(json!({ "role": "assistant", "content": "" }), Value::Null, None);
    let rest = futures_util::stream::unfold(Some((meta, generation.events)), |state| async move {
        let (meta, mut events) = state?;
        loop {
            let chunks = match events.recv().await? {
                RequestEvent::Token(t) if !t.text.is_empty() || meta.logprobs => {
                    let logprobs =
                        if meta.logprobs { json!({ "content": [meta.logprob(&t)] }) } else { Value::Null };
                    vec![meta.chunk(json!({ "content": t.text }), logprobs, None)]
                }
                RequestEvent::Done(c) => {
                    let mut chunks = vec![meta.chunk(json!({}), Value::Null, Some(c.finish_reason.as_str()))];
                    if meta.include_usage {
                        let mut last = meta.chunk(json!({}), Value::Null, None);
                        last["choices"] = json!([]);
                        last["usage"] = openai::usage(&c);
                        chunks.push(last);
                    }
                    return Some((chunks, None));
                }
                RequestEvent::Error(e) => return Some((vec![ApiError::from(e).body()], None)),
                _ => continue,
            };
            return Some((chunks, Some((meta, events))));
        }
    });
    let chunks = futures_util::stream::once(async { first }).chain(rest.flat_map(futures_util::stream::iter));
    openai::sse(chunks)
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
