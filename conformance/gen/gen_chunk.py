#!/usr/bin/env python3
"""Generate the chunked-context vectors (conformance/vectors/chunk) from the spec text alone.

Usage: .venv/bin/python conformance/gen/gen_chunk.py OUT_DIR
Writes OUT_DIR/cases.json and OUT_DIR/bin/*.avpc. Deterministic (fixed seeds, no timestamps).

Independent of our Rust code: messages are framed by hand (12-byte header, protobuf Metadata
written field by field as in spec/protocol/wire.md), KV payloads are built with numpy
(spec/protocol/kv-cache.md), descriptors and digests follow spec/protocol/chunked.md
(AVP-CHK-1..8) with the Python `blake3` package. The SDK (avp==0.6.2) has no chunked
contexts (an SDK peer never receives chunks, AVP-CHK-9), so it is not used here.

Case op `chunk_assemble`: input {file: the chunk messages back to back, in arrival order;
optional max_chunks, max_total_bytes (the receiver's limits, AVP-CHK-7; defaults 4096 and
64 GiB)}. The receiver decodes each message (strictly), checks and adds each chunk, and when the
input ends finishes the assembly (AVP-CHK-5). Expect {result: valid, output: {length, crc32,
blake3} of the assembled KV v1 payload} or {result: invalid, error_kind}.
"""

import json
import os
import struct
import sys
import zlib

import blake3
import numpy as np
import zstandard

CASES = []
BINS = {}
F32, F16, BF16 = 0, 1, 2
KV_CACHE, HIDDEN_STATE = 1, 0


# ---- wire format (spec/protocol/wire.md) ---------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint((field << 3) | 2) + varint(len(data)) + data


def vi(field, n):
    return varint(field << 3) + varint(n)


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def message(payload, extra, dtype=F16, payload_type=KV_CACHE, compress=False, checksum=None):
    """One AVP v1 message (AVP-WIRE-1..16) carrying `payload` with `extra` entries."""
    stored = zstandard.ZstdCompressor(level=3).compress(payload) if compress else payload
    meta = ld(4, "chunk-test-model")
    if payload_type:
        meta += vi(7, payload_type)
    if dtype:
        meta += vi(8, dtype)
    if compress:
        meta += ld(11, "zstd")
    for k in sorted(extra):
        meta += ld(14, ld(1, k) + ld(2, extra[k]))
    meta += vi(15, crc(payload) if checksum is None else checksum)
    flags = (1 if compress else 0) | (4 if payload_type == KV_CACHE else 0)
    return b"AV" + struct.pack("<BBII", 1, flags, len(meta) + len(stored), len(meta)) + meta + stored


# ---- KV payloads (spec/protocol/kv-cache.md) ----------------------------------------------

