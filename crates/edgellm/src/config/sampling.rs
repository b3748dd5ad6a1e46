//! `SamplingParams`: how one request picks its tokens and when it stops. Parsed from the OpenAI
//! request JSON (field names follow the OpenAI / vLLM API) or built by the CLI, validated with
//! [`SamplingParams::validate`], then turned into a [`crate::sampling::Sampler`].
//!
//! Defaults are the OpenAI API's: `temperature` 1.0 (plain sampling from the model's
//! distribution), every filter and penalty off, no token limit beyond the context. Greedy decoding
//! is `temperature: 0.0`; the CLI may choose it as its own default.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

/// The most alternatives `logprobs` may ask for per position (OpenAI's and vLLM's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Per-request sampling and stopping settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Logits are divided by this before sampling; `0.0` (anything below `1e-5`) is greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` is off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1.0` is off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0.0` is off.
    pub min_p: f32,
    /// HF repetition penalty over prompt and output tokens: a seen token's positive logit is
    /// divided by it, a negative one multiplied; `1.0` is off.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of the given token ids (OpenAI: −100 bans, +100 forces).
    pub logit_bias: BTreeMap<u32, f32>,
    /// Seed of the sampler's random numbers; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Most tokens to generate; `None`: until a stop or the end of the context.
    pub max_tokens: Option<usize>,
    /// Strings that end generation; the matched string is not part of the output. OpenAI sends a
    /// single string or a list; both are accepted.
    #[serde(deserialize_with = "string_or_list")]
    pub stop: Vec<String>,
    /// Token ids that end generation, in addition to the model's EOS ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's EOS ids (`stop_token_ids` still stop).
    pub ignore_eos: bool,
    /// Return the log-probability of each sampled token and of the `n` most likely alternatives
    /// (`Some(0)`: the sampled token's only). These are log-softmax of the raw model logits,
    /// before bias, penalties, temperature and filters (as vLLM by default).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: BTreeMap::new(),
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Self::default() }
    }

    /// Whether sampling is greedy (temperature below `1e-5`, as vLLM).
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Checks every value's range: [`Error::Invalid`] names the first offending field.
    /// Token ids are checked against the vocabulary by [`crate::sampling::Sampler::new`].
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &'static str, why: String| Err(Error::Invalid { what, why });
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return invalid("temperature", format!("{t}; must be finite and ≥ 0 (0 is greedy)"));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return invalid("top_p", format!("{p}; must be in (0, 1] (1 is off)"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return invalid("min_p", format!("{m}; must be in [0, 1] (0 is off)"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return invalid("repetition_penalty", format!("{r}; must be finite and > 0 (1 is off)"));
        }
        for (what, v) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&v) {
                return invalid(what, format!("{v}; must be in [-2, 2] (0 is off)"));
            }
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(*b)) {
            return invalid("logit_bias", format!("{b} for token {id}; biases must be in [-100, 100]"));
        }
        if self.max_tokens == Some(0) {
            return invalid("max_tokens", "0; must be at least 1".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return invalid("stop", "an empty stop string would end every generation at once".into());
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return invalid("logprobs", format!("{n}; at most {MAX_TOP_LOGPROBS} alternatives"));
        }
        Ok(())
    }
}

/// OpenAI's `stop`: `null`, one string, or a list of strings.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_json() {
        let p: SamplingParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, SamplingParams::default());
        assert_eq!(p.temperature, 1.0);
        assert!(!p.is_greedy());
        assert!(SamplingParams::greedy().is_greedy());

        let p: SamplingParams = serde_json::from_str(
            r#"{"temperature": 0.7, "top_p": 0.9, "stop": "\n\n", "logit_bias": {"50256": -100},
                "seed": 42, "max_tokens": 16, "logprobs": 5}"#,
        )
        .unwrap();
        assert_eq!(p.stop, vec!["\n\n".to_string()]);
        assert_eq!(p.logit_bias.get(&50256), Some(&-100.0));
        assert_eq!((p.seed, p.max_tokens, p.logprobs), (Some(42), Some(16), Some(5)));
        p.validate().unwrap();

        let p: SamplingParams = serde_json::from_str(r#"{"stop": ["a", "b"]}"#).unwrap();
        assert_eq!(p.stop, vec!["a", "b"]);
        let p: SamplingParams = serde_json::from_str(r#"{"stop": null}"#).unwrap();
        assert!(p.stop.is_empty());

        let round: SamplingParams = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(round, p);
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let bad = |f: fn(&mut SamplingParams), field: &str| {
            let mut p = SamplingParams::default();
            f(&mut p);
            match p.validate() {
                Err(Error::Invalid { what, .. }) => assert_eq!(what, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        };
        bad(|p| p.temperature = -0.1, "temperature");
        bad(|p| p.temperature = f32::NAN, "temperature");
        bad(|p| p.top_p = 0.0, "top_p");
        bad(|p| p.top_p = 1.5, "top_p");
        bad(|p| p.min_p = -0.1, "min_p");
        bad(|p| p.min_p = 1.1, "min_p");
        bad(|p| p.repetition_penalty = 0.0, "repetition_penalty");
        bad(|p| p.presence_penalty = 2.5, "presence_penalty");
        bad(|p| p.frequency_penalty = -3.0, "frequency_penalty");
        bad(|p| _ = p.logit_bias.insert(3, 101.0), "logit_bias");
        bad(|p| p.max_tokens = Some(0), "max_tokens");
        bad(|p| p.stop = vec![String::new()], "stop");
        bad(|p| p.logprobs = Some(21), "logprobs");
        SamplingParams::greedy().validate().unwrap();
    }
}
