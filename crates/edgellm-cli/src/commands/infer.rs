//! `edgellm infer`: a file of requests in TensorRT-Edge-LLM's input format (`llm_inference
//! --inputFile`) run through the continuous-batching scheduler, and a responses file out.
//!
//! Input: global `batch_size` (requests generated at once), `temperature`, `top_p`, `top_k`,
//! `max_generate_length`, `apply_chat_template`, `add_generation_prompt`, and `requests[]` with
//! `messages` and `save_system_prompt_kv_cache`; TensorRT-Edge-LLM's defaults apply to missing
//! fields. `stop` (strings, global or per request) is an edgellm extension. Output:
//! `{"responses": [{"output_text", "finish_reason", "request_idx", "batch_idx"}]}` in request
//! order, plus `"profile"` with `--profile`: the run's wall time, token counts, prefix-cache
//! reuse and throughput, and each request's prefill time and decode speed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use edgellm::engine::{Completion, Prompt};
use edgellm::scheduler::{EventSink, Request, RequestEvent, Scheduler, SchedulerConfig};
use edgellm::tokenizer::{ChatMessage, MessageContent};
use edgellm::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine_args::EngineArgs;

/// Run a file of requests (TensorRT-Edge-LLM's input JSON) and write the responses.
#[derive(Debug, Args)]
#[command(after_help = "\
Example REQUESTS.json:
  {\"batch_size\": 2, \"temperature\": 0, \"max_generate_length\": 64,
   \"requests\": [{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},
                                {\"role\": \"user\", \"content\": \"What is a KV cache?\"}],
                  \"save_system_prompt_kv_cache\": true}]}")]
pub struct InferArgs {
    /// Model: a name from `edgellm models` (pulled when absent), a .gguf file, or an HF
    /// checkpoint directory. Default: qwen2.5-coder-0.5b-instruct.
    pub model: Option<String>,
    /// The requests file.
    #[arg(long, value_name = "REQUESTS.json")]
    pub input: PathBuf,
    /// Where the responses go.
    #[arg(long, value_name = "RESPONSES.json")]
    pub output: PathBuf,
    /// Add a per-run profile (timings, tokens, prefix-cache reuse) to the output and stderr.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The input file, with TensorRT-Edge-LLM's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    #[serde(default = "one")]
    batch_size: usize,
    #[serde(default = "one_f32")]
    temperature: f32,
    #[serde(default = "default_top_p")]
    top_p: f32,
    #[serde(default = "default_top_k")]
    top_k: usize,
    #[serde(default = "default_max_generate_length")]
    max_generate_length: usize,
    #[serde(default = "yes")]
    apply_chat_template: bool,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    /// Qwen3 thinking mode: only `false` is supported.
    #[serde(default)]
    enable_thinking: bool,
    /// LoRA adapters: not supported yet, so only an empty map is accepted.
    #[serde(default)]
    available_lora_weights: serde_json::Map<String, Value>,
    #[serde(default)]
    stop: Vec<String>,
    requests: Vec<FileRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    save_system_prompt_kv_cache: bool,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    lora_name: Option<String>,
    /// Speculative decoding is not implemented, so there is nothing to disable.
    #[serde(default)]
    #[allow(dead_code)]
    disable_spec_decode: bool,
}

fn one() -> usize {
    1
}
fn one_f32() -> f32 {
    1.0
}
fn default_top_p() -> f32 {
    0.8
}
fn default_top_k() -> usize {
    50
}
fn default_max_generate_length() -> usize {
    256
}
fn yes() -> bool {
    true
}

impl RequestFile {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: RequestFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if file.batch_size == 0 {
            bail!("{}: batch_size must be at least 1", path.display());
        }
        if file.enable_thinking {
            bail!("{}: enable_thinking is not supported", path.display());
        }
        if !file.available_lora_weights.is_empty() || file.requests.iter().any(|r| r.lora_name.is_some()) {
            bail!("{}: LoRA adapters are not supported yet", path.display());
        }
        if let Some(i) = file.requests.iter().position(|r| r.messages.is_empty()) {
            bail!("{}: request {i} has no messages", path.display());
        }
        Ok(file)
    }

    fn params(&self, request: &FileRequest) -> Result<SamplingParams> {
        let params = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_tokens: Some(self.max_generate_length),
            stop: [&self.stop[..], &request.stop[..]].concat(),
            ..SamplingParams::default()
        };
        params.validate()?;
        Ok(params)
    }
}

/// A message's text: its content, or the `text` of its content parts.
fn plain_text(m: &ChatMessage) -> String {
    match &m.content {
        None => String::new(),
        Some(MessageContent::Text(t)) => t.clone(),
        Some(MessageContent::Parts(parts)) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
    }
}

/// Events of every request on one channel, tagged with the request's index.
struct Tagged(usize, mpsc::Sender<(usize, RequestEvent)>);

impl EventSink for Tagged {
    fn send(&mut self, event: RequestEvent) -> bool {
        self.1.send((self.0, event)).is_ok()
    }
}