def context(layers, heads, dim, seq, dtype, seed):
    """Layer bytes of a context: a list, one bytes object (K then V) per layer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        k = rng.standard_normal((heads, seq, dim)).astype(np.float32)
        v = rng.standard_normal((heads, seq, dim)).astype(np.float32)
        if dtype == F16:
            out.append(k.astype("<f2").tobytes() + v.astype("<f2").tobytes())
        elif dtype == BF16:
            out.append((k.view(np.uint32) >> 16).astype("<u2").tobytes()
                       + (v.view(np.uint32) >> 16).astype("<u2").tobytes())
        else:
            out.append(k.astype("<f4").tobytes() + v.astype("<f4").tobytes())
    return out


def kv_header(layers, heads, dim, seq, dtype):
    return struct.pack("<IIIIB", layers, heads, dim, seq, dtype)


class Context:
    def __init__(self, layers, heads, dim, seq, dtype, seed, cid):
        self.shape = (heads, dim, seq, dtype)
        self.layers = context(layers, heads, dim, seq, dtype, seed)
        self.cid = cid
        self.whole = kv_header(layers, *self.shape) + b"".join(self.layers)

    @property
    def digest(self):
        """AVP-CHK-5: BLAKE3 of the canonical KV v1 payload of the whole context."""
        return blake3.blake3(self.whole).digest()

    def descriptor(self, index, count, start, end, num_layers=None, cid=None, digest=None, version=1):
        """AVP-CHK-2: the avp.chunk value."""
        return ":".join([str(version), (cid or self.cid).hex(), str(index), str(count), str(start),
                         str(end), str(len(self.layers) if num_layers is None else num_layers),
                         (digest or self.digest).hex()])

    def payload(self, start, end, header_layers=None, shape=None):
        heads, dim, seq, dtype = shape or self.shape
        n = end - start if header_layers is None else header_layers
        return kv_header(n, heads, dim, seq, dtype) + b"".join(self.layers[start:end])

    def chunk(self, index, count, start, end, **kw):
        """Chunk `index` of `count` over layers [start, end) (AVP-CHK-1)."""
        desc = kw.pop("desc", None) or self.descriptor(index, count, start, end)
        payload = kw.pop("payload", None) or self.payload(start, end)
        return message(payload, {"avp.chunk": desc}, dtype=self.shape[3], **kw)

    def split(self, ranges):
        return [self.chunk(i, len(ranges), s, e) for i, (s, e) in enumerate(ranges)]


# ---- cases ---------------------------------------------------------------------------------

def digest(b):
    return {"length": len(b), "crc32": crc(b), "blake3": blake3.blake3(b).hexdigest()}


def case(section, slug, rules, description, messages, expect, **limits):
    path = f"bin/{section}-{slug}.avpc"
    BINS[path] = b"".join(messages)
    inp = {"file": path}
    inp.update(limits)
    CASES.append({"id": f"chunk/{section}/{slug}", "rules": rules, "level": "MUST",
                  "op": "chunk_assemble", "description": description, "input": inp, "expect": expect})


def valid(section, slug, rules, description, messages, ctx, **limits):
    case(section, slug, rules, description, messages, {"result": "valid", "output": digest(ctx.whole)},
         **limits)


def bad(section, slug, rules, description, messages, kind, **limits):
    case(section, slug, rules, description, messages, {"result": "invalid", "error_kind": kind}, **limits)


def main():
    out_dir = sys.argv[1]
    os.makedirs(os.path.join(out_dir, "bin"), exist_ok=True)
    a = Context(5, 2, 4, 3, F16, 1, bytes(range(16)))
    b = Context(5, 2, 4, 3, F16, 2, bytes(range(16, 32)))
    ranges = [(0, 2), (2, 4), (4, 5)]
    ca = a.split(ranges)
    base = ["AVP-CHK-1", "AVP-CHK-2", "AVP-CHK-3", "AVP-CHK-5"]

    # valid assemblies
    valid("valid", "in-order", base, "three chunks of a 5-layer float16 context, in order", ca, a)
    valid("valid", "reversed", base + ["AVP-CHK-4"], "the same chunks, last first", ca[::-1], a)
    valid("valid", "shuffled", base + ["AVP-CHK-4"], "the same chunks in the order 1, 2, 0",
          [ca[1], ca[2], ca[0]], a)
    valid("valid", "identical-duplicate", base + ["AVP-CHK-4"],
          "chunk 1 arrives twice, byte for byte the same: the copy is ignored", [ca[1], ca[0], ca[1], ca[2]], a)
    valid("valid", "single-chunk", base, "one chunk holding every layer", a.split([(0, 5)]), a)
    bf = Context(4, 1, 8, 2, BF16, 3, b"\xaa" * 16)
    valid("valid", "one-layer-each-bf16", base, "a bfloat16 context, one chunk per layer",
          bf.split([(i, i + 1) for i in range(4)]), bf)
    valid("valid", "compressed-chunk", base + ["AVP-CHK-8"],
          "chunk 1 is zstd-compressed (its checksum is over the decompressed payload)",
          [ca[0], a.chunk(1, 3, 2, 4, compress=True), ca[2]], a)
    f32 = Context(3, 2, 2, 5, F32, 4, b"\x01" * 16)
    valid("valid", "uneven-float32", base, "a float32 context cut as 1 + 2 layers",
          f32.split([(0, 1), (1, 3)]), f32)

    # completion and digest (AVP-CHK-5)
    bad("incomplete", "missing-middle", ["AVP-CHK-5"], "chunk 1 of 3 never arrives", [ca[0], ca[2]],
        "incomplete_context")
    bad("incomplete", "missing-last", ["AVP-CHK-5"], "the last chunk never arrives", ca[:2],
        "incomplete_context")
    bad("incomplete", "empty", ["AVP-CHK-5"], "no chunk at all", [], "incomplete_context")
    wrong = bytes(x ^ 0xFF for x in a.digest[:1]) + a.digest[1:]
    bad("digest", "declared-digest-wrong", ["AVP-CHK-5"],
        "every chunk declares a digest that differs in its first byte",
        [a.chunk(i, 3, s, e, desc=a.descriptor(i, 3, s, e, digest=wrong)) for i, (s, e) in enumerate(ranges)],
        "context_digest_mismatch")
    bad("digest", "layer-bytes-changed", ["AVP-CHK-5"],
        "chunk 2 carries other values (a consistent message with a correct CRC): only the digest sees it",
        [ca[0], ca[1], a.chunk(2, 3, 4, 5, payload=b.payload(4, 5))], "context_digest_mismatch")

    # limits (AVP-CHK-7)
    bad("limits", "count-over-limit", ["AVP-CHK-7"], "3 chunks, the receiver allows 2", ca,
        "limit_exceeded", max_chunks=2)
    bad("limits", "count-over-default", ["AVP-CHK-7"],
        "a chunk of a context declaring 5000 layers in 5000 chunks (default limits: 4096)",
        [a.chunk(0, 5000, 0, 1, desc=a.descriptor(0, 5000, 0, 1, num_layers=5000))], "limit_exceeded")
    bad("limits", "bytes-over-limit", ["AVP-CHK-7"],
        f"the context is {len(a.whole)} bytes, the receiver allows {len(a.whole) - 1}", ca,
        "limit_exceeded", max_total_bytes=len(a.whole) - 1)

    # a chunk on its own (AVP-CHK-2, AVP-CHK-3)
    d = a.descriptor(1, 3, 2, 4)
    bad("descriptor", "uppercase-hex", ["AVP-CHK-2"], "the context id in uppercase hex",
        [ca[0], a.chunk(1, 3, 2, 4, desc=d.replace(a.cid.hex(), a.cid.hex().upper())), ca[2]], "bad_chunk")
    bad("descriptor", "version-2", ["AVP-CHK-2"], "descriptor version 2",
        [a.chunk(0, 3, 0, 2, desc=a.descriptor(0, 3, 0, 2, version=2))], "bad_chunk")
    bad("descriptor", "leading-zero", ["AVP-CHK-2"], "the index written 01",
        [a.chunk(1, 3, 2, 4, desc=d.replace(":1:3:", ":01:3:"))], "bad_chunk")
    bad("descriptor", "seven-fields", ["AVP-CHK-2"], "the digest field missing",
        [a.chunk(1, 3, 2, 4, desc=d.rsplit(":", 1)[0])], "bad_chunk")
    bad("descriptor", "hidden-state", ["AVP-CHK-2"], "a descriptor on a HIDDEN_STATE message",
        [message(a.payload(0, 2), {"avp.chunk": a.descriptor(0, 3, 0, 2)}, payload_type=HIDDEN_STATE)],
        "bad_chunk")
    bad("descriptor", "no-descriptor", ["AVP-CHK-2"], "a plain KV_CACHE message among the chunks",
        [ca[0], message(a.payload(2, 4), {}), ca[2]], "bad_chunk")
    bad("self", "index-equals-count", ["AVP-CHK-3"], "index 3 of 3 chunks",
        [a.chunk(3, 3, 4, 5, desc=a.descriptor(3, 3, 4, 5))], "bad_chunk")
    bad("self", "count-overflow", ["AVP-CHK-3"], "count 2^32-1 for a 5-layer context",
        [a.chunk(0, 0xFFFFFFFF, 0, 2, desc=a.descriptor(0, 0xFFFFFFFF, 0, 2))], "bad_chunk")
    bad("self", "empty-range", ["AVP-CHK-3"], "layers [2, 2)",
        [a.chunk(1, 3, 2, 2, payload=a.payload(2, 2))], "bad_chunk")
    bad("self", "past-the-end", ["AVP-CHK-3"], "layers [4, 6) of 5",
        [a.chunk(2, 3, 4, 6, payload=a.payload(4, 5, header_layers=2) + a.layers[0])], "bad_chunk")
    bad("self", "first-not-at-zero", ["AVP-CHK-3"], "chunk 0 starts at layer 1",
        [a.chunk(0, 2, 1, 3)], "bad_chunk")
    bad("self", "last-short", ["AVP-CHK-3"], "the last chunk ends at layer 4 of 5",
        [a.chunk(2, 3, 3, 4)], "bad_chunk")
    bad("self", "header-layers", ["AVP-CHK-3"], "layers [2, 4) but a KV header of 1 layer",
        [ca[0], a.chunk(1, 3, 2, 4, payload=a.payload(2, 3)), ca[2]], "bad_chunk")
    bad("self", "trailing-byte", ["AVP-CHK-3"], "one byte after the chunk's last layer",
        [ca[0], a.chunk(1, 3, 2, 4, payload=a.payload(2, 4) + b"\0"), ca[2]], "bad_chunk")

    # chunks against each other (AVP-CHK-4, AVP-CHK-6)
    bad("conflict", "overlap", ["AVP-CHK-4"], "chunk 0 is [0, 3), chunk 1 is [2, 5)",
        [a.chunk(0, 2, 0, 3), a.chunk(1, 2, 2, 5)], "chunk_conflict")
    bad("conflict", "gap", ["AVP-CHK-4"], "chunk 0 is [0, 2), chunk 1 is [3, 5): layer 2 is in none",
        [a.chunk(0, 2, 0, 2), a.chunk(1, 2, 3, 5)], "chunk_conflict")
    bad("conflict", "no-room-between", ["AVP-CHK-4"],
        "chunk 0 is [0, 2), chunk 2 of 3 is [2, 5): nothing left for chunk 1",
        [a.chunk(0, 3, 0, 2), a.chunk(2, 3, 2, 5)], "chunk_conflict")
    bad("conflict", "two-contexts", ["AVP-CHK-4", "AVP-CHK-6"],
        "chunks of two contexts interleaved", [ca[0], b.split(ranges)[1], ca[1], ca[2]], "chunk_conflict")
    bad("conflict", "conflicting-duplicate", ["AVP-CHK-4"],
        "chunk 1 twice, the second with other layer bytes", [ca[0], ca[1],
                                                             a.chunk(1, 3, 2, 4, payload=b.payload(2, 4)), ca[2]],
        "chunk_conflict")
    bad("conflict", "other-count", ["AVP-CHK-4"], "chunk 1 says the context has 4 chunks",
        [ca[0], a.chunk(1, 4, 2, 3), ca[2]], "chunk_conflict")
    bad("conflict", "other-seq-len", ["AVP-CHK-4"], "chunk 1's KV header says 4 positions, chunk 0's 3",
        [ca[0], a.chunk(1, 3, 2, 4, payload=Context(5, 2, 4, 4, F16, 1, a.cid).payload(2, 4)), ca[2]],
        "chunk_conflict")
    bad("conflict", "other-digest", ["AVP-CHK-4"], "chunk 2 declares another context digest",
        [ca[0], ca[1], a.chunk(2, 3, 4, 5, desc=a.descriptor(2, 3, 4, 5, digest=b.digest))], "chunk_conflict")

    # the message first (AVP-CHK-8)
    bad("message", "checksum", ["AVP-CHK-8"], "chunk 1's payload_checksum is wrong",
        [ca[0], a.chunk(1, 3, 2, 4, checksum=crc(a.payload(2, 4)) ^ 1), ca[2]], "checksum_mismatch")
    bad("message", "truncated-last", ["AVP-CHK-8"], "the input ends inside chunk 2", [ca[0], ca[1], ca[2][:-1]],
        "truncated")
    bad("message", "kv-dtype-byte", ["AVP-CHK-8"], "chunk 1's KV dtype byte is 7",
        [ca[0], a.chunk(1, 3, 2, 4, payload=a.payload(2, 4)[:16] + b"\x07" + a.payload(2, 4)[17:]), ca[2]],
        "unknown_enum")

    for rel, data in BINS.items():
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(data)
    doc = {"suite": "avp-chunk", "suite_version": "1.0.0", "spec": {"chunked": 1},
           "generator": {"script": "conformance/gen/gen_chunk.py", "uses": "numpy, python blake3, zstandard"},
           "case_count": len(CASES), "cases": CASES}
    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(CASES)} cases")


if __name__ == "__main__":
    main()
