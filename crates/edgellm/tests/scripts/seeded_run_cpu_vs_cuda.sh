#!/bin/bash
# Seeded sampling end to end: `edgellm run --temperature 0.8 --seed S` on the tiny fixtures with
# --device cpu (f32) and --device cuda (f16), then how many generations are identical and how
# long their common prefix is. The logits differ by ~1e-3 between the two, so an occasional
# divergence is expected: this reports the match rate rather than asserting it.
# Usage: seeded_run_cpu_vs_cuda.sh EDGELLM_BINARY FIXTURES_DIR OUT_DIR
set -u
bin=$1 fixtures=$2 out=$3
mkdir -p "$out"
for f in tiny-llama tiny-qwen2 tiny-qwen3 tiny-gemma3; do for s in 1 2 3 4 5 6; do for dev in cpu cuda; do
    dt=f32; [ $dev = cuda ] && dt=f16
    timeout 20 "$bin" run "$fixtures/$f" --raw -p "the quick brown fox" --temperature 0.8 --seed $s -n 32 \
        --ignore-eos --json --device $dev --dtype $dt > "$out/$f-$s-$dev.json" 2> "$out/$f-$s-$dev.err"
done; done; done
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for cpu in sorted(out.glob("*-cpu.json")):
    cuda = cpu.with_name(cpu.name.replace("-cpu", "-cuda"))
    try:
        a, b = (json.loads(p.read_text())["generated_ids"] for p in (cpu, cuda))
    except Exception:
        print(cpu.stem[:-4], "not compared: a run failed (see the .err files)")
        continue
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    rows.append(prefix == len(a))
    print(cpu.stem[:-4], "identical" if a == b else f"first difference at token {prefix}")
print(f"{sum(rows)} of {len(rows)} seeded generations identical on CPU and CUDA")
PY
