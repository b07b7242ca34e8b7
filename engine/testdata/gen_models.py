#!/usr/bin/env python3
"""Tiny random HF models and the Python SDK's outputs on them: the engine's test fixtures.

Usage:  .venv/bin/python engine/testdata/gen_models.py [OUT_DIR]     (default: engine/testdata)
        .venv/bin/python engine/testdata/gen_models.py --retrain     (rewrites models/trained_*)

Writes OUT_DIR/models/<name>/ (Hugging Face model directories) and OUT_DIR/expected/ (what the
SDK avp==0.6.2 with transformers 5.23.0 and torch 2.11.0 computes on them, on CPU). README.md
next to this file describes every file. Everything is seeded, single-threaded and CPU-only so a
re-run gives byte-identical files (check.sh verifies that; compare_fixtures.py falls back to a
tolerance comparison and says so if a float differs).

models/trained_* (trained.py, README "Trained models") are committed inputs: a run copies them
into OUT_DIR unchanged and records the SDK's pipelines on them; only --retrain trains them.

Rule IDs (AVP-ENG-n) refer to spec/impl/engine.md.
"""

from __future__ import annotations

import atexit
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
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["AVP_CACHE_DIR"] = _CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file as save_np  # noqa: E402
from tokenizers import (  # noqa: E402
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

import avp  # noqa: E402
from avp.connectors.base import _render_prompt, _tokenize_prompt  # noqa: E402
from avp.connectors.huggingface import HuggingFaceConnector  # noqa: E402
from avp.context import AVPContext  # noqa: E402
from avp.handshake import compute_tokenizer_hash  # noqa: E402
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


# The pre-tokenizer split of Qwen2/Qwen2.5 (and, up to details, Llama 3) tokenizer.json files.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tokenizer(corpus: list[str], vocab_size: int, special: list[str],
                    qwen_style: bool) -> Tokenizer:
    """Byte-level BPE, deterministic for a fixed corpus (checked by check.sh).

    qwen_style: NFC normaliser + regex split + ByteLevel(use_regex=False), exactly what
    transformers 5.23's Qwen2Tokenizer imposes. That class is what AutoTokenizer picks for a
    `model_type: qwen2` directory, and it rebuilds the tokenizer from vocab and merges with its
    own normaliser and pre-tokenizer, ignoring those in tokenizer.json
    (models/qwen2/tokenization_qwen2.py). Real Qwen2 tokenizer.json files carry the same ones,
    so reading tokenizer.json is right; the fixture's tokenizer must match too, or the SDK
    would tokenize the qwen2 model differently from its own tokenizer.json.
    """
    tok = Tokenizer(models.BPE())
    if qwen_style:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
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
# Multi-line and indented: renders right only with HF's jinja settings trim_blocks=True and
# lstrip_blocks=True (transformers utils/chat_template_utils.py), and with `raise_exception`
# and `namespace` available; `{{- ' ' }}` eats the newline before it.
QWEN3_TEMPLATE = """{% if messages | length == 0 %}
    {{ raise_exception('no messages') }}
{% endif %}
{% set ns = namespace(turns=0) %}
{% for message in messages %}
    {% set ns.turns = ns.turns + 1 %}
    {% if message['role'] == 'user' %}
[INST] {{ message['content'] }} [/INST]
    {% else %}
{{ message['content'] }}</s>
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    {{- ' ' }}
{% endif %}
"""

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
        generation_eos=["<|im_end|>", "<|endoftext|>"],
        covers=["qwen2", "q/k/v bias", "tied embeddings", "GQA 4:2",
                "generation_config.json eos_token_id as a list (as Qwen2.5-Instruct ships it); "
                "greedy runs stop on the second one",
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
        name="mistral_window", arch="mistral", tok="B", template="tokenizer_config", seed=16,
        hidden=32, layers=2, heads=4, kv_heads=2, inter=64, tied=False, sliding_window=16,
        rope_theta=10000.0, dtype="float32", shard=None,
        covers=["mistral sliding_window 16 < every prompt: the attention window mask",
                "the SDK exports only the last window-1 KV positions (see think[].sdk_wire_"
                "truncated); wire_full_cache is the complete cache (AVP-ENG-3, AVP-ENG-7)"],
    ),
    dict(
        name="llama_nan", arch="llama", tok="A", template="tokenizer_config", seed=11,
        hidden=32, layers=2, heads=4, kv_heads=2, inter=64, tied=True,
        rope=LLAMA3_ROPE, rope_theta=10000.0, dtype="float32", shard=None, nan_row=True,
        covers=["NaN early stop: one embedding row of an unused token is NaN, so the prompt "
                "pass is finite and the first latent step is NaN (AVP-ENG-9)"],
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
    if "sliding_window" in spec:
        common["sliding_window"] = spec["sliding_window"]
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
    """Random init tuned for two properties the tests need.

    - Greedy output depends on the prompt and argmax margins are not tiny: with HF's 0.02 init,
      or with embeddings as strong as the layers (std 0.5 against 1/sqrt(fan_in)), tied models
      repeat one token whatever the prompt.
    - The latent loop is not chaotic: with layers at 2/sqrt(fan_in) a float32 rounding
      difference in the latent step (numpy on the host in the SDK, torch on the device in the
      engine) grew about 10x per step (1e-4 relative after 4 steps, 1e-2..1 after 10). With
      embeddings 0.25 and layers 1/sqrt(fan_in) it stays <= 3e-6 after 4 steps and about 1e-4
      after 10 (measured on every model by swapping the SDK's numpy step for a torch one).

    Uniform values with the wanted standard deviation, made from integers (PCG64, exact
    scaling), so the weight files are bit-identical on every CPU; torch.randn's vectorised
    Box-Muller may round differently with other SIMD code paths.
    """
    rng = np.random.Generator(np.random.PCG64(seed))

    def uniform(shape, std: float) -> torch.Tensor:
        k = rng.integers(-(2 ** 23), 2 ** 23, size=tuple(shape), dtype=np.int64)
        u = (k.astype(np.float64) / 2 ** 23).astype(np.float32)  # exact: 24-bit integers
        return torch.from_numpy(u * np.float32(std * 3 ** 0.5))

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + uniform(p.shape, 0.1))
            elif name.endswith(".bias"):
                p.copy_(uniform(p.shape, 0.1))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(uniform(p.shape, 0.25))
            else:
                p.copy_(uniform(p.shape, 1.0 / p.shape[1] ** 0.5))


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
        "A": train_tokenizer(CORPUS_A, 480, SPECIAL_A, qwen_style=True),
        "B": train_tokenizer(CORPUS_B, 400, SPECIAL_B, qwen_style=False),
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
            # reads them. The engine must accept both spellings (AVP-ENG-1).
            cfg = json.loads((mdir / "config.json").read_text())
            rp = cfg.pop("rope_parameters")
            cfg["rope_theta"] = rp.pop("rope_theta")
            rp["type"] = rp.pop("rope_type")
            cfg["rope_scaling"] = rp
            (mdir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if spec.get("generation_eos"):
            gcfg = json.loads((mdir / "generation_config.json").read_text())
            gcfg["eos_token_id"] = [vocab[t] for t in spec["generation_eos"]]
            (mdir / "generation_config.json").write_text(json.dumps(gcfg, indent=2, sort_keys=True) + "\n")
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


def write_json(path: Path, obj) -> None:
    """UTF-8 JSON, one space indent, no NaN (JSON has none)."""
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n")


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
    order our engine writes (AVP-ENG-7).
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


def engine_form(wire: bytes, model_hash: str) -> bytes:
    """The same message with extra.model_hash set to the engine's hash (AVP-ENG-11).

    Not an SDK output: the SDK's message with one metadata value replaced (both hashes are 64 hex
    digits, so every length stays the same). The engine accepts these for the model that made
    them, and must refuse the SDK originals, whose hash it cannot compute.
    """
    from avp import avp_pb2

    meta_len = int.from_bytes(wire[8:12], "little")
    meta = avp_pb2.Metadata()
    meta.ParseFromString(wire[12:12 + meta_len])
    assert len(meta.extra["model_hash"]) == len(model_hash) == 64
    meta.extra["model_hash"] = model_hash
    canon = meta.SerializeToString(deterministic=True)
    assert len(canon) == meta_len
    return wire[:12] + canon + wire[12 + meta_len:]


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


def decode_cases(conn: HuggingFaceConnector) -> list[dict]:
    """AVP-ENG-8 step 4 on chosen ids: the SDK's own text step, huggingface.py:734-735.

    Edge cases: special tokens in the middle, Python str.strip() also removing U+001C..U+001F
    (Rust's str::trim does not), a lone UTF-8 lead byte (decodes to U+FFFD), leading spaces.
    """
    tok = conn.tokenizer

    def ids(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    specials = [i for i in sorted(set(tok.all_special_ids))]
    cases = {
        "specials_skipped": [specials[0]] + ids(" hello") + [specials[-1]] + ids(" world"),
        "strip_unit_separators": ids("\x1c\x1d") + ids(" a b ") + ids("\x1e\x1f"),
        "strip_whitespace": ids("\n\t  x  \n"),
        "lone_utf8_lead_byte": ids("東")[:1] + ids("ok"),
        "non_ascii": ids("Grüße 東京 🚀"),
        "only_specials": specials[:2],
        # Added tokens marked special in tokenizer.json but not named in tokenizer_config.json
        # (<|im_start|>, [INST], ...) are skipped too.
        "every_added_token": sorted(tok.added_tokens_decoder) + ids("x"),
    }
    return [{"case": k, "token_ids": v, "text": tok.decode(v, skip_special_tokens=True).strip()}
            for k, v in cases.items()]


def record_full_cache(conn, edir: Path, arrays: "Arrays", entry: dict, ctx, ids_t, mask_t,
                      steps: int, hidden: torch.Tensor) -> None:
    """Sliding-window models: the complete KV-cache the SDK's message should have carried.

    transformers 5 gives a model with `sliding_window` a DynamicCache of
    DynamicSlidingWindowLayer, which keeps only the last window-1 positions; the SDK serialises
    that (kv_cache.py:104-139), so its message holds 15 positions while the context reports the
    full seq_len, and a receiver continues at the wrong positions. Not an SDK output: the SDK's
    own latent loop (generate_latent_steps) run on a plain, non-cropping DynamicCache(), which
    transformers still masks with the window (checked: same hidden states within 1e-4).
    """
    from transformers import DynamicCache

    past, hidden_full = conn.generate_latent_steps(ids_t, steps, attention_mask=mask_t,
                                                   past_key_values=DynamicCache(),
                                                   collect_hidden_states=True)
    assert float((hidden_full - hidden).abs().max()) <= 1e-4 * float(hidden.abs().max())
    full_ctx = AVPContext(past_key_values=past, model_hash=ctx.model_hash,
                          num_steps=ctx.num_steps, seq_len=past.get_seq_length(),
                          model_family=ctx.model_family, hidden_dim=ctx.hidden_dim,
                          num_layers=ctx.num_layers)
    wire = canonical_wire(full_ctx.to_bytes())
    fname = entry["wire"].replace(".avp", ".full.avp")
    (edir / fname).write_bytes(wire)
    raw, _ = serialize_kv_cache(past)
    entry["sdk_wire_truncated"] = True
    entry["wire_full_cache"] = fname
    entry["wire_full_cache_layout"] = wire_layout(wire)
    entry["kv_header_full_cache"] = kv_header_dict(raw)
    entry["hidden_states_full_cache"] = arrays.add(
        f"think.{entry['prompt']}.s{steps}.hidden_full_cache", hidden_full)


# ---------------------------------------------------------------------------------------------
# Independent re-implementations of spec/impl/engine.md, asserted against the SDK
#
# They run in float64 / plain libraries, so they also show that an implementation written from
# the spec (not from the SDK's code) meets the tolerances the README promises.
# ---------------------------------------------------------------------------------------------

SPEC_TOL = 1e-4


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref), initial=0.0)
                 / max(float(np.max(np.abs(ref), initial=0.0)), 1e-6))


