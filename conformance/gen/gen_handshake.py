#!/usr/bin/env python3
"""Golden vectors for the handshake area (spec/protocol/handshake.md), from the SDK.

Usage: .venv/bin/python conformance/gen/gen_handshake.py OUT_DIR

Writes OUT_DIR/*.json (case files) and fixture files (configs, tokenizers,
model directories, safetensors weights). Deterministic: running it twice
gives byte-identical files (CI regenerates into a temp dir and diffs).

Every expected value comes from the SDK (avp==0.6.2) or from Python's json
module, except the weights_digest extension (AVP-HS-20..23), which the SDK
does not have: its expected values come from the independent Python
implementation `weights_digest()` below.
"""

import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")

import blake3  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import avp  # noqa: E402
import avp.rosetta.registry as registry  # noqa: E402
from avp.handshake import (  # noqa: E402
    CompatibilityResolver,
    HelloMessage,
    compute_model_hash,
    compute_tokenizer_hash,
    extract_model_identity,
)
from avp.types import ModelIdentity  # noqa: E402

assert avp.__version__ == "0.6.2", avp.__version__

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else None


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def write_text(rel, text):
    p = OUT / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_cases(name, description, cases):
    ids = [c["id"] for c in cases]
    assert len(ids) == len(set(ids)), f"duplicate ids in {name}"
    doc = {
        "area": "handshake",
        "description": description,
        "generator": "conformance/gen/gen_handshake.py",
        "sdk": "avp==0.6.2",
        "cases": cases,
    }
    write_text(name, json.dumps(doc, indent=1, ensure_ascii=True) + "\n")


def case(cid, rules, op, inp, expect, level="MUST", note=None):
    c = {"id": "handshake/" + cid, "rules": rules, "level": level, "op": op, "input": inp, "expect": expect}
    if note:
        c["note"] = note
    return c


# ---------------------------------------------------------------- configs

