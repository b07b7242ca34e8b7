#!/usr/bin/env python3
"""AVP conformance adapter for the Python SDK (avp==0.6.2).

Speaks the adapter protocol of spec/conformance.md (AVP-CONF-20..): one JSON
object per line on stdin, exactly one JSON answer per line on stdout, logs on
stderr. Run by `avp conformance run --adapter '.venv/bin/python <this file>'`.

`--ignore-checksum` turns it into the deliberately broken implementation the
suite's must-fail test uses: it drops payload_checksum before decoding.
"""

import base64
import os
import struct
import sys
import json
import traceback

import avp
from avp import avp_pb2, codec, errors
from avp.handshake import CompatibilityResolver, compute_model_hash, compute_tokenizer_hash
from avp.types import ModelIdentity

IGNORE_CHECKSUM = "--ignore-checksum" in sys.argv[1:]
INLINE_LIMIT = 1 << 20  # bigger results travel as files (AVP-CONF-24)
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
    msg = str(exc)
    if isinstance(exc, errors.InvalidMagicError):
        return "bad_magic"
    if isinstance(exc, errors.UnsupportedVersionError):
        return "unsupported_version"
    if "too short" in msg or "truncated" in msg:
        return "truncated"
    if "checksum" in msg:
        return "checksum_mismatch"
    if msg.startswith("Unknown "):
        return "unknown_enum"
    mod = type(exc).__module__
    if "protobuf" in mod:
        return "bad_metadata"
    if "zstd" in mod or "zstandard" in mod:
        return "bad_compression"
    return "other"


def op_decode(req):
    data = read_bytes(req["input"]["data"])
    try:
        msg = codec.decode(data)
    except Exception as exc:  # rejection is a normal answer (AVP-CONF-22)
        if not (IGNORE_CHECKSUM and error_kind(exc) == "checksum_mismatch"):
            return {"outcome": "rejected", "error_kind": error_kind(exc), "message": str(exc)}
        msg = codec.decode(strip_checksum(data))
    m = msg.metadata
    _, version, flags, payload_length, metadata_length = struct.unpack("<2sBBII", data[:12])
    return {
        "outcome": "accepted",
        # The header as received (the broken mode decodes a rewritten copy).
        "header": {"version": version, "flags": flags, "payload_length": payload_length,
                   "metadata_length": metadata_length},
        "metadata": {
            "session_id": m.session_id, "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id, "model_id": m.model_id,
            "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
            "payload_type": m.payload_type.name, "dtype": m.dtype.name,
            "tensor_shape": list(m.tensor_shape), "mode": m.mode.name,
            "compression": m.compression, "avp_map_id": m.avp_map_id, "extra": m.extra,
        },
        "tensor": bytes_ref(msg.payload),
        "warnings": [],
    }


def op_model_hash(req):
    return {"outcome": "accepted", "hash": compute_model_hash(req["input"]["config"])}


def op_tokenizer_hash(req):
    return {"outcome": "accepted", "hash": compute_tokenizer_hash(req["input"]["vocab"])}


def op_resolve(req):
    inp = req["input"]
    s = CompatibilityResolver.resolve(ModelIdentity.from_dict(inp["local"]),
                                      ModelIdentity.from_dict(inp["remote"]))
    return {"outcome": "accepted", "mode": s.mode.name, "resolution_path": s.resolution_path,
            "avp_map_id": s.avp_map_id}


OPS = {"decode": op_decode, "model_hash": op_model_hash,
       "tokenizer_hash": op_tokenizer_hash, "resolve": op_resolve}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd, seq = req.get("cmd"), req.get("seq")
        if cmd == "hello":
            state["tmp_dir"] = req.get("tmp_dir")
            name = "avp-python" + ("-broken" if IGNORE_CHECKSUM else "")
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