def spec_render(model_dir: Path, prompt: str) -> str:
    """AVP-ENG-4 with minijinja (the engine's template engine) instead of transformers."""
    import minijinja

    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    jinja = model_dir / "chat_template.jinja"
    template = jinja.read_text() if jinja.exists() else cfg.get("chat_template")
    if not template:
        return f"<|user|>\n{prompt}\n</|user|>\n<|assistant|>"
    env = minijinja.Environment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise RuntimeError(message)

    env.add_function("raise_exception", raise_exception)
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if k in cfg}
    return env.render_str(template, messages=[{"role": "user", "content": prompt}],
                          add_generation_prompt=True, **specials)


def spec_vocab(model_dir: Path) -> dict[str, int]:
    """Token string -> id from tokenizer.json: model vocab plus added tokens (AVP-ENG-13/14)."""
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    for added in tj["added_tokens"]:
        vocab[added["content"]] = added["id"]
    return vocab


def spec_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x))
    return z / z.sum()


def spec_latent_step(h: np.ndarray, e_in: np.ndarray, e_out: np.ndarray, tied: bool) -> np.ndarray:
    """AVP-ENG-5 in float64."""
    if tied:
        return spec_softmax(e_in @ h) @ e_in
    gram = e_out.T @ e_out + 1e-5 * np.eye(e_out.shape[1])
    w = np.linalg.solve(gram, e_out.T @ e_in)
    a = h @ w
    target = np.mean(np.linalg.norm(e_in, axis=1))
    return a * (target / max(np.linalg.norm(a), 1e-6))


