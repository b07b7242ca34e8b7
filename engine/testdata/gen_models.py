#!/usr/bin/env python3
"""Tiny random HF models and the Python SDK's outputs on them: the engine's test fixtures.

Usage:  .venv/bin/python engine/testdata/gen_models.py [OUT_DIR]     (default: engine/testdata)

Writes OUT_DIR/models/<name>/ (Hugging Face model directories) and OUT_DIR/expected/ (what the
SDK avp==0.6.2 with transformers 5.23.0 and torch 2.11.0 computes on them, on CPU). README.md
next to this file describes every file. Everything is seeded, single-threaded and CPU-only so a
re-run gives byte-identical files (check.sh verifies that; compare_fixtures.py falls back to a
tolerance comparison and says so if a float differs).

Rule IDs (AVP-ENG-n) refer to spec/engine.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The SDK reads AVP_CACHE_DIR at import time (realign.py:40, rosetta/registry.py:15); point it at
# a throwaway directory so we neither read a stale realignment matrix / map from ~/.avp nor leave
# files there. Offline: nothing may touch the hub.
_CACHE = tempfile.mkdtemp(prefix="avp-fixture-cache-")
os.environ["AVP_CACHE_DIR"] = _CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file as save_np  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import avp  # noqa: E402
from avp.connectors.base import _render_prompt, _tokenize_prompt  # noqa: E402
from avp.connectors.huggingface import HuggingFaceConnector  # noqa: E402
from avp.context import AVPContext  # noqa: E402
from avp.handshake import compute_model_hash, compute_tokenizer_hash  # noqa: E402
from avp.kv_cache import serialize_kv_cache  # noqa: E402
from avp.realign import (  # noqa: E402
    apply_realignment,
    compute_realignment_matrix,
    compute_target_norm,
    project_to_embedding_space,
)
from avp.rosetta.calibrate import calibrate  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

VERSIONS = {
    "avp": avp.__version__,
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "numpy": np.__version__,
}

# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

CORPUS_A = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 2+3? The answer is 5. What is 7*6? It is 42.",
    "Agents hand each other key-value caches instead of text.",
    "Grüße aus Köln! Ça va? naïve café, São Paulo, Zürich.",
    "東京タワーは高い。日本語のテキストです。",
    "Rockets 🚀 and stars ✨ and hearts ❤️ in the sky.",
    "def think(prompt, steps):\n    return model(prompt)\n",
    "Line one.\nLine two with\ttab and    spaces.",
    "The assistant answers the user briefly and politely.",
    "Latent thinking: the hidden state becomes the next input embedding.",
]
CORPUS_B = [
    "Mistral and Qwen speak a slightly different vocabulary.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159",
    "Bonjour le monde, voilà une phrase française très simple.",
    "Привет, мир! Это русский текст для токенизатора.",
    "In the beginning the model had random weights and no answers.",
    "Questions and answers: what is two plus three? five.",
    "Emoji 🚀🚀 rockets, and CJK 東京 once more.",
]

# Special tokens. Tokenizer A is ChatML-like (Qwen/Llama-3 style); tokenizer B is <s>/</s> style.
SPECIAL_A = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SPECIAL_B = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]


def train_tokenizer(corpus: list[str], vocab_size: int, special: list[str]) -> Tokenizer:
    """Byte-level BPE, deterministic for a fixed corpus (checked by check.sh)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 8, trainer)
    return tok


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Uses bos_token (a template variable HF passes) and whitespace control, like Llama-3 templates.
LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] | upper + '\\n\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>ASSISTANT\\n\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' if message['role'] == 'user' else message['content'] + '</s>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- ' ' }}{%- endif %}"
)

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # head_dim 8 gives wavelengths 2*pi*{1, 10, 100, 1000}: with 64 one is kept (< 16), one is
    # smoothly interpolated (16..64) and two are divided by the factor, so all three branches run.
    "original_max_position_embeddings": 64,
}

