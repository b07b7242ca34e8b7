#!/usr/bin/env python3
"""avp_rs against the avp SDK 0.6.2, side by side in one process (BENCHMARKS.md).

    .venv/bin/python -m pip install ./python   # release build of avp_rs
    .venv/bin/python scripts/bench_python.py [--quick]

Each row times the SDK and avp_rs on the same input and prints the ratio;
the minimum of several runs is reported (the least disturbed by other load).
Targets (issue 19): 256 MiB KV decode + verify >= 20x, small-message decode
>= 10x (call overhead included), tokenizer hash of a 152k vocabulary >= 20x,
AVPContext.to_bytes / from_bytes of a 256 MiB context with install() >= 5x.
"""

import argparse
import gc
import os
import random
import sys
import time

import numpy as np

import avp
import avp_rs
from avp.codec import decode as sdk_decode
from avp.codec import encode as sdk_encode
from avp.handshake import compute_tokenizer_hash as sdk_tokenizer_hash
from avp.kv_cache import KVCacheHeader
from avp.types import AVPMetadata, DataType, PayloadType


def best(fn, runs):
    times = []
    for _ in range(runs):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def per_call(fn, seconds=0.5):
    """Seconds per call, looping long enough to be measurable (best of 5)."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt > seconds / 5:
            break
        n *= 2
    return min(best(lambda: [fn() for _ in range(n)], 1) for _ in range(5)) / n


ROWS = []


def row(name, sdk_s, ours_s, target, unit="s"):
    ratio = sdk_s / ours_s
    ROWS.append((name, sdk_s, ours_s, ratio, target))
    fmt = (lambda s: f"{s * 1e6:.2f} µs") if unit == "us" else (lambda s: f"{s * 1e3:.1f} ms")
    ok = "ok" if ratio >= target else "BELOW TARGET"
    print(f"| {name} | {fmt(sdk_s)} | {fmt(ours_s)} | {ratio:.1f}× | ≥ {target}× {ok} |", flush=True)


def kv_message(mib):
    heads, dim = 8, 128
    layers = 32
    seq = (mib << 20) // (layers * 2 * heads * dim * 2)
    tensors = np.random.default_rng(0).integers(0, 1 << 16, size=(layers, 2, heads, seq, dim), dtype=np.uint16)
    kv = KVCacheHeader(num_layers=layers, num_kv_heads=heads, head_dim=dim, seq_len=seq, dtype="bfloat16")
    payload = kv.to_bytes() + tensors.tobytes()
    md = AVPMetadata(model_id="bench", num_layers=layers, payload_type=PayloadType.KV_CACHE,
                     dtype=DataType.BFLOAT16)
    return sdk_encode(payload, md)


def bench_kv_decode(mib, runs):
    msg = kv_message(mib)

    def sdk():
        m = sdk_decode(msg)
        KVCacheHeader.from_bytes(m.payload)

    def ours():
        m = avp_rs.decode(msg)
        avp_rs.kv_arrays(m.payload)

    row(f"{mib} MiB KV message: decode + checksum + KV header", best(sdk, runs), best(ours, runs), 20)


def bench_small():
    payload = np.arange(16, dtype=np.float32).tobytes()
    md = AVPMetadata(session_id="sess-1", source_agent_id="agent-a", target_agent_id="agent-b",
                     model_id="Qwen/Qwen2.5-0.5B-Instruct", hidden_dim=8, num_layers=2,
                     tensor_shape=(2, 8))
    msg = sdk_encode(payload, md)
    row("small message decode (2×8 f32, 144 B), call included", per_call(lambda: sdk_decode(msg)),
        per_call(lambda: avp_rs.decode(msg)), 10, unit="us")


def vocab_152k():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzĠĊ0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZéüß中文"
    vocab = {}
    while len(vocab) < 151_643:
        tok = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        vocab.setdefault(tok, len(vocab))
    return vocab


def bench_tokenizer(runs):
    vocab = vocab_152k()
    sdk_s = best(lambda: sdk_tokenizer_hash(vocab), runs)
    ours_s = best(lambda: avp_rs.tokenizer_hash(vocab), runs)
    assert sdk_tokenizer_hash(vocab) == avp_rs.tokenizer_hash(vocab)
    row("tokenizer hash, 151,643-token vocabulary dict", sdk_s, ours_s, 20)


def bench_context(mib, runs):
    import torch
    from avp.context import AVPContext

    layers, heads, dim = 32, 8, 128
    seq = (mib << 20) // (layers * 2 * heads * dim * 2)
    kv = tuple((torch.randn(1, heads, seq, dim, dtype=torch.bfloat16),
                torch.randn(1, heads, seq, dim, dtype=torch.bfloat16)) for _ in range(layers))
    ctx = AVPContext(past_key_values=kv, model_hash="h", num_steps=1, seq_len=seq,
                     model_family="qwen2", hidden_dim=4096, num_layers=layers)
    sdk_to = best(lambda: ctx.to_bytes(), runs)
    data = ctx.to_bytes()
    sdk_from = best(lambda: AVPContext.from_bytes(data), runs)
    with avp_rs.installed():
        ours_to = best(lambda: ctx.to_bytes(), runs)
        ours_data = ctx.to_bytes()
        ours_from = best(lambda: AVPContext.from_bytes(ours_data), runs)
    row(f"AVPContext.to_bytes, {mib} MiB bf16 KV (install())", sdk_to, ours_to, 5)
    row(f"AVPContext.from_bytes, {mib} MiB bf16 KV (install())", sdk_from, ours_from, 5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 MiB instead of 256 MiB, fewer runs")
    args = ap.parse_args()
    mib, runs = (16, 3) if args.quick else (256, 5)
    print(f"avp {avp.__version__} vs avp_rs ({avp_rs.__file__}); Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.2f}")
    print("| case | SDK 0.6.2 | avp_rs | speed-up | target |")
    print("|---|---|---|---|---|")
    bench_small()
    bench_kv_decode(mib, runs)
    bench_tokenizer(runs)
    bench_context(mib, max(2, runs - 2))
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    below = [r for r in ROWS if r[3] < r[4]]
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
