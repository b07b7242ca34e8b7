#!/usr/bin/env python3
"""Generate the AVP-MAC vectors (conformance/vectors/mac) independently of our Rust code.

Usage: .venv/bin/python conformance/gen/gen_mac.py OUT_DIR
Writes OUT_DIR/cases.json, OUT_DIR/bin/*.avp, OUT_DIR/key.bin and OUT_DIR/wrong-key.bin.
Deterministic (fixed keys and tensors, no randomness, no timestamps).

The SDK (avp==0.6.2) has no MAC, so each message is built with the SDK's `codec.encode` carrying
the placeholder tag (64 ASCII zeros) in `extra["avp.mac"]`, and the tag is computed with the
Python `blake3` package's keyed mode over the message bytes exactly as spec/protocol/mac.md says:
  key = blake3(key_file, derive_key_context=KEY_CONTEXT)                       (AVP-MAC-1)
  tag = blake3(message[:12 + payload_length], key=key) with the tag read as zeros (AVP-MAC-3/4)
then written over the placeholder in place (AVP-MAC-6). Every case also records whether the SDK
still decodes the bytes (`sdk`: decodes | rejects), which is the point of carrying the tag in `extra`
(AVP-MAC-2).

Case op `mac_verify`: input {file, key_file, key_file_hex (the key file's bytes)}; expect {result: valid} or
{result: invalid, error_kind: bad_mac | <a codec kind>}. Valid signed cases also give the `tag`
and `encode` (the SDK fields used), so an implementation can check its signer byte for byte.
"""

import json
import os
import struct
import sys
import zlib

import blake3
import torch

import avp
from avp import codec
from avp.kv_cache import serialize_kv_cache
from avp.types import AVPMetadata, CommunicationMode, CompressionLevel, DataType, PayloadType

assert avp.__version__ == "0.6.2", avp.__version__

KEY_CONTEXT = "AVP-MAC v1 message authentication key"
TAG_KEY = "avp.mac"
PLACEHOLDER = b"0" * 64
KEY_FILE = bytes(range(32))
WRONG_KEY_FILE = b"not the right key, but long enough\n"

KEYS = {"key.bin": KEY_FILE, "wrong-key.bin": WRONG_KEY_FILE}
CASES = []
BINS = {}


def derived(key_file):
    return blake3.blake3(key_file, derive_key_context=KEY_CONTEXT).digest()


def covered_len(msg):
    return 12 + struct.unpack_from("<I", msg, 4)[0]


def sign(msg, key_file=KEY_FILE):
    """Fills the placeholder with the tag (AVP-MAC-3/4/6)."""
    at = msg.find(PLACEHOLDER)
    assert at > 0 and msg.find(PLACEHOLDER, at + 1) == -1, "placeholder must be unique"
    tag = blake3.blake3(msg[:covered_len(msg)], key=derived(key_file)).hexdigest()
    return msg[:at] + tag.encode() + msg[at + 64:], tag


def sdk_decodes(data):
    try:
        codec.decode(data)
        return True
    except Exception:  # noqa: BLE001 - any SDK rejection counts
        return False


def f32_tensor(n):
    return struct.pack(f"<{n}f", *[(i % 13) * 0.5 - 3.0 for i in range(n)])


def sdk_message(tensor, compression=CompressionLevel.NONE, extra=None, **meta):
    extra = dict(extra or {})
    extra[TAG_KEY] = PLACEHOLDER.decode()
    assert len(extra) <= 2
    m = AVPMetadata(extra=extra, **meta)
    data = codec.encode(tensor, m, compression)
    return sort_extra(data)


