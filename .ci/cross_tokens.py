#!/usr/bin/env python3
"""A package exported on one machine computes the same model on another.

Exports every tiny fixture in several weight formats with the x86-64 build, then runs each golden
prompt greedily and scores the prompts' text (perplexity) with that build and with the aarch64
build under qemu-user: a different instruction set and different kernels (AVX-512/VNNI against
NEON sdot or widening multiplies). Loading re-verifies the manifest's SHA-256 of the weights.

Required: identical tokens for bf16 and fp8 (both machines dequantize to f32 and differ only in
summation order), and for every format the perplexity within 1%. int8/int4 activations are
quantized per row on some kernels and not on others, so on these random-weight models, whose
top logits are often near ties, a greedy token can flip; their token agreement is reported.
(On the real Qwen2.5-Coder-0.5B int8 package all 8 golden prompts give identical 16-token
continuations on both: BENCHMARKS.md.)

usage: cross_tokens.py X86_EDGELLM AARCH64_EDGELLM FIXTURES_DIR [QEMU_CPU ...]
"""
import json
import os
import subprocess
import sys
import tempfile

FIXTURES = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]
WEIGHTS = ["int8", "int4", "fp8", "bf16"]
EXACT = {"fp8", "bf16"}
PPL_TOLERANCE = 0.01
STEPS = 12


def generate(cmd, pkg, prompt, env=None):
    out = subprocess.run(cmd + ["run", pkg, "--raw", "--json", "-n", str(STEPS), "-t", "2",
                                "--ignore-eos", "-p", prompt],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} run {pkg} failed:\n{out.stderr}")
    return json.loads(out.stdout)["generated_ids"]


def perplexity(cmd, pkg, text, env=None):
    out = subprocess.run(cmd + ["eval", "ppl", pkg, "--text", text, "--json", "-t", "2"],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} eval ppl {pkg} failed:\n{out.stderr}")
    return json.loads(out.stdout)["ppl"]


def main():
    x86, arm, fixtures = sys.argv[1], sys.argv[2], sys.argv[3]
    qemu_cpus = sys.argv[4:] or ["max"]
    failures = mismatches = runs = 0
    with tempfile.TemporaryDirectory() as tmp:
        for fixture in FIXTURES:
            cases = json.load(open(os.path.join(fixtures, fixture, "golden.json")))["cases"]
            text = os.path.join(tmp, f"{fixture}.txt")
            with open(text, "w") as f:
                f.write("\n".join(case["text"] for case in cases))
            for weights in WEIGHTS:
                pkg = os.path.join(tmp, f"{fixture}-{weights}")
                subprocess.run([x86, "export", os.path.join(fixtures, fixture), "-o", pkg,
                                "--weights", weights], check=True, capture_output=True)
                for case in cases:
                    want = generate([x86], pkg, case["text"])
                    for cpu in qemu_cpus:
                        env = dict(os.environ, QEMU_CPU=cpu)
                        got = generate(["qemu-aarch64-static", arm], pkg, case["text"], env)
                        runs += 1
                        if got != want:
                            mismatches += 1
                            failures += weights in EXACT
                            print(f"tokens differ: {fixture} {weights} qemu cpu {cpu}: x86 {want} aarch64 {got}")
                ppl_x86 = perplexity([x86], pkg, text)
                for cpu in qemu_cpus:
                    ppl_arm = perplexity(["qemu-aarch64-static", arm], pkg, text, dict(os.environ, QEMU_CPU=cpu))
                    off = abs(ppl_arm / ppl_x86 - 1)
                    failures += off > PPL_TOLERANCE
                    print(f"{fixture} {weights} qemu cpu {cpu}: ppl x86 {ppl_x86:.4f} aarch64 {ppl_arm:.4f}"
                          f" ({off:.2%})")
    print(f"{runs - mismatches}/{runs} aarch64 greedy runs gave the x86-64 tokens; {failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
