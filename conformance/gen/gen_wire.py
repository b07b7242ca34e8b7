#!/usr/bin/env python3
"""Generate the AVP v1 wire vectors (conformance/vectors/wire) with the Python SDK.

Usage: .venv/bin/python conformance/gen/gen_wire.py OUT_DIR
Writes OUT_DIR/cases.json and OUT_DIR/bin/*.avp. Deterministic: running it
twice gives byte-identical files (no randomness, no timestamps).

Every expectation is what the SDK (avp==0.6.2) does with the bytes:
  - valid:      the SDK decodes; `decoded` is its view of the message.
  - invalid:    the SDK raises; `error_kind` is our name for that exception
                (spec/protocol/errors.md, AVP-ERR-3). Where we reject what the SDK
                accepts (decoder limits, spec/protocol/limits.md), `sdk` says so.
  - non_strict: the SDK decodes (`decoded`); a compatible decoder accepts
                with `warnings`, a strict one rejects with `inconsistent`.

Map order: upb writes `extra` in hash-table order, which is not
deterministic. For the committed bytes the generator takes the SDK's output
and reorders the field-14 entries by key (bytewise UTF-8). Nothing else
changes (entries are contiguous and keep their bytes), and the SDK is run on
the reordered bytes to confirm its view is unchanged (AVP-WIRE-12).
"""

import json
import os
import struct
import sys
import zlib

import blake3
import torch
import zstandard
from google.protobuf import message as pb_message

import avp
from avp import avp_pb2, codec, errors
from avp.kv_cache import deserialize_kv_cache, serialize_kv_cache
from avp.fallback import JSONMessage
from avp.types import AVPMetadata, CommunicationMode, CompressionLevel, DataType, PayloadType

assert avp.__version__ == "0.6.2", avp.__version__

CASES = []
BINS = {}

# ---------------------------------------------------------------- protobuf bits


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def padded_varint(n, total):
    """`n` as a non-minimal varint of exactly `total` bytes."""
    v = bytearray(varint(n))
    assert len(v) <= total
    if len(v) == total:
        return bytes(v)
    v[-1] |= 0x80
    v += b"\x80" * (total - len(v) - 1) + b"\x00"
    return bytes(v)


def tag(field, wt):
    return varint((field << 3) | wt)


def ld(field, data):
    if isinstance(data, str):
        data = data.encode()
    return tag(field, 2) + varint(len(data)) + data


def vi(field, n):
    return tag(field, 0) + varint(n)


def split_fields(meta):
    """Top-level (field, raw bytes) pairs of a well-formed Metadata."""
    out, i = [], 0
    while i < len(meta):
        start = i
        key, i = read_varint(meta, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, i = read_varint(meta, i)
        elif wt == 2:
            n, i = read_varint(meta, i)
            i += n
        else:
            raise ValueError("unexpected wire type in SDK output")
        out.append((field, meta[start:i]))
    return out


def read_varint(b, i):
    shift = n = 0
    while True:
        x = b[i]
        i += 1
        n |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return n, i


def entry_key(raw):
    """The key bytes of a field-14 map entry as upb writes it (key first)."""
    _, i = read_varint(raw, 0)
    n, i = read_varint(raw, i)
    entry = raw[i:i + n]
    assert entry[0] == 0x0A
    kl, j = read_varint(entry, 1)
    return entry[j:j + kl]


def sort_extra(data):
    """Reorder the SDK's `extra` entries by key; see the module docstring."""
    ml = struct.unpack_from("<I", data, 8)[0]
    meta = data[12:12 + ml]
    fields = split_fields(meta)
    idx = [i for i, (f, _) in enumerate(fields) if f == 14]
    if not idx:
        return data
    assert idx == list(range(idx[0], idx[-1] + 1)), "map entries not contiguous"
    entries = sorted((raw for f, raw in fields if f == 14), key=entry_key)
    new_meta = b"".join(raw for _, raw in fields[:idx[0]]) + b"".join(entries) + b"".join(
        raw for _, raw in fields[idx[-1] + 1:])
    assert len(new_meta) == len(meta)
    return data[:12] + new_meta + data[12 + ml:]


def frame(meta, tensor, flags=0, pl=None, ml=None, version=1, magic=b"AV"):
    if pl is None:
        pl = len(meta) + len(tensor)
    if ml is None:
        ml = len(meta)
    return magic + struct.pack("<BBII", version, flags, pl, ml) + meta + tensor


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


# ---------------------------------------------------------------- SDK views

DTYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "BFLOAT16", 3: "INT8"}


def sdk_view(data):
    """The SDK's decoded view, or raises what the SDK raises."""
    msg = codec.decode(data)
    h = msg.header
    pb = avp_pb2.Metadata()
    pb.ParseFromString(data[12:12 + h.metadata_length])
    m = msg.metadata
    kv = None
    if m.payload_type == PayloadType.KV_CACHE:
        try:
            layers, kh = deserialize_kv_cache(msg.payload)
            kv = {"num_layers": kh.num_layers, "num_kv_heads": kh.num_kv_heads, "head_dim": kh.head_dim,
                  "seq_len": kh.seq_len, "dtype": kh.dtype}
        except Exception as e:  # recorded, not judged: see AVP-KV-4
            kv = {"sdk_error": f"{type(e).__name__}: {e}"}
    return {
        "header": {"version": h.version, "flags": h.flags, "payload_length": h.payload_length,
                   "metadata_length": h.metadata_length},
        "metadata": {
            "session_id": m.session_id, "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id, "model_id": m.model_id, "hidden_dim": m.hidden_dim,
            "num_layers": m.num_layers, "payload_type": m.payload_type.name, "dtype": m.dtype.name,
            "tensor_shape": list(m.tensor_shape), "mode": m.mode.name, "compression": m.compression,
            "avp_map_id": m.avp_map_id, "extra": dict(sorted(m.extra.items())),
            "payload_checksum": pb.payload_checksum if pb.HasField("payload_checksum") else None,
        },
        "payload": {"length": len(msg.payload), "crc32": crc(msg.payload),
                    "blake3": blake3.blake3(msg.payload).hexdigest()},
        "kv": kv,
    }