def sort_extra(data):
    """upb writes map entries in hash order; put them in key order (as our encoder and
    gen_wire.py do). Entries are contiguous field-14 records."""
    ml = struct.unpack_from("<I", data, 8)[0]
    meta = data[12:12 + ml]
    fields, i = [], 0
    while i < len(meta):
        start = i
        key, i = read_varint(meta, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, i = read_varint(meta, i)
        elif wt == 2:
            n, i = read_varint(meta, i)
            i += n
        elif wt == 5:
            i += 4
        elif wt == 1:
            i += 8
        else:
            raise AssertionError("unexpected wire type")
        fields.append((field, meta[start:i]))
    idx = [k for k, (f, _) in enumerate(fields) if f == 14]
    if len(idx) < 2:
        return data
    entries = sorted((raw for f, raw in fields if f == 14), key=entry_key)
    new_meta = (b"".join(raw for _, raw in fields[:idx[0]]) + b"".join(entries)
                + b"".join(raw for _, raw in fields[idx[-1] + 1:]))
    assert len(new_meta) == len(meta)
    return data[:12] + new_meta + data[12 + ml:]


def read_varint(b, i):
    shift, n = 0, 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def entry_key(raw):
    _, i = read_varint(raw, 0)  # tag
    _, i = read_varint(raw, i)  # entry length
    _, i = read_varint(raw, i)  # key tag
    n, i = read_varint(raw, i)
    return raw[i:i + n]


def case(slug, rules, description, data, expect, key_file="key.bin", level="MUST", encode=None):
    BINS[slug] = data
    section = "signed" if expect.get("result") == "valid" else "refused"
    c = {"id": f"mac/{section}/{slug}", "rules": rules, "level": level, "op": "mac_verify",
         "description": description, "input": {"file": f"bin/{slug}.avp", "key_file": key_file,
                   "key_file_hex": KEYS[key_file].hex()}}
    if encode is not None:
        c["encode"] = encode
    c["expect"] = dict(expect, sdk="decodes" if sdk_decodes(data) else "rejects")
    CASES.append(c)


def valid(slug, rules, description, data, tag, encode):
    case(slug, rules, description, data, {"result": "valid", "tag": tag}, encode=encode)


def bad(slug, rules, description, data, key_file="key.bin", kind="bad_mac"):
    case(slug, rules, description, data, {"result": "invalid", "error_kind": kind}, key_file)


def fix_crc(msg):
    """Recomputes payload_checksum (field 15, the last field the SDK writes) for an
    uncompressed message: what an attacker who edits the tensor would do."""
    ml = struct.unpack_from("<I", msg, 8)[0]
    meta, tensor = msg[12:12 + ml], msg[12 + ml:covered_len(msg)]
    at = meta.rfind(b"\x78")
    old, end = read_varint(meta, at + 1)
    new = bytearray()
    n = zlib.crc32(tensor) & 0xFFFFFFFF
    while True:
        b = n & 0x7F
        n >>= 7
        new.append(b | (0x80 if n else 0))
        if not n:
            break
    assert len(new) == end - at - 1, "same varint width (fixture chosen so)"
    meta = meta[:at + 1] + bytes(new) + meta[end:]
    return msg[:12] + meta + msg[12 + ml:]


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "bin"), exist_ok=True)
    base = dict(session_id="sess-mac", source_agent_id="agent-a", target_agent_id="agent-b",
                model_id="Qwen/Qwen2.5-0.5B-Instruct", hidden_dim=8, num_layers=2,
                payload_type=PayloadType.HIDDEN_STATE, dtype=DataType.FLOAT32,
                tensor_shape=(2, 8), mode=CommunicationMode.LATENT)
    enc = {"session_id": "sess-mac", "source_agent_id": "agent-a", "target_agent_id": "agent-b",
           "model_id": "Qwen/Qwen2.5-0.5B-Instruct", "hidden_dim": 8, "num_layers": 2,
           "payload_type": "HIDDEN_STATE", "dtype": "FLOAT32", "tensor_shape": [2, 8],
           "mode": "LATENT"}
    tensor = f32_tensor(16)

    signed, tag = sign(sdk_message(tensor, **base))
    valid("signed-hidden-state", ["AVP-MAC-1", "AVP-MAC-2", "AVP-MAC-3", "AVP-MAC-4",
                                  "AVP-MAC-5", "AVP-MAC-6"],
          "hidden state signed with key.bin; the SDK decodes it too", signed, tag,
          dict(enc, compression="none", extra={}))

    with_extra, tag2 = sign(sdk_message(tensor, extra={"note": "kept"}, **base))
    valid("signed-with-extra", ["AVP-MAC-2", "AVP-MAC-3", "AVP-MAC-6"],
          "another extra entry beside the tag (sorted: avp.mac before note)", with_extra, tag2,
          dict(enc, compression="none", extra={"note": "kept"}))

    big = f32_tensor(1024)
    zmeta = dict(base, tensor_shape=(128, 8))
    zsigned, ztag = sign(sdk_message(big, CompressionLevel.FAST, **zmeta))
    valid("signed-zstd", ["AVP-MAC-3", "AVP-MAC-5"],
          "zstd payload: the MAC covers the stored (compressed) bytes, verified before "
          "decompression", zsigned, ztag,
          dict(enc, compression="fast", tensor_shape=[128, 8], extra={}))

    layers = [(torch.arange(12, dtype=torch.float32).reshape(1, 2, 3, 2) + i,
               torch.arange(12, dtype=torch.float32).reshape(1, 2, 3, 2) - i) for i in range(2)]
    kv_bytes, _ = serialize_kv_cache(tuple(layers))
    kvmeta = dict(base, payload_type=PayloadType.KV_CACHE, tensor_shape=())
    kvsigned, kvtag = sign(sdk_message(kv_bytes, **kvmeta))
    valid("signed-kv-cache", ["AVP-MAC-3"], "KV-cache payload signed", kvsigned, kvtag,
          dict(enc, payload_type="KV_CACHE", tensor_shape=[], compression="none", extra={}))

    unsigned = codec.encode(tensor, AVPMetadata(**base))
    bad("unsigned", ["AVP-MAC-5"], "no avp.mac entry: refused when a key is required", unsigned)

    placeholder = sdk_message(tensor, **base)
    bad("placeholder-only", ["AVP-MAC-5"], "the tag is still 64 zeros (never signed)",
        placeholder)

    ml = struct.unpack_from("<I", signed, 8)[0]
    t_at = 12 + ml
    flipped = bytearray(signed)
    flipped[t_at + 5] ^= 0x01
    tampered = fix_crc(bytes(flipped))
    assert sdk_decodes(tampered), "the CRC was fixed up: the SDK accepts it"
    bad("tampered-tensor-crc-fixed", ["AVP-MAC-3", "AVP-MAC-5"],
        "one tensor bit flipped and payload_checksum recomputed: the SDK accepts it, the "
        "MAC does not", tampered)

    s_at = signed.find(b"sess-mac")
    meta_t = signed[:s_at] + b"sess-MAC" + signed[s_at + 8:]
    bad("tampered-metadata", ["AVP-MAC-3", "AVP-MAC-5"],
        "session_id edited (same length, so every length field still agrees)", meta_t)

    h_t = bytearray(signed)
    h_t[3] |= 0x80  # an unknown flag bit: compatible decoders only warn
    bad("tampered-header-flags", ["AVP-MAC-3"], "an unknown header flag bit set after signing",
        bytes(h_t))

    tag_at = signed.find(tag.encode())
    tag_t = bytearray(signed)
    tag_t[tag_at] = ord("0") if tag_t[tag_at] != ord("0") else ord("1")
    bad("tampered-tag", ["AVP-MAC-5"], "one hex digit of the tag changed", bytes(tag_t))

    bad("wrong-key", ["AVP-MAC-1", "AVP-MAC-5"], "signed with key.bin, verified with another key",
        signed, key_file="wrong-key.bin")

    upper = signed[:tag_at] + tag.upper().encode() + signed[tag_at + 64:]
    bad("uppercase-tag", ["AVP-MAC-2", "AVP-MAC-5"],
        "the right tag in uppercase hex: not the canonical form, refused", upper)

    # Two tag entries: append a second field-14 entry to the metadata and fix the lengths.
    entry = b"\x0a\x07" + TAG_KEY.encode() + b"\x12\x40" + tag.encode()
    dup_meta = signed[12:12 + ml] + b"\x72" + bytes([len(entry)]) + entry
    body = signed[12 + ml:covered_len(signed)]
    dup = (signed[:4] + struct.pack("<II", len(dup_meta) + len(body), len(dup_meta))
           + dup_meta + body)
    bad("two-tags", ["AVP-MAC-5"], "two avp.mac entries: ambiguous, refused", dup)

    short_meta = dict(base)
    short = codec.encode(tensor, AVPMetadata(extra={TAG_KEY: tag[:63]}, **short_meta))
    bad("short-tag", ["AVP-MAC-2", "AVP-MAC-5"], "a 63-digit tag", short)

    case("signed-trailing-bytes", ["AVP-MAC-3", "AVP-WIRE-20"],
         "bytes after the declared end are outside the MAC (compatible decoding warns about "
         "them)", signed + b"\x00\x01", {"result": "valid", "tag": tag})

    bad("truncated-signed", ["AVP-MAC-5"], "a signed message cut in its tensor: the framing "
        "error is reported, not bad_mac", signed[:-3], kind="truncated")

    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for slug, data in sorted(BINS.items()):
        with open(os.path.join(out, "bin", f"{slug}.avp"), "wb") as f:
            f.write(data)
    with open(os.path.join(out, "key.bin"), "wb") as f:
        f.write(KEY_FILE)
    with open(os.path.join(out, "wrong-key.bin"), "wb") as f:
        f.write(WRONG_KEY_FILE)
    doc = {"suite": "avp-mac", "suite_version": "1.0.0", "spec": {"mac": 1},
           "generator": {"script": "conformance/gen/gen_mac.py", "sdk": "avp==0.6.2",
                         "mac": "python blake3 " + blake3.__version__},
           "key_context": KEY_CONTEXT, "case_count": len(CASES), "cases": CASES}
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"wrote {len(CASES)} cases, {len(BINS)} binaries to {out}")


if __name__ == "__main__":
    main()
