"""Measures a running `edgellm serve` with the official `openai` client.

Usage:
  bench_serve.py BASE_URL MODEL prefix [--trials N]
      time to first token of a request with a fresh ~200-token system prompt, then of a second
      request sharing it (its KV comes from the prefix cache); reports both and the reused tokens
  bench_serve.py BASE_URL MODEL throughput [--concurrency 1,8] [--tokens 64]
      aggregate decode throughput of N concurrent greedy streams (ignore_eos, same length)

Every figure is printed with what it measured; nothing is computed that was not timed.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai

# about 240 tokens of instructions (Qwen2.5 tokenizer); a trial prefix makes each trial's
# system prompt new to the cache
SYSTEM = (
    "You are a careful senior software engineer who reviews Python code for a small team. "
    "Answer in plain English, then give the corrected code in one fenced block. Keep answers "
    "short: at most ten lines of prose. Point out bugs first, then style problems, then "
    "performance problems, and say which of them matter in practice. Never invent APIs that do "
    "not exist in the standard library; when you are unsure whether a function exists, say so. "
    "Prefer readable code to clever code, name variables after what they hold, and keep "
    "functions under twenty lines. When the question is ambiguous, state the assumption you "
    "make before answering. When the code is already correct, say that it is correct and stop. "
    "Use type hints in every example you write, and show a doctest when it helps the reader. "
    "Mention the time complexity of any algorithm you propose, and prefer the standard library "
    "over third-party packages unless the user asks for a package by name. If the code has a "
    "security problem, such as building SQL queries from strings, say so before anything else."
)


def stream_ttft(client, model, messages, max_tokens):
    """Seconds to the first content chunk, total seconds, usage of one streamed request."""
    start = time.perf_counter()
    ttft, usage = None, None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage:
            usage = chunk.usage
    return ttft, time.perf_counter() - start, usage


def prefix(client, model, trials):
    cold, warm = [], []
    for t in range(trials):
        system = f"Session {t}-{time.time_ns()}. " + SYSTEM
        first = [{"role": "system", "content": system},
                 {"role": "user", "content": "Is `sorted(x)[0]` a good way to get the minimum?"}]
        second = [{"role": "system", "content": system},
                  {"role": "user", "content": "How do I read a file line by line?"}]
        c_ttft, _, c_usage = stream_ttft(client, model, first, 4)
        w_ttft, _, w_usage = stream_ttft(client, model, second, 4)
        cold.append(c_ttft)
        warm.append(w_ttft)
        print(f"trial {t}: first request {c_usage.prompt_tokens} prompt tokens, "
              f"{c_usage.prompt_tokens_details.cached_tokens} reused, TTFT {c_ttft * 1e3:.0f} ms | "
              f"second {w_usage.prompt_tokens} prompt tokens, "
              f"{w_usage.prompt_tokens_details.cached_tokens} reused, TTFT {w_ttft * 1e3:.0f} ms",
              flush=True)
    print(f"median TTFT over {trials} trials: first {statistics.median(cold) * 1e3:.0f} ms, "
          f"second {statistics.median(warm) * 1e3:.0f} ms "
          f"({statistics.median(cold) / statistics.median(warm):.1f}x lower)")


def throughput(client, model, levels, tokens):
    prompts = [f"Write a Python function number {i} that parses a date string." for i in range(max(levels))]

    def one(prompt):
        start = time.perf_counter()
        stamps = []
        stream = client.completions.create(
            model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        for chunk in stream:
            stamps.append(time.perf_counter())
        return start, stamps

    for n in levels:
        begin = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            runs = list(pool.map(one, prompts[:n]))
        end = time.perf_counter()
        # decode phase: from the moment every stream has its first token to the last token;
        # tokens counted are those each stream received in that window
        decode_start = max(stamps[0] for _, stamps in runs)
        decode_end = max(stamps[-1] for _, stamps in runs)
        in_window = sum(sum(1 for s in stamps if s > decode_start) for _, stamps in runs)
        total = sum(len(stamps) for _, stamps in runs)
        print(f"concurrency {n}: {total} chunks in {end - begin:.2f} s ({total / (end - begin):.1f} tok/s "
              f"end to end); decode phase {in_window} tokens in {decode_end - decode_start:.2f} s "
              f"= {in_window / max(decode_end - decode_start, 1e-9):.1f} tok/s aggregate", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("model")
    p.add_argument("what", choices=["prefix", "throughput"])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--api-key", default="none")
    a = p.parse_args()
    client = openai.OpenAI(base_url=a.base + "/v1", api_key=a.api_key, max_retries=0, timeout=600)
    if a.what == "prefix":
        prefix(client, a.model, a.trials)
    else:
        throughput(client, a.model, [int(x) for x in a.concurrency.split(",")], a.tokens)


if __name__ == "__main__":
    main()
