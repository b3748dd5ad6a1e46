#!/usr/bin/env python3
"""Reference dequantization for tests/gguf_parity.rs, computed with gguf-py (`pip install gguf`).

  gguf_dequant.py model <file.gguf> <out_dir>
      For every ggml type present in the file, dequantizes its smallest tensor with
      gguf.quants.dequantize and writes <out_dir>/<n>.f32 (raw little-endian f32).
  gguf_dequant.py random <out_dir>
      For every block type, writes random blocks (<type>.bin) and their dequantization
      (<type>.f32). Scale fields are set to finite values; everything else is random bytes.
      Types gguf-py can quantize also get a block set made by gguf.quants.quantize.

Both write <out_dir>/manifest.json describing the files.
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def model(path, out):
    reader = gguf.GGUFReader(path)
    smallest = {}
    for t in reader.tensors:
        if t.tensor_type not in smallest or t.n_bytes < smallest[t.tensor_type].n_bytes:
            smallest[t.tensor_type] = t
    manifest = []
    for i, (ty, t) in enumerate(sorted(smallest.items())):
        values = gguf.quants.dequantize(t.data, ty).astype(np.float32)
        f32 = out / f"{i}.f32"
        f32.write_bytes(values.tobytes())
        manifest.append({"tensor": t.name, "type": ty.name, "f32": f32.name})
    return manifest


# byte offsets of f16 scale fields in each block type
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16, T.F16]


def random_blocks(rng, ty, n_blocks):
    _, type_size = gguf.GGML_QUANT_SIZES[ty]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scales = (rng.standard_normal((n_blocks, 2)) * 0.05).astype(np.float16).view(np.uint8)
    for k, off in enumerate(F16_FIELDS.get(ty, [])):
        raw[:, off:off + 2] = scales[:, 2 * k:2 * k + 2]
    if ty == T.Q8_K:
        raw[:, 0:4] = (rng.standard_normal((n_blocks, 1)) * 0.01).astype(np.float32).view(np.uint8)
    return raw


def dequant_q8_k(raw):
    # gguf-py has no Q8_K; ggml's dequantize_row_q8_K is y = d * q (f32 d, 256 x i8, 16 x i16 sums)
    d = raw[:, 0:4].copy().view(np.float32)
    q = raw[:, 4:260].view(np.int8).astype(np.float32)
    return d * q


def random(out):
    rng = np.random.default_rng(1234)
    manifest = []
    types = list(F16_FIELDS) + [T.Q8_K]
    cases = [(ty, "random", random_blocks(rng, ty, 64)) for ty in types]
    for ty in QUANTIZABLE:
        x = rng.standard_normal((8, 256)).astype(np.float32)
        cases.append((ty, "quantized", np.ascontiguousarray(gguf.quants.quantize(x, ty)).view(np.uint8)))
    for ty, how, raw in cases:
        if ty == T.Q8_K:
            values = dequant_q8_k(raw)
        else:
            values = gguf.quants.dequantize(raw.reshape(raw.shape[0], -1), ty)
        stem = f"{ty.name}-{how}"
        (out / f"{stem}.bin").write_bytes(raw.tobytes())
        (out / f"{stem}.f32").write_bytes(np.asarray(values, dtype=np.float32).tobytes())
        manifest.append({"type": ty.name, "how": how, "bin": f"{stem}.bin", "f32": f"{stem}.f32"})
    return manifest


def main():
    mode, *args = sys.argv[1:]
    out = Path(args[-1])
    out.mkdir(parents=True, exist_ok=True)
    manifest = model(args[0], out) if mode == "model" else random(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