MODELS = [
    dict(
        name="llama_tied", arch="llama", tok="A", template="tokenizer_config", seed=11,
        hidden=32, layers=2, heads=4, kv_heads=2, inter=64, tied=True,
        rope=LLAMA3_ROPE, rope_theta=10000.0, dtype="float32", shard=None,
        covers=["llama", "tied embeddings (soft embedding)", "GQA 4:2", "rope_scaling llama3",
                "chat_template in tokenizer_config.json", "float32"],
    ),
    dict(
        name="llama_untied", arch="llama", tok="A", template="jinja", seed=12,
        hidden=48, layers=3, heads=4, kv_heads=1, inter=96, tied=False,
        rope={"rope_type": "linear", "factor": 2.0}, rope_theta=500000.0, legacy_rope=True,
        dtype="float32", shard="150KB",
        covers=["llama", "untied embeddings (realignment)", "GQA 4:1", "rope_scaling linear",
                "legacy config keys rope_scaling/rope_theta", "chat_template.jinja file",
                "sharded safetensors + index", "float32"],
    ),
    dict(
        name="qwen2", arch="qwen2", tok="A", template="tokenizer_config", seed=13,
        hidden=32, layers=2, heads=4, kv_heads=2, inter=64, tied=True, vocab_pad=16,
        rope_theta=1000000.0, dtype="float32", shard=None,
        covers=["qwen2", "q/k/v bias", "tied embeddings", "GQA 4:2",
                "embedding table padded beyond the tokenizer (vocab_size > len(tokenizer))",
                "float32"],
    ),
    dict(
        name="qwen3", arch="qwen3", tok="B", template="tokenizer_config", seed=14,
        hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, inter=64, tied=False,
        rope_theta=1000000.0, dtype="bfloat16", shard=None,
        covers=["qwen3", "q/k RMSNorm", "explicit head_dim 16 != hidden/heads 8", "untied",
                "bfloat16 checkpoint", "second tokenizer (vocab overlap)"],
    ),
    dict(
        name="mistral", arch="mistral", tok="B", template=None, seed=15,
        hidden=32, layers=2, heads=4, kv_heads=1, inter=64, tied=False,
        rope_theta=10000.0, dtype="float16", shard=None,
        covers=["mistral", "no chat template (SDK fallback prompt format)", "GQA 4:1", "untied",
                "float16 checkpoint"],
    ),
    dict(
        name="llama_nan", arch="llama", tok="A", template="tokenizer_config", seed=11,
        hidden=32, layers=2, heads=4, kv_heads=2, inter=64, tied=True,
        rope=LLAMA3_ROPE, rope_theta=10000.0, dtype="float32", shard=None, nan_row=True,
        covers=["NaN early stop: one embedding row of an unused token is NaN, so the prompt "
                "pass is finite and the first latent step is NaN (AVP-ENG-13)"],
    ),
]
MODEL_BY_NAME = {m["name"]: m for m in MODELS}

PROMPTS = {
    "ascii": "What is 2+3? Answer briefly.",
    "unicode": "Grüße aus Köln — 東京タワー 🚀 naïve café?",
    "multiline": "Line one.\nLine two with\ttab.",
}
THINK_STEPS = [0, 1, 4]
GEN_MAX_NEW = 8
FOLLOWUP = "Now answer."

# A fixed token sequence for the reference forward pass (all ids < every vocab size used here).
REFERENCE_IDS = [1, 70, 85, 300, 42, 7, 2, 199, 120, 33]


def config_for(spec: dict, tok_len: int, bos: int, eos: int, pad: int):
    vocab = tok_len + spec.get("vocab_pad", 0)
    common = dict(
        vocab_size=vocab,
        hidden_size=spec["hidden"],
        intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=spec["tied"],
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    rope = dict(spec.get("rope") or {"rope_type": "default"})
    rope["rope_theta"] = spec["rope_theta"]
    common["rope_parameters"] = rope
    if "head_dim" in spec:
        common["head_dim"] = spec["head_dim"]
    arch = spec["arch"]
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common)
    raise ValueError(arch)