/// Runs the command on the resolved model path.
pub fn run(args: &InferArgs, model: &Path) -> Result<()> {
    let file = RequestFile::read(&args.input)?;
    let engine = args.engine.load(model, file.batch_size)?;
    let has_template = engine.chat_template().is_some();
    let mut prompts = Vec::with_capacity(file.requests.len());
    for (i, r) in file.requests.iter().enumerate() {
        let prompt = match (file.apply_chat_template && has_template, file.add_generation_prompt) {
            (true, true) => Prompt::Chat(r.messages.clone()),
            (true, false) => {
                let template = engine.chat_template().expect("checked above");
                let text = template.render(&r.messages, false, None)?;
                Prompt::Ids(engine.tokenizer().encode(&text, false)?)
            }
            // without a template the contents are the prompt, as they are
            (false, _) => Prompt::Text(r.messages.iter().map(plain_text).collect::<Vec<_>>().join("\n")),
        };
        if r.save_system_prompt_kv_cache && !matches!(prompt, Prompt::Chat(_)) {
            eprintln!(
                "warning: request {i}: save_system_prompt_kv_cache needs the chat template and a \
                 generation prompt; its prefix is cached but not pinned"
            );
        }
        prompts.push(prompt);
    }

    let scheduler = Scheduler::spawn(engine, SchedulerConfig { max_waiting: file.requests.len().max(1) })?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    for (i, (r, prompt)) in file.requests.iter().zip(prompts).enumerate() {
        let request = Request {
            pin_system_prompt: r.save_system_prompt_kv_cache,
            ..Request::new(prompt, file.params(r)?, Box::new(Tagged(i, tx.clone())))
        };
        scheduler.submit(request)?;
    }
    drop(tx);
    let mut results: Vec<Option<Result<Completion, String>>> = vec![None; file.requests.len()];
    for (i, event) in rx {
        match event {
            RequestEvent::Done(c) => results[i] = Some(Ok(c)),
            RequestEvent::Error(e) => results[i] = Some(Err(e.to_string())),
            RequestEvent::Accepted { .. } | RequestEvent::Token(_) => {}
        }
    }
    let wall = start.elapsed();
    let metrics = scheduler.metrics().snapshot();
    scheduler.shutdown();

    let mut failed = 0;
    let mut responses = Vec::with_capacity(results.len());
    for (i, result) in results.iter().enumerate() {
        let mut response = json!({ "request_idx": i, "batch_idx": i / file.batch_size });
        match result {
            Some(Ok(c)) => {
                response["output_text"] = json!(c.text);
                response["finish_reason"] = json!(c.finish_reason.as_str());
            }
            Some(Err(e)) => {
                failed += 1;
                response["output_text"] = json!("");
                response["finish_reason"] = json!("error");
                response["error"] = json!(e);
            }
            None => bail!("request {i} ended without a result"),
        }
        responses.push(response);
    }
    let mut out = json!({ "responses": responses });
    if args.profile {
        let completions: Vec<&Completion> = results.iter().flatten().flatten().collect();
        let profile = profile(&completions, wall, metrics.preemptions);
        eprintln!("{}", summary(&profile));
        out["profile"] = profile;
    }
    let text = serde_json::to_string_pretty(&out)?;
    std::fs::write(&args.output, text + "\n")
        .with_context(|| format!("writing {}", args.output.display()))?;
    if failed > 0 {
        bail!("{failed} of {} requests failed; see {}", results.len(), args.output.display());
    }
    Ok(())
}

/// The run's profile: totals and one entry per finished request.
fn profile(completions: &[&Completion], wall: std::time::Duration, preemptions: u64) -> Value {
    let sum = |f: &dyn Fn(&Completion) -> usize| completions.iter().map(|c| f(c)).sum::<usize>();
    let prompt = sum(&|c| c.usage.prompt_tokens);
    let reused = sum(&|c| c.usage.cached_tokens);
    let generated = sum(&|c| c.usage.completion_tokens);
    let secs = wall.as_secs_f64().max(1e-9);
    let requests: Vec<Value> = completions
        .iter()
        .map(|c| {
            json!({
                "prompt_tokens": c.usage.prompt_tokens,
                "reused_tokens": c.usage.cached_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "prefill_ms": c.timings.prefill.as_secs_f64() * 1e3,
                "decode_ms": c.timings.decode.as_secs_f64() * 1e3,
                "decode_tok_s": c.timings.decode_tok_s(c.usage.completion_tokens),
            })
        })
        .collect();
    json!({
        "wall_ms": secs * 1e3,
        "requests": completions.len(),
        "prompt_tokens": prompt,
        "reused_prompt_tokens": reused,
        "computed_prompt_tokens": prompt - reused,
        "generated_tokens": generated,
        "generated_tok_s": generated as f64 / secs,
        "preemptions": preemptions,
        "per_request": requests,
    })
}

fn summary(p: &Value) -> String {
    format!(
        "{} requests in {:.0} ms | prompt: {} tokens ({} reused from the prefix cache) | generated: {} \
         tokens, {:.1} tok/s overall | preemptions: {}",
        p["requests"],
        p["wall_ms"].as_f64().unwrap_or(0.0),
        p["prompt_tokens"],
        p["reused_prompt_tokens"],
        p["generated_tokens"],
        p["generated_tok_s"].as_f64().unwrap_or(0.0),
        p["preemptions"],
    )
}