def error_kind(exc):
    """Our error kind for an SDK exception (spec/protocol/errors.md, AVP-ERR-3)."""
    text = str(exc)
    if isinstance(exc, errors.InvalidMagicError):
        return "bad_magic"
    if isinstance(exc, errors.UnsupportedVersionError):
        return "unsupported_version"
    if isinstance(exc, pb_message.DecodeError):
        return "malformed_metadata"
    if isinstance(exc, zstandard.ZstdError):
        return "decompression"
    if isinstance(exc, errors.DecodeError):
        if text.startswith(("Message too short", "Message truncated")):
            return "truncated"
        if text.startswith("Unknown "):
            return "unknown_enum"
        if text.startswith("Payload checksum mismatch"):
            return "checksum_mismatch"
    raise AssertionError(f"unmapped SDK exception {type(exc).__name__}: {exc}")


def sdk_outcome(data):
    try:
        return "accepted", sdk_view(data), None
    except Exception as e:  # every SDK failure is mapped or the generator stops
        return "rejected", None, e


# ---------------------------------------------------------------- case builders


def add_bin(slug, data):
    assert slug not in BINS, slug
    BINS[slug] = data
    return f"bin/{slug}.avp"


def case(section, slug, rules, description, data, expect, level="MUST", encode=None):
    entry = {"id": f"wire/{section}/{slug}", "rules": rules, "level": level, "op": "decode",
             "description": description, "input": {"file": add_bin(slug, data)}}
    if encode is not None:
        # Re-encoding the decoded message with this compression must give these bytes (AVP-WIRE-22).
        entry["encode"] = {"compression": encode}
    entry["expect"] = expect
    CASES.append(entry)


def valid(section, slug, rules, description, data, encode=None, level="MUST", kv=None):
    """`kv` is our expectation for the KV inner payload (spec/protocol/kv-cache.md) when
    it differs from "valid": `decoded.kv` is always the SDK's own view."""
    outcome, view, exc = sdk_outcome(data)
    assert outcome == "accepted", f"{slug}: SDK rejected: {exc!r}"
    # Every valid case judges the tensor byte range (payload digest, AVP-WIRE-8)
    # and the whole decoded view: header, metadata, payload, warnings (AVP-WIRE-19).
    rules = rules + [r for r in ("AVP-WIRE-8", "AVP-WIRE-19") if r not in rules]
    expect = {"result": "valid", "decoded": view}
    if view["metadata"]["payload_type"] == "KV_CACHE":
        expect["kv"] = kv or {"result": "valid"}
    case(section, slug, rules, description, data, expect, level, encode)


def invalid(section, slug, rules, description, data, kind, sdk_agrees=True, level="MUST"):
    # The expected kind is one of the closed list (AVP-ERR-1); where the SDK
    # agrees, it was derived from the SDK's exception (AVP-ERR-3); a limit is
    # told apart from a malformed message by its kind (AVP-LIM-9).
    rules = rules + ["AVP-ERR-1"] + (["AVP-ERR-3"] if sdk_agrees else [])
    if kind == "limit_exceeded":
        rules.append("AVP-LIM-9")
    outcome, view, exc = sdk_outcome(data)
    expect = {"result": "invalid", "error_kind": kind}
    if sdk_agrees:
        assert outcome == "rejected", f"{slug}: SDK accepted"
        assert error_kind(exc) == kind, f"{slug}: SDK says {error_kind(exc)} ({exc}), we say {kind}"
    else:
        # We reject on purpose where the SDK does not (a limit, a check order); record what the SDK did.
        expect["sdk"] = (f"accepted" if outcome == "accepted"
                         else f"rejected as {error_kind(exc)}: {type(exc).__name__}")
    case(section, slug, rules, description, data, expect, level)


def non_strict(section, slug, rules, description, data, warnings):
    rules = rules + ["AVP-WIRE-19"]  # the warnings are returned with the message
    outcome, view, exc = sdk_outcome(data)
    assert outcome == "accepted", f"{slug}: SDK rejected: {exc!r}"
    case(section, slug, rules, description, data,
         {"result": "non_strict", "decoded": view, "warnings": warnings, "strict_error_kind": "inconsistent"},
         "SHOULD")


def sdk_encode(payload, compression=CompressionLevel.NONE, **meta):
    return sort_extra(codec.encode(payload, AVPMetadata(**meta), compression))


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def ramp(n, scale=0.25):
    return [((i * 37) % 101 - 50) * scale for i in range(n)]


# ---------------------------------------------------------------- valid messages


