"""Drives a running `edgellm serve` with the official `openai` client.

Usage: openai_client.py BASE_URL API_KEY MODEL

Checks chat and completions, streamed and not, stop strings, seeds, logprobs, continuous
batching (concurrent greedy requests give what they give alone), client disconnects, and that
bad requests get 4xx OpenAI errors while the server keeps serving. Generations stay short: the
tests run on a CPU.
"""

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

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

    # continuous batching: concurrent greedy requests give what they give alone
    prompts = ["def add(a, b):\n", "class Stack:\n", "import numpy as np\n", "# sort a list\n"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: client.completions.create(
            model=MODEL, prompt=p, max_tokens=8, temperature=0).choices[0].text, prompts))
    check(together == alone, f"batching: concurrent == alone {together!r}")

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

    # a client that goes away cancels its request and frees its KV
    stream = chat(max_tokens=200, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.time() + 30
    while True:
        m = metrics()
        if metric(m, "edgellm_requests_running") == 0 and metric(m, "edgellm_kv_blocks_used") == 0:
            break
        if time.time() > deadline:
            raise AssertionError("disconnect: the request was not cancelled")
        time.sleep(0.2)
    check('edgellm_requests_finished_total{finish_reason="cancelled"} 1' in m, "disconnect: cancelled, KV freed")
    check(metric(m, "edgellm_time_to_first_token_seconds_count") > 0, "metrics: TTFT histogram")

    # and the server still serves
    r = chat(max_tokens=4, temperature=0)
    check(r.usage.completion_tokens >= 1, "still serving after errors and a disconnect")
    print(json.dumps({"passed": True}))


if __name__ == "__main__":
    main()
