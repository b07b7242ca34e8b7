#!/usr/bin/env python3
"""Generate the quantized/delta KV vectors (conformance/vectors/kv_ext) from the spec text alone.

Usage: .venv/bin/python conformance/gen/gen_kv_ext.py OUT_DIR
Writes OUT_DIR/cases.json and OUT_DIR/bin/*.kvx. Deterministic (fixed seeds, no timestamps).

Independent of our Rust code: the payloads are built with numpy (and the Python `blake3`
package for prefix addresses) following spec/protocol/kv-quant.md (AVP-KVQ-2..7) and
spec/protocol/kv-delta.md (AVP-KVD-1..5). The SDK (avp==0.6.2) has no quantized or delta KV,
so it is not used here; its refusal of such messages is shown by codec/tests/kv_ext.rs.

Case op `kv_ext_encode`: input {file: a KV v1 payload (the context), scheme
(none|int8|int4|int8-channel),
group_size, scale_dtype (f32|f16), residual, seq_start, model_hash (deltas)}; expect {result:
valid, output: digest of the extended payload the sender must produce}.

Case op `kv_ext_decode`: input {file: the extended inner payload (the tensor bytes of a
KV_CACHE_EXT message), base_hex (optional: a KV v1 payload the receiver holds), model_hash
(optional, for deltas)}. The receiver parses and checks the payload (AVP-KVQ-3), dequantizes it
(AVP-KVQ-5/6/7) and, for a delta, finds the prefix in the base (AVP-KVD-3; no base:
`missing_prefix`) and assembles (AVP-KVD-4). Expect {result: valid, output: {length, crc32,
blake3} of the resulting KV v1 payload, prefix: hex address or null} or {result: invalid,
error_kind}.
"""

import json
import os
import struct
import sys
import zlib

import blake3
import numpy as np

CASES = []
BINS = {}
DOMAIN = b"avp-kv-prefix-v1\n"
F16, BF16, F32 = 1, 2, 0


# ---- element conversions (AVP-KVQ-7) -------------------------------------------------------

def to_bf16_bits(x):
    """binary32 -> bfloat16 bits, round half to even (NaN kept quiet)."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, ((b >> 16).astype(np.uint16) | 0x40), rounded).astype(np.uint16)


def bf16_to_f32(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def store(x, dtype):
    """binary32 values -> bytes of the KV dtype."""
    x = np.asarray(x, np.float32)
    if dtype == F16:
        return x.astype("<f2").tobytes()
    if dtype == BF16:
        return to_bf16_bits(x).astype("<u2").tobytes()
    return x.astype("<f4").tobytes()


def load(raw, dtype):
    if dtype == F16:
        return np.frombuffer(raw, "<f2").astype(np.float32)
    if dtype == BF16:
        return bf16_to_f32(np.frombuffer(raw, "<u2"))
    return np.frombuffer(raw, "<f4").astype(np.float32)


def esize(dtype):
    return 4 if dtype == F32 else 2


def round_scale(x, sd):
    """Rounds binary32 values to the scale dtype and widens back."""
    x = np.asarray(x, np.float32)
    return x.astype(np.float16).astype(np.float32) if sd == 1 else x


def scale_bytes(x, sd):
    x = np.asarray(x, np.float32)
    return x.astype("<f2").tobytes() if sd == 1 else x.astype("<f4").tobytes()


# ---- contexts ------------------------------------------------------------------------------

def context(layers, heads, dim, seq, dtype, seed):
    """A float context: list of (K, V), each float32 [H, seq, D] already representable in dtype."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        pair = []
        for _ in range(2):
            x = (rng.standard_normal((heads, seq, dim)) * 1.5).astype(np.float32)
            x = load(store(x, dtype), dtype).reshape(heads, seq, dim)
            pair.append(x)
        out.append(tuple(pair))
    return out


def kv_v1(ctx, dtype):
    """The KV v1 payload (AVP-KV-1..3)."""
    heads, seq, dim = ctx[0][0].shape if ctx else (0, 0, 0)
    body = b"".join(store(t, dtype) for kv in ctx for t in kv)
    return struct.pack("<IIIIB", len(ctx), heads, dim, seq, dtype) + body


