//! `POST /v1/completions`: plain-text (or token-id) prompts continued as they are, answered
//! whole or streamed as `text_completion` events.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::GeneratedToken;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::{self, CommonFields};
use crate::respond::{respond, Shape};
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

/// OpenAI's legacy logprobs object, built a token at a time.
#[derive(Default)]
pub struct Logprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
    offset: usize,
}

/// The `text_completion` shape.
pub struct TextCompletion;

impl Shape for TextCompletion {
    type Logprobs = Logprobs;
    const ID_PREFIX: &'static str = "cmpl";
    const OBJECT: &'static str = "text_completion";
    const CHUNK_OBJECT: &'static str = "text_completion";

    fn push_logprob(&self, state: &AppState, lp: &mut Logprobs, t: &GeneratedToken) {
        let token = openai::token_text(state, t.id);
        lp.text_offset.push(lp.offset.into());
        lp.offset += token.len();
        lp.tokens.push(token.into());
        lp.token_logprobs.push(t.logprob.unwrap_or(0.0).into());
        let top: Map<String, Value> =
            t.top_logprobs.iter().map(|a| (openai::token_text(state, a.id), a.logprob.into())).collect();
        lp.top_logprobs.push(top.into());
    }

    fn logprobs_value(&self, lp: Logprobs) -> Value {
        json!({
            "tokens": lp.tokens,
            "token_logprobs": lp.token_logprobs,
            "top_logprobs": lp.top_logprobs,
            "text_offset": lp.text_offset,
        })
    }

    fn choice(&self, c: &Completion, logprobs: Value) -> Value {
        self.chunk_choice(&c.text, logprobs, Some(c.finish_reason.as_str()))
    }

    fn chunk_choice(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        json!({ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish })
    }
}

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let (prompt, params, common) = request.into_parts()?;
    respond(state, TextCompletion, prompt, params, common).await
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