LLAMA3_8B = {
    "_name_or_path": "meta-llama/Meta-Llama-3-8B",
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

QWEN2_7B = {
    "_name_or_path": "Qwen/Qwen2-7B-Instruct",
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}

QWEN2_05B = dict(
    QWEN2_7B,
    _name_or_path="Qwen/Qwen2.5-0.5B-Instruct",
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_hidden_layers=24,
    num_key_value_heads=2,
    max_window_layers=21,
    tie_word_embeddings=True,
    vocab_size=151936,
)

GPT2 = {
    "_name_or_path": "gpt2",
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_inner": None,
    "n_layer": 12,
    "n_positions": 1024,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0.1,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}

MISTRAL_7B = {
    "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.3",
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": None,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.0.dev0",
    "use_cache": True,
    "vocab_size": 32768,
}

GEMMA2 = {
    "_name_or_path": "google/gemma-2-9b",
    "architectures": ["Gemma2ForCausalLM"],
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 3584,
    "model_type": "gemma2",
    "num_attention_heads": 16,
    "num_hidden_layers": 42,
    "num_key_value_heads": 8,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 256000,
}

LLAMA_ROPE = dict(
    LLAMA3_8B,
    _name_or_path="meta-llama/Llama-3.1-8B-Instruct",
    rope_scaling={
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    eos_token_id=[128001, 128008, 128009],
    max_position_embeddings=131072,
)

REAL_CONFIGS = {
    "llama3-8b": LLAMA3_8B,
    "llama3.1-8b-rope": LLAMA_ROPE,
    "qwen2-7b": QWEN2_7B,
    "qwen2.5-0.5b": QWEN2_05B,
    "gpt2": GPT2,
    "mistral-7b": MISTRAL_7B,
    "gemma2-9b": GEMMA2,
}

# Adversarial config texts: (slug, JSON text). Texts, not dicts, so that
# NaN/Infinity tokens, escapes, duplicate keys and exact literals survive.
ADVERSARIAL_TEXTS = [
    ("floats-every-class", '{"a":[0.0,-0.0,1.0,100.0,1e-4,1e-5,1E-6,1.5e-7,1e15,1e16,1.2345e16,'
     '123456789012345.6,5e-324,2.2250738585072014e-308,1.7976931348623157e308,0.1,0.30000000000000004,'
     '1e22,1e23,9007199254740993.0,-2.5,0.000123,1e-10,1e400,-1e400,4.9e-324,2.5e-324]}'),
    ("nan-infinity-tokens", '{"x":NaN,"y":Infinity,"z":-Infinity,"w":[NaN,-Infinity]}'),
    ("int-vs-float", '{"i":100,"f":100.0,"e":1e2,"E":1E+2,"neg0":-0,"negf":-0.0,"z":0}'),
    ("big-ints", '{"a":18446744073709551616,"b":-9223372036854775808,"c":9223372036854775807,'
     '"d":-9223372036854775809,"e":18446744073709551615,"f":' + "9" * 120 + ',"g":-' + "1" * 4300 + "}"),
    ("unicode-escapes", '{"bmp":"\\u00e9\\u4e2d\\uffff","astral":"\\ud83d\\ude00","raw":"' + "é中😀" + '",'
     '"controls":"\\u0000\\u001f\\b\\f\\n\\r\\t\\u007f","quote":"\\"\\\\\\/"}'),
    ("lone-surrogates", '{"hi":"\\ud800","lo":"\\udc00","pair-split":"\\ud800x\\udc00",'
     '"hi-hi":"\\ud800\\ud800","rev":"\\udc00\\ud800","hi-then-bmp":"\\ud83d\\u0041"}'),
    ("key-order-code-points", '{"b":1,"a":2,"B":3,"\\u00e9":4,"\\ud83d\\ude00":5,"\\uffff":6,"\\ue000":7,'
     '"\\ud7ff":8,"":9,"aa":10,"a\\u0000":11}'),
    ("duplicate-keys-last-wins", '{"a":1,"b":2,"a":3,"c":{"x":1,"x":[2]}}'),
    ("nesting", '{"a":' + "[" * 100 + '{"k":{"k":[1,{"z":null}]}}' + "]" * 100 + "}"),
    ("whitespace-and-empties", ' \t\n{ "a" : [ ] , "b" : { } , "c" : "" , "d" : [ { } ] }\r\n '),
    ("literals", '{"t":true,"f":false,"n":null,"nested":{"t":[true,false,null]}}'),
    ("long-mantissa", '{"x":0.1000000000000000055511151231257827021181583404541015625,'
     '"y":123456789012345678901234567890.5,"z":1.00000000000000011102230246251565404236316680908203125}'),
]

INVALID_TEXTS = [
    ("trailing-comma", '{"a":1,}'),
    ("single-quotes", "{'a':1}"),
    ("leading-zero", '{"a":01}'),
    ("bare-dot", '{"a":1.}'),
    ("plus-sign", '{"a":+1}'),
    ("lowercase-nan", '{"a":nan}'),
    ("raw-control-char", '{"a":"x\ty"}'),
    ("bad-escape", '{"a":"\\x41"}'),
    ("short-unicode-escape", '{"a":"\\u12"}'),
    ("trailing-data", '{"a":1} x'),
    ("empty", ""),
    ("unterminated-string", '{"a":"abc'),
    ("non-string-key", "{1:2}"),
    ("int-too-long", '{"a":' + "1" * 4301 + "}"),
    ("too-deep", "[" * 2000 + "]" * 2000),
]


def config_hash_cases():
    cases = []
    for slug, cfg in REAL_CONFIGS.items():
        rel = f"configs/{slug}.json"
        write_text(rel, json.dumps(cfg, indent=2) + "\n")
        text = (OUT / rel).read_text(encoding="utf-8")
        loaded = json.loads(text)
        cases.append(case(
            f"hash/real/{slug}", ["AVP-HASH-1", "AVP-HASH-2", "AVP-HASH-3", "AVP-HASH-9"], "model_hash",
            {"file": rel},
            {"result": "valid", "canonical": canonical(loaded), "model_hash": compute_model_hash(loaded)},
        ))
    for slug, text in ADVERSARIAL_TEXTS:
        loaded = json.loads(text)
        cases.append(case(
            f"hash/adversarial/{slug}",
            ["AVP-HASH-1", "AVP-HASH-2", "AVP-HASH-3", "AVP-HASH-4", "AVP-HASH-5", "AVP-HASH-6"],
            "model_hash", {"text": text},
            {"result": "valid", "canonical": canonical(loaded), "model_hash": compute_model_hash(loaded)},
        ))
    # The integer/float distinction survives reading and writing (AVP-HASH-7).
    for slug, text in [("int", "100"), ("float", "100.0"), ("exponent-is-float", "1e2"), ("minus-zero-int", "-0"),
                       ("minus-zero-float", "-0.0"), ("mixed-members", '{"a": 1, "b": 1.0, "c": -0, "d": 1E0}')]:
        loaded = json.loads(text)
        cases.append(case(
            f"hash/int-float/{slug}", ["AVP-HASH-7", "AVP-HASH-9"], "model_hash", {"text": text},
            {"result": "valid", "canonical": canonical(loaded), "model_hash": compute_model_hash(loaded)},
        ))
    for slug, text in INVALID_TEXTS:
        try:
            json.loads(text)
            raise SystemExit(f"{slug} unexpectedly parsed")
        except (ValueError, RecursionError):
            pass
        cases.append(case(
            f"hash/invalid/{slug}", ["AVP-HASH-6"], "model_hash", {"text": text},
            {"result": "invalid"},
        ))
    # BOM: Python's json.loads(str) refuses it too.
    cases.append(case("hash/invalid/utf8-bom", ["AVP-HASH-6"], "model_hash", {"text": "\ufeff{}"},
                      {"result": "invalid"}))
    return cases


# ------------------------------------------------------ random JSON documents

def rand_string(rng):
    pools = [
        lambda: chr(rng.randint(0x20, 0x7E)),
        lambda: chr(rng.randint(0, 0x1F)),
        lambda: chr(rng.randint(0x80, 0x7FF)),
        lambda: chr(rng.randint(0x800, 0xD7FF)),
        lambda: chr(rng.randint(0xE000, 0xFFFF)),
        lambda: chr(rng.randint(0x10000, 0x10FFFF)),
        lambda: chr(rng.randint(0xD800, 0xDFFF)),  # lone surrogate (escaped on output)
        lambda: rng.choice('"\\/'),
    ]
    return "".join(rng.choice(pools)() for _ in range(rng.randint(0, 8)))


def enc_string(rng, s):
    """JSON-encode s with a random mix of raw characters and escapes."""
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "/" and rng.random() < 0.5:
            out.append("\\/")
        elif cp < 0x20 or 0xD800 <= cp <= 0xDFFF:
            short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
            if cp in short and rng.random() < 0.5:
                out.append(short[cp])
            else:
                out.append("\\u%04x" % cp if rng.random() < 0.5 else "\\u%04X" % cp)
        elif cp > 0xFFFF and rng.random() < 0.5:
            v = cp - 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 | (v >> 10), 0xDC00 | (v & 0x3FF)))
        elif cp > 0x7E and rng.random() < 0.3:
            out.append("\\u%04x" % cp)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def rand_float_text(rng):
    kind = rng.randrange(7)
    if kind == 0:
        bits = rng.getrandbits(64)
        x = struct.unpack("<d", struct.pack("<Q", bits))[0]
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return repr(x)
    if kind == 1:
        return "%d.%de%s%d" % (rng.randint(0, 99), rng.randint(0, 999), rng.choice(["", "+", "-"]), rng.randint(0, 330))
    if kind == 2:
        return repr(rng.uniform(-1e6, 1e6))
    if kind == 3:
        return rng.choice(["-", ""]) + "%dE%d" % (rng.randint(1, 9), rng.randint(-20, 20))
    if kind == 4:
        return repr(rng.choice([0.0, -0.0, 5e-324, 1e16, 1e15, 1e-5, 1e-4, 0.5, 2.0 ** 53, 2.0 ** 63]))
    if kind == 5:
        return "0.%s" % "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
    return repr(rng.random() * 10 ** rng.randint(-30, 30))