def init_weights(model, seed: int) -> None:
    """Larger-than-HF random init: peaked logits (greedy argmax is not a coin toss) and layers
    strong enough that the output depends on the prompt (with HF's 0.02 init, or 1/sqrt(fan_in),
    tied models just repeat one token whatever the prompt)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(2.0 * torch.randn(p.shape, generator=gen) / (p.shape[1] ** 0.5))


def write_tokenizer(model_dir: Path, tok: Tokenizer, kind: str, template: str | None,
                    template_where: str | None) -> None:
    tok.save(str(model_dir / "tokenizer.json"))
    if kind == "A":
        cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>"}
    else:
        cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_max_length"] = 256
    if template is not None and template_where == "tokenizer_config":
        cfg["chat_template"] = template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if template is not None and template_where == "jinja":
        (model_dir / "chat_template.jinja").write_text(template)


def build_models(out: Path) -> dict:
    toks = {
        "A": train_tokenizer(CORPUS_A, 480, SPECIAL_A),
        "B": train_tokenizer(CORPUS_B, 400, SPECIAL_B),
    }
    info = {}
    for spec in MODELS:
        tok = toks[spec["tok"]]
        vocab = tok.get_vocab()
        if spec["tok"] == "A":
            bos, eos, pad = vocab["<|endoftext|>"], vocab["<|im_end|>"], vocab["<|endoftext|>"]
        else:
            bos, eos, pad = vocab["<s>"], vocab["</s>"], None
        config = config_for(spec, tok.get_vocab_size(), bos, eos, pad)
        torch.manual_seed(spec["seed"])
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        init_weights(model, spec["seed"])
        if spec.get("nan_row"):
            # The last token id is a merge no prompt here produces (asserted when recording).
            with torch.no_grad():
                model.get_input_embeddings().weight[tok.get_vocab_size() - 1].fill_(float("nan"))
        model = model.to(getattr(torch, spec["dtype"]))
        mdir = out / "models" / spec["name"]
        mdir.mkdir(parents=True)
        kwargs = {}
        if spec.get("shard"):
            kwargs["max_shard_size"] = spec["shard"]
        model.save_pretrained(str(mdir), **kwargs)
        if spec.get("legacy_rope"):
            # Real checkpoints from the hub still use the transformers 4.x keys; transformers 5
            # reads them. The engine must accept both spellings (AVP-ENG-3).
            cfg = json.loads((mdir / "config.json").read_text())
            rp = cfg.pop("rope_parameters")
            cfg["rope_theta"] = rp.pop("rope_theta")
            rp["type"] = rp.pop("rope_type")
            cfg["rope_scaling"] = rp
            (mdir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        template = {"A": CHATML_TEMPLATE, "B": QWEN3_TEMPLATE}[spec["tok"]]
        if spec["name"] == "llama_untied":
            template = LLAMA_TEMPLATE
        write_tokenizer(mdir, tok, spec["tok"], template if spec["template"] else None,
                        spec["template"])
        info[spec["name"]] = {"tokenizer": spec["tok"], "nan_token": tok.get_vocab_size() - 1
                              if spec.get("nan_row") else None}
    return info


# ---------------------------------------------------------------------------------------------
# Recording helpers
# ---------------------------------------------------------------------------------------------


class Arrays:
    """Collects named float/int arrays for one safetensors file (keys sorted by safetensors)."""

    def __init__(self) -> None:
        self.items: dict[str, np.ndarray] = {}

    def add(self, key: str, value) -> str:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            value = t.contiguous().numpy()
        arr = np.ascontiguousarray(value)
        assert key not in self.items, key
        self.items[key] = arr
        return key

    def save(self, path: Path) -> None:
        save_np(self.items, str(path), metadata={"generator": "engine/testdata/gen_models.py"})


def _finite_or_none(x: float):
    return x if np.isfinite(x) else None


def canonical_hash(obj) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


def wire_layout(wire: bytes) -> dict:
    """Where the inner KV bytes sit in an AVP message (12-byte header, then metadata)."""
    assert wire[:2] == b"\x41\x56", wire[:4]
    meta_len = int.from_bytes(wire[8:12], "little")
    payload_len_total = int.from_bytes(wire[4:8], "little")
    return {
        "header_bytes": 12,
        "metadata_offset": 12,
        "metadata_len": meta_len,
        "payload_offset": 12 + meta_len,
        "payload_len": payload_len_total - meta_len,
        "total_len": len(wire),
    }


def canonical_wire(wire: bytes) -> bytes:
    """The SDK's message with the `extra` map entries in sorted key order.

    The SDK serialises the Metadata protobuf without deterministic=True (codec.py:78), so the
    order of the three `extra` entries changes from process to process (upb map iteration order)
    and its bytes are not reproducible. Re-serialising with deterministic=True sorts the map keys
    and changes nothing else: same fields, same lengths, same checksum, same payload. This is the
    order our engine writes (AVP-ENG-17).
    """
    from avp import avp_pb2
    from avp.codec import decode

    meta_len = int.from_bytes(wire[8:12], "little")
    meta = avp_pb2.Metadata()
    meta.ParseFromString(wire[12:12 + meta_len])
    canon = meta.SerializeToString(deterministic=True)
    assert len(canon) == meta_len and sorted(canon) == sorted(wire[12:12 + meta_len])
    out = wire[:12] + canon + wire[12 + meta_len:]
    a, b = decode(wire), decode(out)
    assert a.metadata == b.metadata and a.payload == b.payload
    return out


def kv_header_dict(raw: bytes) -> dict:
    import struct

    nl, nh, hd, sl, dt = struct.unpack("<IIIIB", raw[:17])
    return {"num_layers": nl, "num_kv_heads": nh, "head_dim": hd, "seq_len": sl, "dtype_byte": dt}


class GenerateRecorder:
    """Wraps model.generate so the SDK's own call is observed (token ids, effective config)."""

    def __init__(self, model) -> None:
        self.model = model
        self.orig = model.generate
        self.last = None
        model.generate = self._wrapped

    def _wrapped(self, *args, **kwargs):
        out = self.orig(*args, **kwargs)
        margins = None
        if getattr(out, "logits", None) is not None:
            margins = []
            for step_logits in out.logits:
                top2 = torch.topk(step_logits[0].float(), 2).values
                margins.append(float(top2[0] - top2[1]))
        self.last = {"sequences": out.sequences.detach().cpu().tolist(), "margins": margins,
                     "input_len": int(kwargs["input_ids"].shape[-1]) if "input_ids" in kwargs
                     else int(kwargs["inputs_embeds"].shape[1])}
        return out


