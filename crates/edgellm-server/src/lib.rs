//! An OpenAI-compatible HTTP API over the edgellm engine (axum on tokio).
//!
//! The engine runs on the [`Scheduler`]'s own thread (continuous batching); handlers submit
//! requests to it and turn its events into JSON responses or server-sent events, through one
//! mechanism for both generation endpoints ([`respond`]). Endpoints: one file each ([`chat`],
//! [`completions`], [`models`], [`metrics`]); errors take OpenAI's shape in
//! [`error`]. A client that disconnects drops its event receiver, which cancels its request and
//! frees its KV blocks; ctrl-c stops accepting connections and lets in-flight responses finish.

pub mod chat;
pub mod completions;
pub mod error;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod respond;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgellm::scheduler::Scheduler;

use crate::error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the address printed on startup says which).
    pub port: u16,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The model's name in `/v1/models` and responses.
    pub model_name: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            model_name: "edgellm".into(),
            max_body_bytes: 4 << 20,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct AppState {
    /// The engine's loop.
    pub scheduler: Arc<Scheduler>,
    /// The model's name.
    pub model_name: Arc<str>,
    /// Required bearer token, if any.
    pub api_key: Option<Arc<str>>,
    /// Server start, seconds since the epoch.
    pub started: u64,
}

/// The routes, with authentication on `/v1/*` and the body size limit.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(v1)
        .route("/health", get(metrics::health))
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(&**key) {
            return ApiError::Request {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong API key; send `Authorization: Bearer <key>`".into(),
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(request).await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::Request {
        status: StatusCode::NOT_FOUND,
        message: format!("no route for {uri}"),
        param: None,
        code: Some("not_found"),
    }
}

/// Serves `scheduler` until ctrl-c (or SIGTERM), then lets in-flight responses finish and stops
/// the scheduler. Prints the listening address on stdout.
pub fn serve(scheduler: Scheduler, cfg: ServerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let state = AppState {
        scheduler: Arc::new(scheduler),
        model_name: cfg.model_name.as_str().into(),
        api_key: cfg.api_key.as_deref().map(Into::into),
        started: openai::created(),
    };
    let app = router(state, cfg.max_body_bytes);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        let addr: SocketAddr = listener.local_addr()?;
        println!("listening on http://{addr}");
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("serving")?;
        eprintln!("shutting down: in-flight requests finished");
        anyhow::Ok(())
    })
    // the router, and with it the last scheduler handle, is gone: the loop thread ends
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutdown requested: finishing in-flight requests");
}
