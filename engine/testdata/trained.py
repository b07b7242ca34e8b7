#!/usr/bin/env python3
"""Trained fixture models: tiny models that learned a small Q&A corpus, so that what they
generate depends on the prompt and on the context they continue (issue 16).

Usage (gen_models.py runs this; by hand only to inspect):
    .venv/bin/python engine/testdata/trained.py MODELS_DIR

Writes MODELS_DIR/trained_a and MODELS_DIR/trained_b (Hugging Face model directories that share
one tokenizer). Must run in a process whose CPU kernels are pinned (PINNED_ENV; gen_models.py
starts it that way): a few hundred Adam steps amplify any difference in float rounding, and the
weights are compared byte for byte. README.md, "Trained models", explains the choice.

No SDK import here: training needs only tokenizers, transformers and torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Kernels that give the same float results on every x86-64 CPU, in one thread:
# - ATEN_CPU_CAPABILITY=default: libtorch's portable kernels instead of AVX2/AVX-512 ones;
# - MKL_CBWR=COMPATIBLE: MKL's conditional numerical reproducibility, the same sgemm results
#   on any x86 CPU (Intel or AMD) whatever instructions it has;
# - ONEDNN_MAX_CPU_ISA=SSE41: oneDNN limited to an ISA every x86-64 CPU in use has;
# - one thread everywhere, so no reduction is split differently.
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus" / "trained_qa.tsv"

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SYSTEM = "You are a helpful assistant."
# The follow-up turns of the handoff and chain formats (and the prompts the fixtures use).
FOLLOWUP = "Now answer."
CHAIN_TURNS = ["Check the plan.", "Improve the plan."]

# Two architectures on one tokenizer: the cross-model pair (vocab-mediated projection).
TRAINED_MODELS = [
    dict(name="trained_a", arch="qwen2", seed=21, hidden=64, layers=2, heads=4, kv_heads=2,
         inter=128, tied=True, rope_theta=1000000.0),
    dict(name="trained_b", arch="llama", seed=22, hidden=48, layers=3, heads=4, kv_heads=1,
         inter=96, tied=False, rope_theta=10000.0),
]
TRAIN_STEPS = 400
BATCH = 16
LR = 3e-3
VOCAB_SIZE = 640


def read_corpus() -> list[tuple[str, str]]:
    pairs = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        q, a = line.split("\t")
        pairs.append((q, a))
    return pairs


def train_tokenizer(pairs):
    """Byte-level BPE in the Qwen2 style (what transformers imposes for model_type qwen2), on
    the corpus plus the chat-template strings, so that most words are one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    split = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
             r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = [f"system\n{SYSTEM}\nuser\nassistant\n{FOLLOWUP} " + " ".join(CHAIN_TURNS)]
    text += [f"{q}\n{a}" for q, a in pairs]
    tok.train_from_iterator(text * 4, trainer)
    return tok


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer(model_dir: Path, tok) -> None:
    tok.save(str(model_dir / "tokenizer.json"))
    cfg = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256,
           "chat_template": CHATML_TEMPLATE}
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    (model_dir / "tokenizer_config.json").write_text(text)


def training_sequences(pairs, hf_tok) -> list[tuple[list[int], int]]:
    """(ids, first supervised position): five sequences per pair in four formats, each what an AVP
    pipeline shows a model (each turn rendered on its own, as the SDK renders each call):

    - plain:   [Q] answer                             generate(Q)
    - handoff: [Q] [Now answer.] answer                think(Q, 0) then generate(followup, ctx)
               [Q] a[:k] [Now answer.] answer          think(Q, k) then generate(followup, ctx):
               the k latent steps approximated by the first k answer tokens (a tied model's
               latent input is a soft embedding of its predicted next token)
    - chain:   [Q] [Check the plan.] [Improve the plan.] [Now answer.] answer
                                                      planner -> critic -> refiner -> generate
    - prefix:  a[j] [Now answer.] answer              cross-model: the target's cache primed
               with one projected vector (a soft embedding of the source's next token)
    Loss only on the final answer and its <|im_end|>.
    """
    def render(text: str) -> list[int]:
        s = hf_tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
        return hf_tok(s, add_special_tokens=False)["input_ids"]

    end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    follow = render(FOLLOWUP)
    chain = [i for t in CHAIN_TURNS for i in render(t)]
    seqs = []
    for n, (q, a) in enumerate(pairs):
        qi = render(q)
        ai = hf_tok(a, add_special_tokens=False)["input_ids"] + [end]
        k = 1 + n % 3  # 1..3 imitated latent steps
        j = n % 3
        for prefix in (qi, qi + follow, qi + ai[:k] + follow, qi + chain + follow,
                       ai[j:j + 1] + follow):
            seqs.append((prefix + ai, len(prefix)))
    return seqs


