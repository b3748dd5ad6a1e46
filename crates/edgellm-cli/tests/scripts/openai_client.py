"""Drives a running `edgellm serve` with the official `openai` client.

Usage: openai_client.py BASE_URL API_KEY MODEL

Checks chat and completions, streamed and not, stop strings, seeds, logprobs, continuous
batching (8 concurrent greedy streams give exactly what each gives alone), prefix caching (a
second request sharing a ~200-token system prompt reuses >= 190 tokens and gets its first token
sooner), client disconnects (50 streams dropped mid-way leave no KV block in use), and that bad
requests get 4xx OpenAI errors while the server keeps serving. Generations stay short: the tests
run on a CPU.
"""

import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../edgellm-server/scripts"))
from bench_serve import SYSTEM, stream_ttft  # noqa: E402

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)
USER = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
CODE = "def fibonacci(n):\n"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what.split(":")[0], flush=True)


def metrics():
    with urllib.request.urlopen(BASE + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def chat(**kw):
    return client.chat.completions.create(model=MODEL, messages=USER, **kw)


def complete(**kw):
    return client.completions.create(model=MODEL, prompt=CODE, **kw)


def main():
    check([m.id for m in client.models.list().data] == [MODEL], "models: /v1/models lists the model")

    # chat, whole and streamed
    r = chat(max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and text, f"chat: non-empty answer {text!r}")
    check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
    check(r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 10, f"chat usage: {r.usage}")
    chunks = list(chat(max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(streamed == text, f"chat stream: same text as whole: {streamed!r}")
    check(chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "chat stream usage chunk")
    check(chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason, "chat stream finish_reason")

    # completions, whole and streamed
    r = complete(max_tokens=16, temperature=0)
    full = r.choices[0].text
    check(r.object == "text_completion" and r.usage.completion_tokens == 16, f"completions: {full!r}")
    streamed = "".join(c.choices[0].text for c in complete(max_tokens=16, temperature=0, stream=True))
    check(streamed == full, f"completions stream: same text as whole: {streamed!r}")

    # stop strings: cut where the stop string starts, finish_reason stop
    stop = full.strip()[2:5]
    r = complete(max_tokens=16, temperature=0, stop=[stop, "never appears"])
    check(r.choices[0].text == full[: full.index(stop)], f"stop: {stop!r} -> {r.choices[0].text!r}")
    check(r.choices[0].finish_reason == "stop", "stop finish_reason")
    r = chat(max_tokens=16, temperature=0, stop=text.strip()[3:6])
    check(r.choices[0].message.content == text[: text.index(text.strip()[3:6])], "stop (chat, one string)")

    # seeds: the same seed gives the same sample
    a = complete(max_tokens=12, temperature=0.9, seed=1234).choices[0].text
    b = complete(max_tokens=12, temperature=0.9, seed=1234).choices[0].text
    check(a == b, f"seed: same seed same text {a!r}")

    # logprobs
    r = chat(max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens, "logprobs (chat): one entry per token")
    check(all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content), "logprobs (chat): 3 alternatives")
    check(content[0].logprob == content[0].top_logprobs[0].logprob, "logprobs (chat): greedy token is the top one")
    r = complete(max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    check(len(lp.tokens) == 6 and len(lp.top_logprobs[0]) <= 2, "logprobs (completions)")
    check("".join(lp.tokens) == r.choices[0].text, "logprobs (completions): tokens spell the text")

    # continuous batching: 8 concurrent greedy streams give exactly the tokens of each alone
    prompts = ["def add(a, b):\n", "class Stack:\n", "import numpy as np\n", "# sort a list\n",
               "def is_prime(n):\n", "# read a CSV file\n", "class Point:\n", "async def fetch(url):\n"]

    def tokens(prompt, stream):
        kw = dict(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, logprobs=0,
                  extra_body={"ignore_eos": True})
        if not stream:
            return client.completions.create(**kw).choices[0].logprobs.tokens
        chunks = client.completions.create(stream=True, **kw)
        return [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]

    alone = [tokens(p, False) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: tokens(p, True), prompts))
    check(all(len(t) == 10 for t in alone), "batching: 10 tokens each")
    check(together == alone, f"batching: 8 concurrent streams == each alone {together!r}")

    # prefix caching: a second request sharing a ~200-token system prompt reuses its KV
    system = f"Run {time.time_ns()}. " + SYSTEM
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Is sorted(x)[0] fine?"}]
    second = [{"role": "system", "content": system}, {"role": "user", "content": "How do I read a file?"}]
    cold_ttft, _, cold = stream_ttft(client, MODEL, first, 4)
    warm_ttft, _, warm = stream_ttft(client, MODEL, second, 4)
    reused = warm.prompt_tokens_details.cached_tokens
    print(f"prefix: first {cold.prompt_tokens} prompt tokens, TTFT {cold_ttft * 1e3:.0f} ms; second "
          f"{warm.prompt_tokens} prompt tokens, {reused} reused, TTFT {warm_ttft * 1e3:.0f} ms", flush=True)
    check(cold.prompt_tokens_details.cached_tokens < 16, "prefix: the first request computes its prompt")
    check(reused >= 190, f"prefix: second request reuses >= 190 tokens: {reused}")
    check(warm_ttft < cold_ttft, f"prefix: lower TTFT {warm_ttft:.3f} s < {cold_ttft:.3f} s")
    m = metrics()
    check(metric(m, "edgellm_prompt_tokens_cached_total") >= 190, "prefix: metrics count reused tokens")
    check(metric(m, "edgellm_prefix_cache_hit_rate") > 0, "prefix: hit rate in metrics")

    # bad requests: 4xx with OpenAI's error shape
    for kw, param in [({"temperature": -1}, "temperature"), ({"top_p": 5}, "top_p"),
                      ({"logit_bias": {"x": 1}}, "logit_bias"), ({"n": 3}, "n")]:
        try:
            chat(max_tokens=4, **kw)
            check(False, f"bad request {kw} accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.body["param"] == param, f"bad request {kw}: 400 {e.body['message']}")
    try:
        client.completions.create(model=MODEL, prompt="hello " * 1500, max_tokens=4)
        check(False, "over-long prompt accepted")
    except openai.BadRequestError as e:
        check("1024" in e.body["message"], f"long prompt: 400 naming the limit: {e.body['message']}")
    try:
        openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0).models.list()
        check(False, "wrong API key accepted")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "api key: 401 for a wrong key")

    # clients that go away mid-stream cancel their requests and free their KV: 50 at once
    def cancelled():
        line = 'edgellm_requests_finished_total{finish_reason="cancelled"} '
        return next(int(x[len(line):]) for x in metrics().splitlines() if x.startswith(line))

    before = cancelled()

    def drop_after_two(i):
        messages = [{"role": "user", "content": f"Count from {i} to {i + 300}, one number per line."}]
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=300,
                                                temperature=0, stream=True)
        for k, _ in enumerate(stream):
            if k == 2:
                break
        stream.close()

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(drop_after_two, range(50)))
    deadline = time.time() + 60
    while True:
        m = metrics()
        idle = metric(m, "edgellm_requests_running") == 0 and metric(m, "edgellm_requests_waiting") == 0
        if idle and metric(m, "edgellm_kv_blocks_used") == 0:
            break
        if time.time() > deadline:
            raise AssertionError(f"disconnect: requests not cancelled\n{m}")
        time.sleep(0.2)
    check(cancelled() - before == 50, "disconnect: 50 streams dropped mid-way, all cancelled, 0 KV blocks used")
    check(metric(m, "edgellm_time_to_first_token_seconds_count") > 0, "metrics: TTFT histogram")

    # and the server still serves
    r = chat(max_tokens=4, temperature=0)
    check(r.usage.completion_tokens >= 1, "still serving after errors and a disconnect")
    print(json.dumps({"passed": True}))


if __name__ == "__main__":
    main()
