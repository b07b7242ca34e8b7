"""The Python SDK (avp==0.6.2) as the other agent of the two-agent pipeline
(cli/tests/pipeline.rs, spec/impl/pipeline.md AVP-PIPE-5). Subcommands:
  send URL MODEL_DIR PROMPT FOLLOWUP
      think(PROMPT, 2) on MODEL_DIR, then AVPClient.transmit of the
      context's to_bytes() to URL (source "sdk", target "receiver"); prints
      {"model_hash", "text", "token_ids"}: the SDK's own generate(FOLLOWUP,
      context) greedy, 16 tokens.
  server MODEL_DIR FOLLOWUP RECORD
      create_app under uvicorn on a free port; writes MODEL_DIR's SDK model
      hash to RECORD.hash, then prints "listening on URL".
      The handshake answers MODEL_DIR's identity and a session id; each
      transmitted KV_CACHE message is continued with generate(FOLLOWUP,
      context=AVPContext.from_bytes(...)) and one JSON line {text,
      token_ids, session_id, source_agent_id, target_agent_id} appended to
      RECORD.
"""

import json
import os
import socket
import sys
import tempfile
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AVP_CACHE_DIR", tempfile.mkdtemp(prefix="avp-sdk-cache-"))

import torch  # noqa: E402

torch.set_num_threads(1)

from avp.codec import decode, encode  # noqa: E402
from avp.connectors.huggingface import HuggingFaceConnector  # noqa: E402
from avp.context import AVPContext  # noqa: E402
from avp.transport import AVPClient  # noqa: E402

MAX_NEW = 16


def greedy(conn, prompt, context):
    """The SDK's greedy generate (the text `avp generate` prints)."""
    return conn.generate(prompt, context=context, max_new_tokens=MAX_NEW, do_sample=False)


def load(model_dir):
    return HuggingFaceConnector.from_pretrained(model_dir, device="cpu")


def send(url, model_dir, prompt, followup):
    conn = load(model_dir)
    ctx = conn.think(prompt, steps=2)
    wire = ctx.to_bytes(source_agent_id="sdk", target_agent_id="receiver")
    msg = decode(wire)
    with AVPClient(url, agent_id="sdk", model_identity=conn.get_model_identity()) as client:
        client.transmit(msg.payload, msg.metadata)
    text = greedy(conn, followup, ctx)
    print(json.dumps({"model_hash": conn.get_model_identity().model_hash, "text": text}))


def server(model_dir, followup, record_path):
    import uvicorn
    from avp.transport import create_app

    conn = load(model_dir)
    identity = conn.get_model_identity()
    # The SDK's model hash covers `_name_or_path` (the path it was given), so
    # the sender learns it from here, before the address is announced.
    with open(record_path + ".hash", "w") as f:
        f.write(identity.model_hash)

    async def handshake(hello):
        return {
            "agent_id": "sdk-server",
            "identity": identity.to_dict(),
            "session_id": uuid.uuid4().hex,
        }

    async def handler(msg):
        ctx = AVPContext.from_bytes(encode(msg.payload, msg.metadata))
        text = greedy(conn, followup, ctx)
        m = msg.metadata
        entry = {
            "text": text,
            "session_id": m.session_id,
            "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id,
        }
        with open(record_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return {"generated": text}

    app = create_app(handler, handshake_handler=handshake)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    host, port = sock.getsockname()
    print(f"listening on http://{host}:{port}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "send":
        send(*args)
    elif cmd == "server":
        server(*args)
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