def gen_valid():
    s = "valid"
    base = dict(session_id="sess-1", source_agent_id="agent-a", target_agent_id="agent-b",
                model_id="Qwen/Qwen2.5-0.5B-Instruct", hidden_dim=8, num_layers=2)
    t = torch.tensor(ramp(16), dtype=torch.float32).reshape(2, 8)
    for dt, tdt, name in [(DataType.FLOAT32, torch.float32, "f32"), (DataType.FLOAT16, torch.float16, "f16"),
                          (DataType.BFLOAT16, torch.bfloat16, "bf16")]:
        x = t.to(tdt)
        raw = (x.view(torch.int16) if tdt == torch.bfloat16 else x).numpy().tobytes()
        valid(s, f"hidden-{name}", ["AVP-WIRE-1", "AVP-WIRE-9", "AVP-WIRE-13", "AVP-WIRE-15", "AVP-WIRE-22"],
              f"hidden state [2, 8] {name} as the SDK encodes it",
              sdk_encode(raw, dtype=dt, tensor_shape=(2, 8), **base), encode="none")
    i8 = bytes((i * 7) % 256 for i in range(16))
    valid(s, "hidden-int8", ["AVP-WIRE-13", "AVP-WIRE-22"], "int8 hidden state [16]",
          sdk_encode(i8, dtype=DataType.INT8, tensor_shape=(16,), **base), encode="none")
    valid(s, "minimal-all-defaults", ["AVP-WIRE-9", "AVP-WIRE-12", "AVP-WIRE-22"],
          "every field at its proto3 default: only the checksum is written", sdk_encode(b""), encode="none")
    valid(s, "empty-payload", ["AVP-WIRE-5", "AVP-WIRE-22"], "no tensor bytes, shape [0]",
          sdk_encode(b"", tensor_shape=(0,), **base), encode="none")
    big = f32(ramp(4096, 0.5)) * 4  # compressible, 64 KiB
    for level, name in [(CompressionLevel.FAST, "fast"), (CompressionLevel.BALANCED, "balanced"),
                        (CompressionLevel.MAX, "max")]:
        valid(s, f"zstd-{name}", ["AVP-WIRE-16", "AVP-WIRE-17", "AVP-WIRE-18", "AVP-WIRE-22"],
              f"64 KiB f32 tensor compressed at zstd level {level.value}",
              sdk_encode(big, level, tensor_shape=(4, 4096), **base), encode=name)
    valid(s, "zstd-empty-payload", ["AVP-WIRE-17", "AVP-WIRE-22"], "an empty tensor, compressed",
          sdk_encode(b"", CompressionLevel.BALANCED, **base), encode="balanced")
    valid(s, "unicode-strings", ["AVP-WIRE-9", "AVP-WIRE-22"], "non-ASCII text in every string field",
          sdk_encode(f32([1.0, -2.0]), session_id="séance-😀", source_agent_id="агент",
                     target_agent_id="代理人", model_id="modèle/ß", avp_map_id="карта→map",
                     extra={"clé": "valeur ✓", "emoji": "🚀🚀"}, tensor_shape=(2,)), encode="none")
    valid(s, "extra-map", ["AVP-WIRE-12", "AVP-WIRE-22"],
          "extra map with empty key, empty value and keys out of order (entries sorted by key)",
          sdk_encode(f32([0.5]), extra={"zeta": "last", "": "empty key", "alpha": "", "Mid": "M",
                                        "num_steps": "20", "é": "non-ascii key"}, tensor_shape=(1,)),
          encode="none")
    valid(s, "has-map", ["AVP-WIRE-4", "AVP-WIRE-22"], "avp_map_id set: flag bit 1",
          sdk_encode(f32([1.0] * 4), avp_map_id="map-qwen-llama-v1", tensor_shape=(4,), **base), encode="none")
    valid(s, "json-mode", ["AVP-WIRE-13", "AVP-WIRE-22"], "mode JSON_MODE (1)",
          sdk_encode(b"", mode=CommunicationMode.JSON, **base), encode="none")
    valid(s, "max-u32-fields", ["AVP-WIRE-9", "AVP-WIRE-22"], "uint32 fields at 2^32-1 (5-byte varints)",
          sdk_encode(b"", hidden_dim=0xFFFFFFFF, num_layers=0xFFFFFFFF, tensor_shape=(0xFFFFFFFF, 0, 1)),
          encode="none")
    valid(s, "rank-8-shape", ["AVP-WIRE-9", "AVP-WIRE-22"], "tensor_shape of rank 8",
          sdk_encode(f32([1.0] * 8), tensor_shape=(1, 1, 2, 1, 2, 1, 2, 1)), encode="none")


def kv_layers(n_layers, heads, seq, dim, tdt):
    layers = []
    for layer in range(n_layers):
        n = heads * seq * dim
        k = torch.tensor([((i * 13 + layer * 7) % 29 - 14) / 8 for i in range(n)], dtype=torch.float32)
        v = torch.tensor([((i * 5 + layer * 3) % 17 - 8) / 4 for i in range(n)], dtype=torch.float32)
        layers.append((k.reshape(1, heads, seq, dim).to(tdt), v.reshape(1, heads, seq, dim).to(tdt)))
    return tuple(layers)


