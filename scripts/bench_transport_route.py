"""Peak memory of `avp route` while a large message streams through it.

Makes one KV-cache message of SIZE MiB with the SDK's encode() (a file on
disk), starts `avp serve --store DIR` and `avp route --route bob=<serve>`,
sends the file with `avp send` (streamed from disk) through the router, then
reads the router's peak resident set (VmHWM from /proc) and checks that the
stored message equals the file. Not a test: results go to BENCHMARKS.md.

  .venv/bin/python scripts/bench_transport_route.py --avp target/release/avp [--size-mib 256]
"""

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np

from avp.codec import encode
from avp.types import AVPMetadata, PayloadType


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def start(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip().removeprefix("listening on ")
    return proc, url


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--avp", default="target/release/avp")
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="avp-bench-route-")
    message = os.path.join(work, "kv.avp")
    layers, heads, head_dim = 8, 8, 128
    seq = args.size_mib * 1024 * 1024 // (layers * 2 * heads * head_dim * 4)
    payload = struct.pack("<IIIIB", layers, heads, head_dim, seq, 0) + \
        np.random.default_rng(3).bytes(layers * 2 * heads * seq * head_dim * 4)
    meta = AVPMetadata(session_id="big", source_agent_id="bench", target_agent_id="bob",
                       payload_type=PayloadType.KV_CACHE, num_layers=layers,
                       tensor_shape=(layers, 2, heads, seq, head_dim))
    with open(message, "wb") as f:
        f.write(encode(payload, meta))
    del payload
    size = os.path.getsize(message)

    serve, serve_url = start([args.avp, "serve", "--listen", "127.0.0.1:0", "--quiet",
                              "--store", os.path.join(work, "store")])
    route, route_url = start([args.avp, "route", "--listen", "127.0.0.1:0", "--route", f"bob={serve_url}"])
    try:
        idle_rss = peak_rss_mib(route.pid)
        started = time.perf_counter()
        sent = subprocess.run([args.avp, "send", message, "--to", route_url], capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        route_peak = peak_rss_mib(route.pid)
        serve_peak = peak_rss_mib(serve.pid)
    finally:
        route.terminate()
        serve.terminate()
        route.wait()
        serve.wait()
    print(sent.stdout.strip())
    stored = [n for n in os.listdir(os.path.join(work, "store")) if n.endswith(".avp")]
    intact = len(stored) == 1 and sha256_file(os.path.join(work, "store", stored[0])) == sha256_file(message)
    print(f"message {size / 2**20:.1f} MiB via router in {elapsed:.2f} s ({size / 2**20 / elapsed:.0f} MiB/s); "
          f"intact: {intact}")
    print(f"router peak RSS {route_peak:.1f} MiB (idle {idle_rss:.1f} MiB); "
          f"agent (buffers the message) peak RSS {serve_peak:.1f} MiB")
    shutil.rmtree(work)
    if not intact or route_peak >= 64:
        raise SystemExit("FAILED: message not intact or router peak RSS >= 64 MiB")


if __name__ == "__main__":
    main()
