"""Delta over HTTP on a multi-turn run (issue 17; BENCHMARKS.md, "Compact
contexts (issue 17): delta over HTTP"; spec/impl/transport.md AVP-HTTP-102..84).

Turn 1: `avp think --model M --prompt P1 --to URL --out t1.avp` (a full
KV_CACHE transfer; the receiver stores and indexes it). Turn 2: `avp think
--model M --prompt P2 --context t1.avp --to URL --out t2.avp`, which continues
turn 1's context. Against `avp serve --model M` announcing kv_delta, turn 2
sends only the positions after turn 1; against `--kv-capabilities int8,int4`
(no kv_delta) it sends the full context. Reported per mode, median of
--repeats runs (a fresh server and store each run):
  bytes      turn 2's message bytes on the wire (delta: the KV_CACHE_EXT message)
  full       the full turn-2 message (what the receiver stores)
  transfer   turn 2's POST until the answer (from think's report; for a delta
             it includes the sender's work: finding p, hashing [0, p), encoding)
  recv CPU   CPU time all the server's threads spent during turn 2 (Linux
             /proc/PID/task/*/schedstat, ns): decode, assembly, hashing,
             the store's write and fsync; less noisy than wall time on a
             shared box
  e2e        turn 2's whole `avp think` process, wall clock (model load included)
Each run checks that the stored turn 2 holds exactly the KV of t2.avp.

Model: engine/testdata/models/qwen2 by default (2 layers, 2 KV heads of 16,
256 positions at most, so turn 1 is ~140 tokens and turn 2 adds ~40: a tiny fixture, so the times are process and model-load dominated and the
ratio is the result); --shape qwen2.5-0.5b builds random weights of that
shape (24 layers, 2 KV heads of 64) with the fixture tokenizer, as
scripts/bench_handoff.py does, so the bytes are those of a real 0.5B model.

--synthetic L,H,D,P,N measures the transfer alone, without a model: random
float32 KV of L layers, H KV heads of D, turn 1 = its first P positions, turn 2
= all N; turn 2 goes by `avp send t2 --to URL` (full) or `avp send t2
--delta-from t1 --to URL` (delta), to a fresh `avp serve --store DIR` (no
model, no engine build needed), and --avp-before PATH runs an older binary in
the same loop (interleaved, so both see the same load). Reported there:
  send wall  the `avp send` process, wall clock (process start and handshake included)
  send CPU   its user + system CPU time (getrusage of the child)
  recv CPU   as above

Usage: .venv/bin/python scripts/bench_kv_delta.py [--repeats 5] [--shape qwen2.5-0.5b]
       [--turn1-words 20] [--turn2-words 5]
       .venv/bin/python scripts/bench_kv_delta.py --synthetic 24,2,64,217,298 --repeats 15
       [--avp target/release/avp] [--avp-before OLD/avp]
(uses target/release/avp when built with `cargo build --release -p avp-cli
--features engine`, else target/debug/avp; --avp PATH chooses)
"""
import argparse
import resource
import json
import re
import shutil
import struct
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "engine/testdata/models/qwen2"
WORDS = ("the plan has several steps and each one depends on what the previous "
         "agent found about the data the tools and the question at hand").split()


def prompt(n: int, offset: int) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(n)) + "."


def build_shape(out: Path, shape: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ROOT / "engine/benches/shapes" / shape)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / f, out / f)


def num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"no {pattern!r} in:\n{text}")
    return float(m.group(1))


def serve(avp: Path, model: Path, store: Path, caps: str):
    p = subprocess.Popen([avp, "serve", "--listen", "127.0.0.1:0", "--model", model, "--store",
                          store, "--quiet", "--kv-capabilities", caps],
                         stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip().removeprefix("listening on ")


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (0 where /proc has no schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def payload(path: Path) -> bytes:
    from avp.codec import decode
    return bytes(decode(path.read_bytes()).payload)


def run(args: list) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args[:3]))} ... failed:\n{r.stderr}")
    return r


