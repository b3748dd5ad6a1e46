//! What the chat and completions endpoints share: the OpenAI sampling fields and their mapping
//! to [`SamplingParams`], submitting a request to the scheduler and waiting until it is accepted
//! (so a bad prompt is a 400 before any stream starts), usage objects and SSE framing.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::{EventSink, Request, RequestEvent};
use edgellm::SamplingParams;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::AppState;

/// OpenAI's `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The request fields both endpoints take. Unknown fields are ignored, as OpenAI-compatible
/// servers do; `model` is not checked (the server serves one model).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// Model name (informational).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// Sampling temperature (OpenAI default 1.0).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (default 1.0).
    pub top_p: Option<f32>,
    /// Top-k (vLLM extension; 0 or -1 is off).
    pub top_k: Option<i64>,
    /// Min-p (vLLM extension).
    pub min_p: Option<f32>,
    /// Repetition penalty (vLLM extension).
    pub repetition_penalty: Option<f32>,
    /// Presence penalty in [-2, 2].
    pub presence_penalty: Option<f32>,
    /// Frequency penalty in [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string key) → bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Extra stop token ids (vLLM extension).
    pub stop_token_ids: Option<Vec<u32>>,
    /// Keep going past EOS (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// Number of choices; only 1 is supported.
    pub n: Option<usize>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Keep the KV of the system messages cached for good (TensorRT-Edge-LLM's extension
    /// field; any shared prefix is reused without it, but may be evicted under pressure).
    #[serde(default)]
    pub save_system_prompt_kv_cache: bool,
}

impl CommonFields {
    /// The sampling parameters, with OpenAI's defaults; `logprobs` and `max_tokens` come from the
    /// endpoint, which knows its own spelling of them.
    pub fn params(
        &self,
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
    ) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ));
        }
        let mut logit_bias = BTreeMap::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let id = key
                .parse::<u32>()
                .map_err(|_| ApiError::invalid("logit_bias", format!("key `{key}` is not a token id")))?;
            logit_bias.insert(id, bias);
        }
        let d = SamplingParams::default();
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.map_or(0, |k| k.max(0) as usize),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias,
            seed: self.seed,
            max_tokens,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs,
        };
        params.validate()?;
        Ok(params)
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Sends scheduler events into a tokio channel; a dropped receiver (the client went away)
/// cancels the request.
struct ChannelSink(mpsc::UnboundedSender<RequestEvent>);

impl EventSink for ChannelSink {
    fn send(&mut self, event: RequestEvent) -> bool {
        self.0.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// An accepted request: its events, after `Accepted`.
pub struct Generation {
    /// Remaining events: tokens, then `Done` (or `Error`).
    pub events: mpsc::UnboundedReceiver<RequestEvent>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
}

/// Submits a request and waits until the scheduler has tokenized and queued it.
pub async fn start(
    state: &AppState,
    prompt: Prompt,
    params: SamplingParams,
    common: &CommonFields,
) -> Result<Generation, ApiError> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let request = Request {
        pin_system_prompt: common.save_system_prompt_kv_cache,
        ..Request::new(prompt, params, Box::new(ChannelSink(tx)))
    };
    state.scheduler.submit(request)?;
    match events.recv().await {
        Some(RequestEvent::Accepted { prompt_tokens }) => Ok(Generation { events, prompt_tokens }),
        Some(RequestEvent::Error(e)) => Err(e.into()),
        _ => Err(edgellm::Error::SchedulerStopped.into()),
    }
}

/// OpenAI's `usage` object.
pub fn usage(c: &Completion) -> Value {
    let u = &c.usage;
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

/// The text of one token, as logprobs show it.
pub fn token_text(state: &AppState, id: u32) -> String {
    state.scheduler.tokenizer().decode(&[id], false).unwrap_or_default()
}

/// Seconds since the Unix epoch (`created`).
pub fn created() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
pub fn response_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:06x}", created(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An SSE response from a stream of JSON chunks; `data: [DONE]` follows the last one.
pub fn sse(chunks: impl Stream<Item = Value> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let events = chunks
        .map(|v| SseEvent::default().data(v.to_string()))
        .chain(futures_util::stream::once(async { SseEvent::default().data("[DONE]") }))
        .map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> CommonFields {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn openai_defaults() {
        let p = fields(r#"{"model": "m"}"#).params(None, None).unwrap();
        assert_eq!(p, SamplingParams::default());
        assert_eq!(p.temperature, 1.0);
    }

    #[test]
    fn fields_map_to_params() {
        let f = fields(
            r#"{"temperature": 0, "top_p": 0.5, "top_k": -1, "min_p": 0.1, "seed": 7,
                "stop": "\n", "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "logit_bias": {"42": -100, "7": 5.5}, "stream": true,
                "stream_options": {"include_usage": true}, "unknown_field": 1}"#,
        );
        let p = f.params(Some(16), Some(3)).unwrap();
        assert!(p.is_greedy());
        assert_eq!((p.top_p, p.top_k, p.min_p, p.seed), (0.5, 0, 0.1, Some(7)));
        assert_eq!(p.stop, vec!["\n"]);
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.5, -0.5));
        assert_eq!(p.logit_bias.into_iter().collect::<Vec<_>>(), vec![(7, 5.5), (42, -100.0)]);
        assert_eq!((p.max_tokens, p.logprobs), (Some(16), Some(3)));
        assert!(f.include_usage());
        assert_eq!(fields(r#"{"stop": ["a", "b"]}"#).params(None, None).unwrap().stop, vec!["a", "b"]);
    }

    #[test]
    fn bad_fields_name_their_param() {
        let param = |json: &str| match fields(json).params(None, None) {
            Err(e) => e.body()["error"]["param"].as_str().unwrap().to_string(),
            Ok(_) => panic!("{json} accepted"),
        };
        assert_eq!(param(r#"{"temperature": -1}"#), "temperature");
        assert_eq!(param(r#"{"top_p": 2}"#), "top_p");
        assert_eq!(param(r#"{"logit_bias": {"abc": 1}}"#), "logit_bias");
        assert_eq!(param(r#"{"logit_bias": {"1": 200}}"#), "logit_bias");
        assert_eq!(param(r#"{"n": 2}"#), "n");
        assert_eq!(param(r#"{"stream_options": {"include_usage": true}}"#), "stream_options");
        assert_eq!(param(r#"{"presence_penalty": 3}"#), "presence_penalty");
    }
}
