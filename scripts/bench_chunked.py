#!/usr/bin/env python3
"""Benchmark of chunked contexts over HTTP (issue 18; BENCHMARKS.md "Contexts
of any size (issue 18): transfer"; spec/impl/transport.md AVP-HTTP-90..93).

    scripts/bench_chunked.py --avp target/debug/avp --dir /tmp/bench [--gib 6] [--store-dir /dev/shm/s]

1. writes a float16 chunked context of --gib GiB (192 layers of 8 heads x 128
   x 8192 tokens per GiB-of-6; 2 layers per chunk) with an independent
   generator (the Python SDK's `encode` plus the avp.chunk descriptor of
   spec/protocol/chunked.md; deterministic bytes from numpy's PCG64);
2. `avp send FILE --to` an `avp serve --store`, both under /usr/bin/time -v:
   wall time, throughput, peak RSS of each; the stored context is verified
   (its layer bytes hash to the declared BLAKE3 digest);
3. the same through `avp route`;
4. the receiver killed (SIGKILL) once half the chunks are held, restarted,
   and the same `avp send` resumed: how many chunks travelled again;
5. with --plain-mib N: one plain (unchunked) message of N MiB of the same
   layers, `avp send` -> `avp serve --store`, CPU seconds per GB of each.
Every file it writes is deleted at the end (the context is 6 GiB).
"""
import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import blake3
import numpy as np
from avp import AVPMetadata, encode
from avp.types import CompressionLevel, DataType, PayloadType

HEADS, HEAD_DIM, TOKENS = 8, 128, 8192  # one layer: 2*8*128*8192*2 = 32 MiB
LAYER = 2 * HEADS * HEAD_DIM * TOKENS * 2
LAYERS_PER_CHUNK = 2
KV_HEADER = struct.Struct("<IIIIB")


def layer_bytes(seed, layer):
    return np.random.Generator(np.random.PCG64([seed, layer])).bytes(LAYER)


def write_chunked(path, gib, seed=7, target="b"):
    num_layers = int(gib * (1 << 30)) // LAYER
    count = -(-num_layers // LAYERS_PER_CHUNK)
    context_header = KV_HEADER.pack(num_layers, HEADS, HEAD_DIM, TOKENS, 1)
    digest = blake3.blake3(context_header, max_threads=blake3.blake3.AUTO)
    for layer in range(num_layers):
        digest.update(layer_bytes(seed, layer))
    digest = digest.digest()
    context_id = digest[:16]
    with open(path, "wb") as out:
        for index in range(count):
            start = index * LAYERS_PER_CHUNK
            end = min(start + LAYERS_PER_CHUNK, num_layers)
            payload = bytearray(KV_HEADER.pack(end - start, HEADS, HEAD_DIM, TOKENS, 1))
            for layer in range(start, end):
                payload += layer_bytes(seed, layer)
            descriptor = f"1:{context_id.hex()}:{index}:{count}:{start}:{end}:{num_layers}:{digest.hex()}"
            meta = AVPMetadata(session_id="bench", source_agent_id="a", target_agent_id=target,
                               model_id="synthetic", num_layers=end - start,
                               payload_type=PayloadType.KV_CACHE, dtype=DataType.FLOAT16,
                               extra={"avp.chunk": descriptor})
            out.write(encode(bytes(payload), meta, CompressionLevel.NONE))
    return num_layers, count, digest.hex()


def messages(path):
    """(offset, metadata_len, payload_len) of each message of a file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        at = 0
        while at < size:
            f.seek(at)
            head = f.read(12)
            payload_len, meta_len = struct.unpack("<II", head[4:12])
            yield at, meta_len, payload_len
            at += 12 + payload_len


def verify_stored(path, digest_hex):
    """BLAKE3 of the context header + layer bytes of a stored chunked file."""
    chunks = list(messages(path))
    hasher = None
    total_layers = 0
    with open(path, "rb") as f:
        for at, meta_len, payload_len in chunks:
            f.seek(at + 12 + meta_len)
            header = KV_HEADER.unpack(f.read(17))
            total_layers += header[0]
    with open(path, "rb") as f:
        for at, meta_len, payload_len in chunks:
            f.seek(at + 12 + meta_len)
            header = KV_HEADER.unpack(f.read(17))
            if hasher is None:
                hasher = blake3.blake3(KV_HEADER.pack(total_layers, *header[1:]),
                                       max_threads=blake3.blake3.AUTO)
            rest = payload_len - meta_len - 17
            while rest:
                block = f.read(min(rest, 64 << 20))
                hasher.update(block)
                rest -= len(block)
    return hasher.hexdigest() == digest_hex, len(chunks)


def timed(cmd, log):
    return subprocess.Popen(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)


def peak_rss_mib(log):
    text = open(log).read()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_s(log):
    """User + system CPU seconds of a process, from /usr/bin/time -v."""
    text = open(log).read()
    times = [re.search(rf"{kind} time \(seconds\): ([0-9.]+)", text) for kind in ("User", "System")]
    return round(sum(float(m.group(1)) for m in times if m), 2)


def load_average():
    return round(os.getloadavg()[0], 2)


def start_server(cmd, log):
    proc = timed(cmd, log)
    line = proc.stdout.readline()
    url = line.strip().removeprefix("listening on ")
    return proc, url


def stop(proc):
    """SIGTERM to the server under /usr/bin/time (time itself would die
    without reporting), then wait for time's report."""
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    for child in children:
        os.kill(child, signal.SIGTERM)
    proc.wait(timeout=60)


def status(url, context_id):
    body = json.dumps({"context_id": context_id, "target_agent_id": "b"}).encode()
    req = urllib.request.Request(url + "/avp/v2/chunk-status", data=body,
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=30))