def gen_kv():
    s = "kv"
    for tdt, dt, name in [(torch.float32, DataType.FLOAT32, "f32"), (torch.float16, DataType.FLOAT16, "f16"),
                          (torch.bfloat16, DataType.BFLOAT16, "bf16")]:
        kv, kh = serialize_kv_cache(kv_layers(2, 2, 3, 4, tdt))
        meta = dict(session_id="kv-sess", model_id="tiny", hidden_dim=8, num_layers=2,
                    payload_type=PayloadType.KV_CACHE, dtype=dt,
                    extra={"model_hash": "ab" * 32, "model_family": "qwen2", "num_steps": "10"})
        valid(s, f"kv-{name}", ["AVP-KV-1", "AVP-KV-2", "AVP-KV-3", "AVP-WIRE-4", "AVP-WIRE-22"],
              f"2-layer KV cache ({name}, 2 heads, seq 3, head_dim 4) from serialize_kv_cache",
              sdk_encode(kv, **meta),
              encode="none")
    kv, _ = serialize_kv_cache(kv_layers(3, 1, 2, 2, torch.float16))
    valid(s, "kv-f16-zstd", ["AVP-KV-3", "AVP-WIRE-17", "AVP-WIRE-22"], "3-layer f16 KV cache, zstd level 3",
          sdk_encode(kv, CompressionLevel.BALANCED, payload_type=PayloadType.KV_CACHE, dtype=DataType.FLOAT16,
                     num_layers=3), encode="balanced")
    kv, _ = serialize_kv_cache(kv_layers(1, 1, 0, 4, torch.float32))
    valid(s, "kv-empty-sequence", ["AVP-KV-3"], "a KV cache with seq_len 0 (header only)",
          sdk_encode(kv, payload_type=PayloadType.KV_CACHE, num_layers=1), encode="none")
    # Inner-format problems: the message is fine, the KV inner header is not (AVP-KV-4).
    kv, _ = serialize_kv_cache(kv_layers(2, 1, 2, 2, torch.float32))
    valid(s, "kv-truncated-inner", ["AVP-KV-4"], "inner header promises 2 layers, bytes hold 1",
          sdk_encode(kv[:-16], payload_type=PayloadType.KV_CACHE, num_layers=2), encode="none",
          kv={"result": "invalid", "error_kind": "truncated"})
    bad = kv[:16] + bytes([7]) + kv[17:]
    valid(s, "kv-unknown-dtype-byte", ["AVP-KV-2"],
          "inner dtype byte 7: the SDK silently reads float16, we reject the KV payload",
          sdk_encode(bad, payload_type=PayloadType.KV_CACHE, num_layers=2), encode="none",
          kv={"result": "invalid", "error_kind": "unknown_enum", "sdk": "accepted as float16"})
    valid(s, "kv-trailing-inner", ["AVP-KV-4"], "4 bytes after the last inner layer",
          sdk_encode(kv + b"\0\0\0\0", payload_type=PayloadType.KV_CACHE, num_layers=2), encode="none",
          kv={"result": "non_strict", "warnings": ["kv_inconsistent"], "strict_error_kind": "inconsistent"})
    kv16, _ = serialize_kv_cache(kv_layers(1, 1, 2, 2, torch.float16))
    valid(s, "kv-dtype-differs-from-metadata", ["AVP-KV-5"],
          "inner dtype float16, metadata dtype FLOAT32: the SDK does not compare them",
          sdk_encode(kv16, payload_type=PayloadType.KV_CACHE, dtype=DataType.FLOAT32, num_layers=1), encode="none",
          kv={"result": "non_strict", "warnings": ["kv_inconsistent"], "strict_error_kind": "inconsistent"})


# ---------------------------------------------------------------- proto3 rules


def gen_proto():
    s = "proto3"
    tensor = f32([1.0, 2.0, 3.0, 4.0])
    ck = vi(15, crc(tensor))

    def msg(meta, flags=0, t=tensor):
        return frame(meta, t, flags)

    valid(s, "reverse-field-order", ["AVP-WIRE-10"], "fields written from 15 down to 1",
          msg(ck + vi(10, 0) + ld(9, varint(4)) + vi(8, 0) + vi(5, 4) + ld(4, "m") + ld(1, "s")))
    valid(s, "unpacked-shape", ["AVP-WIRE-10"], "tensor_shape as unpacked varints",
          msg(vi(9, 2) + vi(9, 2) + ck))
    valid(s, "mixed-packed-unpacked-shape", ["AVP-WIRE-10"], "tensor_shape split across packed and unpacked",
          msg(vi(9, 1) + ld(9, varint(2) + varint(1)) + vi(9, 2) + ck))
    valid(s, "last-scalar-wins", ["AVP-WIRE-10"], "model_id, hidden_dim and dtype given twice",
          msg(ld(4, "first") + vi(5, 7) + vi(8, 1) + ld(4, "second") + vi(5, 9) + vi(8, 0) + ck))
    valid(s, "last-enum-wins-over-unknown", ["AVP-WIRE-10", "AVP-WIRE-13"],
          "dtype 9 (unknown) then 0: only the final value counts", msg(vi(8, 9) + vi(8, 0) + ck))
    valid(s, "non-minimal-varints", ["AVP-WIRE-10"], "hidden_dim and checksum with padded varints",
          msg(tag(5, 0) + padded_varint(5, 4) + tag(15, 0) + padded_varint(crc(tensor), 10)))
    valid(s, "ten-byte-varint-truncated-to-u32", ["AVP-WIRE-10"],
          "hidden_dim = 2^32 + 5 in 10 bytes: uint32 keeps the low 32 bits",
          msg(tag(5, 0) + padded_varint((1 << 32) + 5, 10) + ck))
    valid(s, "enum-truncated-to-int32", ["AVP-WIRE-10", "AVP-WIRE-13"],
          "dtype = 2^32 + 1 reads as int32 1 (FLOAT16)", msg(vi(8, (1 << 32) + 1) + ck))
    unknown = (vi(100, 5) + tag(101, 1) + b"\1" * 8 + ld(102, b"xyz") + tag(103, 5) + b"\2" * 4 +
               tag(104, 3) + vi(1, 1) + tag(105, 3) + ld(2, "in") + tag(105, 4) + tag(104, 4) + ld(12, "reserved"))
    valid(s, "unknown-fields-every-wire-type", ["AVP-WIRE-11"],
          "unknown varint, fixed64, bytes, fixed32, nested groups and reserved field 12 are skipped",
          msg(ld(1, "s") + unknown + ck))
    valid(s, "known-field-wrong-wire-type", ["AVP-WIRE-11"],
          "session_id as varint and hidden_dim as bytes are treated as unknown fields",
          msg(vi(1, 3) + ld(5, b"\x01") + ck))
    valid(s, "checksum-absent", ["AVP-WIRE-15"], "no payload_checksum: accepted unverified", msg(vi(5, 4)))
    valid(s, "checksum-wrong-wire-type", ["AVP-WIRE-11", "AVP-WIRE-15"],
          "field 15 as fixed32 is unknown, so no checksum is present", msg(tag(15, 5) + b"\0\0\0\0"))
    valid(s, "map-duplicate-key-last-wins", ["AVP-WIRE-12"], "extra key 'k' twice",
          msg(ld(14, ld(1, "k") + ld(2, "one")) + ld(14, ld(1, "k") + ld(2, "two")) + ck))
    valid(s, "map-entry-missing-key-and-value", ["AVP-WIRE-12"],
          "map entries without key, without value, value before key, with an unknown field",
          msg(ld(14, ld(2, "no-key")) + ld(14, ld(1, "no-value")) + ld(14, ld(2, "v") + ld(1, "k")) +
              ld(14, ld(1, "x") + vi(3, 1) + ld(2, "y")) + ck))