def one_run(avp: Path, model: Path, tmp: Path, caps: str, steps: int, p1: str, p2: str) -> dict:
    store = tmp / "store"
    shutil.rmtree(store, ignore_errors=True)
    server, url = serve(avp, model, store, caps)
    try:
        t1, t2 = tmp / "t1.avp", tmp / "t2.avp"
        base = [avp, "think", "--model", model, "--steps", str(steps), "--to", url]
        run(base + ["--prompt", p1, "--out", t1])
        cpu_before = cpu_ns(server.pid)
        started = time.perf_counter()
        r = run(base + ["--prompt", p2, "--context", t1, "--out", t2])
        e2e = time.perf_counter() - started
        recv_cpu = (cpu_ns(server.pid) - cpu_before) / 1e9
        answer = json.loads(r.stdout)
        full = int(answer["bytes"])
        sent = int(answer.get("kv_ext", {}).get("received_bytes", full))
        stored = store / f"{answer['request_id']}.avp"
        if payload(stored) != payload(t2):
            sys.exit("the stored turn 2 is not the full context")
        return {"bytes": sent, "full": full, "positions": answer.get("kv_ext", {}).get("seq_len"),
                "start": answer.get("kv_ext", {}).get("seq_start", 0),
                "transfer": num(r"transfer ([\d.]+) s", r.stderr), "e2e": e2e, "recv_cpu": recv_cpu}
    finally:
        server.terminate()
        server.wait()


def synth_files(tmp: Path, shape: str) -> tuple:
    import numpy as np
    from avp.codec import encode
    from avp.types import AVPMetadata, DataType, PayloadType

    layers, heads, dim, p, n = (int(x) for x in shape.split(","))
    kv = np.random.default_rng(0).standard_normal((layers, 2, heads, n, dim)).astype(np.float32)
    files = []
    for name, seq in (("t1.avp", p), ("t2.avp", n)):
        head = struct.pack("<IIIIB", layers, heads, dim, seq, 0)
        meta = AVPMetadata(payload_type=PayloadType.KV_CACHE, dtype=DataType.FLOAT32,
                           model_id="synthetic", session_id="s", source_agent_id="a",
                           target_agent_id="b", extra={"model_hash": "synthetic"})
        path = tmp / name
        path.write_bytes(encode(head + np.ascontiguousarray(kv[:, :, :, :seq, :]).tobytes(), meta))
        files.append(path)
    return tuple(files)


