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
  transfer   turn 2's POST until the answer (from think's report)
  e2e        turn 2's whole `avp think` process, wall clock (model load included)
Each run checks that the stored turn 2 holds exactly the KV of t2.avp.

Model: engine/testdata/models/qwen2 by default (2 layers, 2 KV heads of 16,
256 positions at most, so turn 1 is ~140 tokens and turn 2 adds ~40: a tiny fixture, so the times are process and model-load dominated and the
ratio is the result); --shape qwen2.5-0.5b builds random weights of that
shape (24 layers, 2 KV heads of 64) with the fixture tokenizer, as
scripts/bench_handoff.py does, so the bytes are those of a real 0.5B model.

Usage: .venv/bin/python scripts/bench_kv_delta.py [--repeats 5] [--shape qwen2.5-0.5b]
       [--turn1-words 20] [--turn2-words 5]
(uses target/release/avp when built with `cargo build --release -p avp-cli
--features engine`, else target/debug/avp; --avp PATH chooses)
"""
import argparse
import json
import re
import shutil
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
        started = time.perf_counter()
        r = run(base + ["--prompt", p2, "--context", t1, "--out", t2])
        e2e = time.perf_counter() - started
        answer = json.loads(r.stdout)
        full = int(answer["bytes"])
        sent = int(answer.get("kv_ext", {}).get("received_bytes", full))
        stored = store / f"{answer['request_id']}.avp"
        if payload(stored) != payload(t2):
            sys.exit("the stored turn 2 is not the full context")
        return {"bytes": sent, "full": full, "positions": answer.get("kv_ext", {}).get("seq_len"),
                "start": answer.get("kv_ext", {}).get("seq_start", 0),
                "transfer": num(r"transfer ([\d.]+) s", r.stderr), "e2e": e2e}
    finally:
        server.terminate()
        server.wait()


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
    args = ap.parse_args()
    avp = args.avp or next((p for p in (ROOT / "target/release/avp", ROOT / "target/debug/avp")
                            if p.exists()), None)
    if avp is None:
        sys.exit("build avp first (cargo build --release -p avp-cli --features engine)")
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
            med = {k: statistics.median(r[k] for r in runs) for k in ("bytes", "full", "transfer", "e2e")}
            med["start"], med["positions"] = runs[0]["start"], runs[0]["positions"]
            results[mode] = med
        name = args.shape or (args.model.name if args.model else "fixture qwen2")
        print(f"binary {avp}, model {name}, {args.repeats} runs, median")
        print("| turn 2 | bytes sent | of the full context | transfer (ms) | e2e turn 2 (ms) |")
        print("|---|---:|---:|---:|---:|")
        for mode, m in results.items():
            what = mode if mode == "full" else f"delta [{m['start']}, {m['positions']})"
            print(f"| {what} | {m['bytes']:.0f} | {m['bytes'] / m['full']:.2f}x of {m['full']:.0f} | "
                  f"{m['transfer'] * 1e3:.1f} | {m['e2e'] * 1e3:.0f} |")


if __name__ == "__main__":
    main()