def spec_project(h: np.ndarray, src_out: np.ndarray, tgt_in: np.ndarray, src_vocab, tgt_vocab):
    """AVP-ENG-13/14 in float64; returns (vector, method, src_idx, tgt_idx)."""
    target_norm = np.mean(np.linalg.norm(tgt_in, axis=1))
    if src_vocab == tgt_vocab:
        n = min(src_out.shape[0], tgt_in.shape[0])
        y = spec_softmax(src_out[:n] @ h) @ tgt_in[:n]
        method, si, ti = "vocab_mediated", None, None
    else:
        shared = sorted(set(src_vocab) & set(tgt_vocab))
        assert len(shared) >= 100
        si = np.array([src_vocab[t] for t in shared])
        ti = np.array([tgt_vocab[t] for t in shared])
        y = spec_softmax(src_out[si] @ h) @ tgt_in[ti]
        method = "vocab_overlap"
    return y * (target_norm / max(np.linalg.norm(y), 1e-6)), method, si, ti


def spec_load(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """AVP-ENG-1/2: config.json with the spec's defaults, weights (sharded or not) as float64."""
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() \
        else ["model.safetensors"]
    weights = {}
    for f in files:
        if cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16":
            # numpy has no bfloat16: read through torch, widen exactly.
            from safetensors.torch import load_file as load_torch
            weights.update({k: v.double().numpy() for k, v in load_torch(str(model_dir / f)).items()})
        else:
            weights.update({k: v.astype(np.float64) for k, v in load_file(str(model_dir / f)).items()})
    return cfg, weights


def spec_inv_freq(cfg: dict, d: int) -> np.ndarray:
    """AVP-ENG-3 RoPE frequencies, both config spellings."""
    rp = cfg.get("rope_parameters")
    if rp is None:
        rp = dict(cfg.get("rope_scaling") or {})
        rp["rope_theta"] = cfg.get("rope_theta", 10000.0)
        rp["rope_type"] = rp.pop("type", rp.get("rope_type", "default"))
    theta = rp.get("rope_theta", 10000.0)
    inv = (1.0 / theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d))).astype(np.float32)
    kind = rp.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rp["factor"]
    elif kind == "llama3":
        f, lo, hi, n = (rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"],
                        rp["original_max_position_embeddings"])
        wl = 2 * np.pi / inv
        smooth = (n / wl - lo) / (hi - lo)
        inv = np.where(wl > n / lo, inv / f,
                       np.where(wl < n / hi, inv, (1 - smooth) * inv / f + smooth * inv))
    else:
        assert kind == "default", kind
    return inv.astype(np.float64)