def address(ctx, p, dtype, model_hash):
    """AVP-KVD-1."""
    prefix = [tuple(t[:, :p, :] for t in kv) for kv in ctx]
    mh = model_hash.encode()
    return blake3.blake3(DOMAIN + struct.pack("<I", len(mh)) + mh + kv_v1(prefix, dtype)).digest()


# ---- quantizers (AVP-KVQ-5, AVP-KVQ-6) ----------------------------------------------------

def int8_tensor(x, g, sd):
    """x: [H, t, D] float32 -> (section bytes, dequantized float32)."""
    groups = x.reshape(-1, g)
    amax = np.max(np.abs(groups), axis=1) if groups.size else np.zeros(0, np.float32)
    s = round_scale(amax.astype(np.float32) / np.float32(127), sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(groups / s[:, None]).astype(np.float32)
    q = np.where(s[:, None] == 0, np.float32(0), np.clip(q, -127, 127)).astype(np.int8)
    deq = (q.astype(np.float32) * s[:, None]).astype(np.float32)
    return scale_bytes(s, sd) + q.tobytes(), deq.reshape(x.shape)


def int4_tensor(x, g, sd, r, part, dtype):
    """x: [H, t, D] float32, KIVI layout -> (section bytes, dequantized float32)."""
    h, t, d = x.shape
    tq = t - r
    xq = x[:, :tq, :]
    if part == "key":   # per channel over g tokens: group (h, j, c)
        grp = xq.reshape(h, tq // g, g, d).transpose(0, 1, 3, 2)    # [h, j, c, g]
    else:               # per token over g channels: group (h, s, k)
        grp = xq.reshape(h, tq, d // g, g)                          # [h, s, k, g]
    lo = grp.min(axis=-1) if grp.size else np.zeros(grp.shape[:-1], np.float32)
    hi = grp.max(axis=-1) if grp.size else np.zeros(grp.shape[:-1], np.float32)
    m = round_scale(lo, sd)
    s = round_scale((hi - lo).astype(np.float32) / np.float32(15), sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((grp - m[..., None]).astype(np.float32) / s[..., None]).astype(np.float32)
    q = np.where(s[..., None] == 0, np.float32(0), np.clip(q, 0, 15)).astype(np.uint8)
    deq_g = ((q.astype(np.float32) * s[..., None]).astype(np.float32) + m[..., None]).astype(np.float32)
    if part == "key":
        q_full = q.transpose(0, 1, 3, 2).reshape(h, tq, d)
        deq = deq_g.transpose(0, 1, 3, 2).reshape(h, tq, d)
    else:
        q_full = q.reshape(h, tq, d)
        deq = deq_g.reshape(h, tq, d)
    flat = q_full.reshape(-1)
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)     # even index in the low nibble
    section = (scale_bytes(s.reshape(-1), sd) + scale_bytes(m.reshape(-1), sd) + packed.tobytes()
               + store(x[:, tq:, :], dtype))
    return section, np.concatenate([deq, x[:, tq:, :]], axis=1)


def int8ch_tensor(x, g, sd, r, part, dtype):
    """x: [H, t, D] float32, scheme 3 (AVP-KVQ-30..32): AVP-KVQ-5's arithmetic in int4's
    grouping, the last key group of a channel shorter when g does not divide tq, the last r
    tokens kept in dtype -> (section bytes, dequantized float32)."""
    h, t, d = x.shape
    tq = t - r
    xq = x[:, :tq, :]
    q_full = np.zeros((h, tq, d), np.int8)
    deq = np.zeros((h, tq, d), np.float32)
    scales = []
    if part == "key":   # per channel over tokens [j*g, min((j+1)*g, tq)): scale (h, j, c)
        for hi in range(h):
            for j in range(-(-tq // g)):
                blk = xq[hi, j * g:min((j + 1) * g, tq), :]              # [rows, D]
                amax = np.abs(blk).max(axis=0).astype(np.float32)
                s = round_scale(amax / np.float32(127), sd)
                with np.errstate(divide="ignore", invalid="ignore"):
                    q = np.rint(blk / s[None, :]).astype(np.float32)
                q = np.where(s[None, :] == 0, np.float32(0), np.clip(q, -127, 127)).astype(np.int8)
                q_full[hi, j * g:j * g + blk.shape[0], :] = q
                deq[hi, j * g:j * g + blk.shape[0], :] = (q.astype(np.float32) * s[None, :]).astype(np.float32)
                scales.append(s)
    else:               # per token over g channels: scale (h, s, k)
        grp = xq.reshape(h, tq, d // g, g)
        amax = np.abs(grp).max(axis=-1) if grp.size else np.zeros(grp.shape[:-1], np.float32)
        s = round_scale(amax.astype(np.float32) / np.float32(127), sd)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.rint(grp / s[..., None]).astype(np.float32)
        q = np.where(s[..., None] == 0, np.float32(0), np.clip(q, -127, 127)).astype(np.int8)
        q_full = q.reshape(h, tq, d)
        deq = (q.astype(np.float32) * s[..., None]).astype(np.float32).reshape(h, tq, d)
        scales.append(s.reshape(-1))
    s_all = np.concatenate(scales).astype(np.float32) if scales else np.zeros(0, np.float32)
    section = scale_bytes(s_all, sd) + q_full.tobytes() + store(x[:, tq:, :], dtype)
    return section, np.concatenate([deq, x[:, tq:, :]], axis=1)


def ext_payload(ctx, dtype, scheme, g=0, sd=0, r=0, p=0, model_hash=None, override=None):
    """The extended payload of positions [p, n) and the KV v1 payload a receiver yields."""
    heads, n, dim = ctx[0][0].shape
    t = n - p
    if scheme == 0:
        count = 0
    elif scheme == 1:
        count = heads * t * (dim // g)
    elif scheme == 3:   # int8-channel: the keys' H * ceil(tq / g) * D (AVP-KVQ-31)
        count = heads * (-(-(t - r) // g)) * dim
    else:   # int4: H * tq * D / g
        count = heads * (t - r) * dim // g
    fields = dict(magic=b"AVKX", version=1, scheme=scheme, dtype=dtype, sd=sd, layers=len(ctx),
                  heads=heads, dim=dim, p=p, n=n, g=g, r=r, count=count)
    fields.update(override or {})
    head = fields["magic"] + bytes([fields["version"], fields["scheme"], fields["dtype"], fields["sd"]])
    head += struct.pack("<8I", fields["layers"], fields["heads"], fields["dim"], fields["p"],
                        fields["n"], fields["g"], fields["r"], fields["count"])
    addr = address(ctx, p, dtype, model_hash) if p > 0 else b""
    body, out = b"", []
    for k, v in ctx:
        pair = []
        for part, x in (("key", k), ("value", v)):
            x = x[:, p:, :]
            if scheme == 0:
                sec, deq = store(x, dtype), x
            elif scheme == 1:
                sec, deq = int8_tensor(x, g, sd)
            elif scheme == 3:
                sec, deq = int8ch_tensor(x, g, sd, r, part, dtype)
            else:
                sec, deq = int4_tensor(x, g, sd, r, part, dtype)
            body += sec
            pair.append(np.concatenate([ctx_part(k if part == "key" else v, p), deq], axis=1))
        out.append(tuple(pair))
    return head + addr + body, kv_v1(out, dtype), addr


def ctx_part(x, p):
    return x[:, :p, :]


# ---- cases ---------------------------------------------------------------------------------

def digest(b):
    return {"length": len(b), "crc32": zlib.crc32(b) & 0xFFFFFFFF,
            "blake3": blake3.blake3(b).hexdigest()}


def case(section, slug, rules, description, payload, expect, base=None, model_hash=None):
    path = f"bin/{section}-{slug}.kvx"
    BINS[path] = payload
    inp = {"file": path}
    if base is not None:
        inp["base_hex"] = base.hex()
    if model_hash is not None:
        inp["model_hash"] = model_hash
    CASES.append({"id": f"kv_ext/{section}/{slug}", "rules": rules, "level": "MUST",
                  "op": "kv_ext_decode", "description": description, "input": inp, "expect": expect})


def valid(section, slug, rules, description, payload, out, addr=b"", base=None, model_hash=None):
    case(section, slug, rules, description, payload,
         {"result": "valid", "output": digest(out), "prefix": addr.hex() if addr else None},
         base, model_hash)


def bad(section, slug, rules, description, payload, kind, base=None, model_hash=None):
    case(section, slug, rules, description, payload, {"result": "invalid", "error_kind": kind},
         base, model_hash)


def encode_case(slug, rules, description, ctx, dtype, payload, scheme, g=0, sd=0, r=0, p=0, model_hash=None):
    """Op kv_ext_encode: the sender side (AVP-KVQ-5/6, AVP-KVD-1/2) must give these exact bytes."""
    path = f"bin/encode-{slug}.kv"
    BINS[path] = kv_v1(ctx, dtype)
    inp = {"file": path, "scheme": ["none", "int8", "int4", "int8-channel"][scheme], "group_size": g,
           "scale_dtype": ["f32", "f16"][sd], "residual": r, "seq_start": p}
    if model_hash is not None:
        inp["model_hash"] = model_hash
    CASES.append({"id": f"kv_ext/encode/{slug}", "rules": rules, "level": "MUST", "op": "kv_ext_encode",
                  "description": description, "input": inp,
                  "expect": {"result": "valid", "output": digest(payload)}})


def patch(b, at, fmt, value):
    b = bytearray(b)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


def main():
    out_dir = sys.argv[1]
    os.makedirs(os.path.join(out_dir, "bin"), exist_ok=True)
    q = ["AVP-KVQ-2", "AVP-KVQ-3", "AVP-KVQ-8"]

    # int8 (AVP-KVQ-5)
    c = context(2, 2, 64, 3, F16, 1)
    p8, o8, _ = ext_payload(c, F16, 1, g=64, sd=0)
    valid("int8", "f16-g64-f32-scales", q + ["AVP-KVQ-5", "AVP-KVQ-7"],
          "int8, float16 context, groups of 64, binary32 scales", p8, o8)
    c2 = context(1, 2, 64, 4, BF16, 2)
    p, o, _ = ext_payload(c2, BF16, 1, g=32, sd=1)
    valid("int8", "bf16-g32-f16-scales", q + ["AVP-KVQ-5", "AVP-KVQ-7"],
          "int8, bfloat16 context, groups of 32, binary16 scales", p, o)
    c3 = context(1, 1, 32, 2, F32, 3)
    c3[0][0][0, 0, :16] = 0.0     # an all-zero group: scale 0, q 0
    p, o, _ = ext_payload(c3, F32, 1, g=16, sd=0)
    valid("int8", "f32-zero-group", q + ["AVP-KVQ-5"],
          "int8, float32 context, one group all zeros (scale 0)", p, o)
    # The byte 0x80 (-128) is never written but dequantizes like any other.
    c4 = context(1, 1, 16, 1, F32, 4)
    p, _, _ = ext_payload(c4, F32, 1, g=16, sd=0)
    scale = struct.unpack_from("<f", p, 40)[0]
    pb = bytearray(p)
    pb[44] = 0x80
    deq = np.frombuffer(bytes(pb[44:60]), np.int8).astype(np.float32) * np.float32(scale)
    out = struct.pack("<IIIIB", 1, 1, 16, 1, F32) + store(deq, F32)
    v_sec = pb[60 + 4:60 + 4 + 16]
    v_scale = struct.unpack_from("<f", pb, 60)[0]
    out += store(np.frombuffer(bytes(v_sec), np.int8).astype(np.float32) * np.float32(v_scale), F32)
    valid("int8", "minus-128", q + ["AVP-KVQ-5"],
          "int8 with the byte -128, which senders never write: dequantized as -128 x scale", bytes(pb), out)

    # int4 (AVP-KVQ-6)
    c5 = context(2, 2, 64, 35, F16, 5)
    p4, o4, _ = ext_payload(c5, F16, 2, g=32, sd=1, r=3)
    valid("int4", "f16-g32-residual-3", q + ["AVP-KVQ-6", "AVP-KVQ-7"],
          "int4 KIVI, float16 context, groups of 32, binary16 scales, 3 residual tokens", p4, o4)
    c6 = context(1, 1, 64, 64, BF16, 6)
    p, o, _ = ext_payload(c6, BF16, 2, g=64, sd=0, r=0)
    valid("int4", "bf16-g64-no-residual", q + ["AVP-KVQ-6", "AVP-KVQ-7"],
          "int4 KIVI, bfloat16 context, groups of 64, binary32 scales, no residual", p, o)

    # int8-channel (AVP-KVQ-30..32): keys per channel, values per token, a residual
    ch = q + ["AVP-KVQ-30", "AVP-KVQ-31", "AVP-KVQ-32", "AVP-KVQ-7"]
    c9 = context(2, 2, 64, 35, F16, 9)
    c9[1][0][:, :, 5] *= 40.0     # an outlier key channel, 40x the others
    c9 = [tuple(load(store(t, F16), F16).reshape(t.shape) for t in kv) for kv in c9]
    p3, o3, _ = ext_payload(c9, F16, 3, g=32, sd=1, r=3)
    valid("int8-channel", "f16-g32-residual-3", ch,
          "int8-channel, float16 context with an outlier key channel, groups of 32, binary16 scales, "
          "3 residual tokens", p3, o3)
    c10 = context(1, 1, 16, 8, BF16, 10)
    c10[0][0][0, :4, 2] = 0.0     # one key channel all zeros over a group: scale 0, q 0
    p, o, _ = ext_payload(c10, BF16, 3, g=4, sd=0, r=0)
    valid("int8-channel", "bf16-g4-zero-channel", ch,
          "int8-channel, bfloat16 context, groups of 4, binary32 scales, a key group all zeros", p, o)
    # 35 = 32 + 3: the last key group of each channel holds 3 tokens (AVP-KVQ-31).
    p3s, o3s, _ = ext_payload(c9, F16, 3, g=32, sd=1, r=0)
    valid("int8-channel", "f16-g32-last-group-3", ch,
          "int8-channel, float16 context of 35 tokens with an outlier key channel, groups of 32: "
          "the last key group of a channel has 3 tokens, no residual", p3s, o3s)
    c13 = context(2, 2, 8, 11, F32, 13)
    p, o, _ = ext_payload(c13, F32, 3, g=8, sd=0, r=2)
    valid("int8-channel", "f32-g8-last-group-1-residual-2", ch,
          "int8-channel, float32 context of 11 tokens, groups of 8, 2 residual tokens: the last key "
          "group of a channel has 1 token", p, o)
    c11 = context(1, 2, 8, 5, F32, 11)
    p, o, _ = ext_payload(c11, F32, 3, g=8, sd=0, r=5)
    valid("int8-channel", "f32-all-residual", ch,
          "int8-channel, float32 context of 5 tokens, all residual: no scales, no codes", p, o)
    # The byte 0x80 (-128) is never written but dequantizes like any other (AVP-KVQ-5).
    c12 = context(1, 1, 2, 2, F32, 12)
    p, _, _ = ext_payload(c12, F32, 3, g=2, sd=0, r=0)
    pb = bytearray(p)
    ks = np.frombuffer(bytes(pb[40:48]), "<f4")                  # key scales of channels 0, 1
    pb[48] = 0x80                                                 # key (0, 0, 0)
    kq = np.frombuffer(bytes(pb[48:52]), np.int8).astype(np.float32).reshape(2, 2)
    kd = kq * ks[None, :]
    vs = np.frombuffer(bytes(pb[52:60]), "<f4")                  # value scales of tokens 0, 1
    vq = np.frombuffer(bytes(pb[60:64]), np.int8).astype(np.float32).reshape(2, 2)
    vd = vq * vs[:, None]
    out = struct.pack("<IIIIB", 1, 1, 2, 2, F32) + store(kd, F32) + store(vd, F32)
    valid("int8-channel", "minus-128", ch,
          "int8-channel with the byte -128, which senders never write: dequantized as -128 x scale",
          bytes(pb), out)

    # scheme none and deltas (AVP-KVD-*)
    mh = "c0ffee" * 10 + "abcd"
    c7 = context(2, 2, 8, 9, F16, 7)
    p, o, _ = ext_payload(c7, F16, 0)
    valid("none", "full-f16", q, "scheme none, full context: the KV v1 payload itself", p, o)
    base_exact = kv_v1([tuple(t[:, :5, :] for t in kv) for kv in c7], F16)
    pd, od, addr = ext_payload(c7, F16, 0, p=5, model_hash=mh)
    d_rules = ["AVP-KVD-1", "AVP-KVD-2", "AVP-KVD-3", "AVP-KVD-4"]
    valid("delta", "none-exact-base", d_rules, "plain delta [5, 9) on a base of exactly 5 positions",
          pd, od, addr, base_exact, mh)
    base_longer = kv_v1(c7, F16)
    valid("delta", "none-longer-base", d_rules,
          "plain delta on a stored context of 9 positions that starts with the prefix", pd, od, addr,
          base_longer, mh)
    c8 = context(1, 2, 64, 12, BF16, 8)
    pq, oq, addr8 = ext_payload(c8, BF16, 1, g=64, sd=1, p=4, model_hash=mh)
    valid("delta", "int8-delta", d_rules + ["AVP-KVQ-5"], "int8-quantized delta [4, 12)", pq, oq, addr8,
          kv_v1(c8, BF16), mh)
    bad("delta", "missing-prefix", ["AVP-KVD-5"], "a delta and no stored context: missing_prefix",
        pd, "missing_prefix", None, mh)
    bad("delta", "other-model", ["AVP-KVD-1", "AVP-KVD-4"],
        "the base under another model hash has another address", pd, "prefix_mismatch", base_exact, "other")
    changed = bytearray(base_exact)
    changed[17] ^= 1
    bad("delta", "changed-base", ["AVP-KVD-4"], "one bit of the base differs", pd, "prefix_mismatch",
        bytes(changed), mh)
    short = kv_v1([tuple(t[:, :4, :] for t in kv) for kv in c7], F16)
    bad("delta", "base-too-short", ["AVP-KVD-4"], "the base holds 4 positions, the delta starts at 5",
        pd, "delta_mismatch", short, mh)
    other_dtype = kv_v1([tuple(t[:, :5, :] for t in kv) for kv in c7], F32)
    bad("delta", "base-dtype", ["AVP-KVD-4"], "the base is float32, the delta float16", pd,
        "delta_mismatch", other_dtype, mh)

    # the sender side: quantizing gives exactly these bytes
    encode_case("int8-f16-g64", ["AVP-KVQ-5"], "int8 of a float16 context, groups of 64, binary32 scales",
                c, F16, p8, 1, g=64, sd=0)
    encode_case("int8-f32-zero-group", ["AVP-KVQ-5"], "int8 with an all-zero group", c3, F32,
                ext_payload(c3, F32, 1, g=16, sd=0)[0], 1, g=16, sd=0)
    encode_case("int4-f16-residual-3", ["AVP-KVQ-6"], "int4 KIVI with binary16 scales and 3 residual tokens",
                c5, F16, p4, 2, g=32, sd=1, r=3)
    encode_case("int4-bf16-g64", ["AVP-KVQ-6", "AVP-KVQ-7"], "int4 KIVI of a bfloat16 context, groups of 64",
                c6, BF16, ext_payload(c6, BF16, 2, g=64, sd=0, r=0)[0], 2, g=64, sd=0)
    encode_case("int8-channel-f16-residual-3", ["AVP-KVQ-30", "AVP-KVQ-31", "AVP-KVQ-32"],
                "int8-channel with an outlier key channel, binary16 scales and 3 residual tokens",
                c9, F16, p3, 3, g=32, sd=1, r=3)
    encode_case("int8-channel-bf16-g4", ["AVP-KVQ-31", "AVP-KVQ-32", "AVP-KVQ-7"],
                "int8-channel of a bfloat16 context, groups of 4, a key group all zeros",
                c10, BF16, ext_payload(c10, BF16, 3, g=4, sd=0, r=0)[0], 3, g=4, sd=0)
    pq3, _, _ = ext_payload(c9, F16, 3, g=16, sd=0, r=0, p=3, model_hash=mh)
    encode_case("delta-int8-channel", ["AVP-KVD-1", "AVP-KVD-2", "AVP-KVQ-32"],
                "int8-channel delta from position 3 (32 tokens carried, groups of 16)",
                c9, F16, pq3, 3, g=16, sd=0, p=3, model_hash=mh)
    encode_case("int8-channel-f16-last-group-3", ["AVP-KVQ-30", "AVP-KVQ-31", "AVP-KVQ-32"],
                "int8-channel of 35 tokens in groups of 32, no residual: a last key group of 3 tokens",
                c9, F16, p3s, 3, g=32, sd=1, r=0)
    pq5, _, _ = ext_payload(c9, F16, 3, g=16, sd=1, r=0, p=5, model_hash=mh)
    encode_case("delta-int8-channel-last-group-14", ["AVP-KVD-1", "AVP-KVD-2", "AVP-KVQ-31", "AVP-KVQ-32"],
                "int8-channel delta from position 5 (30 tokens carried, groups of 16: a last key group of 14)",
                c9, F16, pq5, 3, g=16, sd=1, p=5, model_hash=mh)
    encode_case("delta-none", ["AVP-KVD-1", "AVP-KVD-2"], "plain delta from position 5: address and tail",
                c7, F16, pd, 0, p=5, model_hash=mh)
    encode_case("delta-int8", ["AVP-KVD-1", "AVP-KVD-2", "AVP-KVQ-5"], "int8 delta from position 4",
                c8, BF16, pq, 1, g=64, sd=1, p=4, model_hash=mh)

    # refusals (AVP-KVQ-3, AVP-KVQ-4)
    r = ["AVP-KVQ-3"]
    bad("refused", "short-header", r, "39 bytes", p8[:39], "truncated")
    bad("refused", "bad-magic", r, "magic AVKY", b"AVKY" + p8[4:], "inconsistent")
    bad("refused", "version-2", r, "format version 2", patch(p8, 4, "B", 2), "unsupported_version")
    bad("refused", "scheme-4", r, "scheme byte 4", patch(p8, 5, "B", 4), "unknown_enum")
    bad("refused", "dtype-3", r, "dtype byte 3 (never read as float16)", patch(p8, 6, "B", 3), "unknown_enum")
    bad("refused", "scale-dtype-2", r, "scale dtype byte 2", patch(p8, 7, "B", 2), "unknown_enum")
    bad("refused", "start-after-end", r, "seq_start 4 > seq_len 3", patch(p8, 20, "<I", 4), "inconsistent")
    g = r + ["AVP-KVQ-4"]
    bad("refused", "int8-group-0", g, "int8 group size 0", patch(p8, 28, "<I", 0), "bad_group_size")
    bad("refused", "int8-group-65", g, "int8 group size 65", patch(p8, 28, "<I", 65), "bad_group_size")
    bad("refused", "int8-group-48", g, "int8 group size 48 does not divide head_dim 64",
        patch(p8, 28, "<I", 48), "bad_group_size")
    bad("refused", "int8-residual", g, "int8 with a residual", patch(p8, 32, "<I", 1), "inconsistent")
    bad("refused", "int4-group-16", g, "int4 group size 16", patch(p4, 28, "<I", 16), "bad_group_size")
    bad("refused", "int4-tokens-not-divisible", g, "int4 residual 2: 33 quantized tokens",
        patch(p4, 32, "<I", 2), "bad_group_size")
    bad("refused", "int4-residual-too-long", g, "int4 residual 36 > 35 tokens",
        patch(p4, 32, "<I", 36), "inconsistent")
    g3 = r + ["AVP-KVQ-30"]
    bad("refused", "int8-channel-group-0", g3, "int8-channel group size 0", patch(p3, 28, "<I", 0),
        "bad_group_size")
    bad("refused", "int8-channel-group-65", g3, "int8-channel group size 65", patch(p3, 28, "<I", 65),
        "bad_group_size")
    bad("refused", "int8-channel-group-48", g3, "int8-channel group size 48 does not divide head_dim 64",
        patch(p3, 28, "<I", 48), "bad_group_size")
    bad("refused", "int8-channel-residual-changes-key-groups", g3 + ["AVP-KVQ-31"],
        "int8-channel residual 2: 33 quantized tokens need 2 key groups a channel (256 scales), "
        "128 declared", patch(p3, 32, "<I", 2), "scale_count_mismatch")
    bad("refused", "int8-channel-residual-too-long", g3, "int8-channel residual 36 > 35 tokens",
        patch(p3, 32, "<I", 36), "inconsistent")
    bad("refused", "int8-channel-scale-count", g3 + ["AVP-KVQ-31"],
        "int8-channel declares 127 scales per tensor, the shape gives 128",
        patch(p3, 36, "<I", 127), "scale_count_mismatch")
    bad("refused", "int8-channel-short", g3 + ["AVP-KVQ-31"], "int8-channel, the last residual byte missing",
        p3[:-1], "truncated")
    bad("refused", "int8-channel-long", g3 + ["AVP-KVQ-31"], "int8-channel, one byte after the last layer",
        p3 + b"\0", "inconsistent")
    kv_len = 256 * 2 + 2 * 35 * 64    # p3s: the K section of layer 0 (AVP-KVQ-31)
    bad("refused", "int8-channel-last-group-value-count", g3 + ["AVP-KVQ-31"],
        "int8-channel of 35 tokens in groups of 32 declares the values' 140 scales, not the keys' 256",
        patch(p3s, 36, "<I", 140), "scale_count_mismatch")
    bad("refused", "int8-channel-last-group-short", g3 + ["AVP-KVQ-31"],
        "int8-channel with a short last key group, one byte missing", p3s[:-1], "truncated")
    bad("refused", "int8-channel-last-group-long", g3 + ["AVP-KVQ-31"],
        "int8-channel with a short last key group, one byte after the last layer", p3s + b"\0",
        "inconsistent")
    bad("refused", "int8-channel-last-group-nan-scale", r + ["AVP-KVQ-31", "AVP-KVQ-32"],
        "int8-channel, a NaN scale of a last (3-token) key group", patch(p3s, 40 + 2 * (64 + 5), "<H", 0x7E00),
        "inconsistent")
    bad("refused", "int8-channel-value-negative-scale", r + ["AVP-KVQ-31", "AVP-KVQ-32"],
        "int8-channel, a negative scale of the first V section, which starts after the longer K section",
        patch(p3s, 40 + kv_len, "<H", 0xBC00), "inconsistent")
    bad("refused", "int8-channel-negative-scale", r + ["AVP-KVQ-32"], "int8-channel, a negative binary16 scale",
        patch(p3, 40, "<H", 0xBC00), "inconsistent")
    bad("refused", "int8-channel-inf-scale", r + ["AVP-KVQ-32"], "int8-channel, an infinite binary16 scale",
        patch(p3, 40, "<H", 0x7C00), "inconsistent")
    bad("refused", "none-with-group", g, "scheme none with a group size",
        patch(ext_payload(c7, F16, 0)[0], 28, "<I", 8), "inconsistent")
    bad("refused", "scale-count", r, "declares 7 scales per tensor, the shape gives 6",
        patch(p8, 36, "<I", 7), "scale_count_mismatch")
    bad("refused", "payload-short", r, "one byte missing", p8[:-1], "truncated")
    bad("refused", "payload-long", r, "one byte after the last layer", p8 + b"\0", "inconsistent")
    bad("refused", "layers-overflow", r, "2^32-1 layers: the size overflows nothing but the input",
        patch(p8, 8, "<I", 0xFFFFFFFF), "truncated")
    bad("refused", "negative-scale", r, "a negative scale", patch(p8, 40, "<f", -1.0), "inconsistent")
    bad("refused", "nan-scale", r, "a NaN scale", patch(p8, 40, "<I", 0x7FC00000), "inconsistent")
    bad("refused", "delta-short-address", r, "a delta cut inside its prefix address", pd[:50], "truncated")

    for rel, data in BINS.items():
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(data)
    doc = {"suite": "avp-kv-ext", "suite_version": "1.0.0", "spec": {"kv_quant": 1, "kv_delta": 1},
           "generator": {"script": "conformance/gen/gen_kv_ext.py", "uses": "numpy, python blake3"},
           "case_count": len(CASES), "cases": CASES}
    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(CASES)} cases")


if __name__ == "__main__":
    main()