def load_connector(name: str, dtype=None) -> HuggingFaceConnector:
    # The SDK's own loader. from_pretrained() on CPU picks float32 (huggingface.py:149-156);
    # loading by a path relative to the cwd keeps config._name_or_path == name, so the SDK's
    # model_hash (which hashes config.to_dict(), _name_or_path included) does not depend on
    # where OUT_DIR lives.
    conn = HuggingFaceConnector.from_pretrained(name, device="cpu", dtype=dtype)
    assert conn.model.config._name_or_path == name
    return conn


def sdk_generate(conn: HuggingFaceConnector, rec: GenerateRecorder, prompt: str, **kw) -> dict:
    rec.last = None
    # output_logits only adds the per-step logits to the result (huggingface.py:725 passes user
    # kwargs through); they give the top-1/top-2 margins recorded next to the ids.
    text = conn.generate(prompt, max_new_tokens=GEN_MAX_NEW, do_sample=False, output_logits=True,
                         **kw)
    seq = rec.last["sequences"][0]
    # huggingface.py:681/734: generated ids are sequences[0, prompt_len:].
    gen_ids = seq[rec.last["input_len"]:]
    return {"text": text, "token_ids": gen_ids,
            "min_top2_margin": round(min(rec.last["margins"]), 6)}


# ---------------------------------------------------------------------------------------------
# Per-model recording
# ---------------------------------------------------------------------------------------------