def spec_forward(model_dir: Path, ids: list[int]) -> tuple[np.ndarray, list, list]:
    """AVP-ENG-3 from scratch in float64: (logits [T, V], hidden states, per-layer (K, V))."""
    cfg, w = spec_load(model_dir)
    arch = cfg["model_type"]
    n_h, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = cfg.get("head_dim") or (128 if arch == "qwen3" else cfg["hidden_size"] // n_h)
    eps = cfg.get("rms_norm_eps", 1e-6)
    window = cfg.get("sliding_window", 4096) if arch == "mistral" else None

    def rms(x, weight):
        return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))

    def rope(x, pos):  # x [heads, T, d]
        ang = pos[:, None] * spec_inv_freq(cfg, d)[None, :]
        c, s_ = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        half = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1)
        return x * c + half * s_

    t = len(ids)
    pos = np.arange(t, dtype=np.float64)
    x = w["model.embed_tokens.weight"][ids]
    hidden, kv = [x], []
    mask = np.tril(np.ones((t, t), dtype=bool))
    if window is not None:
        mask &= (pos[None, :] > pos[:, None] - window)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        y = rms(x, w[pre + "input_layernorm.weight"])

        def proj(name, y=y, pre=pre):
            out = y @ w[pre + f"self_attn.{name}_proj.weight"].T
            bias = w.get(pre + f"self_attn.{name}_proj.bias")
            return out if bias is None else out + bias

        q = proj("q").reshape(t, n_h, d).transpose(1, 0, 2)
        k = proj("k").reshape(t, n_kv, d).transpose(1, 0, 2)
        v = proj("v").reshape(t, n_kv, d).transpose(1, 0, 2)
        if arch == "qwen3":
            q, k = rms(q, w[pre + "self_attn.q_norm.weight"]), rms(k, w[pre + "self_attn.k_norm.weight"])
        q, k = rope(q, pos), rope(k, pos)
        kv.append((k, v))
        group = n_h // n_kv
        out = np.empty((n_h, t, d))
        for h in range(n_h):
            sc = q[h] @ k[h // group].T / np.sqrt(d)
            sc = np.where(mask, sc, -np.inf)
            p = np.exp(sc - sc.max(-1, keepdims=True))
            out[h] = (p / p.sum(-1, keepdims=True)) @ v[h // group]
        x = x + out.transpose(1, 0, 2).reshape(t, n_h * d) @ w[pre + "self_attn.o_proj.weight"].T
        y = rms(x, w[pre + "post_attention_layernorm.weight"])
        g = y @ w[pre + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (y @ w[pre + "mlp.up_proj.weight"].T)) \
            @ w[pre + "mlp.down_proj.weight"].T
        hidden.append(x)
    x = rms(x, w["model.norm.weight"])
    hidden[-1] = x  # transformers' last hidden state is the final-norm output
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T, hidden, kv


def assert_loop_not_chaotic(conn: HuggingFaceConnector, ids_t, mask_t, steps: int,
                            hidden: torch.Tensor) -> float:
    """Rerun the SDK's loop with the latent step in torch (as an engine does it on the device)
    instead of numpy: if float32 rounding differences grew along the loop, no independent
    implementation could meet the 1e-4 tolerance, and the fixture would be useless."""
    import avp.connectors.huggingface as hf

    def torch_realign(h, w, tn):
        with torch.no_grad():
            a = h.detach().float() @ w.detach().float()
            return (a * (tn / a.norm(dim=-1, keepdim=True).clamp_min(1e-6))).numpy()

    def torch_soft(h, e, temperature=1.0):
        with torch.no_grad():
            e = e.detach().float()
            return (torch.softmax(h.detach().float() @ e.T, -1) @ e).numpy()

    saved = (hf.apply_realignment, hf.project_to_embedding_space)
    hf.apply_realignment, hf.project_to_embedding_space = torch_realign, torch_soft
    try:
        _, other = conn.generate_latent_steps(ids_t, steps, attention_mask=mask_t,
                                              collect_hidden_states=True)
    finally:
        hf.apply_realignment, hf.project_to_embedding_space = saved
    err = rel_err(other.numpy(), hidden.numpy())
    assert err <= SPEC_TOL / 10, err
    return err


def embeddings64(model) -> tuple[np.ndarray, np.ndarray]:
    e_in = model.get_input_embeddings().weight.detach().double().numpy()
    e_out = model.get_output_embeddings().weight.detach().double().numpy()
    return e_in, e_out


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

    # -- prompts (AVP-ENG-4) ----------------------------------------------------------------
    prompts = {}
    for pid, text in PROMPTS.items():
        rendered = _render_prompt(tok, [{"role": "user", "content": text}])
        ids, _ = _tokenize_prompt(tok, rendered, "cpu")
        ids = ids[0].tolist()
        if spec.get("nan_row"):
            assert entry["nan_token_id"] not in ids
        assert spec_render(Path(name), text) == rendered, (name, pid)
        assert Tokenizer.from_file(f"{name}/tokenizer.json").encode(
            rendered, add_special_tokens=False).ids == ids, (name, pid)
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
    # AVP-ENG-3: hidden_states[-1] is the final-norm output, i.e. the base model's output.
    assert torch.equal(fw.hidden_states[-1], base)
    ref = {"input_ids": REFERENCE_IDS, "logits": arrays.add("reference.logits", fw.logits[0]),
           "hidden_states": [], "kv": []}
    for i, h in enumerate(fw.hidden_states):
        ref["hidden_states"].append(arrays.add(f"reference.hidden.{i}", h[0]))
    for li, layer in enumerate(fw.past_key_values.layers):
        ref["kv"].append({"k": arrays.add(f"reference.kv.{li}.k", layer.keys[0]),
                          "v": arrays.add(f"reference.kv.{li}.v", layer.values[0])})
    entry["reference_forward"] = ref
    # The spec's forward pass, written from scratch, against transformers.
    logits64, hidden64, kv64 = spec_forward(Path(name), REFERENCE_IDS)
    ok = np.isfinite(fw.logits[0].numpy())
    assert rel_err(logits64[ok], fw.logits[0].numpy()[ok]) <= SPEC_TOL, name
    for i, h in enumerate(hidden64):
        assert rel_err(h, fw.hidden_states[i][0].numpy()) <= SPEC_TOL, (name, i)
    for li, layer in enumerate(fw.past_key_values.layers):
        assert rel_err(kv64[li][0], layer.keys[0].numpy()) <= SPEC_TOL, (name, li)
        assert rel_err(kv64[li][1], layer.values[0].numpy()) <= SPEC_TOL, (name, li)
    if spec.get("sliding_window"):
        # A prompt longer than the window: the window mask matters (AVP-ENG-3).
        long_ids = prompts["unicode"]["input_ids"]
        assert len(long_ids) > spec["sliding_window"]
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([long_ids]), output_hidden_states=True).hidden_states[-1][0]
        assert rel_err(spec_forward(Path(name), long_ids)[1][-1], hf.numpy()) <= SPEC_TOL

    # -- realignment / soft-embedding operands (AVP-ENG-5) -----------------------------------
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
        sdk = np.concatenate(rows, axis=0).astype(np.float32)
        e_in, e_out = embeddings64(model)
        for i in range(sdk.shape[0]):
            if np.isnan(sdk[i]).any():
                continue
            ours = spec_latent_step(hidden[i].double().numpy(), e_in, e_out, spec["tied"])
            assert rel_err(ours, sdk[i]) <= SPEC_TOL, (name, i, rel_err(ours, sdk[i]))
        return sdk

    # -- think (AVP-ENG-7, AVP-ENG-9) --------------------------------------------------------
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
            if steps == max(THINK_STEPS) and not spec.get("nan_row"):
                assert_loop_not_chaotic(conn, ids_t, mask_t, steps, hidden)
            if spec.get("sliding_window"):
                record_full_cache(conn, edir, arrays, think[-1], ctx, ids_t, mask_t, steps, hidden)
            contexts[(pid, steps)] = wire
    entry["think"] = think

    if spec.get("nan_row"):
        # Only the early stop matters here; greedy decoding over NaN logits is meaningless.
        arrays.save(edir / "arrays.safetensors")
        write_json(edir / "expected.json", entry)
        return conn

    # think continuing from a context (accumulated num_steps, positions continue): AVP-ENG-9
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

    # -- generate (AVP-ENG-8, AVP-ENG-10) ----------------------------------------------------
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
            if steps == 0:
                # AVP-ENG-8 step 1: a 0-step context is just the prompt's cache, so continuing
                # from it equals plain greedy decoding of prompt + follow-up ids from position 0.
                both = prompts[pid]["input_ids"] + prompts["followup"]["input_ids"]
                with torch.no_grad():
                    # An explicit all-ones mask: without one transformers masks every token equal
                    # to pad_token_id, and in tokenizer A the pad is also the BOS the llama_untied
                    # template writes.
                    plain = rec.orig(input_ids=torch.tensor([both]), do_sample=False,
                                     attention_mask=torch.ones((1, len(both)), dtype=torch.long),
                                     max_new_tokens=GEN_MAX_NEW,
                                     pad_token_id=tok.pad_token_id)[0, len(both):].tolist()
                assert plain == r["token_ids"], (name, pid, plain, r)
            g = {"prompt": "followup", "context": f"think_{pid}_s{steps}.avp",
                 "max_new_tokens": GEN_MAX_NEW, **r}
            if spec.get("sliding_window"):
                # The SDK's wire context lost all but window-1 positions and restarts the
                # positions there, so its roundtrip differs; `token_ids` is the in-memory
                # (correct) continuation, what the engine must produce from wire_full_cache.
                g["context"] = f"think_{pid}_s{steps}.full.avp"
                full = (edir / g["context"]).read_bytes()
                r3 = sdk_generate(conn, rec, FOLLOWUP, context=AVPContext.from_bytes(full))
                assert r3["token_ids"] == r["token_ids"], (name, pid, steps, r, r3)
                g["sdk_wire_roundtrip_token_ids"] = r2["token_ids"]
            else:
                assert r == r2, (name, pid, steps, r, r2)
            src_wire = (edir / g["context"]).read_bytes()
            g["context_engine_form"] = g["context"].replace(".avp", ".engine.avp")
            (edir / g["context_engine_form"]).write_bytes(
                engine_form(src_wire, entry["config_json_hash"]))
            gens.append(g)
    # Stop token: pass the 3rd greedy token of the first run as eos, as a caller-supplied stop
    # token; HF stops after emitting it (the stop token is included in the ids, not the text).
    first = gens[0]
    if len(first["token_ids"]) >= 3:
        stop = first["token_ids"][2]
        r = sdk_generate(conn, rec, PROMPTS["ascii"], eos_token_id=stop)
        gens.append({"prompt": "ascii", "context": None, "max_new_tokens": GEN_MAX_NEW,
                     "stop_token_ids": [stop], **r})
    entry["decode_cases"] = decode_cases(conn)
    decoder = Tokenizer.from_file(f"{name}/tokenizer.json")
    for g in gens + entry["decode_cases"]:  # AVP-ENG-8 step 4, tokenizers library (Rust crate)
        assert decoder.decode(g["token_ids"], skip_special_tokens=True).strip() == g["text"], g
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
    write_json(edir / "expected.json", entry)
    return conn


# ---------------------------------------------------------------------------------------------
# Cross-model projection (AVP-ENG-13..16)
# ---------------------------------------------------------------------------------------------

PAIRS = [
    ("llama_tied", "qwen2", "vocab_mediated"),    # target table 16 rows longer: truncation
    ("qwen2", "llama_tied", "vocab_mediated"),    # source table longer: truncation
    ("llama_tied", "qwen3", "vocab_overlap"),
    ("mistral", "llama_untied", "vocab_overlap"),  # untied f16 source
]
PROJ_STEPS = [0, 4]


def project_message(src_name: str, tgt_name: str, tgt, num_steps: int,
                    vector: np.ndarray) -> bytes:
    """What `avp project` writes (AVP-ENG-17), encoded with the SDK's own codec.

    Not an SDK output (the SDK has no such command): the spec's HIDDEN_STATE message, built
    with avp.codec.encode so the SDK can read it, with the engine's hashes (AVP-ENG-11).
    """
    from avp.codec import decode, encode
    from avp.types import AVPMetadata, CommunicationMode, DataType, PayloadType

    src_hash = canonical_hash(json.loads(Path(src_name, "config.json").read_text()))
    tgt_hash = canonical_hash(json.loads(Path(tgt_name, "config.json").read_text()))
    vec = np.ascontiguousarray(vector, dtype="<f4")
    meta = AVPMetadata(
        hidden_dim=tgt.hidden_dim, num_layers=tgt.num_layers,
        payload_type=PayloadType.HIDDEN_STATE, dtype=DataType.FLOAT32,
        tensor_shape=(int(vec.shape[0]),), mode=CommunicationMode.LATENT,
        avp_map_id=f"{src_hash[:16]}_{tgt_hash[:16]}",
        extra={"model_family": tgt.get_model_identity().model_family, "model_hash": tgt_hash,
               "num_steps": str(num_steps)},
    )
    wire = canonical_wire(encode(vec.tobytes(), meta))
    back = decode(wire)
    assert back.metadata.payload_type == PayloadType.HIDDEN_STATE and back.payload == vec.tobytes()
    return wire


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
                e_src_in, e_src_out = embeddings64(src.model)
                e_tgt_in, _ = embeddings64(tgt.model)
                ours, method, si, ti = spec_project(
                    ctx.last_hidden_state[0].double().numpy(), e_src_out, e_tgt_in,
                    spec_vocab(Path(src_name)), spec_vocab(Path(tgt_name)))
                assert method == amap.method.value
                if si is not None:
                    assert np.array_equal(si, amap.src_indices)
                    assert np.array_equal(ti, amap.tgt_indices)
                assert rel_err(ours, projected.reshape(-1).numpy()) <= SPEC_TOL
                msg = project_message(src_name, tgt_name, tgt, ctx.num_steps,
                                      projected.reshape(-1).float().numpy())
                msg_name = f"project_{key}_{pid}_s{steps}.avp"
                (pdir / msg_name).write_bytes(msg)
                p["cases"].append({
                    "prompt": pid, "steps": steps, "hidden_state_message": msg_name,
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
    write_json(pdir / "projections.json", doc)
    return doc


# ---------------------------------------------------------------------------------------------
# Trained models (issue 16): handoff, cross-model projection, three-agent chain
# ---------------------------------------------------------------------------------------------

import trained  # noqa: E402  (engine/testdata/trained.py: corpus, training, model specs)

TRAINED_NAMES = [m["name"] for m in trained.TRAINED_MODELS]
TRAINED_MAX_NEW = 16
T_STEPS = 2                                  # latent steps per think in the trained cases
T_PROMPT = "What comes after three?"         # the question the pipelines carry
T_WRONG = "What does the cow say?"           # another question: the "wrong context"
T_CHAIN = [T_PROMPT, *trained.CHAIN_TURNS]   # planner, critic, refiner
T_PLAIN = [T_PROMPT, T_WRONG, "What color is the sky?", "Where is Paris?",
           "What is the opposite of hot?"]
T_WRONG_SOURCE = "llama_tied"                # a random model on another tokenizer
# The trained models' properties (distinct answers, right != wrong, argmax margins) are asserted
# while recording; mutants.py switches this off so that its planted mistakes reach the
# comparator instead of stopping the generator.
ASSERT_TRAINED_PROPERTIES = True


def copy_trained_models(here: Path, out: Path) -> None:
    """The trained weights are committed inputs (README, "Trained models"): bring them along."""
    for name in TRAINED_NAMES:
        src = here / "models" / name
        if not (src / "model.safetensors").is_file():
            raise SystemExit(f"{src} missing: run `.venv/bin/python engine/testdata/gen_models.py "
                             "--retrain` (see README.md, \"Trained models\")")
        if src.resolve() != (out / "models" / name).resolve():
            shutil.copytree(src, out / "models" / name)


def retrain(models_dir: Path) -> None:
    """Run trained.py in a process whose CPU kernels are pinned (trained.PINNED_ENV)."""
    import subprocess

    env = dict(os.environ, **trained.PINNED_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="avp-trained-"))
    try:
        subprocess.run([sys.executable, str(Path(trained.__file__)), str(tmp)], env=env,
                       check=True)
        for name in TRAINED_NAMES:
            shutil.rmtree(models_dir / name, ignore_errors=True)
            shutil.copytree(tmp / name, models_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def t_generate(conn, prompt: str, **kw) -> dict:
    """The SDK's greedy generate on a trained model, with ids and the smallest argmax margin."""
    rec = GenerateRecorder(conn.model)
    try:
        text = conn.generate(prompt, max_new_tokens=TRAINED_MAX_NEW, do_sample=False,
                             output_logits=True, **kw)
    finally:
        conn.model.generate = rec.orig
    seq = rec.last["sequences"][0]
    return {"text": text, "token_ids": seq[rec.last["input_len"]:],
            "min_top2_margin": round(min(rec.last["margins"]), 6)}


def t_message(tdir: Path, fname: str, ctx, config_hash: str) -> dict:
    """Write an SDK KV_CACHE message (canonical map order) and its engine form; describe both."""
    wire = canonical_wire(ctx.to_bytes())
    (tdir / fname).write_bytes(wire)
    eng = fname.replace(".avp", ".engine.avp")
    (tdir / eng).write_bytes(engine_form(wire, config_hash))
    raw, _ = serialize_kv_cache(ctx.past_key_values)
    return {"wire": fname, "wire_layout": wire_layout(wire), "engine_form": eng,
            "kv_header": kv_header_dict(raw), "steps_taken_total": ctx.num_steps,
            "seq_len": ctx.seq_len}


def differs(right: dict, **wrong: dict) -> dict:
    """Record what the wrong inputs give, asserting that each differs from the right one."""
    for what, r in wrong.items():
        assert r["token_ids"] != right["token_ids"] or not ASSERT_TRAINED_PROPERTIES, \
            (what, right, r)
    return wrong


def record_trained(out: Path, conns: dict) -> dict:
    tdir = out / "expected" / "trained"
    tdir.mkdir(parents=True)
    arrays = Arrays()
    a, b = (load_connector(n) for n in TRAINED_NAMES)
    hashes = {n: canonical_hash(json.loads(Path(n, "config.json").read_text()))
              for n in TRAINED_NAMES}
    doc: dict = {"models": {}, "arrays": "arrays.safetensors", "max_new_tokens": TRAINED_MAX_NEW,
                 "think_steps": T_STEPS, "prompt": T_PROMPT, "wrong_prompt": T_WRONG,
                 "followup_prompt": FOLLOWUP, "chain_prompts": T_CHAIN}
    for name, conn in zip(TRAINED_NAMES, (a, b)):
        tok = conn.tokenizer
        spec = next(m for m in trained.TRAINED_MODELS if m["name"] == name)
        prompts = {}
        for text in [*T_PLAIN, FOLLOWUP, *trained.CHAIN_TURNS]:
            rendered = _render_prompt(tok, [{"role": "user", "content": text}])
            ids = _tokenize_prompt(tok, rendered, "cpu")[0][0].tolist()
            assert spec_render(Path(name), text) == rendered
            assert Tokenizer.from_file(f"{name}/tokenizer.json").encode(
                rendered, add_special_tokens=False).ids == ids
            prompts[text] = {"rendered": rendered, "input_ids": ids}
        doc["models"][name] = {
            "model_dir": f"models/{name}", "architecture": spec["arch"],
            "tied_embeddings": spec["tied"], "needs_realignment": conn.needs_realignment(),
            "hidden_dim": conn.hidden_dim, "num_layers": conn.num_layers,
            "num_kv_heads": spec["kv_heads"], "head_dim": spec["hidden"] // spec["heads"],
            "vocab_size": int(conn.model.config.vocab_size), "tokenizer_len": len(tok),
            "model_family": conn.get_model_identity().model_family,
            "sdk_model_hash": conn._model_hash, "config_json_hash": hashes[name],
            "tokenizer_hash": compute_tokenizer_hash(tok),
            "eos_token_id": conn.model.generation_config.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "target_norm": float(compute_target_norm(conn.model, device="cpu")),
            "prompts": prompts,
            # Plain greedy answers: the models learned the corpus, so they depend on the prompt.
            "generate": [{"prompt": p, **t_generate(conn, p)} for p in T_PLAIN],
        }
        texts = [g["text"] for g in doc["models"][name]["generate"]]
        assert len(set(texts)) == len(texts) or not ASSERT_TRAINED_PROPERTIES, (name, texts)
    # One vocabulary: the pair projects vocab-mediated (AVP-ENG-13).
    assert len({m["tokenizer_hash"] for m in doc["models"].values()}) == 1

    # -- a. same-model handoff: think on trained_a, wire, generate on trained_a ---------------
    handoff = []
    for steps in (0, T_STEPS):
        ctx = a.think(T_PROMPT, steps=steps)
        m = t_message(tdir, f"handoff_a_s{steps}.avp", ctx, hashes["trained_a"])
        wire_ctx = AVPContext.from_bytes((tdir / m["wire"]).read_bytes())
        right = t_generate(a, FOLLOWUP, context=wire_ctx)
        assert right == t_generate(a, FOLLOWUP, context=ctx)  # in memory = through the wire
        wrong = a.think(T_WRONG, steps=steps)
        handoff.append({"think_prompt": T_PROMPT, "steps": steps, "context": m,
                        "generate_prompt": FOLLOWUP, "generate": right,
                        "distinguishes": differs(
                            right, no_context=t_generate(a, FOLLOWUP),
                            wrong_context=t_generate(a, FOLLOWUP, context=wrong))})
    doc["handoff"] = handoff

    # -- b. cross-model: trained_a thinks, trained_b continues from the projected vector -----
    amap = calibrate(a.model, b.model, a.tokenizer, b.tokenizer, device="cpu", auto_save=False)
    assert amap.method.value == "vocab_mediated", amap.method
    wrong_src = conns[T_WRONG_SOURCE]
    cross = {"source": "trained_a", "target": "trained_b", "method": amap.method.value,
             "target_norm": float(amap.target_norm),
             "avp_map_id": f"{hashes['trained_a'][:16]}_{hashes['trained_b'][:16]}",
             "sdk_avp_map_id": f"{a._model_hash[:16]}_{b._model_hash[:16]}",
             "w_map_rows": int(amap.w_map.shape[0]), "cases": []}
    e_a_in, e_a_out = embeddings64(a.model)
    e_b_in, _ = embeddings64(b.model)
    for steps in (0, T_STEPS):
        ctx = a.think(T_PROMPT, steps=steps)
        projected = a.project_hidden_for_cross_model(ctx.last_hidden_state, amap).reshape(-1)
        ours, method, _, _ = spec_project(ctx.last_hidden_state[0].double().numpy(), e_a_out,
                                          e_b_in, spec_vocab(Path("trained_a")),
                                          spec_vocab(Path("trained_b")))
        assert method == "vocab_mediated" and rel_err(ours, projected.numpy()) <= SPEC_TOL
        right = t_generate(b, FOLLOWUP, context=ctx, source=a, cross_model=True)
        msg_name = f"project_a_to_b_s{steps}.avp"
        msg = project_message("trained_a", "trained_b", b, ctx.num_steps,
                              projected.float().numpy())
        (tdir / msg_name).write_bytes(msg)
        # What a receiver does with the message: the decoded vector alone, at position 0, primes
        # the target's cache; then the follow-up continues. Same ids as the SDK's own path.
        from avp.codec import decode
        vec = torch.from_numpy(np.frombuffer(decode(msg).payload, dtype="<f4").copy())
        with torch.no_grad():
            primed = b.model(inputs_embeds=vec.reshape(1, 1, -1), use_cache=True,
                             attention_mask=torch.ones((1, 1), dtype=torch.long))
        primed_ctx = AVPContext(past_key_values=primed.past_key_values, model_hash=b._model_hash,
                                num_steps=ctx.num_steps, seq_len=1,
                                model_family=ctx.model_family, hidden_dim=b.hidden_dim,
                                num_layers=b.num_layers)
        assert t_generate(b, FOLLOWUP, context=primed_ctx) == right
        wrong_ctx = a.think(T_WRONG, steps=steps)
        other = wrong_src.think(T_PROMPT, steps=steps)
        cross["cases"].append({
            "think_prompt": T_PROMPT, "steps": steps, "source_seq_len": ctx.seq_len,
            "hidden_state_message": msg_name,
            "source_last_hidden": arrays.add(f"cross.s{steps}.source_hidden",
                                             ctx.last_hidden_state[0]),
            "projected": arrays.add(f"cross.s{steps}.projected", projected.float()),
            "generate_prompt": FOLLOWUP, "generate": right,
            "distinguishes": differs(
                right, no_context=t_generate(b, FOLLOWUP),
                wrong_context=t_generate(b, FOLLOWUP, context=wrong_ctx, source=a,
                                         cross_model=True),
                wrong_source=t_generate(b, FOLLOWUP, context=other, source=wrong_src,
                                        cross_model=True)),
        })
    doc["cross_model"] = cross

    # -- c. three-agent chain on trained_a: planner -> critic -> refiner -> generate ----------
    def run_chain(first: str, via_wire: bool):
        ctx, steps_out = None, []
        for i, p in enumerate([first, *T_CHAIN[1:]]):
            ctx = a.think(p, steps=T_STEPS, context=ctx)
            if via_wire:
                fname = f"chain_a_{i + 1}_{['planner', 'critic', 'refiner'][i]}.avp"
                steps_out.append({"role": ["planner", "critic", "refiner"][i], "prompt": p,
                                  **t_message(tdir, fname, ctx, hashes["trained_a"]),
                                  "last_hidden_state": arrays.add(f"chain.{i + 1}.last_hidden",
                                                                  ctx.last_hidden_state[0])})
                # `avp think --context prev.avp`: the next agent continues the decoded message.
                ctx = AVPContext.from_bytes((tdir / fname).read_bytes())
        return ctx, steps_out

    ctx_mem, _ = run_chain(T_PROMPT, via_wire=False)
    ctx_wire, chain_steps = run_chain(T_PROMPT, via_wire=True)
    right = t_generate(a, FOLLOWUP, context=ctx_wire)
    assert right == t_generate(a, FOLLOWUP, context=ctx_mem)
    prompt_lens = [len(doc["models"]["trained_a"]["prompts"][p]["input_ids"]) for p in T_CHAIN]
    assert [s["seq_len"] for s in chain_steps] == [
        sum(prompt_lens[:i + 1]) + T_STEPS * (i + 1) for i in range(3)]
    wrong_chain, _ = run_chain(T_WRONG, via_wire=False)
    refiner_only = a.think(T_CHAIN[2], steps=T_STEPS)
    doc["chain"] = {"model": "trained_a", "steps_per_agent": T_STEPS, "agents": chain_steps,
                    "generate_prompt": FOLLOWUP, "generate": right,
                    "distinguishes": differs(
                        right, no_context=t_generate(a, FOLLOWUP),
                        wrong_planner=t_generate(a, FOLLOWUP, context=wrong_chain),
                        refiner_only=t_generate(a, FOLLOWUP, context=refiner_only))}
    # Margins: no argmax may be close enough to flip between CPUs (README, "Tolerances").
    gens = [g for m in doc["models"].values() for g in m["generate"]]
    gens += [c["generate"] for c in handoff + cross["cases"]] + [right]
    smallest = min(g["min_top2_margin"] for g in gens)
    assert smallest >= 1e-3 or not ASSERT_TRAINED_PROPERTIES, gens
    arrays.save(tdir / "arrays.safetensors")
    write_json(tdir / "trained.json", doc)
    return doc


def main() -> None:
    here = Path(__file__).resolve().parent
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0]).resolve() if args else here
    if "--retrain" in sys.argv[1:]:
        # Only the committed inputs change; run without --retrain afterwards to record.
        (here / "models").mkdir(exist_ok=True)
        retrain(here / "models")
        return
    # models/trained_* are committed inputs, not regenerated (README, "Trained models").
    if (out / "expected").exists():
        shutil.rmtree(out / "expected")
    if (out / "models").exists():
        for d in (out / "models").iterdir():
            if d.name not in TRAINED_NAMES or out != here:
                shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    build_info = build_models(out)
    copy_trained_models(here, out)
    os.chdir(out / "models")  # load by relative name (see load_connector)
    (out / "expected").mkdir()
    conns = {}
    for spec in MODELS:
        conns[spec["name"]] = record_model(out, spec["name"], build_info)
        print(f"recorded {spec['name']}", file=sys.stderr)
    record_projections(out, conns)
    record_trained(out, conns)
    print("recorded trained models", file=sys.stderr)
    index = {
        "generator": "engine/testdata/gen_models.py",
        "versions": VERSIONS,
        "models": [{"name": m["name"], "dir": f"models/{m['name']}",
                    "expected": f"expected/{m['name']}/expected.json", "covers": m["covers"]}
                   for m in MODELS],
        "projections": "expected/projections/projections.json",
        "trained_models": [{"name": n, "dir": f"models/{n}"} for n in TRAINED_NAMES],
        "trained": "expected/trained/trained.json",
        "prompts": PROMPTS,
        "followup_prompt": FOLLOWUP,
        "think_steps": THINK_STEPS,
        "generate_max_new_tokens": GEN_MAX_NEW,
        "tolerances": {
            "float32": 1e-4, "float16": 5e-3, "bfloat16_kv": 3e-2, "bfloat16_hidden": 1e-1,
            "note": "see README.md: norm ratio ||a-b||/||b|| per tensor, derived bounds",
        },
    }
    write_json(out / "expected" / "index.json", index)


if __name__ == "__main__":
    main()
