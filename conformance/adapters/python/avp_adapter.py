#!/usr/bin/env python3
"""AVP conformance adapter for the Python SDK (avp==0.6.2).

Speaks the adapter protocol of spec/protocol/conformance.md (AVP-CONF-20..): one JSON
object per line on stdin, exactly one JSON answer per line on stdout, logs on
stderr. Run by `avp conformance run --adapter '.venv/bin/python <this file>'`.

`--ignore-checksum` turns it into the deliberately broken implementation the
suite's must-fail test uses: it drops payload_checksum before decoding.

`--avp-rs` (or AVP_ADAPTER_AVP_RS=1) runs the same SDK code with
`avp_rs.install()` in effect (python/, spec/impl/python.md AVP-PY-4): the SDK's
codec, compression, KV and hashing functions are then avp_rs's, and the
implementation is named `avp-python-avp-rs`.
"""

import base64
import os
import struct
import json
import sys
import traceback

import avp
import zstandard
from avp import avp_pb2, codec, errors
from avp.fallback import JSONMessage
from avp.handshake import (CompatibilityResolver, HelloMessage, compute_model_hash,
                           compute_tokenizer_hash, extract_model_identity)
from avp.types import (AVPMetadata, CommunicationMode, CompressionLevel, DataType, ModelIdentity,
                       PayloadType)

IGNORE_CHECKSUM = "--ignore-checksum" in sys.argv[1:]
WITH_AVP_RS = "--avp-rs" in sys.argv[1:] or os.environ.get("AVP_ADAPTER_AVP_RS") == "1"
if WITH_AVP_RS:
    import avp_rs

    avp_rs.install()
INLINE_LIMIT = 1 << 20  # bigger results travel as files (AVP-CONF-24)
UNSAFE_ALLOCATION = 256 << 20
state = {"tmp_dir": None, "n": 0}


def read_bytes(ref):
    if "b64" in ref:
        return base64.b64decode(ref["b64"])
    with open(ref["path"], "rb") as f:
        return f.read()


def bytes_ref(data):
    if len(data) <= INLINE_LIMIT or not state["tmp_dir"]:
        return {"b64": base64.b64encode(data).decode("ascii")}
    state["n"] += 1
    path = os.path.join(state["tmp_dir"], f"out-{state['n']}.bin")
    with open(path, "wb") as f:
        f.write(data)
    return {"path": path}


def strip_checksum(data):
    """The broken decoder: forget payload_checksum, fix up the lengths."""
    if len(data) < 12:
        return data
    magic, ver, flags, plen, mlen = struct.unpack("<2sBBII", data[:12])
    pb = avp_pb2.Metadata()
    try:
        pb.ParseFromString(data[12:12 + mlen])
    except Exception:
        return data
    pb.ClearField("payload_checksum")
    mb = pb.SerializeToString()
    rest = data[12 + mlen:]
    return magic + struct.pack("<BBII", ver, flags, plen - mlen + len(mb), len(mb)) + mb + rest


def error_kind(exc):
    """Our error vocabulary (spec/protocol/errors.md, AVP-ERR-3) for an SDK exception."""
    if WITH_AVP_RS and getattr(exc, "kind", None):
        return exc.kind  # avp_rs attaches the kind to the SDK exceptions it raises
    msg = str(exc)
    if isinstance(exc, errors.InvalidMagicError):
        return "bad_magic"
    if isinstance(exc, errors.UnsupportedVersionError):
        return "unsupported_version"
    if type(exc).__module__.startswith("google.protobuf"):
        return "malformed_metadata"
    if type(exc).__module__.startswith("zstandard") or "Zstd" in type(exc).__name__:
        return "decompression"
    if msg.startswith(("Message too short", "Message truncated")) or "truncated" in msg:
        return "truncated"
    if msg.startswith("Payload checksum mismatch"):
        return "checksum_mismatch"
    if msg.startswith("Unknown "):
        return "unknown_enum"
    if isinstance(exc, (ValueError, TypeError, AttributeError, KeyError)):
        return "malformed_metadata"
    return "other"


def rejected(exc):
    return {"outcome": "rejected", "error_kind": error_kind(exc), "message": f"{type(exc).__name__}: {exc}"}


def kv_view(payload):
    """The KV inner header as the SDK reads it, or its rejection."""
    from avp.kv_cache import deserialize_kv_cache  # torch: imported only when needed
    try:
        _, kh = deserialize_kv_cache(payload)
    except Exception as exc:
        return {"error_kind": error_kind(exc), "message": f"{type(exc).__name__}: {exc}"}
    return {"num_layers": kh.num_layers, "num_kv_heads": kh.num_kv_heads, "head_dim": kh.head_dim,
            "seq_len": kh.seq_len, "dtype": kh.dtype}