def record_model(out: Path, name: str, build_info: dict) -> dict:
    spec = MODEL_BY_NAME[name]
    edir = out / "expected" / name
    edir.mkdir(parents=True)
    arrays = Arrays()
    conn = load_connector(name)
    model = conn.model
    model.eval()
    rec = GenerateRecorder(model)
    tok = conn.tokenizer
    cfg_on_disk = json.loads((Path(name) / "config.json").read_text())
    gen_cfg = model.generation_config

    entry: dict = {
        "model": name,
        "model_dir": f"models/{name}",
        "covers": spec["covers"],
        "architecture": spec["arch"],
        "checkpoint_dtype": spec["dtype"],
        "compute_dtype": "float32",
        "tied_embeddings": spec["tied"],
        "needs_realignment": conn.needs_realignment(),
        "hidden_dim": conn.hidden_dim,
        "num_layers": conn.num_layers,
        "num_kv_heads": spec["kv_heads"],
        "head_dim": spec.get("head_dim", spec["hidden"] // spec["heads"]),
        "vocab_size": int(model.config.vocab_size),
        "tokenizer_len": len(tok),
        "model_family": conn.get_model_identity().model_family,
        "sdk_model_hash": conn._model_hash,
        "config_json_hash": canonical_hash(cfg_on_disk),
        "tokenizer_hash": compute_tokenizer_hash(tok),
        "has_chat_template": bool(getattr(tok, "chat_template", None)),
        "eos_token_id": gen_cfg.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        # null when NaN (llama_nan): JSON has no NaN.
        "target_norm": _finite_or_none(float(compute_target_norm(model, device="cpu"))),
        "arrays": "arrays.safetensors",
    }
    if spec.get("nan_row"):
        entry["nan_token_id"] = build_info[name]["nan_token"]

    # -- prompts (AVP-ENG-5/6) --------------------------------------------------------------
    prompts = {}
    for pid, text in PROMPTS.items():
        rendered = _render_prompt(tok, [{"role": "user", "content": text}])
        ids, _ = _tokenize_prompt(tok, rendered, "cpu")
        ids = ids[0].tolist()
        if spec.get("nan_row"):
            assert entry["nan_token_id"] not in ids
        prompts[pid] = {"text": text, "rendered": rendered, "input_ids": ids}
    followup_rendered = _render_prompt(tok, [{"role": "user", "content": FOLLOWUP}])
    prompts["followup"] = {
        "text": FOLLOWUP,
        "rendered": followup_rendered,
        "input_ids": _tokenize_prompt(tok, followup_rendered, "cpu")[0][0].tolist(),
    }
    entry["prompts"] = prompts

    # -- reference forward pass (plain HF, for debugging the Rust forward) -------------------
    ids = torch.tensor([REFERENCE_IDS])
    with torch.no_grad():
        fw = model(input_ids=ids, use_cache=True, output_hidden_states=True, return_dict=True)
        base = model.model(input_ids=ids, return_dict=True).last_hidden_state
    # AVP-ENG-8: hidden_states[-1] is the final-norm output, i.e. the base model's output.
    assert torch.equal(fw.hidden_states[-1], base)
    ref = {"input_ids": REFERENCE_IDS, "logits": arrays.add("reference.logits", fw.logits[0]),
           "hidden_states": [], "kv": []}
    for i, h in enumerate(fw.hidden_states):
        ref["hidden_states"].append(arrays.add(f"reference.hidden.{i}", h[0]))
    for li, layer in enumerate(fw.past_key_values.layers):
        ref["kv"].append({"k": arrays.add(f"reference.kv.{li}.k", layer.keys[0]),
                          "v": arrays.add(f"reference.kv.{li}.v", layer.values[0])})
    entry["reference_forward"] = ref

    # -- realignment / soft-embedding operands (AVP-ENG-10/11) -------------------------------
    if conn.needs_realignment():
        w, tn = compute_realignment_matrix(model, device="cpu")
        sdk_w, sdk_tn = conn._ensure_realignment()  # what the SDK caches and uses
        assert torch.equal(w, sdk_w) and torch.equal(tn, sdk_tn)
        entry["realign"] = {"w": arrays.add("realign.w", w), "target_norm": float(tn),
                            "lambda": 1e-5}

    def latent_inputs(hidden: torch.Tensor) -> np.ndarray:
        """The vectors the SDK feeds back, step by step (huggingface.py:456-469)."""
        rows = []
        for i in range(hidden.shape[0] - 1):
            h = hidden[i:i + 1]
            if conn.needs_realignment():
                w_, tn_ = conn._ensure_realignment()
                rows.append(apply_realignment(h, w_, tn_))
            else:
                rows.append(project_to_embedding_space(h, model.get_input_embeddings().weight))
        if not rows:
            return np.zeros((0, hidden.shape[1]), dtype=np.float32)
        return np.concatenate(rows, axis=0).astype(np.float32)

    # -- think (AVP-ENG-7..15) ----------------------------------------------------------------
    think = []
    contexts = {}
    for pid in PROMPTS:
        for steps in THINK_STEPS:
            ctx = conn.think(PROMPTS[pid], steps=steps)
            rendered = prompts[pid]["rendered"]
            ids_t, mask_t = _tokenize_prompt(tok, rendered, "cpu")
            _, hidden = conn.generate_latent_steps(ids_t, steps, attention_mask=mask_t,
                                                   collect_hidden_states=True)
            assert torch.equal(hidden[-1:], ctx.last_hidden_state.reshape(1, -1)) or \
                torch.isnan(hidden[-1]).any()
            wire = canonical_wire(ctx.to_bytes())
            raw, _ = serialize_kv_cache(ctx.past_key_values)
            layout = wire_layout(wire)
            assert wire[layout["payload_offset"]:layout["payload_offset"] + layout["payload_len"]] == raw
            fname = f"think_{pid}_s{steps}.avp"
            (edir / fname).write_bytes(wire)
            key = f"think.{pid}.s{steps}"
            think.append({
                "prompt": pid,
                "steps_requested": steps,
                "steps_taken": ctx.num_steps,
                "seq_len": ctx.seq_len,
                "prompt_tokens": len(prompts[pid]["input_ids"]),
                "wire": fname,
                "wire_layout": layout,
                "kv_header": kv_header_dict(raw),
                "extra": {"model_hash": ctx.model_hash, "model_family": ctx.model_family,
                          "num_steps": str(ctx.num_steps)},
                "hidden_states": arrays.add(key + ".hidden", hidden),
                "latent_inputs": arrays.add(key + ".latent_inputs", latent_inputs(hidden)),
                "last_hidden_state": arrays.add(key + ".last_hidden", ctx.last_hidden_state[0]),
            })
            contexts[(pid, steps)] = wire
    entry["think"] = think

    if spec.get("nan_row"):
        # Only the early stop matters here; greedy decoding over NaN logits is meaningless.
        arrays.save(edir / "arrays.safetensors")
        (edir / "expected.json").write_text(json.dumps(entry, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
        return conn

    # think continuing from a context (accumulated num_steps, positions continue): AVP-ENG-14
    ctx = conn.think(PROMPTS["ascii"], steps=2)
    ctx2 = conn.think(FOLLOWUP, steps=3, context=ctx)
    wire = canonical_wire(ctx2.to_bytes())
    (edir / "think_chain_ascii_s2_followup_s3.avp").write_bytes(wire)
    entry["think_chain"] = {
        "first": {"prompt": "ascii", "steps": 2},
        "second": {"prompt": "followup", "steps": 3},
        "steps_taken_total": ctx2.num_steps,
        "seq_len": ctx2.seq_len,
        "wire": "think_chain_ascii_s2_followup_s3.avp",
        "wire_layout": wire_layout(wire),
        "last_hidden_state": arrays.add("think_chain.last_hidden", ctx2.last_hidden_state[0]),
    }

    # -- generate (AVP-ENG-16..19) ------------------------------------------------------------
    gens = []
    for pid in PROMPTS:
        r = sdk_generate(conn, rec, PROMPTS[pid])
        gens.append({"prompt": pid, "context": None, "max_new_tokens": GEN_MAX_NEW, **r})
    for pid in ("ascii", "unicode"):
        for steps in (0, 4):
            ctx = conn.think(PROMPTS[pid], steps=steps)
            wire = canonical_wire(ctx.to_bytes())
            assert wire == contexts[(pid, steps)]
            r = sdk_generate(conn, rec, FOLLOWUP, context=ctx)
            # Roundtrip: the wire form gives the same continuation (AVP-ENG-20).
            r2 = sdk_generate(conn, rec, FOLLOWUP, context=AVPContext.from_bytes(wire))
            assert r == r2, (name, pid, steps, r, r2)
            gens.append({"prompt": "followup", "context": f"think_{pid}_s{steps}.avp",
                         "max_new_tokens": GEN_MAX_NEW, **r})
    # Stop token: pass the 3rd greedy token of the first run as eos, as a caller-supplied stop
    # token; HF stops after emitting it (the stop token is included in the ids, not the text).
    first = gens[0]
    if len(first["token_ids"]) >= 3:
        stop = first["token_ids"][2]
        r = sdk_generate(conn, rec, PROMPTS["ascii"], eos_token_id=stop)
        gens.append({"prompt": "ascii", "context": None, "max_new_tokens": GEN_MAX_NEW,
                     "stop_token_ids": [stop], **r})
    entry["generate"] = gens

    # -- sampling (SHOULD-level: needs the same RNG stream as torch's CPU generator) ----------
    torch.manual_seed(1234)
    rec.last = None
    text = conn.generate(PROMPTS["ascii"], max_new_tokens=GEN_MAX_NEW, do_sample=True,
                         temperature=0.7, top_p=0.9)
    seq = rec.last["sequences"][0]
    entry["sample"] = {"prompt": "ascii", "seed": 1234, "temperature": 0.7, "top_p": 0.9,
                       "top_k": 50, "max_new_tokens": GEN_MAX_NEW, "text": text,
                       "token_ids": seq[rec.last["input_len"]:]}

    # -- native-dtype run for half-precision checkpoints --------------------------------------
    if spec["dtype"] != "float32":
        nconn = load_connector(name, dtype=getattr(torch, spec["dtype"]))
        native = []
        for steps in (0, 4):
            ctx = nconn.think(PROMPTS["ascii"], steps=steps)
            wire = canonical_wire(ctx.to_bytes())
            fname = f"think_native_ascii_s{steps}.avp"
            (edir / fname).write_bytes(wire)
            raw, _ = serialize_kv_cache(ctx.past_key_values)
            native.append({"prompt": "ascii", "dtype": spec["dtype"], "steps_requested": steps,
                           "steps_taken": ctx.num_steps, "seq_len": ctx.seq_len, "wire": fname,
                           "wire_layout": wire_layout(wire), "kv_header": kv_header_dict(raw),
                           "last_hidden_state": arrays.add(f"native.ascii.s{steps}.last_hidden",
                                                           ctx.last_hidden_state[0])})
        entry["think_native_dtype"] = native
        del nconn

    arrays.save(edir / "arrays.safetensors")
    (edir / "expected.json").write_text(json.dumps(entry, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return conn


# ---------------------------------------------------------------------------------------------
# Cross-model projection (AVP-ENG-21..26)
# ---------------------------------------------------------------------------------------------

PAIRS = [
    ("llama_tied", "qwen2", "vocab_mediated"),    # target table 16 rows longer: truncation
    ("qwen2", "llama_tied", "vocab_mediated"),    # source table longer: truncation
    ("llama_tied", "qwen3", "vocab_overlap"),
    ("mistral", "llama_untied", "vocab_overlap"),  # untied f16 source
]
PROJ_STEPS = [0, 4]


def record_projections(out: Path, conns: dict) -> dict:
    pdir = out / "expected" / "projections"
    pdir.mkdir(parents=True)
    arrays = Arrays()
    pairs = []
    for src_name, tgt_name, expect_method in PAIRS:
        src, tgt = conns[src_name], conns[tgt_name]
        amap = calibrate(src.model, tgt.model, src.tokenizer, tgt.tokenizer, device="cpu",
                         auto_save=False)
        assert amap.method.value == expect_method, (amap.method, expect_method)
        key = f"{src_name}__{tgt_name}"
        p = {"source": src_name, "target": tgt_name, "method": amap.method.value,
             "target_norm": float(amap.target_norm), "avp_map_id":
             f"{src._model_hash[:16]}_{tgt._model_hash[:16]}",
             "w_map_rows": int(amap.w_map.shape[0]), "cases": []}
        if amap.method.value == "vocab_overlap":
            p["overlap_count"] = amap.overlap_count
            p["overlap_ratio"] = amap.overlap_ratio
            p["src_indices"] = arrays.add(key + ".src_indices", np.asarray(amap.src_indices,
                                                                           dtype=np.int64))
            p["tgt_indices"] = arrays.add(key + ".tgt_indices", np.asarray(amap.tgt_indices,
                                                                           dtype=np.int64))
        for pid in ("ascii", "unicode"):
            for steps in PROJ_STEPS:
                ctx = src.think(PROMPTS[pid], steps=steps)
                projected = src.project_hidden_for_cross_model(ctx.last_hidden_state, amap)
                rec = GenerateRecorder(tgt.model)
                text = tgt.generate(FOLLOWUP, context=ctx, source=src, cross_model=True,
                                    max_new_tokens=GEN_MAX_NEW, do_sample=False,
                                    output_logits=True)
                seq = rec.last["sequences"][0]
                tgt.model.generate = rec.orig
                p["cases"].append({
                    "prompt": pid, "steps": steps,
                    "source_last_hidden": arrays.add(f"{key}.{pid}.s{steps}.source_hidden",
                                                     ctx.last_hidden_state[0]),
                    "projected": arrays.add(f"{key}.{pid}.s{steps}.projected",
                                            projected.reshape(-1).float()),
                    "generate_followup": {"text": text,
                                          "token_ids": seq[rec.last["input_len"]:],
                                          "min_top2_margin":
                                              round(min(rec.last["margins"]), 6),
                                          "max_new_tokens": GEN_MAX_NEW},
                })
        pairs.append(p)
    arrays.save(pdir / "arrays.safetensors")
    doc = {"pairs": pairs, "arrays": "arrays.safetensors", "followup_prompt": FOLLOWUP}
    (pdir / "projections.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    return doc


def main() -> None:
    here = Path(__file__).resolve().parent
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else here
    for sub in ("models", "expected"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    build_info = build_models(out)
    os.chdir(out / "models")  # load by relative name (see load_connector)
    (out / "expected").mkdir()
    conns = {}
    for spec in MODELS:
        conns[spec["name"]] = record_model(out, spec["name"], build_info)
        print(f"recorded {spec['name']}", file=sys.stderr)
    record_projections(out, conns)
    index = {
        "generator": "engine/testdata/gen_models.py",
        "versions": VERSIONS,
        "models": [{"name": m["name"], "dir": f"models/{m['name']}",
                    "expected": f"expected/{m['name']}/expected.json", "covers": m["covers"]}
                   for m in MODELS],
        "projections": "expected/projections/projections.json",
        "prompts": PROMPTS,
        "followup_prompt": FOLLOWUP,
        "think_steps": THINK_STEPS,
        "generate_max_new_tokens": GEN_MAX_NEW,
        "tolerances": {
            "float32_rel": 1e-4,
            "note": "see README.md: relative error max|a-b|/max(max|b|,1e-6) per tensor",
        },
    }
    (out / "expected" / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    shutil.rmtree(_CACHE, ignore_errors=True)


if __name__ == "__main__":
    main()
