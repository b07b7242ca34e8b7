"""The Python SDK (avp==0.6.2) on the other end of `avp serve`/`send`/`route`.

Used by cli/tests/transport.rs and scripts/bench_transport.py. Subcommands:
  client URL OUTDIR [--token T] [--target ID] [--kv-mib N] [--model-dir DIR] [--h2c]
      handshake, then transmit the vector set (and an N MiB KV-cache message)
      with AVPClient; each encoded message is also written to OUTDIR so the
      caller can compare bytes; prints one JSON line per message.
  expect-error URL [--token T] [--target ID] [--size BYTES]
      one transmit that must fail; prints {"status": code}.
  encode OUT
      writes one message made by the SDK's encode(); prints what its handler
      must see.
  server RECORD [--text]
      create_app under uvicorn on a free port; prints "listening on URL";
      appends one JSON line per received message to RECORD.
"""

import argparse
import hashlib
import json
import os
import socket
import struct
import sys

import numpy as np

from avp.codec import encode
from avp.errors import TransportError
from avp.fallback import JSONMessage
from avp.types import (
    AVPMetadata,
    CommunicationMode,
    CompressionLevel,
    DataType,
    ModelIdentity,
    PayloadType,
)

IDENTITY = ModelIdentity(
    model_family="qwen2", model_id="Qwen/Qwen2.5-0.5B", model_hash="ab" * 32,
    hidden_dim=896, num_layers=24, num_kv_heads=2, head_dim=64,
)


def kv_payload(mib):
    """A KV-cache inner-format v1 payload of `mib` MiB (float32, 4 layers)."""
    layers, heads, head_dim = 4, 4, 64
    seq = mib * 1024 * 1024 // (layers * 2 * heads * head_dim * 4)
    header = struct.pack("<IIIIB", layers, heads, head_dim, seq, 0)
    rng = np.random.default_rng(seq)
    body = rng.standard_normal(layers * 2 * heads * seq * head_dim, dtype=np.float32).tobytes()
    return header + body, (layers, 2, heads, seq, head_dim)


def vectors(target):
    """(name, payload, metadata, compression) covering dtypes, payload types, compression, extra, unicode."""
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal(896, dtype=np.float32)
    out = [
        ("hidden-f32", hidden.tobytes(), AVPMetadata(
            session_id="s-1", source_agent_id="py-agent", target_agent_id=target,
            model_id=IDENTITY.model_id, hidden_dim=896, num_layers=24,
            tensor_shape=(1, 896))),
        ("hidden-f16-extra", hidden.astype(np.float16).tobytes(), AVPMetadata(
            session_id="s-2", source_agent_id="py-agent", target_agent_id=target,
            dtype=DataType.FLOAT16, hidden_dim=896, tensor_shape=(1, 896),
            extra={"note": "ünïcödé ✓"})),
        ("json-mode-empty", b"", AVPMetadata(
            session_id="s-3", source_agent_id="py-agent", target_agent_id=target,
            mode=CommunicationMode.JSON)),
    ]
    kv, shape = kv_payload(1)
    out.append(("kv-1mib-zstd", kv, AVPMetadata(
        session_id="s-4", source_agent_id="py-agent", target_agent_id=target,
        payload_type=PayloadType.KV_CACHE, tensor_shape=shape, num_layers=4),
        CompressionLevel.FAST))
    return [v if len(v) == 4 else (*v, CompressionLevel.NONE) for v in out]


def make_client(url, token, model_dir=None, h2c=False):
    import httpx
    from avp.transport import AVPClient
    identity = IDENTITY
    if model_dir:
        from avp.handshake import extract_model_identity
        with open(os.path.join(model_dir, "config.json")) as f:
            identity = extract_model_identity(json.load(f))
    client = AVPClient(url, agent_id="py-agent", model_identity=identity, token=token, timeout=120.0)
    if h2c:
        # httpx only speaks HTTP/2 over plain http with prior knowledge (http1=False).
        client._client.close()
        client._client = httpx.Client(http1=False, http2=True, timeout=120.0, base_url=client.base_url)
    return client