def declared_zstd_size(data):
    """Content size a zstd frame in the tensor section declares, or None."""
    if len(data) < 12 or not (data[3] & 1):
        return None
    plen, mlen = struct.unpack("<II", data[4:12])
    try:
        params = zstandard.get_frame_parameters(data[12 + mlen:12 + plen])
    except Exception:
        return None
    # ZSTD_CONTENTSIZE_UNKNOWN / _ERROR are 2**64-1 and 2**64-2.
    return params.content_size if 0 < params.content_size < (1 << 63) else None


def op_decode(req):
    data = read_bytes(req["input"]["data"])
    size = declared_zstd_size(data)
    if size is not None and size > UNSAFE_ALLOCATION and not WITH_AVP_RS:
        # The SDK would try (it has no decompression limit); the adapter will
        # not take the host down to prove it.
        return {"outcome": "skipped",
                "reason": f"not run: the SDK would allocate {size} bytes (no decompression limit)"}
    try:
        msg = codec.decode(data)
    except Exception as exc:  # rejection is a normal answer (AVP-CONF-22)
        if not (IGNORE_CHECKSUM and error_kind(exc) == "checksum_mismatch"):
            return rejected(exc)
        try:
            msg = codec.decode(strip_checksum(data))
        except Exception as exc2:  # a fault the checksum hid (e.g. an unknown enum)
            return rejected(exc2)
    m = msg.metadata
    _, version, flags, payload_length, metadata_length = struct.unpack("<2sBBII", data[:12])
    pb = avp_pb2.Metadata()
    pb.ParseFromString(data[12:12 + metadata_length])
    kv = kv_view(msg.payload) if m.payload_type == PayloadType.KV_CACHE else None
    return {
        "outcome": "accepted",
        "decoded": {
            # The header as received (the broken mode decodes a rewritten copy).
            "header": {"version": version, "flags": flags, "payload_length": payload_length,
                       "metadata_length": metadata_length},
            "metadata": {
                "session_id": m.session_id, "source_agent_id": m.source_agent_id,
                "target_agent_id": m.target_agent_id, "model_id": m.model_id,
                "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
                "payload_type": m.payload_type.name, "dtype": m.dtype.name,
                "tensor_shape": list(m.tensor_shape), "mode": m.mode.name,
                "compression": m.compression, "avp_map_id": m.avp_map_id, "extra": dict(m.extra),
                "payload_checksum": pb.payload_checksum if pb.HasField("payload_checksum") else None,
            },
            "payload": bytes_ref(msg.payload),
            "kv": kv,
        },
        # With avp_rs the message carries what compatible mode tolerated.
        "warnings": [code for code, _ in getattr(msg, "avp_rs_warnings", [])],
    }


LEVELS = {"none": CompressionLevel.NONE, "fast": CompressionLevel.FAST,
          "balanced": CompressionLevel.BALANCED, "max": CompressionLevel.MAX}


def op_encode(req):
    inp = req["input"]
    m = inp["metadata"]
    try:
        meta = AVPMetadata(
            session_id=m["session_id"], source_agent_id=m["source_agent_id"],
            target_agent_id=m["target_agent_id"], model_id=m["model_id"],
            hidden_dim=m["hidden_dim"], num_layers=m["num_layers"],
            payload_type=PayloadType[m["payload_type"]], dtype=DataType[m["dtype"]],
            tensor_shape=tuple(m["tensor_shape"]), mode=CommunicationMode[m["mode"]],
            avp_map_id=m["avp_map_id"], extra=dict(m["extra"]))
        out = codec.encode(read_bytes(inp["data"]), meta, LEVELS[inp.get("compression", "none")])
    except Exception as exc:
        return rejected(exc)
    return {"outcome": "accepted", "output": bytes_ref(out)}


def text_of(inp):
    return inp["text"] if "text" in inp else read_bytes(inp["data"]).decode("utf-8")


def op_json_decode(req):
    try:
        msg = JSONMessage.from_json(text_of(req["input"]))
    except Exception as exc:
        return rejected(exc)
    return {"outcome": "accepted", "message": msg.to_dict(), "to_json": msg.to_json()}


def op_canonical_json(req):
    try:
        obj = json.loads(text_of(req["input"]))
        return {"outcome": "accepted",
                "canonical": json.dumps(obj, sort_keys=True, separators=(",", ":")),
                "compact": json.dumps(obj, separators=(",", ":")), "python_default": json.dumps(obj)}
    except Exception as exc:
        return rejected(exc)


def op_model_hash(req):
    inp = req["input"]
    try:
        config = inp["config"] if "config" in inp else json.loads(text_of(inp))
        return {"outcome": "accepted", "model_hash": compute_model_hash(config),
                "canonical": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    except Exception as exc:
        return rejected(exc)


def load_tokenizer(path):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=path)


def op_tokenizer_hash(req):
    inp = req["input"]
    if "vocab" in inp:  # the runner's fixture form
        return {"outcome": "accepted", "tokenizer_hash": compute_tokenizer_hash(inp["vocab"])}
    ref = inp["data"]
    path = ref.get("path")
    if path is None:
        path = os.path.join(state["tmp_dir"] or "/tmp", "tokenizer-in.json")
        with open(path, "wb") as f:
            f.write(read_bytes(ref))
    tok = load_tokenizer(path)
    vocab = tok.get_vocab()
    return {"outcome": "accepted", "tokenizer_hash": compute_tokenizer_hash(tok), "vocab_size": len(vocab),
            "vocab_sample": dict(sorted(vocab.items())[:20])}


