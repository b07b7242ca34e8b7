#!/usr/bin/env python3
"""Handshake speed, the SDK (avp==0.6.2) and us side by side, in one run.

Usage: .venv/bin/python scripts/bench_handshake_vs_sdk.py [--weights-gib N] [--keep DIR]

Builds the release binaries, writes synthetic inputs to a temp dir
(a 151,665-token byte-level BPE tokenizer.json like Qwen2's, a Llama-2-7B
config.json, a safetensors model of N GiB), checks that both sides produce
the same hashes, and prints times and ratios. Wall times are the fastest of
several runs on both sides (the least disturbed run on a shared machine);
"CPU time" rows are the thread's CPU time per call, averaged, on both sides
(the whole process's for our opt-in two-thread tokenizer hash):

  tokenizer hash  SDK compute_tokenizer_hash(PreTrainedTokenizerFast)  vs  ours on the loaded vocab
  model hash      SDK compute_model_hash(dict)                         vs  ours on the parsed config
  weights digest  `avp hash weights --threads 1` GB/s per core (and all cores),
                  next to the independent Python/blake3 implementation of the generator.

Targets (issue 3): tokenizer hash >= 20x the SDK, model hash >= 10x, weights >= 1 GB/s per core.
"""

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def make_tokenizer(path, n_model=151_643, n_added=22):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    rng = random.Random(152)
    b2u = bytes_to_unicode()
    words = ["the", "ing", "tion", "agent", "vector", "latent", "cache", "model", "hash", "data"]
    vocab = {}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    while len(vocab) < n_model:
        kind = rng.random()
        if kind < 0.5:
            raw = (" " if rng.random() < 0.6 else "") + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
            raw = raw.encode()
        elif kind < 0.8:
            raw = (" " + rng.choice(words) + rng.choice(words)[: rng.randint(1, 4)]).encode()
        else:
            raw = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3))).encode()
        tok = "".join(b2u[b] for b in raw)
        vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.add_special_tokens([AddedToken(f"<|special_{i}|>", special=True) for i in range(n_added)])
    tk.save(str(path))


LLAMA2_7B = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
}


