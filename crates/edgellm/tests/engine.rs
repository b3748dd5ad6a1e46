//! Engine code paths that must agree: one sequence alone vs. inside a batch of four, prefill in
//! one call vs. in chunks of 7, a two-turn chat vs. the whole conversation at once.

mod common;

use std::ops::ControlFlow;

use edgellm::engine::{Engine, EngineConfig, Event, Prompt, Sequence};
use edgellm::tokenizer::ChatMessage;
use edgellm::SamplingParams;

fn tiny(name: &str, max_batch_tokens: usize) -> Engine {
    let cfg =
        EngineConfig { max_batch_tokens, max_seqs: 4, max_context: 256, threads: 2, ..Default::default() };
    Engine::load(&common::fixture(name), cfg).unwrap()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(n), ignore_eos: true, ..SamplingParams::greedy() }
}

const PROMPTS: [&str; 4] = [
    "Licensed under the Apache License, Version 2.0",
    "the quick brown fox",
    "fn main() { println!(\"hello\"); }",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
];

#[test]
fn batch_of_four_equals_each_alone() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        let mut engine = tiny(name, 512);
        let alone: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| {
                let seq = engine.new_sequence(&Prompt::Text(p.to_string()), greedy(24)).unwrap();
                common::run_to_end(&mut engine, &mut [seq]).remove(0)
            })
            .collect();
        let mut batch: Vec<Sequence> = PROMPTS
            .iter()
            .map(|p| engine.new_sequence(&Prompt::Text(p.to_string()), greedy(24)).unwrap())
            .collect();
        assert_eq!(common::run_to_end(&mut engine, &mut batch), alone, "{name}");
        assert_eq!(engine.free_kv_blocks(), engine.config().kv_blocks(), "{name}: blocks leaked");
    }
}

#[test]
fn chunked_prefill_equals_one_call() {
    let prompt = Prompt::Text(PROMPTS.join(" "));
    let mut whole = tiny("tiny-qwen3", 512);
    let mut chunked = tiny("tiny-qwen3", 7);
    let seq = whole.new_sequence(&prompt, greedy(20)).unwrap();
    let a = common::run_to_end(&mut whole, &mut [seq]);
    let seq = chunked.new_sequence(&prompt, greedy(20)).unwrap();
    let b = common::run_to_end(&mut chunked, &mut [seq]);
    assert_eq!(a, b);
}

#[test]
fn two_turn_chat_equals_whole_conversation() {
    let mut engine = tiny("tiny-qwen2", 512);
    let turn1 = vec![ChatMessage::system("You are terse."), ChatMessage::user("hello there")];
    let mut seq = engine.new_sequence(&Prompt::Chat(turn1.clone()), greedy(8)).unwrap();
    let mut reply = String::new();
    engine
        .generate(&mut [&mut seq], &mut |_, e| {
            if let Event::Done(c) = e {
                reply = c.text.clone();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let mut conversation = turn1;
    conversation.push(ChatMessage::assistant(reply));
    conversation.push(ChatMessage::user("and again"));
    let ids = engine.prompt_ids(&Prompt::Chat(conversation.clone())).unwrap();
    engine.extend_sequence(&mut seq, ids, greedy(10)).unwrap();
    let mut reused = 0;
    engine
        .generate(&mut [&mut seq], &mut |_, e| {
            if let Event::Done(c) = e {
                reused = c.usage.cached_tokens;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let continued = seq.generated_ids().to_vec();
    engine.release(&mut seq);
    assert!(reused > 10, "the second turn reused only {reused} tokens of KV");
    let fresh = engine.new_sequence(&Prompt::Chat(conversation), greedy(10)).unwrap();
    assert_eq!(continued, common::run_to_end(&mut engine, &mut [fresh]).remove(0));
}