def serve_cmd(avp, store):
    return [avp, "serve", "--listen", "127.0.0.1:0", "--quiet", "--store", store,
            "--memory-budget", str(1 << 30)]


def plain_run(args):
    """One plain KV message of --plain-mib MiB, send -> serve --store."""
    layers = max(1, args.plain_mib * (1 << 20) // LAYER)
    payload = bytearray(KV_HEADER.pack(layers, HEADS, HEAD_DIM, TOKENS, 1))
    for layer in range(layers):
        payload += layer_bytes(7, layer)
    meta = AVPMetadata(session_id="bench", source_agent_id="a", target_agent_id="b",
                       model_id="synthetic", num_layers=layers, payload_type=PayloadType.KV_CACHE,
                       dtype=DataType.FLOAT16)
    src = os.path.join(args.dir, "plain.avp")
    with open(src, "wb") as out:
        out.write(encode(bytes(payload), meta, CompressionLevel.NONE))
    del payload
    size = os.path.getsize(src)
    store = os.path.join(args.store_dir, "store-plain")
    server, url = start_server(serve_cmd(args.avp, store), os.path.join(args.dir, "plain-serve.time"))
    load_before = load_average()
    t0 = time.time()
    sender = timed([args.avp, "send", src, "--to", url], os.path.join(args.dir, "plain-send.time"))
    answer = json.loads(sender.communicate()[0])
    wall = time.time() - t0
    stop(server)
    logs = {role: os.path.join(args.dir, f"plain-{role}.time") for role in ("send", "serve")}
    run = {"run": "plain", "bytes": size, "load_before": load_before,
           "success": answer.get("success"), "stored_bytes": answer.get("bytes"),
           "wall_s": round(wall, 2), "GB_per_s": round(size / wall / 1e9, 3),
           "rss_send_MiB": round(peak_rss_mib(logs["send"]), 1),
           "rss_serve_MiB": round(peak_rss_mib(logs["serve"]), 1),
           "cpu_s_per_GB_send": round(cpu_s(logs["send"]) / (size / 1e9), 2),
           "cpu_s_per_GB_serve": round(cpu_s(logs["serve"]) / (size / 1e9), 2)}
    shutil.rmtree(store)
    os.remove(src)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--avp", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--gib", type=float, default=6.0)
    ap.add_argument("--store-dir", help="where the receivers' stores go (default: --dir), e.g. tmpfs "
                    "while the source file stays on the disk, in the page cache")
    ap.add_argument("--plain-mib", type=int, default=0,
                    help="also send one plain message of this many MiB (multiple of 32; 0: skip)")
    args = ap.parse_args()
    args.store_dir = args.store_dir or args.dir
    os.makedirs(args.dir, exist_ok=True)
    os.makedirs(args.store_dir, exist_ok=True)
    src = os.path.join(args.dir, "context.avp")
    results = {"gib": args.gib}
    try:
        t = time.time()
        num_layers, count, digest = write_chunked(src, args.gib)
        size = os.path.getsize(src)
        results.update(layers=num_layers, chunks=count, bytes=size, generate_s=round(time.time() - t, 1))
        context_id = digest[:32]
        print(json.dumps(results), flush=True)

        def one_run(name, via_route):
            store = os.path.join(args.store_dir, f"store-{name}")
            server, url = start_server(serve_cmd(args.avp, store), os.path.join(args.dir, f"{name}-serve.time"))
            router = None
            to = url
            if via_route:
                router, to = start_server([args.avp, "route", "--listen", "127.0.0.1:0", "--route", f"b={url}"],
                                          os.path.join(args.dir, f"{name}-route.time"))
            load_before = load_average()
            t0 = time.time()
            sender = timed([args.avp, "send", src, "--to", to], os.path.join(args.dir, f"{name}-send.time"))
            answer = json.loads(sender.communicate()[0])
            wall = time.time() - t0
            for p in (router, server):
                if p:
                    stop(p)
            stored = [f for f in os.listdir(store) if f.endswith(".avp")]
            ok, chunks = verify_stored(os.path.join(store, stored[0]), digest)
            logs = {role: os.path.join(args.dir, f"{name}-{role}.time") for role in ("send", "serve", "route")}
            run = {"run": name, "load_before": load_before,
                   "complete": answer.get("complete"), "sent_chunks": answer.get("sent_chunks"),
                   "wall_s": round(wall, 2), "GB_per_s": round(size / wall / 1e9, 3),
                   "digest_ok": ok, "stored_chunks": chunks,
                   "rss_send_MiB": round(peak_rss_mib(os.path.join(args.dir, f"{name}-send.time")), 1),
                   "rss_serve_MiB": round(peak_rss_mib(os.path.join(args.dir, f"{name}-serve.time")), 1)}
            # CPU seconds per GB of context: comparable on a busy machine, where wall time is not.
            run["cpu_s_per_GB_send"] = round(cpu_s(logs["send"]) / (size / 1e9), 2)
            run["cpu_s_per_GB_serve"] = round(cpu_s(logs["serve"]) / (size / 1e9), 2)
            if via_route:
                run["rss_route_MiB"] = round(peak_rss_mib(logs["route"]), 1)
                run["cpu_s_per_GB_route"] = round(cpu_s(logs["route"]) / (size / 1e9), 2)
            shutil.rmtree(store)
            print(json.dumps(run), flush=True)
            return run

        results["direct"] = one_run("direct", False)
        results["route"] = one_run("route", True)

        # kill -9 at 50 %, restart, resume.
        store = os.path.join(args.store_dir, "store-resume")
        server = subprocess.Popen(serve_cmd(args.avp, store), stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().strip().removeprefix("listening on ")
        sender = subprocess.Popen([args.avp, "send", src, "--to", url, "--retries", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while True:
            held = status(url, context_id)["held"]
            if len(held) * 2 >= count:
                break
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        sender.communicate()
        server, url = start_server(serve_cmd(args.avp, store), os.path.join(args.dir, "resume-serve.time"))
        recovered = len(status(url, context_id)["held"])
        t0 = time.time()
        answer = json.loads(subprocess.run([args.avp, "send", src, "--to", url], capture_output=True,
                                           text=True).stdout)
        wall = time.time() - t0
        stop(server)
        stored = [f for f in os.listdir(store) if f.endswith(".avp")]
        ok, _ = verify_stored(os.path.join(store, stored[0]), digest)
        results["resume"] = {"held_at_kill": len(held), "held_after_restart": recovered,
                             "sent_chunks": answer.get("sent_chunks"),
                             "skipped_chunks": answer.get("skipped_chunks"), "resume_wall_s": round(wall, 2),
                             "digest_ok": ok}
        print(json.dumps(results["resume"]), flush=True)
        if args.plain_mib:
            results["plain"] = plain_run(args)
            print(json.dumps(results["plain"]), flush=True)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
        for name in ("plain", "direct", "route", "resume"):
            shutil.rmtree(os.path.join(args.store_dir, f"store-{name}"), ignore_errors=True)
        if args.store_dir != args.dir:
            try:
                os.rmdir(args.store_dir)
            except OSError:
                pass
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
