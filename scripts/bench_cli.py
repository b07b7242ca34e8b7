#!/usr/bin/env python3
"""Whole-process `avp` against the SDK, side by side in ONE run (issue 14, AVP-CLI-4/8).

Usage: .venv/bin/python scripts/bench_cli.py [--mib 256] [--repeats 5] [--huge-gib 5] [--no-build]

Every number is a whole process, start-up included, timed from here (best of --repeats wall
times, /usr/bin/time's 1 ms start-up included; peak RSS from /usr/bin/time -f %M):

1. builds `avp` and `avp-engine` in release with the engine feature (so libtorch is installed
   beside `avp`, as `cargo install --path cli --features engine` leaves it);
2. makes a ~--mib MiB f16 KV-cache message and a 3.6 KiB hidden-state message with the SDK
   (the same recipe as bench_codec_vs_sdk.py);
3. SDK: `python -c "codec.decode(open(F,'rb').read())"` on each file;
4. avp: `avp decode --json F` on each file, `avp inspect` on the big one, `avp --help`,
   `avp decode --json /dev/zero`, the big message followed by zeros up to --huge-gib GiB
   through a pipe, the idle RSS of `avp route` and, for contrast, of `avp-engine --help`.
"""

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVP = os.path.join(ROOT, "target/release/avp")
ENGINE = os.path.join(ROOT, "target/release/avp-engine")


def load_builder():
    spec = importlib.util.spec_from_file_location("bench_codec", os.path.join(ROOT, "scripts/bench_codec_vs_sdk.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_messages


def run_once(argv, stdin=subprocess.DEVNULL, feed=None):
    """(wall seconds, peak RSS KiB, returncode, stdout bytes) of one child process.

    Peak RSS comes from /usr/bin/time -f %M, which forks from a small process: this
    interpreter holds ~1 GiB (torch, the SDK), and a child forked from it counts that
    copy in its own ru_maxrss until it execs."""
    with tempfile.NamedTemporaryFile("r") as rss_file:
        t = time.perf_counter()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file.name] + argv,
                             stdin=subprocess.PIPE if feed else stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        writer = None
        if feed:
            writer = threading.Thread(target=feed, args=(p.stdin,))
            writer.start()
        out = p.stdout.read()
        p.wait()
        wall = time.perf_counter() - t
        if writer:
            writer.join()
        rss = int(rss_file.read().split()[-1])
    return wall, rss, p.returncode, out


def best(argv, repeats, **kw):
    runs = [run_once(argv, **kw) for _ in range(repeats)]
    for r in runs:
        assert r[2] in (0,), (argv, r[2], r[3][:300])
    return min(r[0] for r in runs), max(r[1] for r in runs)


def idle_rss_kib(argv, settle=0.5):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = p.stdout.readline()
        assert "listening on" in line, line
        time.sleep(settle)
        with open(f"/proc/{p.pid}/status") as f:
            status = f.read()
        with open(f"/proc/{p.pid}/maps") as f:
            torch = "libtorch" in f.read()
        rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
        return rss, torch
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--huge-gib", type=float, default=5.0)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    if not args.no_build:
        print("building avp and avp-engine (release, engine feature) ...", flush=True)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "avp-cli", "--features", "engine"],
                       cwd=ROOT, check=True)
    assert os.path.exists(ENGINE), "avp-engine missing: the numbers must be those of an engine build"

    from avp import codec  # after the build: the import itself is not what we time

    kv, meta, small_tensor, small_meta = load_builder()(args.mib)
    big = codec.encode(kv, meta)
    small = codec.encode(small_tensor, small_meta)
    del kv
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if l.startswith("Model name")), platform.processor())
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU {cpu}; {os.cpu_count()} cores; "
          f"command: .venv/bin/python scripts/bench_cli.py --mib {args.mib} --repeats {args.repeats} "
          f"--huge-gib {args.huge_gib}")
    with tempfile.TemporaryDirectory() as tmp:
        big_path, small_path = os.path.join(tmp, "big.avp"), os.path.join(tmp, "small.avp")
        with open(big_path, "wb") as f:
            f.write(big)
        with open(small_path, "wb") as f:
            f.write(small)
        n_big = len(big)
        del big
        sdk = [sys.executable, "-c", "import sys; from avp import codec; codec.decode(open(sys.argv[1], 'rb').read())"]
        rows = []
        sdk_big = best(sdk + [big_path], args.repeats)
        avp_big = best([AVP, "decode", "--json", big_path], args.repeats)
        rows.append((f"decode --json, {n_big / 2**20:.0f} MiB KV", sdk_big, avp_big, "≥3× the SDK, ≤64 MiB"))
        sdk_small = best(sdk + [small_path], args.repeats)
        avp_small = best([AVP, "decode", "--json", small_path], args.repeats)
        rows.append((f"decode --json, {len(small) / 1024:.1f} KiB", sdk_small, avp_small, "≤20 ms, ≤16 MiB"))
        rows.append(("inspect, big", None, best([AVP, "inspect", big_path], max(1, args.repeats // 2)), "≤64 MiB"))
        rows.append(("avp --help", None, best([AVP, "--help"], args.repeats), "(was 0.5 s, 490 MB)"))
        rows.append(("avp-engine --help (libtorch)", None, best([ENGINE, "--help"], args.repeats), "(contrast)"))
        wall, rss, rc, out = run_once([AVP, "decode", "--json", "/dev/zero"])
        assert rc == 1 and b"bad_magic" in out, out
        rows.append(("decode --json /dev/zero → bad_magic", None, (wall, rss), "at once"))

        huge = int(args.huge_gib * 2**30)

        def feed(pipe):
            chunk = bytes(1 << 20)
            sent = 0
            try:
                with open(big_path, "rb") as f:
                    while block := f.read(1 << 20):
                        pipe.write(block)
                        sent += len(block)
                while sent < huge:
                    k = min(len(chunk), huge - sent)
                    pipe.write(chunk[:k])
                    sent += k
            finally:
                pipe.close()

        wall, rss, rc, out = run_once([AVP, "decode", "--json", "-"], feed=feed)
        assert rc == 0 and b"trailing_bytes" in out, out[:300]
        rows.append((f"decode --json - ({args.huge_gib:g} GiB through a pipe)", None, (wall, rss), "≤64 MiB"))

    route_rss, route_torch = idle_rss_kib([AVP, "route", "--listen", "127.0.0.1:0", "--route", "b=http://127.0.0.1:9"])

    print()
    print("| whole process | SDK wall / peak RSS | avp wall / peak RSS | avp vs SDK | target |")
    print("|---|---|---|---|---|")
    for name, s, a, target in rows:
        sdk_cell = f"{s[0] * 1e3:.1f} ms / {s[1] / 1024:.1f} MiB" if s else "–"
        ratio = f"{s[0] / a[0]:.1f}×" if s else ""
        print(f"| {name} | {sdk_cell} | {a[0] * 1e3:.1f} ms / {a[1] / 1024:.1f} MiB | {ratio} | {target} |")
    print(f"| avp route, idle RSS | – | {route_rss / 1024:.1f} MiB, libtorch mapped: {route_torch} | | <16 MiB |")


if __name__ == "__main__":
    sys.exit(main())
