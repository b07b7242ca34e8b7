#!/usr/bin/env python3
"""Side-by-side codec benchmark: the Python SDK (avp==0.6.2) and avp-codec in ONE run.

Usage: .venv/bin/python scripts/bench_codec_vs_sdk.py [--mib 256] [--repeats 5]

1. Builds a KV-cache message of about --mib MiB with the SDK (serialize_kv_cache on f16
   tensors, then codec.encode), and a small hidden-state message (3.5 KiB).
2. Times the SDK: decode (+checksum verify) and encode of the big message, decode of the
   small one (best of --repeats batches; the Rust side reports its best batch too).
3. Runs codec/examples/codec_timing (release) on the same files: peek, decode+verify,
   encode (checked byte-identical to the SDK's bytes).
4. Measures the peak RSS of `avp decode --json` on the big file (/usr/bin/time -v).
5. Prints times, ratios and the issue-2 targets.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from avp import codec
from avp.kv_cache import serialize_kv_cache
from avp.types import AVPMetadata, DataType, PayloadType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_time(fn, repeats, number=1):
    """Best (minimum) seconds per call over `repeats` batches; the Rust side does the same."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t) / number)
    return min(times)


def build_messages(mib):
    layers, heads, dim = 24, 8, 64
    seq = (mib << 20) // (layers * 2 * heads * dim * 2)
    base = torch.from_numpy((np.arange(heads * seq * dim, dtype=np.float32) % 251 / 64.0)).to(torch.float16)
    t = base.reshape(1, heads, seq, dim)
    kv, _ = serialize_kv_cache(tuple((t, t) for _ in range(layers)))
    meta = AVPMetadata(session_id="bench", source_agent_id="a", target_agent_id="b", model_id="bench-model",
                       hidden_dim=heads * dim, num_layers=layers, payload_type=PayloadType.KV_CACHE,
                       dtype=DataType.FLOAT16)
    small_meta = AVPMetadata(session_id="sess-0123456789", source_agent_id="agent-a", target_agent_id="agent-b",
                             model_id="Qwen/Qwen2.5-0.5B-Instruct", hidden_dim=896, num_layers=24,
                             dtype=DataType.FLOAT32, tensor_shape=(1, 896), extra={"k": "v"})
    small_tensor = np.arange(896, dtype=np.float32).tobytes()
    return kv, meta, small_tensor, small_meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    print("building the release binaries ...", flush=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "avp-codec", "--example", "codec_timing"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "avp-cli"], cwd=ROOT, check=True)

    kv, meta, small_tensor, small_meta = build_messages(args.mib)
    sdk_encode_big = best_time(lambda: codec.encode(kv, meta), args.repeats)
    big = codec.encode(kv, meta)
    small = codec.encode(small_tensor, small_meta)
    sdk_decode_big = best_time(lambda: codec.decode(big), args.repeats)
    sdk_decode_small = best_time(lambda: codec.decode(small), args.repeats, number=2000)

    with tempfile.TemporaryDirectory() as tmp:
        big_path, small_path = os.path.join(tmp, "big.avp"), os.path.join(tmp, "small.avp")
        with open(big_path, "wb") as f:
            f.write(big)
        with open(small_path, "wb") as f:
            f.write(small)
        del big, kv
        out = subprocess.run([os.path.join(ROOT, "target/release/examples/codec_timing"), big_path, small_path,
                              str(max(args.repeats, 5))], check=True, capture_output=True, text=True)
        ours = json.loads(out.stdout)
        timed = subprocess.run(["/usr/bin/time", "-v", os.path.join(ROOT, "target/release/avp"), "decode", "--json",
                                big_path], capture_output=True, text=True)
        assert timed.returncode == 0, timed.stderr
        rss_kib = int(next(l for l in timed.stderr.splitlines() if "Maximum resident set size" in l).split()[-1])

    n = ours["big_len"]
    gb = n / 1e9
    rows = [
        ("decode+verify big", sdk_decode_big, ours["decode_big_s"], "≥20× and ≥5 GB/s"),
        ("decode+verify 1 thr", sdk_decode_big, ours["decode_big_1t_s"], "(checksum on one thread)"),
        ("encode big", sdk_encode_big, ours["encode_big_s"], "≥10×"),
        ("encode_into reused", sdk_encode_big, ours["encode_into_big_s"], "(output buffer reused)"),
        ("encode_prefix", sdk_encode_big, ours["encode_prefix_big_s"], "(header+metadata; tensor written by writev)"),
        ("decode small", sdk_decode_small, ours["decode_small_s"], "≥50×"),
    ]
    print(f"\ncores: {ours['threads']}; message: {n} bytes ({n / 2**20:.1f} MiB KV cache, f16); small: {ours['small_len']} bytes")
    print(f"{'operation':<20} {'SDK':>12} {'avp-codec':>12} {'ratio':>8}  target")
    for name, sdk, us, target in rows:
        if sdk < 1e-3:  # the small message: µs, enough digits to check the ratio
            print(f"{name:<20} {sdk * 1e6:>10.3f}µs {us * 1e6:>10.4f}µs {sdk / us:>7.1f}×  {target}")
        else:
            print(f"{name:<20} {sdk * 1e3:>10.3f}ms {us * 1e3:>10.4f}ms {sdk / us:>7.1f}×  {target}")
    print(f"decode+verify throughput: {gb / ours['decode_big_s']:.2f} GB/s (SDK {gb / sdk_decode_big:.2f} GB/s)")
    print(f"encode throughput:        {gb / ours['encode_big_s']:.2f} GB/s (SDK {gb / sdk_encode_big:.2f} GB/s)")
    print(f"peek: {ours['peek_small_s'] * 1e9:.0f} ns (small), {ours['peek_big_s'] * 1e9:.0f} ns ({n >> 20} MiB)"
          "   target <200 ns regardless of size")
    print(f"`avp decode --json` peak RSS: {rss_kib / 1024:.1f} MiB = {rss_kib * 1024 / n:.3f}× the file"
          "   target ≤1.2×")


if __name__ == "__main__":
    sys.exit(main())