# ---------------------------------------------------------------- invalid


def gen_invalid():
    tensor = f32([1.0, 2.0])
    meta = ld(1, "s") + ld(9, varint(2)) + vi(15, crc(tensor))
    good = frame(meta, tensor)
    s = "header"
    invalid(s, "bad-magic", ["AVP-WIRE-2"], "magic 'AX'", frame(meta, tensor, magic=b"AX"), "bad_magic")
    invalid(s, "bad-magic-swapped", ["AVP-WIRE-2"], "magic bytes swapped ('VA')", frame(meta, tensor, magic=b"VA"),
            "bad_magic")
    invalid(s, "version-0", ["AVP-WIRE-3"], "version byte 0", frame(meta, tensor, version=0), "unsupported_version")
    invalid(s, "version-2", ["AVP-WIRE-3"], "version byte 2", frame(meta, tensor, version=2), "unsupported_version")
    s = "length"
    invalid(s, "empty", ["AVP-WIRE-6"], "zero bytes", b"", "truncated")
    invalid(s, "short-header", ["AVP-WIRE-6"], "11 of the 12 header bytes", good[:11], "truncated")
    invalid(s, "header-only", ["AVP-WIRE-6"], "the header and nothing else", good[:12], "truncated")
    invalid(s, "cut-in-metadata", ["AVP-WIRE-6"], "ends inside the metadata", good[:12 + len(meta) - 2],
            "truncated")
    invalid(s, "cut-in-tensor", ["AVP-WIRE-6"], "ends one byte before the declared end", good[:-1], "truncated")
    invalid(s, "payload-length-too-large", ["AVP-WIRE-6"], "payload_length one more than present",
            frame(meta, tensor, pl=len(meta) + len(tensor) + 1), "truncated")
    invalid(s, "payload-length-max", ["AVP-WIRE-6", "AVP-LIM-2"],
            "payload_length 2^32-1 with a small body (within the default limit: truncated, not limit_exceeded)",
            frame(meta, tensor, pl=0xFFFFFFFF), "truncated")
    # metadata_length > payload_length: the SDK parses past the payload and fails.
    invalid(s, "metadata-longer-than-payload", ["AVP-WIRE-7"], "metadata_length > payload_length",
            frame(meta, tensor, ml=len(meta) + len(tensor) + 1, pl=len(meta) + len(tensor)) + b"\xff" * 8,
            "truncated", sdk_agrees=False)
    s = "metadata"
    tensor_ck = vi(15, crc(tensor))

    def m(body, t=tensor):
        return frame(body, t)

    invalid(s, "bad-utf8-string", ["AVP-WIRE-10"], "session_id is not UTF-8", m(ld(1, b"\xff\xfe") + tensor_ck),
            "malformed_metadata")
    invalid(s, "bad-utf8-map-key", ["AVP-WIRE-10", "AVP-WIRE-12"], "extra key is not UTF-8",
            m(ld(14, ld(1, b"\xc3") + ld(2, "v")) + tensor_ck), "malformed_metadata")
    invalid(s, "varint-cut", ["AVP-WIRE-10"], "hidden_dim varint cut by the metadata end",
            m(tensor_ck + tag(5, 0) + b"\x80"), "malformed_metadata")
    invalid(s, "varint-11-bytes", ["AVP-WIRE-10"], "an 11-byte varint",
            m(tag(5, 0) + b"\x80" * 10 + b"\x01" + tensor_ck), "malformed_metadata")
    invalid(s, "length-past-end", ["AVP-WIRE-10"], "model_id length runs past the metadata",
            m(tensor_ck + tag(4, 2) + varint(50) + b"abc"), "malformed_metadata")
    invalid(s, "field-number-zero", ["AVP-WIRE-10"], "tag with field number 0", m(b"\x00\x01" + tensor_ck),
            "malformed_metadata")
    invalid(s, "wire-type-6", ["AVP-WIRE-10"], "wire type 6", m(tag(20, 6) + tensor_ck), "malformed_metadata")
    invalid(s, "wire-type-7", ["AVP-WIRE-10"], "wire type 7", m(tag(20, 7) + tensor_ck), "malformed_metadata")
    invalid(s, "group-unterminated", ["AVP-WIRE-11"], "start-group without end",
            m(tensor_ck + tag(20, 3) + vi(1, 1)), "malformed_metadata")
    invalid(s, "group-end-mismatch", ["AVP-WIRE-11"], "end-group for another field",
            m(tag(20, 3) + tag(21, 4) + tensor_ck), "malformed_metadata")
    invalid(s, "group-end-alone", ["AVP-WIRE-11"], "end-group at top level", m(tag(20, 4) + tensor_ck),
            "malformed_metadata")
    invalid(s, "packed-shape-cut", ["AVP-WIRE-10"], "packed tensor_shape ending inside a varint",
            m(ld(9, b"\x02\x80") + tensor_ck), "malformed_metadata")
    invalid(s, "map-entry-cut", ["AVP-WIRE-12"], "map entry whose key length overruns the entry",
            m(ld(14, tag(1, 2) + varint(9) + b"k") + tensor_ck), "malformed_metadata")
    s = "enum"
    for field, val, name in [(8, 4, "dtype-4-reserved-float8"), (8, 5, "dtype-5-reserved-int4"),
                             (8, -1, "dtype-negative"), (7, 2, "payload-type-embedding"),
                             (7, 9, "payload-type-9"), (10, 2, "mode-2")]:
        invalid(s, name, ["AVP-WIRE-13"], f"field {field} = {val}", m(vi(field, val) + tensor_ck), "unknown_enum")
    s = "checksum"
    bad = bytearray(good)
    bad[-1] ^= 0x01
    invalid(s, "flipped-tensor-bit", ["AVP-WIRE-15"], "last tensor byte changed", bytes(bad), "checksum_mismatch")
    invalid(s, "wrong-value", ["AVP-WIRE-15"], "payload_checksum of other bytes",
            m(ld(1, "s") + vi(15, crc(tensor) ^ 0xDEADBEEF)), "checksum_mismatch")
    invalid(s, "zero-checksum-present", ["AVP-WIRE-15"], "payload_checksum present and 0 (still verified)",
            m(vi(15, 0)), "checksum_mismatch")
    comp = sdk_encode(f32(ramp(256)), CompressionLevel.BALANCED)
    ml = struct.unpack_from("<I", comp, 8)[0]
    meta_c = comp[12:12 + ml]
    fields = split_fields(meta_c)
    meta_bad = b"".join(raw if f != 15 else vi(15, 1234) for f, raw in fields)
    invalid(s, "compressed-wrong-checksum", ["AVP-WIRE-15", "AVP-WIRE-17"],
            "checksum is over the uncompressed bytes; this one is wrong",
            frame(meta_bad, comp[12 + ml:], flags=1), "checksum_mismatch")
    s = "zstd"
    zmeta = ld(11, "zstd")
    invalid(s, "garbage", ["AVP-WIRE-17"], "compressed flag, bytes are not zstd",
            frame(zmeta, b"not zstd at all", flags=1), "decompression")
    invalid(s, "empty-compressed-payload", ["AVP-WIRE-17"], "compressed flag, zero tensor bytes",
            frame(zmeta, b"", flags=1), "decompression")
    # Found by scripts/differential_sdk.py: python-zstandard returns b"" for a frame that
    # declares content size 0 without decoding its blocks, so the SDK accepts this corrupt
    # frame (a compressed block of size 0) as an empty tensor. We decode it and refuse.
    invalid(s, "zstd-zero-size-corrupt-frame", ["AVP-WIRE-17"],
            "frame declares 0 bytes but its only block is corrupt (SDK defect: not decoded)",
            frame(zmeta, b"\x28\xb5\x2f\xfd\x20\x00\x05\x00\x00", flags=1), "decompression",
            sdk_agrees=False)
    z = zstandard.ZstdCompressor(level=3).compress(f32(ramp(256)))
    invalid(s, "truncated-frame", ["AVP-WIRE-17"], "zstd frame cut short", frame(zmeta, z[:-3], flags=1),
            "decompression")
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    nosize = cobj.compress(f32(ramp(256))) + cobj.flush()
    invalid(s, "no-content-size", ["AVP-WIRE-17"], "frame without a declared content size",
            frame(zmeta, nosize, flags=1), "decompression")
    # Several faults in one message: the check order of AVP-WIRE-24 decides
    # the kind (AVP-ERR-4). Where the SDK checks in another order, its kind is
    # recorded in `sdk` (conformance/expectations/avp-python.txt).
    s = "order"
    order = ["AVP-WIRE-24", "AVP-ERR-4"]
    invalid(s, "magic-before-version", order, "magic 'AX' and version 2", frame(meta, tensor, magic=b"AX", version=2),
            "bad_magic")
    invalid(s, "version-before-length", order, "version 2 and the tensor cut short",
            frame(meta, tensor, version=2)[:-3], "unsupported_version")
    invalid(s, "metadata-before-length", order, "wire type 7 in the metadata and the tensor cut short",
            m(tag(20, 7) + tensor_ck)[:-3], "malformed_metadata", sdk_agrees=False)
    invalid(s, "enum-before-checksum", order, "dtype 9 and a wrong payload_checksum",
            m(vi(8, 9) + vi(15, crc(tensor) ^ 1)), "unknown_enum", sdk_agrees=False)
    invalid(s, "decompression-before-checksum", order, "zstd bytes that do not decompress and a wrong checksum",
            frame(zmeta + vi(15, 7), b"not zstd at all", flags=1), "decompression")
    invalid(s, "checksum-before-shape", order, "a wrong checksum and a tensor_shape that disagrees with the size",
            m(ld(9, varint(3)) + vi(15, crc(tensor) ^ 1)), "checksum_mismatch")
    s = "limits"
    invalid(s, "metadata-over-limit", ["AVP-LIM-1"], "metadata_length 1 MiB + 1 declared (bytes absent)",
            frame(meta, tensor, ml=(1 << 20) + 1, pl=(1 << 20) + 1), "limit_exceeded", sdk_agrees=False)
    invalid(s, "shape-rank-33", ["AVP-LIM-4"], "tensor_shape with 33 entries",
            m(ld(9, b"\x01" * 33) + tensor_ck), "limit_exceeded", sdk_agrees=False)
    invalid(s, "extra-4097-entries", ["AVP-LIM-5"], "4097 distinct extra keys",
            m(b"".join(ld(14, ld(1, f"{i:x}") + ld(2, "")) for i in range(4097)) + tensor_ck),
            "limit_exceeded", sdk_agrees=False)
    invalid(s, "group-depth-65", ["AVP-LIM-6"], "unknown groups nested 65 deep",
            m(b"".join(tag(20, 3) for _ in range(65)) + b"".join(tag(20, 4) for _ in range(65)) + tensor_ck),
            "limit_exceeded", sdk_agrees=False)
    # A zstd bomb: 2 GiB of zeros in a ~64 KiB frame. Never run through the SDK here
    # (it would allocate 2 GiB); our decoder refuses before allocating (AVP-LIM-3).
    import io
    sink = io.BytesIO()
    size = 2 << 30
    with zstandard.ZstdCompressor(level=1).stream_writer(sink, size=size, closefd=False) as w:
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            w.write(zeros)
    bomb = sink.getvalue()
    data = frame(zmeta, bomb, flags=1)
    case(s, "zstd-bomb-2gib", ["AVP-LIM-3", "AVP-WIRE-17", "AVP-ERR-1", "AVP-LIM-9"],
         f"zstd frame of {len(bomb)} bytes declaring 2 GiB of zeros", data,
         {"result": "invalid", "error_kind": "limit_exceeded", "sdk": "not run (would allocate 2 GiB)"})