def synth_run(avp: Path, tmp: Path, t1: Path, t2: Path, delta: bool) -> dict:
    store = tmp / "store"
    shutil.rmtree(store, ignore_errors=True)
    server, url = serve_plain(avp, store)
    try:
        run([avp, "send", t1, "--to", url])
        extra = ["--delta-from", t1] if delta else []
        cpu_before, child = cpu_ns(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        r = run([avp, "send", t2, "--to", url] + extra)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        recv_cpu = (cpu_ns(server.pid) - cpu_before) / 1e9
        answer = json.loads(r.stdout)
        if payload(store / f"{answer['request_id']}.avp") != payload(t2):
            sys.exit("the stored turn 2 is not the full context")
        sent = int(answer.get("kv_ext", {}).get("received_bytes", answer["bytes"]))
        return {"bytes": sent, "full": int(answer["bytes"]), "wall": wall, "recv_cpu": recv_cpu,
                "send_cpu": (after.ru_utime - child.ru_utime) + (after.ru_stime - child.ru_stime),
                "start": answer.get("kv_ext", {}).get("seq_start", 0)}
    finally:
        server.terminate()
        server.wait()


def serve_plain(avp: Path, store: Path):
    p = subprocess.Popen([avp, "serve", "--listen", "127.0.0.1:0", "--store", store, "--quiet"],
                         stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip().removeprefix("listening on ")


def synthetic(args, avp: Path) -> None:
    binaries = [("now", avp)] + ([("before", args.avp_before)] if args.avp_before else [])
    with tempfile.TemporaryDirectory(prefix="avp-bench-kv-delta-") as d:
        tmp = Path(d)
        t1, t2 = synth_files(tmp, args.synthetic)
        runs = {(b, m): [] for b, _ in binaries for m in ("full", "delta")}
        for _ in range(args.repeats):
            for b, path in binaries:
                for m in ("full", "delta"):
                    runs[(b, m)].append(synth_run(path, tmp, t1, t2, m == "delta"))
        print(f"synthetic float32 KV {args.synthetic} (L,H,D,P,N), {args.repeats} runs each, "
              f"interleaved, median (min)")
        print("| binary | turn 2 | bytes sent | / full | send wall (ms) | send CPU (ms) | recv CPU (ms) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for (b, m), rs in runs.items():
            def cell(k):
                xs = [r[k] * 1e3 for r in rs]
                return f"{statistics.median(xs):.1f} ({min(xs):.1f})"
            what = "full" if m == "full" else f"delta from {rs[0]['start']}"
            print(f"| {b} ({dict(binaries)[b]}) | {what} | {rs[0]['bytes']} | "
                  f"{rs[0]['bytes'] / rs[0]['full']:.2f} | {cell('wall')} | {cell('send_cpu')} | "
                  f"{cell('recv_cpu')} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--turn1-words", type=int, default=20)
    ap.add_argument("--turn2-words", type=int, default=5)
    ap.add_argument("--shape", help="random weights of engine/benches/shapes/SHAPE instead of the fixture")
    ap.add_argument("--model", type=Path, help="a model directory (e.g. one --shape built before)")
    ap.add_argument("--keep-model", type=Path, help="with --shape: build the model here and keep it")
    ap.add_argument("--avp", type=Path)
    ap.add_argument("--synthetic", metavar="L,H,D,P,N", help="transfer alone on synthetic KV (no model)")
    ap.add_argument("--avp-before", type=Path, help="with --synthetic: an older avp to compare, interleaved")
    args = ap.parse_args()
    avp = args.avp or next((p for p in (ROOT / "target/release/avp", ROOT / "target/debug/avp")
                            if p.exists()), None)
    if avp is None:
        sys.exit("build avp first (cargo build --release -p avp-cli --features engine)")
    if args.synthetic:
        return synthetic(args, avp)
    p1, p2 = prompt(args.turn1_words, 0), prompt(args.turn2_words, 7)
    with tempfile.TemporaryDirectory(prefix="avp-bench-kv-delta-") as d:
        tmp = Path(d)
        model = args.model or FIXTURE
        if args.shape:
            model = args.keep_model or tmp / "model"
            build_shape(model, args.shape)
        results = {}
        for mode, caps in (("full", "int8,int4"), ("delta", "int8,int4,delta")):
            runs = [one_run(avp, model, tmp, caps, args.steps, p1, p2) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("bytes", "full", "transfer", "e2e", "recv_cpu")}
            med["start"], med["positions"] = runs[0]["start"], runs[0]["positions"]
            results[mode] = med
        name = args.shape or (args.model.name if args.model else "fixture qwen2")
        print(f"binary {avp}, model {name}, {args.repeats} runs, median")
        print("| turn 2 | bytes sent | of the full context | transfer (ms) | recv CPU (ms) | e2e turn 2 (ms) |")
        print("|---|---:|---:|---:|---:|---:|")
        for mode, m in results.items():
            what = mode if mode == "full" else f"delta [{m['start']}, {m['positions']})"
            print(f"| {what} | {m['bytes']:.0f} | {m['bytes'] / m['full']:.2f}x of {m['full']:.0f} | "
                  f"{m['transfer'] * 1e3:.1f} | {m['recv_cpu'] * 1e3:.1f} | {m['e2e'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
