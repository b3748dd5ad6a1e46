//! The one request/response mechanism of both generation endpoints: submit the request, then
//! either collect its events into one JSON body or stream them as server-sent events. What
//! differs between `/v1/chat/completions` and `/v1/completions` — the object names, the shape
//! of a choice, the logprobs format — is a [`Shape`]; everything else is here once.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Json;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::{GeneratedToken, RequestEvent};
use edgellm::SamplingParams;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::openai::{self, CommonFields};
use crate::AppState;

/// How one endpoint's responses look.
pub trait Shape: Send + Sync + 'static {
    /// Logprobs of several tokens, built a token at a time.
    type Logprobs: Default + Send;
    /// Prefix of response ids (`chatcmpl`, `cmpl`).
    const ID_PREFIX: &'static str;
    /// `object` of a whole response.
    const OBJECT: &'static str;
    /// `object` of a streamed chunk.
    const CHUNK_OBJECT: &'static str;

    /// Adds a token's logprobs.
    fn push_logprob(&self, state: &AppState, logprobs: &mut Self::Logprobs, token: &GeneratedToken);
    /// The `logprobs` field of a choice.
    fn logprobs_value(&self, logprobs: Self::Logprobs) -> Value;
    /// The choice of a whole response.
    fn choice(&self, completion: &Completion, logprobs: Value) -> Value;
    /// The choice of a streamed chunk carrying `text` (`finish` on the last one).
    fn chunk_choice(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Value;
    /// The choice of a chunk sent before any token, if the endpoint sends one.
    fn opening_choice(&self) -> Option<Value> {
        None
    }
}

/// What every chunk or response of one request repeats.
struct Meta<S> {
    shape: S,
    state: AppState,
    id: String,
    created: u64,
    logprobs: bool,
    include_usage: bool,
}

impl<S: Shape> Meta<S> {
    fn envelope(&self, object: &str, choices: Value) -> Value {
        json!({
            "id": self.id, "object": object, "created": self.created,
            "model": &*self.state.model_name, "choices": choices,
        })
    }

    fn chunk(&self, choice: Value) -> Value {
        let mut chunk = self.envelope(S::CHUNK_OBJECT, json!([choice]));
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn token_chunk(&self, token: &GeneratedToken) -> Value {
        let logprobs = if self.logprobs {
            let mut lp = S::Logprobs::default();
            self.shape.push_logprob(&self.state, &mut lp, token);
            self.shape.logprobs_value(lp)
        } else {
            Value::Null
        };
        self.chunk(self.shape.chunk_choice(&token.text, logprobs, None))
    }

    fn last_chunks(&self, c: &Completion) -> Vec<Value> {
        let finish = self.shape.chunk_choice("", Value::Null, Some(c.finish_reason.as_str()));
        let mut chunks = vec![self.chunk(finish)];
        if self.include_usage {
            let mut last = self.envelope(S::CHUNK_OBJECT, json!([]));
            last["usage"] = openai::usage(c);
            chunks.push(last);
        }
        chunks
    }
}

/// Runs a parsed request and answers it whole, or streamed when `common.stream`.
pub async fn respond<S: Shape>(
    state: AppState,
    shape: S,
    prompt: Prompt,
    params: SamplingParams,
    common: CommonFields,
) -> Result<Response, ApiError> {
    let meta = Meta {
        shape,
        logprobs: params.logprobs.is_some(),
        include_usage: common.include_usage(),
        id: openai::response_id(S::ID_PREFIX),
        created: openai::created(),
        state: state.clone(),
    };
    let generation = openai::start(&state, prompt, params, &common).await?;
    if common.stream {
        Ok(stream(Arc::new(meta), generation.events))
    } else {
        whole(meta, generation.events).await
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<RequestEvent>;

async fn whole<S: Shape>(meta: Meta<S>, mut events: Events) -> Result<Response, ApiError> {
    let mut logprobs = S::Logprobs::default();
    while let Some(event) = events.recv().await {
        match event {
            RequestEvent::Token(t) if meta.logprobs => {
                meta.shape.push_logprob(&meta.state, &mut logprobs, &t)
            }
            RequestEvent::Done(c) => {
                let lp = if meta.logprobs { meta.shape.logprobs_value(logprobs) } else { Value::Null };
                let mut body = meta.envelope(S::OBJECT, json!([meta.shape.choice(&c, lp)]));
                body["usage"] = openai::usage(&c);
                return Ok(Json(body).into_response());
            }
            RequestEvent::Error(e) => return Err(e.into()),
            _ => {}
        }
    }
    Err(edgellm::Error::SchedulerStopped.into())
}

fn stream<S: Shape>(meta: Arc<Meta<S>>, events: Events) -> Response {
    let opening: Vec<Value> = meta.shape.opening_choice().map(|c| meta.chunk(c)).into_iter().collect();
    let rest = futures_util::stream::unfold(Some((meta, events)), |state| async move {
        let (meta, mut events) = state?;
        loop {
            let chunks = match events.recv().await? {
                // a token whose text is not ready yet is not sent, unless its logprobs are asked for
                RequestEvent::Token(t) if !t.text.is_empty() || meta.logprobs => vec![meta.token_chunk(&t)],
                RequestEvent::Done(c) => return Some((meta.last_chunks(&c), None)),
                RequestEvent::Error(e) => return Some((vec![ApiError::from(e).body()], None)),
                _ => continue,
            };
            return Some((chunks, Some((meta, events))));
        }
    });
    let chunks = futures_util::stream::iter(opening).chain(rest.flat_map(futures_util::stream::iter));
    openai::sse(chunks)
}