def make_weights(d, gib):
    d.mkdir(parents=True, exist_ok=True)
    tensor_bytes = 16 << 20
    count = max(1, int(gib * (1 << 30)) // tensor_bytes)
    per_file = 32
    chunk = os.urandom(1 << 20) * 16
    for f in range(0, count, per_file):
        names = [f"model.layers.{i}.weight" for i in range(f, min(count, f + per_file))]
        header = {}
        off = 0
        for name in names:
            header[name] = {"dtype": "BF16", "shape": [tensor_bytes // 2], "data_offsets": [off, off + tensor_bytes]}
            off += tensor_bytes
        hb = json.dumps(header).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        with open(d / f"model-{f // per_file:05d}.safetensors", "wb") as out:
            out.write(struct.pack("<Q", len(hb)) + hb)
            for _ in names:
                out.write(chunk)
    return count * tensor_bytes


def cpu_per_call(fn, n):
    """This thread's CPU time per call, averaged over n calls (robust when the
    machine is shared; wall times are the fastest run instead)."""
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def wall(cmd, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = run(cmd)
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-gib", type=float, default=1.0)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()

    print("building release binaries ...", flush=True)
    run(["cargo", "build", "--release", "-q", "-p", "avp-cli"], cwd=ROOT)
    run(["cargo", "build", "--release", "-q", "-p", "avp-handshake", "--example", "bench_hash"], cwd=ROOT)
    avp = ROOT / "target/release/avp"
    bench = ROOT / "target/release/examples/bench_hash"

    from avp.handshake import compute_model_hash, compute_tokenizer_hash
    from transformers import PreTrainedTokenizerFast

    tmp = Path(tempfile.mkdtemp(prefix="avp-hs-bench-")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []

    # Tokenizer hash.
    tok_path = tmp / "tokenizer.json"
    if not tok_path.exists():
        make_tokenizer(tok_path)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))
    sdk_hash = compute_tokenizer_hash(tok)
    sdk_s = min(timeit.repeat(lambda: compute_tokenizer_hash(tok), number=1, repeat=7))
    sdk_cpu = cpu_per_call(lambda: compute_tokenizer_hash(tok), 7)
    ours = json.loads(run([str(bench), "tokenizer", str(tok_path), "20"]))
    assert ours["hash"] == sdk_hash, (ours["hash"], sdk_hash)
    cli_s, cli_hash = wall([str(avp), "hash", "tokenizer", str(tok_path)], 5)
    assert cli_hash == sdk_hash
    n = ours["vocab_size"]
    rows.append((f"tokenizer hash, {n} tokens (loaded vocab), wall", sdk_s, ours["hash_only_s"]))
    rows.append((f"tokenizer hash, {n} tokens (loaded vocab), CPU time", sdk_cpu, ours["hash_only_cpu_s"]))
    rows.append((f"tokenizer hash, {n} tokens (ours on 2 threads), wall", sdk_s, ours["two_threads_s"]))
    rows.append((f"tokenizer hash, {n} tokens (ours on 2 threads), CPU time", sdk_cpu, ours["two_threads_cpu_s"]))
    rows.append((f"tokenizer hash, {n} tokens (ours: parse tokenizer.json + hash)", sdk_s, ours["parse_and_hash_s"]))
    rows.append((f"tokenizer hash, {n} tokens (ours: `avp hash tokenizer` process)", sdk_s, cli_s))

    # Model hash: the raw config.json, and LlamaConfig(**config).to_dict(),
    # the dictionary the SDK's HuggingFace connector actually hashes.
    from transformers import LlamaConfig

    forms = {"config.json": LLAMA2_7B, "LlamaConfig.to_dict()": LlamaConfig(**LLAMA2_7B).to_dict()}
    for label, cfg in forms.items():
        cfg_path = tmp / ("config-" + label.replace("(", "").replace(")", "").replace(".", "-") + ".json")
        cfg_path.write_text(json.dumps(cfg, indent=2))
        cfg = json.loads(cfg_path.read_text())
        sdk_cfg_hash = compute_model_hash(cfg)
        number = 20000
        sdk_s = min(timeit.repeat(lambda: compute_model_hash(cfg), number=number, repeat=7)) / number
        sdk_cpu = cpu_per_call(lambda: compute_model_hash(cfg), number)
        ours = json.loads(run([str(bench), "config", str(cfg_path), "200000"]))
        assert ours["hash"] == sdk_cfg_hash
        assert run([str(avp), "hash", "config", str(cfg_path)]) == sdk_cfg_hash
        name = f"model hash, Llama-2-7B {label}, {len(cfg)} keys"
        rows.append((f"{name}, wall", sdk_s, ours["hash_only_s"]))
        rows.append((f"{name}, CPU time", sdk_cpu, ours["hash_only_cpu_s"]))
        rows.append((f"{name} (ours: parse + hash)", sdk_s, ours["parse_and_hash_s"]))

    print()
    print(f"{'operation':<66} {'SDK':>12} {'ours':>12} {'speed-up':>9}")
    for name, a, b in rows:
        print(f"{name:<66} {a * 1e3:>9.3f} ms {b * 1e3:>9.4f} ms {a / b:>8.1f}x")

    # Weights digest.
    wdir = tmp / "weights"
    total = sum(p.stat().st_size for p in wdir.glob("*.safetensors")) if wdir.exists() else 0
    if total == 0:
        total = make_weights(wdir, args.weights_gib)
    run([str(avp), "hash", "weights", str(wdir)])  # warm the page cache
    one_s, d1 = wall([str(avp), "hash", "weights", str(wdir), "--threads", "1"], 3)
    cores = os.cpu_count() or 1
    all_s, dn = wall([str(avp), "hash", "weights", str(wdir)], 3)
    assert d1 == dn
    sys.path.insert(0, str(ROOT / "conformance/gen"))
    import gen_handshake  # the independent Python implementation

    t = time.perf_counter()
    py = gen_handshake.weights_digest(wdir)
    py_s = time.perf_counter() - t
    assert py == d1, (py, d1)
    gb = total / 1e9
    print()
    print(f"weights digest, {gb:.2f} GB of safetensors (page cache warm), digest {d1[:16]}...")
    print(f"  ours, 1 thread     {one_s:7.3f} s  {gb / one_s:6.2f} GB/s per core")
    print(f"  ours, {cores} threads    {all_s:7.3f} s  {gb / all_s:6.2f} GB/s")
    print(f"  Python reference   {py_s:7.3f} s  {gb / py_s:6.2f} GB/s   (ours 1 thread is {py_s / one_s:.1f}x)")
    if args.keep is None:
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
