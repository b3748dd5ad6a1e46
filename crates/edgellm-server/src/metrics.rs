//! `GET /health` and `GET /metrics` (Prometheus text format): queue depth, running sequences,
//! KV blocks (used, free, cached, pinned), token counters, prefix cache hit rate, preemptions,
//! throughput, TTFT and TPOT histograms.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use edgellm::scheduler::{HistogramSnapshot, MetricsSnapshot};
use serde_json::json;

use crate::AppState;

/// `GET /health`: 200 while the server runs.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let m = state.scheduler.metrics();
    Json(json!({ "status": "ok", "running": m.running(), "waiting": m.waiting() }))
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = render(&state.scheduler.metrics().snapshot());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The Prometheus exposition of `m`.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP edgellm_{name} {help}\n# TYPE edgellm_{name} {kind}\nedgellm_{name} {value}"
        );
    };
    metric("requests_waiting", "gauge", "Requests queued for a batch slot.", m.waiting as f64);
    metric("requests_running", "gauge", "Sequences in the running batch.", m.running as f64);
    metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", m.kv_blocks_total as f64);
    metric("kv_blocks_used", "gauge", "KV cache blocks held by sequences.", m.kv_blocks_used as f64);
    metric(
        "kv_blocks_free",
        "gauge",
        "KV cache blocks free (cached ones included).",
        m.kv_blocks_free as f64,
    );
    metric(
        "kv_blocks_cached",
        "gauge",
        "Free KV cache blocks holding a reusable prefix.",
        m.kv_blocks_cached as f64,
    );
    metric(
        "kv_blocks_pinned",
        "gauge",
        "KV cache blocks of saved system prompts.",
        m.kv_blocks_pinned as f64,
    );
    metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", m.prompt_tokens as f64);
    metric(
        "prompt_tokens_cached_total",
        "counter",
        "Prompt tokens whose KV came from the prefix cache.",
        m.prompt_tokens_cached as f64,
    );
    metric(
        "prefix_cache_hit_rate",
        "gauge",
        "Share of prompt tokens served from the prefix cache.",
        m.prefix_hit_rate(),
    );
    metric(
        "preemptions_total",
        "counter",
        "Running sequences preempted for KV space (recomputed later).",
        m.preemptions as f64,
    );
    metric("generation_tokens_total", "counter", "Tokens generated.", m.generated_tokens as f64);
    metric("generation_tokens_per_second", "gauge", "Recent generation throughput.", m.tokens_per_s);
    metric(
        "requests_rejected_total",
        "counter",
        "Requests refused because the queue was full.",
        m.rejected as f64,
    );
    let _ = writeln!(
        out,
        "# HELP edgellm_requests_finished_total Finished requests by reason.\n\
         # TYPE edgellm_requests_finished_total counter"
    );
    for (reason, n) in &m.finished {
        let _ = writeln!(out, "edgellm_requests_finished_total{{finish_reason=\"{reason}\"}} {n}");
    }
    histogram(&mut out, "time_to_first_token_seconds", "Arrival to first token, queueing included.", &m.ttft);
    histogram(
        &mut out,
        "time_per_output_token_seconds",
        "Time per generated token after the first.",
        &m.tpot,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP edgellm_{name} {help}\n# TYPE edgellm_{name} histogram");
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "edgellm_{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "edgellm_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "edgellm_{name}_sum {}\nedgellm_{name}_count {}", h.sum, h.count);
}