def rand_ws(rng):
    return "".join(rng.choice(" \t\n\r") for _ in range(rng.choice([0, 0, 0, 1, 2])))


def rand_value_text(rng, depth):
    r = rng.random()
    if depth > 4 or r < 0.45:
        kind = rng.randrange(6)
        if kind == 0:
            return rng.choice(["null", "true", "false"])
        if kind == 1:
            n = rng.choice([rng.randint(-1000, 1000), rng.getrandbits(70) - (1 << 69), rng.getrandbits(200)])
            return str(n)
        if kind == 2:
            return rand_float_text(rng)
        if kind == 3:
            return rng.choice(["NaN", "Infinity", "-Infinity", "-0", "0", "-0.0"])
        return enc_string(rng, rand_string(rng))
    if r < 0.7:
        items = [rand_value_text(rng, depth + 1) for _ in range(rng.randint(0, 5))]
        return "[" + rand_ws(rng) + ("," + rand_ws(rng)).join(items) + rand_ws(rng) + "]"
    keys = [rand_string(rng) for _ in range(rng.randint(0, 5))]
    if keys and rng.random() < 0.2:
        keys.append(rng.choice(keys))  # a duplicate key
    members = [enc_string(rng, k) + rand_ws(rng) + ":" + rand_ws(rng) + rand_value_text(rng, depth + 1) for k in keys]
    return "{" + rand_ws(rng) + ("," + rand_ws(rng)).join(members) + rand_ws(rng) + "}"


def random_document_cases():
    rng = random.Random(20261121)
    cases = []
    for i in range(400):
        text = rand_ws(rng) + rand_value_text(rng, 0) + rand_ws(rng)
        loaded = json.loads(text)
        cases.append(case(
            f"json/random/{i:03d}", ["AVP-HASH-2", "AVP-HASH-3", "AVP-HASH-4", "AVP-HASH-5", "AVP-HASH-6"],
            "canonical_json", {"text": text},
            {"result": "valid", "canonical": canonical(loaded),
             "compact": json.dumps(loaded, separators=(",", ":")),
             "python_default": json.dumps(loaded)},
        ))
    # Float repr agreement on many bit patterns (one array per case).
    for i in range(10):
        xs = []
        while len(xs) < 1000:
            bits = rng.getrandbits(64)
            if i % 2:
                # Bias towards the fixed/scientific boundary and subnormals.
                exp = rng.choice([0, 1, 2, 0x3F0, 0x3F1, 0x3F2, 0x430, 0x431, 0x432, 0x433, 0x434, 0x7FE])
                bits = (bits & ((1 << 52) - 1)) | (exp << 52) | (rng.getrandbits(1) << 63)
            x = struct.unpack("<d", struct.pack("<Q", bits))[0]
            if not math.isnan(x) and not math.isinf(x):
                xs.append(x)
        text = "[" + ",".join(repr(x) for x in xs) + "]"
        cases.append(case(
            f"json/float-repr/{i:02d}", ["AVP-HASH-3"], "canonical_json", {"text": text},
            {"result": "valid", "canonical": canonical(xs)},
        ))
    # Exact ties between two shortest candidates (Python rounds to even).
    ties = []
    for _ in range(1000):
        scale = rng.choice([2.0 ** 49, 2.0 ** 50, 2.0 ** 51, 2.0 ** 52])
        ties.append(rng.choice([-1, 1]) * (scale + rng.randrange(1 << 20) + rng.choice([0.25, 0.75, 0.5, 0.125])))
    text = "[" + ",".join(repr(x) for x in ties) + "]"
    cases.append(case("json/float-repr/ties", ["AVP-HASH-3"], "canonical_json", {"text": text},
                      {"result": "valid", "canonical": canonical(ties)}))
    return cases


# ------------------------------------------------------------- tokenizers

CORPUS_WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "agent", "vector", "protocol",
    "latent", "cache", "hidden", "state", "café", "naïve", "über", "résumé", "日本語", "中文",
    "emoji😀", "Ωmega", "straße", "ﬁle", "tokenizer", "hash", "hello", "world", "AVP",
]