def cmd_client(args):
    client = make_client(args.url, args.token, args.model_dir, args.h2c)
    session = client.handshake()
    print(json.dumps({"handshake": {"mode": session.mode.name, "resolution_path": session.resolution_path,
                                    "session_id": session.session_id}}), flush=True)
    items = vectors(args.target)
    if args.kv_mib:
        kv, shape = kv_payload(args.kv_mib)
        items.append((f"kv-{args.kv_mib}mib", kv, AVPMetadata(
            session_id="s-kv", source_agent_id="py-agent", target_agent_id=args.target,
            payload_type=PayloadType.KV_CACHE, tensor_shape=shape, num_layers=4), CompressionLevel.NONE))
    for name, payload, meta, level in items:
        path = os.path.join(args.outdir, name + ".avp")
        with open(path, "wb") as f:
            f.write(encode(payload, meta, level))
        response = client.transmit(payload, meta, level)
        print(json.dumps({"name": name, "file": path, "status": response.status_code,
                          "http_version": response.http_version, "response": response.json()}), flush=True)
    client.close()


def cmd_expect_error(args):
    client = make_client(args.url, args.token)
    meta = AVPMetadata(session_id="s", source_agent_id="py-agent", target_agent_id=args.target)
    try:
        client.transmit(b"\x00" * args.size, meta)
    except TransportError as exc:
        print(json.dumps({"status": exc.status_code}))
        return
    print(json.dumps({"status": 200}))


def cmd_encode(args):
    payload = np.arange(896, dtype=np.float32).tobytes()
    meta = AVPMetadata(session_id="sess-send", source_agent_id="rust", target_agent_id="py-server",
                       model_id="m", hidden_dim=896, num_layers=24, tensor_shape=(1, 896),
                       extra={"k": "v"})
    with open(args.out, "wb") as f:
        f.write(encode(payload, meta, CompressionLevel.BALANCED))
    print(json.dumps(describe(meta, payload)))


def describe(meta, payload):
    return {
        "session_id": meta.session_id, "source_agent_id": meta.source_agent_id,
        "target_agent_id": meta.target_agent_id, "model_id": meta.model_id,
        "hidden_dim": meta.hidden_dim, "num_layers": meta.num_layers,
        "tensor_shape": list(meta.tensor_shape), "extra": dict(meta.extra),
        "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_len": len(payload),
    }


def cmd_server(args):
    import uvicorn
    from avp.transport import create_app

    def record(entry):
        with open(args.record, "a") as f:
            f.write(json.dumps(entry) + "\n")

    async def handler(msg):
        record({"kind": "transmit", **describe(msg.metadata, msg.payload),
                "compression": msg.metadata.compression, "raw_size": msg.raw_size})
        return {"received": msg.raw_size}

    async def text_handler(msg: JSONMessage):
        record({"kind": "text", **msg.to_dict()})
        return {"ok": True}

    app = create_app(handler, text_handler=text_handler if args.text else None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # listening before we announce, so no client is refused
    host, port = sock.getsockname()
    print(f"listening on http://{host}:{port}", flush=True)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("client")
    p.add_argument("url"); p.add_argument("outdir")
    p.add_argument("--token"); p.add_argument("--target", default="rust-agent")
    p.add_argument("--kv-mib", type=int, default=0)
    p.add_argument("--model-dir", help="handshake with the identity the SDK extracts from DIR/config.json")
    p.add_argument("--h2c", action="store_true", help="HTTP/2 with prior knowledge instead of HTTP/1.1")
    p = sub.add_parser("expect-error")
    p.add_argument("url"); p.add_argument("--token"); p.add_argument("--target", default="rust-agent")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p = sub.add_parser("encode"); p.add_argument("out")
    p = sub.add_parser("server"); p.add_argument("record"); p.add_argument("--text", action="store_true")
    args = parser.parse_args()
    {"client": cmd_client, "expect-error": cmd_expect_error, "encode": cmd_encode,
     "server": cmd_server}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