# ---------------------------------------------------------------- non-strict


def gen_non_strict():
    s = "non-strict"
    base = dict(session_id="s", tensor_shape=(2,))
    t = f32([1.0, 2.0])
    good = sdk_encode(t, **base)
    non_strict(s, "trailing-bytes", ["AVP-WIRE-20"], "3 bytes after the declared end", good + b"abc",
               ["trailing_bytes"])
    flags80 = good[:3] + bytes([0x80]) + good[4:]
    non_strict(s, "unknown-flag-bits", ["AVP-WIRE-4", "AVP-WIRE-20"], "flag bit 7 set", flags80,
               ["unknown_flag_bits"])
    kv_flag = good[:3] + bytes([0x04]) + good[4:]
    non_strict(s, "kv-flag-on-hidden-state", ["AVP-WIRE-4", "AVP-WIRE-20"],
               "kv_cache flag set, payload_type HIDDEN_STATE", kv_flag, ["flag_conflict"])
    kvm = sdk_encode(b"", payload_type=PayloadType.KV_CACHE)
    non_strict(s, "kv-payload-without-flag", ["AVP-WIRE-4", "AVP-WIRE-20"],
               "payload_type KV_CACHE, kv_cache flag clear", kvm[:3] + b"\x00" + kvm[4:], ["flag_conflict"])
    non_strict(s, "map-flag-without-map-id", ["AVP-WIRE-4", "AVP-WIRE-20"], "has_map set, avp_map_id empty",
               good[:3] + b"\x02" + good[4:], ["flag_conflict"])
    mm = sdk_encode(t, avp_map_id="m", **base)
    non_strict(s, "map-id-without-flag", ["AVP-WIRE-4", "AVP-WIRE-20"], "avp_map_id set, has_map clear",
               mm[:3] + b"\x00" + mm[4:], ["flag_conflict"])
    meta = ld(1, "s") + ld(9, varint(2)) + ld(11, "zstd") + vi(15, crc(t))
    non_strict(s, "compression-field-without-flag", ["AVP-WIRE-16", "AVP-WIRE-20"],
               "metadata says zstd, flag clear, bytes uncompressed (the flag decides)", frame(meta, t),
               ["flag_conflict"])
    comp = sdk_encode(f32(ramp(64)), CompressionLevel.FAST)
    ml = struct.unpack_from("<I", comp, 8)[0]
    fields = split_fields(comp[12:12 + ml])
    meta_nc = b"".join(raw for f, raw in fields if f != 11)
    non_strict(s, "flag-without-compression-field", ["AVP-WIRE-16", "AVP-WIRE-20"],
               "compressed flag set, metadata has no compression field", frame(meta_nc, comp[12 + ml:], flags=1),
               ["flag_conflict"])
    meta_lz = b"".join(raw if f != 11 else ld(11, "lz4") for f, raw in fields)
    non_strict(s, "compression-field-not-zstd", ["AVP-WIRE-16", "AVP-WIRE-20"],
               "compressed flag set, metadata compression 'lz4' (payload is zstd)",
               frame(meta_lz, comp[12 + ml:], flags=1), ["flag_conflict"])
    non_strict(s, "shape-size-mismatch", ["AVP-WIRE-14", "AVP-WIRE-20"], "tensor_shape [3] f32 but 8 bytes",
               sdk_encode(t, session_id="s", tensor_shape=(3,)), ["shape_size_mismatch"])
    non_strict(s, "shape-overflows", ["AVP-WIRE-14", "AVP-WIRE-20"], "tensor_shape product overflows 64 bits",
               sdk_encode(t, tensor_shape=(0xFFFFFFFF,) * 3), ["shape_size_mismatch"])
    z = comp[12 + ml:]
    meta_z = b"".join(raw for f, raw in fields)
    non_strict(s, "bytes-after-zstd-frame", ["AVP-WIRE-17", "AVP-WIRE-20"],
               "5 bytes after the zstd frame (the SDK ignores them)", frame(meta_z, z + b"junk!", flags=1),
               ["trailing_compressed_bytes"])
    non_strict(s, "two-problems", ["AVP-WIRE-20"], "trailing bytes and an unknown flag bit",
               flags80 + b"\0", ["trailing_bytes", "unknown_flag_bits"])