def corpus():
    rng = random.Random(7)
    lines = []
    for _ in range(400):
        lines.append(" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(3, 12))))
    return lines


def train_tokenizers(tmp):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    lines = corpus()
    made = {}

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<tool>"), AddedToken("café")])
    made["bytelevel-bpe"] = tok

    # The WordPiece and Unigram trainers are not deterministic (hash-map
    # order), so those two models are built from vocabularies derived here.
    words = sorted({w.lower() for line in lines for w in line.split()})
    chars = sorted({c for w in words for c in w})
    wp_vocab = {}
    for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words:
        wp_vocab.setdefault(t, len(wp_vocab))
    tok = Tokenizer(models.WordPiece(vocab=wp_vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[CLS]", "[SEP]"])
    made["wordpiece"] = tok

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    pieces += [(c, -10.0 - i / 8) for i, c in enumerate(chars)]
    pieces += [("\u2581" + w, -2.0 - i / 16) for i, w in enumerate(words)]
    pieces += [("\u2581", -3.5)]
    tok = Tokenizer(models.Unigram(pieces, 0, False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.add_tokens(["\u2581agent", "<extra_0>"])
    made["unigram"] = tok

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    made["wordlevel"] = tok

    out = {}
    for name, t in made.items():
        path = Path(tmp) / f"{name}.json"
        t.save(str(path))
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def handmade_tokenizers():
    """Hand-written tokenizer.json files for the added-token rules."""
    def added(i, content, special=False):
        return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": not special, "special": special}

    base_vocab = {"a": 0, "b": 1, "ab": 2, "é": 3, "\"": 4, "\\": 5, "\u00ff": 6, "😀": 7, "\u0001": 8}

    def bpe(vocab, added_tokens, merges=(("a", "b"),)):
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
                "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in merges]}}

    return {
        # Ids written in the file are ignored: "zz" (file id 1) gets 9, "a" keeps 0.
        "collisions": bpe(base_vocab, [added(1, "zz"), added(7, "a"), added(2, "ab", True),
                                       added(42, "<s>", True), added(3, "zz"), added(5, ""), added(99, "é")]),
        # Non-contiguous model ids: new added ids start at the model size (3), even if taken.
        "sparse-ids": bpe({"x": 0, "y": 10, "z": 20}, [added(0, "<new1>"), added(0, "<new2>"), added(0, "y")], ()),
        # No added tokens at all.
        "no-added": bpe(base_vocab, []),
        # Unigram with a repeated piece: it takes its last position, and the
        # size counts list entries, so the new added token gets id 5.
        "unigram-duplicates": {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [added(0, "<unk>", True), added(9, "<new>", True)],
            "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
            "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": False,
                      "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0], ["a", -3.0], ["c", -4.0]]},
        },
    }


def tokenizer_cases():
    from transformers import PreTrainedTokenizerFast

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_tokenizers(tmp)
    docs = dict(trained)
    docs.update(handmade_tokenizers())
    for name, doc in docs.items():
        rel = f"tokenizers/{name}.json"
        write_text(rel, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        tok = PreTrainedTokenizerFast(tokenizer_file=str(OUT / rel))
        vocab = tok.get_vocab()
        cases.append(case(
            f"tokenizer/file/{name}", ["AVP-HASH-10", "AVP-HASH-11"], "tokenizer_hash", {"file": rel},
            {"result": "valid", "tokenizer_hash": compute_tokenizer_hash(tok), "vocab_size": len(vocab),
             "vocab_sample": dict(sorted(vocab.items())[:20])},
        ))
        vrel = f"vocabs/{name}.json"
        write_text(vrel, json.dumps(vocab, ensure_ascii=False, sort_keys=True) + "\n")
        cases.append(case(
            f"tokenizer/vocab/{name}", ["AVP-HASH-10"], "vocab_hash", {"file": vrel},
            {"result": "valid", "tokenizer_hash": compute_tokenizer_hash(vocab)},
        ))
    # "A tokenizer" is a tokenizer.json or a plain {token: id} map (AVP-HASH-12).
    # The SDK has no such reader: compute_tokenizer_hash(dict) hashes any dict
    # as a vocabulary, so its answer for a tokenizer.json is recorded in `sdk`.
    for name in ("bytelevel-bpe", "unigram"):
        rel = f"tokenizers/{name}.json"
        tok = PreTrainedTokenizerFast(tokenizer_file=str(OUT / rel))
        as_dict = json.loads((OUT / rel).read_text(encoding="utf-8"))
        cases.append(case(
            f"tokenizer/detect/tokenizer-json-{name}", ["AVP-HASH-12", "AVP-HASH-10"], "vocab_hash", {"file": rel},
            {"result": "valid", "tokenizer_hash": compute_tokenizer_hash(tok),
             "sdk": {"tokenizer_hash": compute_tokenizer_hash(as_dict)}},
        ))
    for slug, vocab in [("model-not-an-object", {"model": 1, "version": 2, "a": 3}),
                        ("model-object-without-version", {"model": {"type": "BPE"}, "b": 0})]:
        cases.append(case(
            f"tokenizer/detect/plain-{slug}", ["AVP-HASH-12", "AVP-HASH-10"], "vocab_hash",
            {"text": json.dumps(vocab)},
            {"result": "valid", "tokenizer_hash": compute_tokenizer_hash(vocab)},
        ))
    # Inline vocab maps: escapes, ordering, non-integer ids kept as written.
    inline = [
        ("ascii-order", {"b": 1, "a": 0, "B": 2, "": 3}),
        ("escapes", {"\"": 0, "\\": 1, "\n": 2, "\u007f": 3, "é": 4, "😀": 5, "\ud800": 6}),
        ("empty", {}),
        ("float-and-nested-ids", {"x": 1.5, "y": {"b": 1, "a": 2}, "z": None}),
    ]
    for slug, vocab in inline:
        cases.append(case(
            f"tokenizer/inline/{slug}", ["AVP-HASH-10"], "vocab_hash", {"vocab": vocab},
            {"result": "valid", "tokenizer_hash": compute_tokenizer_hash(vocab)},
        ))
    return cases


# ----------------------------------------------------------- identities

EDGE_CONFIGS = {
    "gpt2-fallbacks": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12},
    "hidden-zero-uses-n-embd": {"model_type": "x", "hidden_size": 0, "n_embd": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4},
    "explicit-head-dim": {"model_type": "gemma", "hidden_size": 3072, "num_hidden_layers": 28,
                          "num_attention_heads": 16, "head_dim": 256, "num_key_value_heads": 16},
    "head-dim-null-falls-back": {"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "head_dim": None},
    "no-heads": {"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24},
    "kv-heads-zero-explicit": {"model_type": "x", "hidden_size": 8, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "num_key_value_heads": 0},
    "empty": {},
    "no-model-type": {"_name_or_path": "local/model", "hidden_size": 16, "num_hidden_layers": 2},
    "non-divisible-heads": {"model_type": "x", "hidden_size": 10, "num_hidden_layers": 1, "num_attention_heads": 3},
    "unicode-name": {"model_type": "llama", "_name_or_path": "ü/模型😀", "hidden_size": 8, "num_hidden_layers": 1,
                     "num_attention_heads": 1},
}

# Configs where the SDK would put a non-integer into the identity: we reject
# them (AVP-HS-3); the SDK's output is recorded for information.
DIVERGENT_CONFIGS = {
    "float-hidden-size": {"model_type": "x", "hidden_size": 4096.0, "num_hidden_layers": 32,
                          "num_attention_heads": 32},
    "null-kv-heads": {"model_type": "x", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": None},
    "string-layers": {"model_type": "x", "hidden_size": 64, "num_hidden_layers": "2"},
    "negative-hidden": {"model_type": "x", "hidden_size": -64, "num_hidden_layers": 2},
    "model-type-not-string": {"model_type": 7, "hidden_size": 64, "num_hidden_layers": 2},
}


def identity_cases():
    from transformers import PreTrainedTokenizerFast
    import warnings

    warnings.simplefilter("ignore")
    cases = []
    # Model directories: config.json + tokenizer.json.
    model_dirs = {
        "llama3-8b-bpe": ("llama3-8b", "bytelevel-bpe"),
        "qwen2-7b-bpe": ("qwen2-7b", "bytelevel-bpe"),
        "gpt2-wordpiece": ("gpt2", "wordpiece"),
        "mistral-unigram": ("mistral-7b", "unigram"),
    }
    for slug, (cfg_name, tok_name) in model_dirs.items():
        d = f"models/{slug}"
        shutil.copyfile(OUT / f"configs/{cfg_name}.json", OUT / d / "config.json") if (OUT / d).exists() else None
        (OUT / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(OUT / f"configs/{cfg_name}.json", OUT / d / "config.json")
        shutil.copyfile(OUT / f"tokenizers/{tok_name}.json", OUT / d / "tokenizer.json")
        cfg = json.loads((OUT / d / "config.json").read_text(encoding="utf-8"))
        tok = PreTrainedTokenizerFast(tokenizer_file=str(OUT / d / "tokenizer.json"))
        ident = extract_model_identity(cfg, tokenizer=tok)
        cases.append(case(
            f"identity/model-dir/{slug}", ["AVP-HS-1", "AVP-HS-2"], "identity", {"model_dir": d},
            {"result": "valid", "identity": ident.to_dict(), "json": json.dumps(ident.to_dict())},
        ))
    for slug in REAL_CONFIGS:
        rel = f"configs/{slug}.json"
        cfg = json.loads((OUT / rel).read_text(encoding="utf-8"))
        ident = extract_model_identity(cfg)
        cases.append(case(
            f"identity/config/{slug}", ["AVP-HS-1", "AVP-HS-2"], "identity", {"file": rel},
            {"result": "valid", "identity": ident.to_dict(), "json": json.dumps(ident.to_dict())},
        ))
    for slug, cfg in EDGE_CONFIGS.items():
        ident = extract_model_identity(cfg)
        cases.append(case(
            f"identity/edge/{slug}", ["AVP-HS-2"], "identity", {"config": cfg},
            {"result": "valid", "identity": ident.to_dict(), "json": json.dumps(ident.to_dict())},
        ))
    for slug, cfg in DIVERGENT_CONFIGS.items():
        ident = extract_model_identity(cfg)
        cases.append(case(
            f"identity/divergent/{slug}", ["AVP-HS-3"], "identity", {"config": cfg},
            {"result": "invalid", "sdk_identity": ident.to_dict()},
            note="the SDK puts a non-integer or non-string into the identity; we reject the config",
        ))
    return cases


# ------------------------------------------------------------------ hello

def hello_cases():
    ident = {"model_family": "qwen2", "model_id": "Qwen/Qwen2-7B-Instruct", "model_hash": "ab" * 32,
             "hidden_dim": 3584, "num_layers": 28, "num_kv_heads": 4, "head_dim": 128}
    inputs = {
        "full": {"agent_id": "agent-a", "avp_version": "0.6.2", "capabilities": {"kv": True, "n": [1, 2.5]},
                 "identity": dict(ident, tokenizer_hash="cd" * 32)},
        "defaults": {},
        "no-identity": {"agent_id": "x"},
        "unknown-fields": {"agent_id": "x", "extra": [1], "identity": dict(ident, color="red")},
        "partial-identity": {"identity": {"model_hash": "h"}},
        "empty-tokenizer-hash-dropped": {"identity": dict(ident, tokenizer_hash="")},
        "unicode": {"agent_id": "agént😀", "identity": {"model_id": "模型"}},
        "server-reply": {"success": True, "agent_id": "srv", "identity": ident, "session_id": "s-1"},
        "weights-digest-capability": {"agent_id": "w", "capabilities": {"weights_digest": "0f" * 32},
                                      "identity": ident},
    }
    cases = []
    for slug, d in inputs.items():
        h = HelloMessage.from_dict(d)
        cases.append(case(
            f"hello/roundtrip/{slug}", ["AVP-HS-1", "AVP-HS-4"], "hello_parse", {"text": json.dumps(d)},
            {"result": "valid", "to_dict": h.to_dict(), "wire": json.dumps(h.to_dict())},
        ))
    bad = {
        "identity-null": {"identity": None},
        "hidden-dim-string": {"identity": {"hidden_dim": "4096"}},
        "hidden-dim-float": {"identity": {"hidden_dim": 4096.0}},
        "hidden-dim-negative": {"identity": {"hidden_dim": -1}},
        "agent-id-int": {"agent_id": 5},
        "capabilities-list": {"capabilities": []},
        "not-an-object": [1, 2],
        "weights-digest-uppercase": {"capabilities": {"weights_digest": "0F" * 32}},
        "weights-digest-short": {"capabilities": {"weights_digest": "0f"}},
    }
    for slug, d in bad.items():
        cases.append(case(
            f"hello/invalid/{slug}",
            ["AVP-HS-4", "AVP-HS-12"] + (["AVP-HS-20"] if "weights" in slug else []),
            "hello_parse", {"text": json.dumps(d)}, {"result": "invalid"},
            note="the SDK accepts some of these and fails later (or never looks); we reject at parse time",
        ))
    return cases


# -------------------------------------------------------------- resolution

class VocabTok:
    def __init__(self, vocab):
        self._v = vocab

    def get_vocab(self):
        return dict(self._v)


def ident(**kw):
    base = {"model_family": "", "model_id": "", "model_hash": "", "hidden_dim": 0, "num_layers": 0,
            "num_kv_heads": 0, "head_dim": 0}
    base.update(kw)
    return base


H_A = "a" * 8 + "0123456789abcdef" * 3 + "b" * 8
H_B = "b" * 8 + "fedcba9876543210" * 3 + "c" * 8
T_1 = "1" * 64
T_2 = "2" * 64


def vocab_of(n, prefix):
    return {f"{prefix}{i}": i for i in range(n)}


def shared_vocabs(shared, only_a=5, only_b=7):
    a = {f"s{i}": i for i in range(shared)}
    a.update({f"a{i}": shared + i for i in range(only_a)})
    b = {f"s{i}": 1000 - i for i in range(shared)}
    b.update({f"b{i}": 2000 + i for i in range(only_b)})
    return a, b


def resolve_with_sdk(local, remote, maps, vocabs):
    with tempfile.TemporaryDirectory() as tmp:
        for name in maps:
            (Path(tmp) / name).write_bytes(b"")
        old = registry._MAP_DIR
        registry._MAP_DIR = Path(tmp)
        try:
            src = tgt = None
            if vocabs is not None:
                src, tgt = VocabTok(vocabs[0]), VocabTok(vocabs[1])
            info = CompatibilityResolver.resolve(ModelIdentity.from_dict(local), ModelIdentity.from_dict(remote),
                                                 src, tgt)
        finally:
            registry._MAP_DIR = old
    return {"mode": info.mode.name, "resolution_path": info.resolution_path, "avp_map_id": info.avp_map_id}


def resolution_cases():
    llama = dict(model_family="llama", hidden_dim=4096, num_layers=32, num_kv_heads=8, head_dim=128)
    qwen = dict(model_family="qwen2", hidden_dim=3584, num_layers=28, num_kv_heads=4, head_dim=128)
    v99 = shared_vocabs(99)
    v100 = shared_vocabs(100)
    v250 = shared_vocabs(250, 40, 3)
    map_ab = f"{H_A[:16]}_{H_B[:16]}.pt"
    map_ba = f"{H_B[:16]}_{H_A[:16]}.pt"
    rows = [
        ("hash-match", ["AVP-HS-5"], ident(model_hash=H_A, **llama), ident(model_hash=H_A, **qwen), [], None),
        ("hash-match-beats-structural-and-tokenizer", ["AVP-HS-5"],
         ident(model_hash=H_A, tokenizer_hash=T_1, **llama), ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         [map_ab], v250),
        ("hash-match-short-hashes", ["AVP-HS-5"], ident(model_hash="x"), ident(model_hash="x"), [], None),
        ("empty-hashes-do-not-match", ["AVP-HS-5", "AVP-HS-10"], ident(), ident(), [], None),
        ("structural-match", ["AVP-HS-6"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **llama), [], None),
        ("structural-beats-tokenizer", ["AVP-HS-6"], ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_B, tokenizer_hash=T_1, **llama), [], None),
        ("structural-ignores-kv-heads", ["AVP-HS-6"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **dict(llama, num_kv_heads=32, head_dim=64)), [], None),
        ("structural-empty-family", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **dict(llama, model_family="")),
         ident(model_hash=H_B, **dict(llama, model_family="")), [], None),
        ("structural-zero-hidden", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **dict(llama, hidden_dim=0)),
         ident(model_hash=H_B, **dict(llama, hidden_dim=0)), [], None),
        ("structural-zero-layers", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **dict(llama, num_layers=0)),
         ident(model_hash=H_B, **dict(llama, num_layers=0)), [], None),
        ("structural-family-differs", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **dict(llama, model_family="llama2")), [], None),
        ("structural-family-case-sensitive", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **dict(llama, model_family="Llama")), [], None),
        ("structural-layers-differ", ["AVP-HS-6", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **dict(llama, num_layers=33)), [], None),
        ("shared-tokenizer", ["AVP-HS-7"], ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_B, tokenizer_hash=T_1, **qwen), [], None),
        ("shared-tokenizer-beats-map", ["AVP-HS-7"], ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_B, tokenizer_hash=T_1, **qwen), [map_ab], v250),
        ("shared-tokenizer-short-hash", ["AVP-HS-7"], ident(tokenizer_hash="abc"), ident(tokenizer_hash="abc"), [],
         None),
        ("tokenizer-empty-one-side", ["AVP-HS-7", "AVP-HS-10"], ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_B, **qwen), [], None),
        ("tokenizer-differs", ["AVP-HS-7", "AVP-HS-10"], ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_B, tokenizer_hash=T_2, **qwen), [], None),
        ("map-file", ["AVP-HS-8"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen), [map_ab], None),
        ("map-file-beats-overlap", ["AVP-HS-8"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen),
         [map_ab], v250),
        ("map-file-wrong-direction", ["AVP-HS-8", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **qwen), [map_ba], None),
        ("map-file-needs-both-hashes", ["AVP-HS-8", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(**qwen), [f"{H_A[:16]}_.pt"], None),
        ("map-file-short-hashes", ["AVP-HS-8"], ident(model_hash="abc", **llama), ident(model_hash="def", **qwen),
         ["abc_def.pt"], None),
        ("map-file-other-pair-only", ["AVP-HS-8", "AVP-HS-10"], ident(model_hash=H_A, **llama),
         ident(model_hash=H_B, **qwen), [f"{H_A[:16]}_{'0' * 16}.pt"], None),
        ("vocab-overlap-100", ["AVP-HS-9"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen), [], v100),
        ("vocab-overlap-99", ["AVP-HS-9", "AVP-HS-10"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen),
         [], v99),
        ("vocab-overlap-250", ["AVP-HS-9"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen), [], v250),
        ("vocab-overlap-without-hashes", ["AVP-HS-9"], ident(), ident(), [], v100),
        ("vocab-overlap-disjoint", ["AVP-HS-9", "AVP-HS-10"], ident(), ident(), [],
         (vocab_of(300, "x"), vocab_of(300, "y"))),
        ("json-fallback", ["AVP-HS-10"], ident(model_hash=H_A, **llama), ident(model_hash=H_B, **qwen), [], None),
        ("json-fallback-remote-empty", ["AVP-HS-10"], ident(model_hash=H_A, **llama), ident(), [], None),
    ]
    cases = []
    for slug, rules, local, remote, maps, vocabs in rows:
        inp = {"local": local, "remote": remote, "maps": maps}
        if vocabs is not None:
            inp["local_vocab"], inp["remote_vocab"] = vocabs
        cases.append(case(f"resolve/sdk/{slug}", rules, "resolve", inp,
                          dict({"result": "valid"}, **resolve_with_sdk(local, remote, maps, vocabs))))

    # The weights_digest extension (AVP-HS-22): the SDK has no such rule, so
    # these expectations follow the spec. Differing digests skip rules 1-2.
    w1, w2 = "01" * 32, "02" * 32
    ext = [
        ("weights-equal-keeps-hash-match", ident(model_hash=H_A, **llama), ident(model_hash=H_A, **llama), w1, w1, [],
         None, {"mode": "LATENT", "resolution_path": "hash_match", "avp_map_id": ""}),
        ("weights-one-side-only-keeps-hash-match", ident(model_hash=H_A, **llama), ident(model_hash=H_A, **llama),
         w1, None, [], None, {"mode": "LATENT", "resolution_path": "hash_match", "avp_map_id": ""}),
        ("weights-differ-refuses-hash-match", ident(model_hash=H_A, **llama), ident(model_hash=H_A, **llama), w1, w2,
         [], None, {"mode": "JSON", "resolution_path": "json_fallback", "avp_map_id": ""}),
        ("weights-differ-refuses-structural", ident(model_hash=H_A, **llama), ident(model_hash=H_B, **llama), w1, w2,
         [], None, {"mode": "JSON", "resolution_path": "json_fallback", "avp_map_id": ""}),
        ("weights-differ-falls-to-shared-tokenizer", ident(model_hash=H_A, tokenizer_hash=T_1, **llama),
         ident(model_hash=H_A, tokenizer_hash=T_1, **llama), w1, w2, [], None,
         {"mode": "LATENT", "resolution_path": "shared_tokenizer", "avp_map_id": "vocab:" + T_1[:16]}),
        ("weights-differ-falls-to-map-file", ident(model_hash=H_A, **llama), ident(model_hash=H_A, **llama), w1, w2,
         [f"{H_A[:16]}_{H_A[:16]}.pt"], None,
         {"mode": "LATENT", "resolution_path": "avp_map_file", "avp_map_id": f"{H_A[:16]}_{H_A[:16]}"}),
        ("weights-differ-falls-to-vocab-overlap", ident(model_hash=H_A, **llama), ident(model_hash=H_A, **llama),
         w1, w2, [], v100, {"mode": "LATENT", "resolution_path": "vocab_overlap", "avp_map_id": "vocab_overlap:100"}),
    ]
    for slug, local, remote, lw, rw, maps, vocabs, expect in ext:
        inp = {"local": local, "remote": remote, "maps": maps}
        if lw:
            inp["local_weights_digest"] = lw
        if rw:
            inp["remote_weights_digest"] = rw
        if vocabs is not None:
            inp["local_vocab"], inp["remote_vocab"] = vocabs
        cases.append(case(f"resolve/extension/{slug}", ["AVP-HS-22"], "resolve", inp,
                          dict({"result": "valid", "weights_mismatch": bool(lw and rw and lw != rw)}, **expect),
                          note="extension: expected values from the spec, not the SDK"))
    # The SDK's safetensors map name is ours too (AVP-HS-8).
    cases.append(case("resolve/extension/map-file-safetensors-name", ["AVP-HS-8"], "resolve",
                      {"local": ident(model_hash=H_A, **llama), "remote": ident(model_hash=H_B, **qwen),
                       "maps": [f"{H_A[:16]}_{H_B[:16]}.avpmap.safetensors"]},
                      {"result": "valid", "mode": "LATENT", "resolution_path": "avp_map_file",
                       "avp_map_id": f"{H_A[:16]}_{H_B[:16]}", "weights_mismatch": False},
                      note="our safetensors-based map file name; the SDK looks only for .pt"))
    cases.append(case("resolve/extension/map-id-path-traversal", ["AVP-HS-8"], "resolve",
                      {"local": ident(model_hash="../../etc/passwd", **llama), "remote": ident(model_hash=H_B, **qwen),
                       "maps": [f"../../etc/pas_{H_B[:16]}.pt"]},
                      {"result": "valid", "mode": "JSON", "resolution_path": "json_fallback", "avp_map_id": "",
                       "weights_mismatch": False},
                      note="divergence: hashes that are not alphanumeric never name a file"))
    return cases


