"""Bounded load test of the HTTP binding, ours and the SDK's side by side.

N transmits of SIZE bytes over C keep-alive HTTP/1.1 connections (one httpx
client per thread), against `avp serve --store DIR` and against the SDK's
`create_app` under uvicorn, in one run. Every message is unique; afterwards
every acknowledged message is checked:
  - ours: the stored file <request_id>.avp must equal the bytes sent;
  - SDK: its handler answers the SHA-256 of the payload it decoded.
Prints counts (sent / acknowledged / lost / corrupted), p50/p99/max latency,
throughput and the ratio ours/SDK. Not a test: results go to BENCHMARKS.md.

  .venv/bin/python scripts/bench_transport.py --avp target/release/avp \
      [--messages 2000] [--size-mib 1] [--connections 16] [--skip-sdk]
"""

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import httpx
import numpy as np

from avp.codec import encode
from avp.types import AVPMetadata

HEADERS = {"Content-Type": "application/avp+binary", "AVP-Version": "0.4", "AVP-Agent-ID": "bench"}


def start_avp(avp, store):
    proc = subprocess.Popen([avp, "serve", "--listen", "127.0.0.1:0", "--quiet", "--store", store],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip().removeprefix("listening on ")
    return proc, url


SDK_SERVER = r'''
import hashlib, socket, sys, uvicorn
from avp.transport import create_app
async def handler(msg):
    return {"payload_sha256": hashlib.sha256(msg.payload).hexdigest(), "session_id": msg.metadata.session_id}
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); sock.bind(("127.0.0.1", 0)); sock.listen(128)
print("listening on http://%s:%d" % sock.getsockname(), flush=True)
uvicorn.Server(uvicorn.Config(create_app(handler), log_level="warning")).run(sockets=[sock])
'''


def start_sdk():
    proc = subprocess.Popen([sys.executable, "-c", SDK_SERVER], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip().removeprefix("listening on ")
    return proc, url


def make_message(base, index):
    """A unique message: the index and a stamp overwrite the payload's first 16 bytes."""
    payload = bytearray(base)
    payload[:16] = index.to_bytes(8, "little") + time.time_ns().to_bytes(8, "little")
    payload = bytes(payload)
    meta = AVPMetadata(session_id=f"bench-{index}", source_agent_id="bench", target_agent_id="avp-serve",
                       hidden_dim=len(payload) // 4, tensor_shape=(1, len(payload) // 4))
    return payload, encode(payload, meta)


def run_load(url, args, base):
    """Returns (latencies_s, results, wall_s); results: list of (index, sha_of_message, sha_of_payload, answer)."""
    latencies, results, errors = [], [], []
    lock = threading.Lock()
    counter = iter(range(args.messages))

    def worker():
        with httpx.Client(base_url=url, timeout=120.0) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                payload, message = make_message(base, index)
                started = time.perf_counter()
                try:
                    response = client.post("/avp/v2/transmit", content=message, headers=HEADERS)
                    elapsed = time.perf_counter() - started
                    answer = response.json() if response.status_code == 200 else None
                    if answer is None:
                        with lock:
                            errors.append(f"HTTP {response.status_code}: {response.text[:120]}")
                except Exception as exc:  # counted as lost
                    elapsed, answer = time.perf_counter() - started, None
                    with lock:
                        errors.append(repr(exc))
                with lock:
                    latencies.append(elapsed)
                    results.append((index, hashlib.sha256(message).hexdigest(),
                                    hashlib.sha256(payload).hexdigest(), answer))

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, results, time.perf_counter() - wall, errors


def summarize(name, latencies, wall, args, lost, corrupted):
    lat = np.array(latencies) * 1000.0
    total_mib = args.messages * args.size_mib
    row = {
        "name": name, "sent": args.messages, "lost": lost, "corrupted": corrupted,
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()), "wall_s": wall, "mib_per_s": total_mib / wall,
        "msgs_per_s": args.messages / wall,
    }
    print(f"{name:>10}: sent {row['sent']}, lost {lost}, corrupted {corrupted}; "
          f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms; "
          f"{row['wall_s']:.1f} s wall, {row['mib_per_s']:.0f} MiB/s, {row['msgs_per_s']:.0f} msg/s", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--avp", default="target/release/avp")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size-mib", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    base = np.random.default_rng(1).bytes(args.size_mib * 1024 * 1024)
    print(f"{args.messages} transmits of {args.size_mib} MiB over {args.connections} connections", flush=True)

    store = tempfile.mkdtemp(prefix="avp-bench-store-")
    proc, url = start_avp(args.avp, store)
    try:
        latencies, results, wall, errors = run_load(url, args, base)
    finally:
        proc.terminate()
        proc.wait()
    lost = corrupted = 0
    for index, message_sha, _, answer in results:
        if not answer or not answer.get("success"):
            lost += 1
            continue
        path = os.path.join(store, answer["request_id"] + ".avp")
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != message_sha:
                    corrupted += 1
        except FileNotFoundError:
            lost += 1
    lost += args.messages - len(results)
    stored = len([n for n in os.listdir(store) if n.endswith(".avp")])
    shutil.rmtree(store)
    ours = summarize("avp serve", latencies, wall, args, lost, corrupted)
    print(f"            files in store: {stored}; client errors: {len(errors)}, e.g. {errors[:3]}", flush=True)

    if args.skip_sdk:
        return
    proc, url = start_sdk()
    try:
        latencies, results, wall, errors = run_load(url, args, base)
    finally:
        proc.terminate()
        proc.wait()
    lost = corrupted = 0
    for index, _, payload_sha, answer in results:
        if not answer or not answer.get("success"):
            lost += 1
        elif answer.get("payload_sha256") != payload_sha or answer.get("session_id") != f"bench-{index}":
            corrupted += 1
    lost += args.messages - len(results)
    sdk = summarize("SDK", latencies, wall, args, lost, corrupted)
    print(f"            client errors: {len(errors)}, e.g. {errors[:3]}", flush=True)
    print(f"ratio SDK/ours: p50 {sdk['p50_ms'] / ours['p50_ms']:.2f}x, p99 {sdk['p99_ms'] / ours['p99_ms']:.2f}x, "
          f"throughput ours/SDK {ours['mib_per_s'] / sdk['mib_per_s']:.2f}x")


if __name__ == "__main__":
    main()