def op_vocab_hash(req):
    inp = req["input"]
    vocab = inp["vocab"] if "vocab" in inp else json.loads(text_of(inp))
    return {"outcome": "accepted", "tokenizer_hash": compute_tokenizer_hash(vocab)}


def op_identity(req):
    inp = req["input"]
    tok = None
    if "model_dir" in inp:
        with open(os.path.join(inp["model_dir"], "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        tok_path = os.path.join(inp["model_dir"], "tokenizer.json")
        if os.path.exists(tok_path):
            tok = load_tokenizer(tok_path)
    elif "config" in inp:
        config = inp["config"]
    else:
        config = json.loads(text_of(inp))
    try:
        ident = extract_model_identity(config, tokenizer=tok)
    except Exception as exc:
        return rejected(exc)
    return {"outcome": "accepted", "identity": ident.to_dict(), "json": json.dumps(ident.to_dict())}


def op_hello_parse(req):
    try:
        hello = HelloMessage.from_dict(json.loads(text_of(req["input"])))
        d = hello.to_dict()
    except Exception as exc:
        return rejected(exc)
    return {"outcome": "accepted", "to_dict": d, "wire": json.dumps(d)}


class _VocabTok:
    def __init__(self, vocab):
        self._v = vocab

    def get_vocab(self):
        return dict(self._v)


def op_resolve(req):
    inp = req["input"]
    if "local_weights_digest" in inp or "remote_weights_digest" in inp:
        return {"outcome": "skipped", "reason": "weights digests are an extension the SDK does not have"}
    import tempfile
    from pathlib import Path
    from avp.rosetta import registry
    with tempfile.TemporaryDirectory() as tmp:
        for name in inp.get("maps", []):
            target = Path(tmp) / name
            if target.resolve().parent != Path(tmp).resolve():
                continue  # never write outside the scratch directory
            target.write_bytes(b"")
        old = registry._MAP_DIR
        registry._MAP_DIR = Path(tmp)
        try:
            src = _VocabTok(inp["local_vocab"]) if "local_vocab" in inp else None
            tgt = _VocabTok(inp["remote_vocab"]) if "remote_vocab" in inp else None
            s = CompatibilityResolver.resolve(ModelIdentity.from_dict(inp["local"]),
                                              ModelIdentity.from_dict(inp["remote"]), src, tgt)
        finally:
            registry._MAP_DIR = old
    return {"outcome": "accepted", "mode": s.mode.name, "resolution_path": s.resolution_path,
            "avp_map_id": s.avp_map_id}


def op_kv_ext_decode(req):
    # The SDK has no quantized or delta KV (spec/protocol/kv-quant.md): its decode() rejects
    # payload_type KV_CACHE_EXT (3) and it has nothing that reads the extended inner format.
    return {"outcome": "skipped", "reason": "quantized and delta KV are an extension the SDK does not have"}


def op_chunk_assemble(req):
    # The SDK has no chunked contexts (spec/protocol/chunked.md): it never announces kv_chunked,
    # so a conforming sender never sends it chunks (AVP-CHK-9); nothing in it assembles them.
    return {"outcome": "skipped", "reason": "chunked contexts are an extension the SDK does not have"}


OPS = {"decode": op_decode, "encode": op_encode, "json_decode": op_json_decode, "canonical_json": op_canonical_json,
       "model_hash": op_model_hash, "tokenizer_hash": op_tokenizer_hash, "vocab_hash": op_vocab_hash,
       "identity": op_identity, "hello_parse": op_hello_parse, "resolve": op_resolve,
       "kv_ext_decode": op_kv_ext_decode, "kv_ext_encode": op_kv_ext_decode,
       "chunk_assemble": op_chunk_assemble}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd, seq = req.get("cmd"), req.get("seq")
        if cmd == "hello":
            state["tmp_dir"] = req.get("tmp_dir")
            name = "avp-python" + ("-broken" if IGNORE_CHECKSUM else "") + ("-avp-rs" if WITH_AVP_RS else "")
            out = {"protocol": 1, "implementation": {
                "name": name, "version": avp.__version__, "language": "python",
                "homepage": "https://pypi.org/project/avp/"}, "capabilities": sorted(OPS)}
        elif cmd == "stop":
            print(json.dumps({"seq": seq, "ok": True}), flush=True)
            return
        elif cmd in OPS:
            try:
                out = OPS[cmd](req)
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                out = {"outcome": "errored", "message": f"{type(exc).__name__}: {exc}"}
        else:
            out = {"outcome": "skipped", "reason": f"op {cmd!r} not supported by this adapter"}
        out["seq"] = seq
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