def init_weights(model, seed: int) -> None:
    """Uniform init from PCG64 integers, scaled exactly (bit-identical on every CPU)."""
    import numpy as np
    import torch

    rng = np.random.Generator(np.random.PCG64(seed))

    def uniform(shape, std: float):
        k = rng.integers(-(2 ** 23), 2 ** 23, size=tuple(shape), dtype=np.int64)
        u = (k.astype(np.float64) / 2 ** 23).astype(np.float32)
        return torch.from_numpy(u * np.float32(std * 3 ** 0.5))

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(uniform(p.shape, 0.1))
            else:
                p.copy_(uniform(p.shape, 1.0 / p.shape[1] ** 0.5))


def train_model(spec: dict, seqs, tok_len: int, special_ids: dict, out_dir: Path, tok) -> dict:
    import numpy as np
    import torch
    import transformers

    common = dict(vocab_size=tok_len, hidden_size=spec["hidden"],
                  intermediate_size=spec["inter"], num_hidden_layers=spec["layers"],
                  num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                  max_position_embeddings=256, rms_norm_eps=1e-6,
                  tie_word_embeddings=spec["tied"], bos_token_id=special_ids["bos"],
                  eos_token_id=special_ids["eos"], pad_token_id=special_ids["pad"],
                  rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]})
    cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[spec["arch"]]
    model = transformers.AutoModelForCausalLM.from_config(cls(**common), dtype=torch.float32)
    init_weights(model, spec["seed"])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    rng = np.random.Generator(np.random.PCG64(spec["seed"]))
    order: list[int] = []
    losses = []
    for step in range(TRAIN_STEPS):
        if len(order) < BATCH:
            order += rng.permutation(len(seqs)).tolist()
        batch, order = order[:BATCH], order[BATCH:]
        width = max(len(seqs[i][0]) for i in batch)
        ids = torch.full((BATCH, width), special_ids["pad"], dtype=torch.long)
        mask = torch.zeros((BATCH, width), dtype=torch.long)
        labels = torch.full((BATCH, width), -100, dtype=torch.long)
        for r, i in enumerate(batch):
            s, start = seqs[i]
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
            labels[r, start:len(s)] = torch.tensor(s[start:])
        # Linear warm-down keeps the last steps small (less sensitive end state).
        for g in opt.param_groups:
            g["lr"] = LR * (1.0 - step / TRAIN_STEPS)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    mdir = out_dir / spec["name"]
    mdir.mkdir(parents=True)
    model.save_pretrained(str(mdir))
    write_tokenizer(mdir, tok)
    return {"first_loss": losses[0], "last_loss": sum(losses[-20:]) / 20}


def main() -> None:
    import torch
    import transformers

    for k, v in PINNED_ENV.items():
        assert os.environ.get(k) == v, f"trained.py must run with {k}={v} (see PINNED_ENV)"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    out = Path(sys.argv[1])
    pairs = read_corpus()
    tok = train_tokenizer(pairs)
    vocab = tok.get_vocab()
    special = {"bos": vocab["<|endoftext|>"], "eos": vocab["<|im_end|>"],
               "pad": vocab["<|endoftext|>"]}
    # Tokenize through transformers, exactly as the SDK will (chat template, no specials).
    tmp = out / ".tokenizer"
    tmp.mkdir(parents=True)
    write_tokenizer(tmp, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp))
    seqs = training_sequences(pairs, hf_tok)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    report = {}
    for spec in TRAINED_MODELS:
        report[spec["name"]] = train_model(spec, seqs, tok.get_vocab_size(), special, out, tok)
    print(json.dumps({"sequences": len(seqs), "losses": report}))


if __name__ == "__main__":
    main()
