"""End-to-end handoff on loopback: ours (two `avp` processes) next to the SDK
(one process, and over its own HTTP transport), same model files, same machine
(BENCHMARKS.md, "Pipeline"; spec/impl/pipeline.md).

Models: random weights (transformers' init, seeded) of the Qwen2.5-0.5B shape
(engine/benches/shapes/qwen2.5-0.5b) as agent A, and the same shape cut to 6
layers as agent B (another model hash, the same tokenizer: the handshake
resolves shared_tokenizer and A's thought is projected into B). Both carry the
fixture tokenizer of engine/testdata/models/qwen2, so prompts are short.

Phases, each the median of --repeats runs:
  think      prefill + latent steps on A (model load excluded)
  handshake  hello and answer
  serialize  the message: KV export (same model) or projection + HIDDEN_STATE (cross)
  transfer   POST of the message until the receiver's answer
  import     the receiver reads the message into a context (KV import, or priming)
  first tok  generate("Now answer.", context), max_new_tokens=1

Ours: `avp serve --model A|B` receive; `avp think --to` sends (its stderr
report gives think / handshake / serialize / transfer); `avp generate
--max-new-tokens 1 --context <stored>` continues (its report gives import and
the rest). SDK in one process: think, to_bytes, from_bytes, generate (cross:
generate(source=A, cross_model=True), which projects inside). SDK over HTTP:
create_app + AVPClient.handshake/transmit in one process (the SDK cannot
serialise a cross-model thought: to_bytes needs a KV-cache).

Usage: OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_handoff.py [--steps 4] [--repeats 3]
(needs `cargo build --release -p avp-cli --features engine`; ~3 GB of temp disk)
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVP = ROOT / "target/release/avp"
PROMPT = "What is 2+3? Answer briefly."
FOLLOWUP = "Now answer."


def build(out: Path, layers: int | None, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ROOT / "engine/benches/shapes/qwen2.5-0.5b")
    if layers is not None:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:layers]
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "engine/testdata/models/qwen2" / f, out / f)


def serve(model: Path, store: Path):
    p = subprocess.Popen(
        [AVP, "serve", "--listen", "127.0.0.1:0", "--model", model, "--store", store, "--quiet"],
        stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    return p, line.removeprefix("listening on ")


def num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"no {pattern!r} in:\n{text}")
    return float(m.group(1))


def ours_once(a: Path, b: Path | None, url: str, store: Path, steps: int) -> dict:
    args = [AVP, "think", "--model", a, "--prompt", PROMPT, "--steps", str(steps), "--to", url]
    if b is not None:
        args += ["--target-model", b]
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    e = r.stderr
    think = num(r"latent steps; .* in ([\d.]+) s", e) - num(r"model load ([\d.]+) s\)", e)
    sent = num(r"sent: \S+ of (\d+) bytes", e)
    out = {
        "think": think,
        "handshake": num(r"handshake ([\d.]+) s", e),
        "serialize": num(r"prepare ([\d.]+) s", e),
        "transfer": num(r"transfer ([\d.]+) s", e),
        "bytes": sent,
    }
    newest = max((p for p in store.iterdir() if p.suffix == ".avp"), key=lambda p: p.stat().st_mtime)
    receiver = b if b is not None else a
    g = subprocess.run([AVP, "generate", "--model", receiver, "--prompt", FOLLOWUP,
                        "--max-new-tokens", "1", "--context", newest],
                       capture_output=True, text=True, check=True).stderr
    total = num(r"generated \(.*\) in ([\d.]+) s", g)
    load = num(r"model load ([\d.]+) s", g)
    out["import"] = num(r"context import ([\d.]+) s", g)
    out["first_token"] = total - load - out["import"]
    return out


def ours_text_bytes(a: Path, url: str) -> int:
    r = subprocess.run([AVP, "think", "--model", a, "--prompt", PROMPT, "--steps", "0", "--to", url,
                        "--text-tokens", "32"], capture_output=True, text=True, check=True)
    return int(num(r"sent: text of (\d+) bytes", r.stderr))


def sdk(a: Path, b: Path, steps: int, repeats: int) -> dict:
    import torch
    from avp.codec import decode, encode
    from avp.connectors.huggingface import HuggingFaceConnector
    from avp.context import AVPContext
    from avp.transport import AVPClient, create_app
    import uvicorn

    torch.set_grad_enabled(False)
    ca = HuggingFaceConnector.from_pretrained(str(a), device="cpu", dtype=torch.float32)
    cb = HuggingFaceConnector.from_pretrained(str(b), device="cpu", dtype=torch.float32)
    gen = dict(max_new_tokens=1, do_sample=False)
    received = []

    async def handler(msg):
        received.append(encode(msg.payload, msg.metadata))
        return {}

    async def handshake(hello):
        return {"agent_id": "sdk", "identity": ca.get_model_identity().to_dict(),
                "session_id": uuid.uuid4().hex}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(handler, handshake_handler=handshake),
                                           log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    time.sleep(1.0)
    ca.think(PROMPT, steps=steps)  # warm-up
    same, cross, http = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ctx = ca.think(PROMPT, steps=steps)
        t1 = time.perf_counter()
        wire = ctx.to_bytes()
        t2 = time.perf_counter()
        back = AVPContext.from_bytes(wire)
        t3 = time.perf_counter()
        ca.generate(FOLLOWUP, context=back, **gen)
        t4 = time.perf_counter()
        same.append({"think": t1 - t0, "serialize": t2 - t1, "import": t3 - t2,
                     "first_token": t4 - t3, "bytes": len(wire)})
        t0 = time.perf_counter()
        ctx = ca.think(PROMPT, steps=steps)
        t1 = time.perf_counter()
        cb.generate(FOLLOWUP, context=ctx, source=ca, cross_model=True, **gen)
        t2 = time.perf_counter()
        cross.append({"think": t1 - t0, "project_and_first_token": t2 - t1})
        with AVPClient(url, agent_id="sdk-client", model_identity=ca.get_model_identity()) as client:
            t0 = time.perf_counter()
            client.handshake()
            t1 = time.perf_counter()
            msg = decode(wire)
            client.transmit(msg.payload, msg.metadata)
            t2 = time.perf_counter()
        http.append({"handshake": t1 - t0, "transfer": t2 - t1, "bytes": len(received[-1])})
    server.should_exit = True
    return {"same_model_in_process": med(same), "cross_model_in_process": med(cross),
            "same_model_over_sdk_http": med(http)}


def med(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="avp-bench-handoff-"))
    try:
        a, b = tmp / "A", tmp / "B"
        build(a, None, 0)
        build(b, 6, 1)
        (tmp / "sa").mkdir()
        (tmp / "sb").mkdir()
        (tmp / "sj").mkdir()
        pa, ua = serve(a, tmp / "sa")
        pb, ub = serve(b, tmp / "sb")
        pj, uj = serve(ROOT / "engine/testdata/models/qwen3", tmp / "sj")  # another tokenizer: JSON
        try:
            same = [ours_once(a, None, ua, tmp / "sa", args.steps) for _ in range(args.repeats)]
            cross = [ours_once(a, b, ub, tmp / "sb", args.steps) for _ in range(args.repeats)]
            text_bytes = ours_text_bytes(a, uj)
        finally:
            for p in (pa, pb, pj):
                p.terminate()
                p.wait()
        result = {"steps": args.steps, "repeats": args.repeats,
                  "ours_same_model": med(same), "ours_cross_model": med(cross),
                  "ours_json_text_bytes": text_bytes,
                  "sdk": sdk(a, b, args.steps, args.repeats)}
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
