#!/usr/bin/env python3
"""Shows that the fixture check is not blind: regenerates the fixtures with a deliberate mistake
planted in the SDK run and expects compare_fixtures.py to reject the result.

Usage:  .venv/bin/python engine/testdata/mutants.py [NAME ...]     (default: every mutant)

Each mutant runs gen_models.py's main() in a fresh process with one monkeypatch applied, writes
into a temp dir, and compares it with the committed fixtures. The generator's own cross-checks
against its numpy re-implementation of the spec (`rel_err`-based asserts) are switched off, so the
mistake reaches the comparator instead of being stopped earlier: what is tested is the
comparator's tolerance. So are the trained models' property checks (right context != wrong
context, ...), which a planted mistake may legitimately break. Exit 0 only if every mutant is
rejected. engine/testdata/README.md ("Tolerances") lists what each mutant changes and by how much.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rope_theta_1pct() -> None:
    """RoPE theta 1% too large: every inv_freq[i] = theta^(-2i/d) gets the factor 1.01^(-2i/d)."""
    import torch
    from avp.connectors import huggingface as hf

    original = hf.HuggingFaceConnector.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for module in self.model.modules():
            inv = getattr(module, "inv_freq", None)
            if isinstance(inv, torch.Tensor):
                half = inv.numel()
                exps = torch.arange(half, dtype=torch.float64) / half  # = 2i/d
                inv.mul_((1.01 ** -exps).to(inv.dtype))

    hf.HuggingFaceConnector.__init__ = patched


def realign_without_normalisation() -> None:
    """The untied models' latent step skips the rescaling to the input embeddings' mean norm."""
    import numpy as np
    from avp.connectors import huggingface as hf
    from avp.realign import _to_numpy

    hf.apply_realignment = lambda h, w, tn: _to_numpy(h) @ _to_numpy(w).astype(np.float32)


def kv_swapped_in_last_layer() -> None:
    """The KV-cache on the wire has the last layer's K and V swapped (and swapped back on
    import, so the SDK's own in-memory vs wire round-trip check still agrees)."""
    from avp import kv_cache

    def swap_last(layers):
        layers = list(layers)
        k, v = layers[-1]
        layers[-1] = (v, k)
        return tuple(layers)

    to_legacy, deserialize = kv_cache.dynamic_cache_to_legacy, kv_cache.deserialize_kv_cache
    kv_cache.dynamic_cache_to_legacy = lambda cache: swap_last(to_legacy(cache))

    def deserialize_swapped(*args, **kwargs):
        layers, header = deserialize(*args, **kwargs)
        return swap_last(layers), header

    kv_cache.deserialize_kv_cache = deserialize_swapped


def prompt_without_chat_template() -> None:
    """The prompt is tokenized as the bare user text, without the chat template (everywhere
    the SDK and the generator render one)."""
    import gen_models
    from avp.connectors import base, huggingface

    def bare(tokenizer, messages):
        return messages[-1]["content"]

    for module in (base, huggingface, gen_models):
        module._render_prompt = bare
    gen_models.spec_render = lambda model_dir, prompt: prompt  # its minijinja cross-check


def projection_not_rescaled() -> None:
    """The vocabulary-mediated projection skips its rescaling to the target's mean embedding
    norm (the existing llama_tied <-> qwen2 pairs and the trained_a -> trained_b pipeline)."""
    from avp.rosetta import project

    original = project.vocabulary_mediated_projection

    def unscaled(*args, **kwargs):
        kwargs["target_norm"] = None
        return original(*args, **kwargs)

    project.vocabulary_mediated_projection = unscaled


MUTANTS = {f.__name__: f for f in (rope_theta_1pct, realign_without_normalisation,
                                   kv_swapped_in_last_layer, prompt_without_chat_template,
                                   projection_not_rescaled)}


def run_one(name: str, out: Path) -> None:
    """In a child process: apply mutant `name`, then run the generator into `out`."""
    sys.argv = ["gen_models.py", str(out)]
    sys.path.insert(0, str(HERE))
    import gen_models

    gen_models.rel_err = lambda ours, ref: 0.0  # let the mistake through to the comparator
    gen_models.ASSERT_TRAINED_PROPERTIES = False  # a mistake may well make wrong == right
    MUTANTS[name]()
    gen_models.main()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        run_one(sys.argv[2], Path(sys.argv[3]))
        return 0
    names = sys.argv[1:] or list(MUTANTS)
    blind = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"avp-mutant-{name}-") as tmp:
            gen = subprocess.run([sys.executable, __file__, "--child", name, tmp],
                                 capture_output=True, text=True)
            if gen.returncode != 0:
                print(f"mutant {name}: the generator failed\n{gen.stderr[-3000:]}")
                blind.append(name)
                continue
            cmp = subprocess.run([sys.executable, str(HERE / "compare_fixtures.py"), str(HERE),
                                  tmp], capture_output=True, text=True)
            lines = cmp.stdout.splitlines()
            first = next((ln for ln in lines if ln.startswith("MISMATCH")), "(no mismatch)")
            verdict = "rejected" if cmp.returncode == 1 else "NOT REJECTED"
            print(f"mutant {name}: {verdict}: {lines[-1] if lines else ''}\n    first: {first}")
            if cmp.returncode != 1:
                blind.append(name)
    if blind:
        print(f"the fixture check is blind to: {', '.join(blind)}")
        return 1
    print(f"all {len(names)} mutants rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
