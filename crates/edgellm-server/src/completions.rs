//! `POST /v1/completions`: plain-text (or token-id) prompts continued as they are, answered
//! whole or streamed as `text_completion` events.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::{GeneratedToken, RequestEvent};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::{self, CommonFields, Generation};
use crate::AppState;

/// OpenAI's legacy default for `max_tokens` on this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

/// `prompt`: a string, token ids, or a one-element list of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// Several texts (only one is supported).
    Texts(Vec<String>),
    /// Several id lists (only one is supported).
    IdLists(Vec<Vec<u32>>),
}

/// The request body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// What to continue.
    pub prompt: PromptField,
    /// Log-probabilities of the sampled token and this many alternatives.
    pub logprobs: Option<usize>,
    /// Repeat the prompt in the output (unsupported).
    pub echo: Option<bool>,
    /// Text after the completion (unsupported).
    pub suffix: Option<String>,
    /// Sampling and streaming fields.
    #[serde(flatten)]
    pub common: CommonFields,
}

impl CompletionRequest {
    /// The prompt and sampling parameters, validated.
    pub fn into_parts(self) -> Result<(Prompt, edgellm::SamplingParams, CommonFields), ApiError> {
        let one = "send one prompt per request; batched prompts are not supported";
        let prompt = match self.prompt {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Ids(ids) => Prompt::Ids(ids),
            PromptField::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
            PromptField::IdLists(mut v) if v.len() == 1 => Prompt::Ids(v.remove(0)),
            _ => return Err(ApiError::invalid("prompt", one)),
        };
        if matches!(&prompt, Prompt::Text(t) if t.is_empty())
            || matches!(&prompt, Prompt::Ids(ids) if ids.is_empty())
        {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if self.suffix.is_some() {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        let max_tokens = self.common.max_tokens.or(Some(DEFAULT_MAX_TOKENS));
        let params = self.common.params(max_tokens, self.logprobs)?;
        Ok((prompt, params, self.common))
    }
}

struct Meta {
    state: AppState,
    id: String,
    created: u64,
    logprobs: bool,
    include_usage: bool,
}

/// OpenAI's legacy logprobs object, built a token at a time.
#[derive(Default)]
struct Logprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
    offset: usize,
}

impl Logprobs {
    fn push(&mut self, state: &AppState, t: &GeneratedToken) {
        let token = openai::token_text(state, t.id);
        self.text_offset.push(self.offset.into());
        self.offset += token.len();
        self.tokens.push(token.into());
        self.token_logprobs.push(t.logprob.unwrap_or(0.0).into());
        let top: Map<String, Value> =
            t.top_logprobs.iter().map(|a| (openai::token_text(state, a.id), a.logprob.into())).collect();
        self.top_logprobs.push(top.into());
    }

    fn take(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }
}

impl Meta {
    fn body(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "text_completion", "created": self.created,
            "model": &*self.state.model_name,
            "choices": [{ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish }],
        })
    }
}

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let (prompt, params, common) = request.into_parts()?;
    let meta = Meta {
        logprobs: params.logprobs.is_some(),
        include_usage: common.include_usage(),
        id: openai::response_id("cmpl"),
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
    let mut logprobs = Logprobs::default();
    while let Some(event) = generation.events.recv().await {
        match event {
            RequestEvent::Token(t) if meta.logprobs => logprobs.push(&meta.state, &t),
            RequestEvent::Done(c) => {
                let lp = if meta.logprobs { logprobs.take() } else { Value::Null };
                let mut body = meta.body(&c.text, lp, Some(c.finish_reason.as_str()));
                body["usage"] = openai::usage(&c);
                return Ok(Json(body).into_response());
            }
            RequestEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
    }
    Err(edgellm::Error::SchedulerStopped.into())
}

fn stream(meta: Arc<Meta>, generation: Generation) -> Response {
    let chunks = futures_util::stream::unfold(Some((meta, generation.events)), |state| async move {
        let (meta, mut events) = state?;
        loop {
            let chunk = match events.recv().await? {
                RequestEvent::Token(t) if !t.text.is_empty() || meta.logprobs => {
                    let lp = if meta.logprobs {
                        let mut lp = Logprobs::default();
                        lp.push(&meta.state, &t);
                        lp.take()
                    } else {
                        Value::Null
                    };
                    meta.with_usage_field(meta.body(&t.text, lp, None))
                }
                RequestEvent::Done(c) => return Some((meta.last_chunks(&c), None)),
                RequestEvent::Error(e) => return Some((vec![ApiError::from(e).body()], None)),
                _ => continue,
            };
            return Some((vec![chunk], Some((meta, events))));
        }
    });
    openai::sse(chunks.flat_map(futures_util::stream::iter))
}

impl Meta {
    fn with_usage_field(&self, mut chunk: Value) -> Value {
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn last_chunks(&self, c: &Completion) -> Vec<Value> {
        let mut chunks =
            vec![self.with_usage_field(self.body("", Value::Null, Some(c.finish_reason.as_str())))];
        if self.include_usage {
            let mut last = self.body("", Value::Null, None);
            last["choices"] = json!([]);
            last["usage"] = openai::usage(c);
            chunks.push(last);
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(Prompt, edgellm::SamplingParams, CommonFields), ApiError> {
        serde_json::from_str::<CompletionRequest>(json).unwrap().into_parts()
    }

    #[test]
    fn completion_request_parsing() {
        let (prompt, params, _) = parse(r#"{"model": "m", "prompt": "def f():", "logprobs": 3}"#).unwrap();
        assert!(matches!(prompt, Prompt::Text(t) if t == "def f():"));
        assert_eq!((params.max_tokens, params.logprobs), (Some(DEFAULT_MAX_TOKENS), Some(3)));
        let (prompt, _, _) = parse(r#"{"prompt": [1, 2, 3], "max_tokens": 4}"#).unwrap();
        assert!(matches!(prompt, Prompt::Ids(ids) if ids == [1, 2, 3]));
        let (prompt, _, _) = parse(r#"{"prompt": ["only one"]}"#).unwrap();
        assert!(matches!(prompt, Prompt::Text(t) if t == "only one"));

        let err = |json: &str| parse(json).err().unwrap().body()["error"]["param"].clone();
        assert_eq!(err(r#"{"prompt": ["a", "b"]}"#), "prompt");
        assert_eq!(err(r#"{"prompt": ""}"#), "prompt");
        assert_eq!(err(r#"{"prompt": "a", "echo": true}"#), "echo");
        assert_eq!(err(r#"{"prompt": "a", "max_tokens": 0}"#), "max_tokens");
        assert_eq!(err(r#"{"prompt": "a", "stop": ["", "x"]}"#), "stop");
    }
}
