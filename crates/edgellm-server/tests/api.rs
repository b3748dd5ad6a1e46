//! The HTTP API end to end (in process, no sockets) on the tiny-qwen2 fixture: random weights,
//! so the text is gibberish, but shapes, counts, streaming and errors are what clients see.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use edgellm::engine::{Engine, EngineConfig};
use edgellm::scheduler::{Scheduler, SchedulerConfig};
use edgellm_server::{router, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn app(api_key: Option<&str>, max_body_bytes: usize) -> Router {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-qwen2");
    let cfg = EngineConfig { max_seqs: 2, threads: 1, ..EngineConfig::default() };
    let engine = Engine::load(&fixture, cfg).unwrap();
    let state = AppState {
        scheduler: std::sync::Arc::new(Scheduler::spawn(engine, SchedulerConfig::default()).unwrap()),
        model_name: "tiny".into(),
        api_key: api_key.map(Into::into),
        started: 0,
    };
    router(state, max_body_bytes)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (status, text) = call(app, "POST", uri, Some(body), None).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

/// The JSON chunks of an SSE body, checking the `data:` framing and the final `[DONE]`.
fn sse_chunks(text: &str) -> Vec<Value> {
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
}

#[tokio::test]
async fn chat_and_completions() {
    let app = app(None, 1 << 20);
    let (status, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["data"][0]["id"], "tiny");

    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 5, "temperature": 0, "ignore_eos": true,
                      "logprobs": true, "top_logprobs": 2});
    let (status, body) = post(&app, "/v1/chat/completions", chat.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);

    // the same request streamed gives the same text
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, text) = call(&app, "POST", "/v1/chat/completions", Some(streamed), None).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect();
    assert_eq!(joined, body["choices"][0]["message"]["content"].as_str().unwrap());
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 5);
    assert_eq!(chunks[n - 1]["choices"], json!([]));

    let (status, body) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "logprobs": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 4);

    let (status, text) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(
            json!({"prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "stream": true}),
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&text);
    let joined: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, body["choices"][0]["text"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");

    let (status, text) = call(&app, "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("edgellm_generation_tokens_total 18"), "{text}");
    assert!(text.contains("edgellm_time_to_first_token_seconds_count 4"), "{text}");
    assert!(text.contains("edgellm_kv_blocks_used 0"), "{text}");
}

#[tokio::test]
async fn errors_have_openai_shape() {
    let app = app(None, 4 << 10);
    let error = |status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>| {
        assert_eq!(status, want, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        if let Some(param) = param {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    };
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let (s, b) = post(&app, "/v1/chat/completions", json!({"messages": msgs, "top_p": 5})).await;
    error(s, &b, StatusCode::BAD_REQUEST, Some("top_p"));
    let (s, b) = post(&app, "/v1/chat/completions", json!({"messages": "not a list"})).await;
    error(s, &b, StatusCode::BAD_REQUEST, None);
    let (s, b) = post(&app, "/v1/completions", json!({"prompt": vec![1; 600], "max_tokens": 2})).await;
    error(s, &b, StatusCode::BAD_REQUEST, Some("prompt"));
    assert!(b["error"]["message"].as_str().unwrap().contains("512"), "{b}");
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    let (s, b) = post(&app, "/v1/completions", json!({"prompt": "x".repeat(5000)})).await;
    error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, None);
    let (s, text) = call(&app, "GET", "/v1/nothing", None, None).await;
    error(s, &serde_json::from_str(&text).unwrap(), StatusCode::NOT_FOUND, None);
    // and it still serves
    let (s, b) = post(&app, "/v1/completions", json!({"prompt": "hello", "max_tokens": 2})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn api_key() {
    let app = app(Some("sekrit"), 1 << 20);
    let (s, text) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "invalid_api_key");
    let (s, _) = call(&app, "GET", "/v1/models", None, Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(&app, "GET", "/v1/models", None, Some("sekrit")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "GET", "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn prefix_cache_shows_in_usage_and_metrics() {
    let app = app(None, 1 << 20);
    let prompt: Vec<u32> = (100..170).collect();
    let body = json!({"prompt": prompt, "max_tokens": 3, "temperature": 0, "ignore_eos": true});
    let (_, first) = post(&app, "/v1/completions", body.clone()).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{first}");
    let (_, second) = post(&app, "/v1/completions", body).await;
    // 70 tokens: four full blocks of 16 come from the cache
    assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"], 64, "{second}");
    assert_eq!(second["choices"][0]["text"], first["choices"][0]["text"]);

    // the extension field pins the system prompt's blocks
    let system = "you are a helpful assistant that answers briefly. ".repeat(4);
    let chat = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
                      "max_tokens": 2, "save_system_prompt_kv_cache": true});
    let (status, body) = post(&app, "/v1/chat/completions", chat).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (_, text) = call(&app, "GET", "/metrics", None, None).await;
    let value = |name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(value("edgellm_prompt_tokens_cached_total"), 64.0);
    assert!(value("edgellm_prefix_cache_hit_rate") > 0.0);
    assert!(value("edgellm_kv_blocks_cached") >= 4.0, "{text}");
    assert!(value("edgellm_kv_blocks_pinned") >= 2.0, "{text}");
    assert_eq!(value("edgellm_kv_blocks_used"), 0.0);
}