# ---------------------------------------------------------------- JSON fallback


def gen_json():
    def jcase(slug, rules, description, text, expect):
        CASES.append({"id": f"wire/json/{slug}", "rules": rules, "level": "MUST", "op": "json_decode",
                      "description": description, "input": {"text": text}, "expect": expect})

    msgs = [
        ("defaults", JSONMessage()),
        ("full", JSONMessage(session_id="s1", source_agent_id="a", target_agent_id="b",
                             content="The answer is 42.\nLine two \"quoted\" \\ tab\t",
                             extra={"score": 0.5, "n": 3, "ok": True, "none": None, "list": [1, "x", [2.25]],
                                    "nested": {"k": "v"}})),
        ("unicode", JSONMessage(content="héllo 世界 😀", extra={"ключ": "значение"})),
    ]
    for slug, m in msgs:
        text = m.to_json()
        back = JSONMessage.from_json(text)
        jcase(slug, ["AVP-JSON-1", "AVP-JSON-3", "AVP-JSON-4"], "SDK to_json() output", text,
              {"result": "valid", "message": back.to_dict(), "to_json": back.to_json()})
    text = '{"content": "hi", "unknown": [1, 2], "session_id": "s"}'
    back = JSONMessage.from_json(text)
    jcase("unknown-members-and-order", ["AVP-JSON-3", "AVP-JSON-4"], "unknown member ignored, any order", text,
          {"result": "valid", "message": back.to_dict(), "to_json": back.to_json()})
    for slug, text in [("empty-object", "{}"), ("content-only", '{"content": "hi"}')]:
        back = JSONMessage.from_json(text)
        jcase(f"defaults-{slug}", ["AVP-JSON-2"], "missing members take their defaults (avp_version 0.6.2)", text,
              {"result": "valid", "message": back.to_dict(), "to_json": back.to_json()})
    # Nesting (AVP-LIM-7): the top-level object, each array and the innermost
    # value count one level each; 64 levels are accepted, 65 are refused.
    for levels, ok in [(64, True), (65, False)]:
        text = '{"extra": {"deep": ' + "[" * (levels - 3) + "1" + "]" * (levels - 3) + "}}"
        back = JSONMessage.from_json(text)  # Python's json has no such limit
        if ok:
            jcase(f"nesting-{levels}", ["AVP-LIM-7"], f"{levels} levels of nesting: accepted", text,
                  {"result": "valid", "message": back.to_dict(), "to_json": back.to_json()})
        else:
            jcase(f"nesting-{levels}", ["AVP-LIM-7", "AVP-LIM-9"], f"{levels} levels of nesting: over the limit",
                  text, {"result": "invalid", "error_kind": "limit_exceeded", "sdk": "accepted"})
    for slug, text, note in [("not-an-object", "[1, 2]", "SDK: AttributeError (not AVP's error type)"),
                             ("not-json", "{\"content\": ", "SDK: JSONDecodeError"),
                             ("content-not-string", '{"content": 5}', "SDK: accepts content=5"),
                             ("extra-not-object", '{"extra": [1]}', "SDK: accepts extra=[1]")]:
        try:
            JSONMessage.from_json(text)
            sdk = "accepted"
        except Exception as e:
            sdk = f"rejected: {type(e).__name__}"
        jcase(slug, ["AVP-JSON-3", "AVP-JSON-5"], note, text,
              {"result": "invalid", "error_kind": "malformed_metadata", "sdk": sdk})


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "bin"), exist_ok=True)
    gen_valid()
    gen_kv()
    gen_proto()
    gen_invalid()
    gen_non_strict()
    gen_json()
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for slug, data in sorted(BINS.items()):
        with open(os.path.join(out, "bin", f"{slug}.avp"), "wb") as f:
            f.write(data)
    doc = {"suite": "avp-wire", "suite_version": "1.0.0", "spec": {"wire": 1},
           "generator": {"script": "conformance/gen/gen_wire.py", "sdk": "avp==0.6.2"},
           "case_count": len(CASES), "cases": CASES}
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {len(CASES)} cases, {len(BINS)} binaries to {out}")


if __name__ == "__main__":
    main()
