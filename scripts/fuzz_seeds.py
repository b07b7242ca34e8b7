#!/usr/bin/env python3
"""Build the committed fuzz seed corpus from the conformance vectors (FUZZING.md).

Usage: scripts/fuzz_seeds.py [OUT_ROOT]   (default: the repo, i.e. codec/tests/fuzz_seeds
and handshake/tests/fuzz_seeds). Deterministic: file names are the first 16 hex digits of the
SHA-1 of the content, so re-running changes nothing. Crash regressions live beside the seeds
under `regressions/` and are never touched by this script.
"""
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VEC = os.path.join(ROOT, "conformance", "vectors")
MAX_SEED = 40_000  # libFuzzer's default -max_len is 4096 anyway; keep the repo small


def put(out_root, crate, target, data):
    if len(data) > MAX_SEED:
        return
    d = os.path.join(out_root, crate, "tests", "fuzz_seeds", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else ROOT
    wire = json.load(open(os.path.join(VEC, "wire", "cases.json")))
    bindir = os.path.join(VEC, "wire", "bin")
    for name in sorted(os.listdir(bindir)):
        data = open(os.path.join(bindir, name), "rb").read()
        for t in ("decode", "peek", "roundtrip", "mac"):
            put(out_root, "codec", t, data)
        # incremental: first byte picks the chunk sizes
        for seed in (0x00, 0x31, 0xF7):
            put(out_root, "codec", "stream_split", bytes([seed]) + data)
        if len(data) >= 12 and data[:2] == b"AV":
            mlen, plen = struct.unpack_from("<II", data, 4)
            meta = data[12 : 12 + mlen]
            put(out_root, "codec", "metadata", meta)
            if data[3] & 0x04 and not data[3] & 0x01:  # KV cache, uncompressed
                put(out_root, "codec", "kv", data[12 + mlen : 12 + plen])
    # Small synthetic KV payloads (the vectors hold few): every dtype, 0..2 layers,
    # with and without trailing bytes.
    for dt, size in ((0, 4), (1, 2), (2, 2)):
        for layers, heads, dim, seq in ((0, 1, 1, 1), (1, 1, 2, 3), (2, 2, 1, 2)):
            body = bytes(range(2 * layers * heads * dim * seq * size)) if layers else b""
            hdr = struct.pack("<IIIIB", layers, heads, dim, seq, dt)
            put(out_root, "codec", "kv", hdr + body)
            put(out_root, "codec", "kv", hdr + body + b"\x00")
    for case in wire["cases"]:
        if case["op"] == "json_decode":
            put(out_root, "codec", "json_fallback", case["input"]["text"].encode("utf-8"))
    macdir = os.path.join(VEC, "mac", "bin")
    if os.path.isdir(macdir):
        for name in sorted(os.listdir(macdir)):
            data = open(os.path.join(macdir, name), "rb").read()
            for t in ("decode", "mac"):
                put(out_root, "codec", t, data)
    hs = os.path.join(VEC, "handshake")
    if os.path.isdir(hs):
        for name in sorted(os.listdir(hs)):
            if not name.endswith(".json"):
                continue
            doc = json.load(open(os.path.join(hs, name)))
            for case in doc.get("cases", []):
                text = case.get("input", {}).get("text")
                if isinstance(text, str):
                    put(out_root, "handshake", "canonical_json", text.encode("utf-8"))
                    put(out_root, "handshake", "json_parse", text.encode("utf-8"))
            raw = open(os.path.join(hs, name), "rb").read()
            put(out_root, "handshake", "json_parse", raw[:MAX_SEED])
        for sub in ("configs", "tokenizers"):
            d = os.path.join(hs, sub)
            if os.path.isdir(d):
                for name in sorted(os.listdir(d)):
                    p = os.path.join(d, name)
                    if os.path.isfile(p):
                        raw = open(p, "rb").read()
                        put(out_root, "handshake", "json_parse", raw)
                        put(out_root, "handshake", "canonical_json", raw)


if __name__ == "__main__":
    main()