# ------------------------------------------------------------ weights digest

def weights_digest(dir_path):
    """Independent implementation of AVP-HS-21 (the SDK has none)."""
    entries = []
    for f in sorted(Path(dir_path).glob("*.safetensors")):
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        data = raw[8 + n:]
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            entries.append((name.encode("utf-8"), e["dtype"], e["shape"], end - b,
                            blake3.blake3(data[b:end]).digest()))
    entries.sort(key=lambda t: t[0])
    h = blake3.blake3()
    h.update(b"avp-weights-digest-v1\n")
    h.update(struct.pack("<Q", len(entries)))
    for name, dtype, shape, nbytes, leaf in entries:
        h.update(struct.pack("<Q", len(name)) + name)
        d = dtype.encode()
        h.update(struct.pack("<Q", len(d)) + d)
        h.update(struct.pack("<Q", len(shape)))
        for s in shape:
            h.update(struct.pack("<Q", s))
        h.update(struct.pack("<Q", nbytes))
        h.update(leaf)
    return h.hexdigest()


def weights_cases():
    rng = np.random.default_rng(5)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float16),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((32, 16)).astype(np.float32),
        "model.norm.weight": np.ones((16,), dtype=np.float32),
        "lm_head.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "scalar": np.array(3, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "ünïcode.weight": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    layouts = {}
    d = OUT / "weights/single"
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    layouts["single"] = "weights/single"
    d = OUT / "weights/sharded"
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:3]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[3:]}, str(d / "model-00002-of-00002.safetensors"))
    # Sharding must not change the digest, and config/tokenizer files are ignored.
    (d / "config.json").write_text(json.dumps({"model_type": "x"}) + "\n")
    layouts["sharded"] = "weights/sharded"
    d = OUT / "weights/finetuned"
    d.mkdir(parents=True, exist_ok=True)
    tuned = dict(tensors)
    tuned["model.norm.weight"] = tuned["model.norm.weight"].copy()
    tuned["model.norm.weight"][3] = np.float32(1.0000001)
    save_file(tuned, str(d / "model.safetensors"))
    layouts["finetuned"] = "weights/finetuned"
    d = OUT / "weights/renamed"
    d.mkdir(parents=True, exist_ok=True)
    renamed = {("model.final_norm.weight" if k == "model.norm.weight" else k): v for k, v in tensors.items()}
    save_file(renamed, str(d / "model.safetensors"))
    layouts["renamed"] = "weights/renamed"
    d = OUT / "weights/bf16-reinterpreted"
    d.mkdir(parents=True, exist_ok=True)
    # Same bytes, different dtype label: the digest covers the dtype.
    raw = (OUT / "weights/single/model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "BF16"
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    layouts["bf16-reinterpreted"] = "weights/bf16-reinterpreted"

    cases = []
    digests = {}
    for slug, rel in layouts.items():
        dg = weights_digest(OUT / rel)
        digests[slug] = dg
        cases.append(case(f"weights/digest/{slug}", ["AVP-HS-20", "AVP-HS-21"], "weights_digest", {"dir": rel},
                          {"result": "valid", "weights_digest": dg},
                          note="extension: expected values from the independent Python implementation"))
    assert digests["single"] == digests["sharded"]
    assert len({digests[k] for k in ("single", "finetuned", "renamed", "bf16-reinterpreted")}) == 4

    # Malformed files.
    bad = {
        "header-past-end": struct.pack("<Q", 1000) + b"{}",
        "offsets-past-end": None,
        "size-mismatch": None,
        "header-not-object": None,
        "short-file": b"\x01\x02",
    }
    def st(header_obj, data):
        hb = json.dumps(header_obj).encode()
        return struct.pack("<Q", len(hb)) + hb + data
    bad["offsets-past-end"] = st({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    bad["size-mismatch"] = st({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)
    bad["header-not-object"] = st([1, 2], b"")
    for slug, blob in bad.items():
        rel = f"weights/invalid/{slug}"
        (OUT / rel).mkdir(parents=True, exist_ok=True)
        (OUT / rel / "model.safetensors").write_bytes(blob)
        cases.append(case(f"weights/invalid/{slug}", ["AVP-HS-23"], "weights_digest", {"dir": rel},
                          {"result": "invalid"}))
    return cases


def main():
    global OUT
    if OUT is None:
        raise SystemExit("usage: gen_handshake.py OUT_DIR")
    OUT.mkdir(parents=True, exist_ok=True)
    write_cases("model_hash.json", "model_hash over real-world and adversarial config texts (AVP-HASH-1..6)",
                config_hash_cases())
    write_cases("canonical_json.json", "json.loads then json.dumps agreement on random documents (AVP-HASH-2..6)",
                random_document_cases())
    write_cases("tokenizer_hash.json", "tokenizer_hash of tokenizer.json files and vocab maps (AVP-HASH-10, 11)",
                tokenizer_cases())
    write_cases("identity.json", "identities from configs and model directories (AVP-HS-1..3)", identity_cases())
    write_cases("hello.json", "HelloMessage from_dict/to_dict (AVP-HS-4)", hello_cases())
    write_cases("resolve.json", "the resolution table (AVP-HS-5..10, 22)", resolution_cases())
    write_cases("weights.json", "the weights_digest extension (AVP-HS-20..23)", weights_cases())


if __name__ == "__main__":
    main()
