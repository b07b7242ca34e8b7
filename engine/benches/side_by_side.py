"""Engine vs SDK, side by side in one run, same model directory, same machine.

Builds a random-weight Hugging Face model of a real shape from
engine/benches/shapes/<shape>/config.json (transformers' own init, saved with
save_pretrained, plus a fixture tokenizer), then times on it:
  SDK  : HuggingFaceConnector.think(prompt, steps), AVPContext.to_bytes(), AVPContext.from_bytes()
  ours : the think_timing example (release build) on the same directory
and prints the best of N on each side and the speed-up ratios.

On a machine shared with other work, libgomp's spin-waiting collapses the
throughput of whichever process is unlucky (measured 9x on the loaded 2-core
dev box); run both sides with OMP_WAIT_POLICY=PASSIVE there (the variable is
inherited by the engine process).

Usage (from the repository root):
  cargo build --release -p avp-engine --example think_timing
  .venv/bin/python engine/benches/side_by_side.py [--shape qwen2.5-0.5b] [--steps 20] [--repeats 5] [--device cpu]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_model(shape: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ROOT / "engine/benches/shapes" / shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "engine/testdata/models/qwen2" / f, out / f)


def time_sdk(model_dir: Path, steps: int, repeats: int, device: str) -> dict:
    import torch
    from avp import AVPContext
    from avp.connectors.huggingface import HuggingFaceConnector

    conn = HuggingFaceConnector.from_pretrained(str(model_dir), device=device, dtype=torch.float32)
    prompt = "What is 2+3? Answer briefly."
    conn.think(prompt, steps=steps)  # warm-up (and realignment, if untied)
    think, export, imp = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ctx = conn.think(prompt, steps=steps)
        if device == "cuda":
            torch.cuda.synchronize()
        think.append(time.perf_counter() - t)
        t = time.perf_counter()
        data = ctx.to_bytes()
        export.append(time.perf_counter() - t)
        t = time.perf_counter()
        AVPContext.from_bytes(data, device=device)
        imp.append(time.perf_counter() - t)
    # Best of the repeats on both sides: the least disturbed run on a shared machine.
    return {"think_s": min(think), "export_s": min(export), "import_s": min(imp), "kv_bytes": len(data)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--binary", default=str(ROOT / "target/release/examples/think_timing"))
    ap.add_argument("--model-dir", help="reuse a model directory made by an earlier run instead of building one")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AVP_CACHE_DIR"] = tmp  # keep the SDK's realignment cache out of ~/.avp
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / args.shape
        if not args.model_dir:
            build_model(args.shape, model_dir)
        sdk = time_sdk(model_dir, args.steps, args.repeats, args.device)
        out = subprocess.run([args.binary, str(model_dir), str(args.steps), str(args.repeats), args.device,
                              "float32"], check=True, capture_output=True, text=True)
        ours = json.loads(out.stdout.strip().splitlines()[-1])
    import torch
    print(f"shape={args.shape} steps={args.steps} device={args.device} dtype=float32 "
          f"threads={torch.get_num_threads()} best of {args.repeats}")
    print(f"{'':10}{'SDK':>12}{'engine':>12}{'speed-up':>10}")
    for k in ("think_s", "export_s", "import_s"):
        print(f"{k:10}{sdk[k]:12.4f}{ours[k]:12.4f}{sdk[k] / ours[k]:9.1f}x")
    print(f"kv_bytes  {sdk['kv_bytes']:>12}{ours['kv_bytes']:>12}")
    steps_per_s = args.steps / ours["think_s"]
    print(f"engine think: {steps_per_s:.1f} latent steps/s (incl. prompt prefill)")


if __name__ == "__main__":
    sys.exit(main())
