#!/usr/bin/env python3
"""Differential test: our decoder (`avp decode --json`) against the Python SDK's `codec.decode`.

Usage:
  .venv/bin/python scripts/differential_sdk.py [--avp target/debug/avp] [--random N] [--seed S]
                                               [--corpus DIR ...] [--json OUT.json]

Inputs: every file under the given corpus dirs (default: codec/tests/fuzz_seeds/decode,
fuzz/corpus/decode and fuzz/artifacts/* when present, i.e. fuzzer-found inputs) plus N random
mutations of the golden wire vectors (bit flips, byte edits, truncation, header field rewrites;
deterministic for a given --seed). Each input goes to both decoders; every disagreement is
listed and grouped:

  accept/reject  one side decodes, the other raises;
  kind           both reject, with different error kinds (the SDK exception mapped by AVP-ERR-3);
  fields         both decode, and a decoded field differs (header, metadata, payload digest);
  sdk_crash      the SDK raised an exception outside its documented set (AVP-ERR-3 divergence).

Each group is then labelled with the spec rule that explains it when there is one (a documented
divergence, see FUZZING.md "Differential"), so what remains unexplained is a bug to fix on one
side. Exit status 0 always (it reports); `--fail-unexplained` makes unexplained groups fail.
Inputs whose zstd frame declares more than 256 MiB are not given to the SDK (it would expand
them: spec/protocol/limits.md AVP-LIM-10) and are counted as skipped.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "conformance", "gen"))

import gen_wire  # noqa: E402  (the SDK view and AVP-ERR-3 mapping the vectors use)

SDK_EXPAND_CAP = 256 << 20


def ours(avp, data, tmp):
    with open(tmp, "wb") as f:
        f.write(data)
    p = subprocess.run([avp, "decode", "--json", tmp], capture_output=True, timeout=60)
    if p.returncode not in (0, 1):
        return "crash", {"rc": p.returncode, "stderr": p.stderr.decode(errors="replace")[-400:]}
    v = json.loads(p.stdout)
    if "error" in v:
        return "rejected", v["error"]["kind"]
    return "accepted", v


def zstd_declared(data):
    """Content size the zstd frame of a compressed message declares, if readable."""
    if len(data) < 12 or data[:2] != b"AV" or not data[3] & 1:
        return None
    pl, ml = struct.unpack_from("<II", data, 4)
    frame = data[12 + ml:12 + pl]
    try:
        import zstandard
        return zstandard.frame_content_size(frame)
    except Exception:  # noqa: BLE001
        return None


def sdk(data):
    declared = zstd_declared(data)
    if declared is not None and declared > SDK_EXPAND_CAP:
        return "skipped", declared
    try:
        return "accepted", gen_wire.sdk_view(data)
    except BaseException as e:  # noqa: BLE001 - we want to see everything the SDK raises
        try:
            return "rejected", gen_wire.error_kind(e)
        except AssertionError:
            return "sdk_crash", f"{type(e).__name__}: {str(e)[:120]}"


def compare_fields(o, s):
    """Fields that differ between our JSON and the SDK view (kv and warnings excluded)."""
    diffs = []
    for section in ("header", "metadata", "payload"):
        for k, sv in s[section].items():
            ov = o[section].get(k)
            if section == "metadata" and k == "compression":
                # Ours reports what the header flag did (the SDK decides by the flag too,
                # AVP-WIRE-16); the SDK view shows the metadata string.
                continue
            if ov != sv:
                diffs.append(f"{section}.{k}")
    return diffs


def lengths(data):
    if len(data) < 12:
        return None, None
    return struct.unpack_from("<II", data, 4)


def explain(group, ours_detail, sdk_detail, data):
    """The spec rule or recorded SDK defect that accounts for a disagreement on `data`, or None."""
    pl, ml = lengths(data)
    if ours_detail == "limit_exceeded":
        return "AVP-LIM-* (our decoder limits, checked first; the SDK has none)"
    if group == "sdk_crash":
        return "AVP-ERR-3 divergence (SDK lets foreign exceptions escape)"
    if ours_detail == "truncated" and ml is not None and ml > pl:
        return "AVP-WIRE-7 divergence (metadata_length > payload_length: the SDK parses past the payload)"
    if group == "kind" and sdk_detail == "truncated" and pl is not None and len(data) < 12 + pl:
        return "AVP-WIRE-24 order (input also cut short; the SDK checks truncation before the metadata)"
    if group == "kind" and ours_detail == "unknown_enum" and sdk_detail in (
            "checksum_mismatch", "decompression"):
        return "AVP-WIRE-24 order (two faults; the SDK checks enums after checksum and decompression)"
    if ours_detail == "decompression" and zstd_declared(data) == 0:
        return ("SDK defect: a zstd frame declaring 0 bytes is never decoded by the SDK "
                "(python-zstandard returns b'' early), so corrupt frames pass "
                "(vector wire/zstd/zstd-zero-size-corrupt-frame, AVP-WIRE-17)")
    return None


def mutate(rng, base):
    b = bytearray(base)
    op = rng.randrange(7)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    elif op == 2:
        b = b[:rng.randrange(len(b) + 1)]
    elif op == 3:
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 4 and len(b) >= 12:
        # rewrite a header length by a small delta
        off = rng.choice((4, 8))
        v = struct.unpack_from("<I", b, off)[0]
        struct.pack_into("<I", b, off, max(0, min(0xFFFFFFFF, v + rng.randint(-8, 8))))
    elif op == 5 and len(b) > 12:
        # mutate inside the metadata only
        ml = struct.unpack_from("<I", b, 8)[0]
        hi = min(len(b), 12 + ml)
        if hi > 12:
            i = rng.randrange(12, hi)
            b[i] = rng.randrange(256)
    elif op == 6 and len(b) >= 4:
        b[3] = rng.randrange(256)
    return bytes(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--avp", default=os.path.join(ROOT, "target", "debug", "avp"))
    ap.add_argument("--random", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--json")
    ap.add_argument("--fail-unexplained", action="store_true")
    args = ap.parse_args()

    corpora = args.corpus or [os.path.join(ROOT, "codec/tests/fuzz_seeds/decode"),
                              os.path.join(ROOT, "fuzz/corpus/decode"),
                              os.path.join(ROOT, "fuzz/corpus/roundtrip"),
                              os.path.join(ROOT, "fuzz/artifacts")]
    inputs = []
    for c in corpora:
        for dirpath, _, names in os.walk(c):
            for n in sorted(names):
                with open(os.path.join(dirpath, n), "rb") as f:
                    inputs.append((f"corpus:{os.path.relpath(os.path.join(dirpath, n), ROOT)}",
                                   f.read()))
    rng = random.Random(args.seed)
    bindir = os.path.join(ROOT, "conformance/vectors/wire/bin")
    bases = [open(os.path.join(bindir, n), "rb").read() for n in sorted(os.listdir(bindir))]
    bases = [b for b in bases if len(b) < 100_000]
    for i in range(args.random):
        inputs.append((f"random:{args.seed}:{i}", mutate(rng, rng.choice(bases))))

    tmp = os.path.join("/tmp", f"avp-diff-{os.getpid()}.avp")
    groups = collections.defaultdict(list)
    counts = collections.Counter()
    seen = set()
    for name, data in inputs:
        h = hashlib.sha1(data).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        o, od = ours(args.avp, data, tmp)
        s, sd = sdk(data)
        counts[f"ours {o} / sdk {s}"] += 1
        if s == "skipped":
            continue
        if o == "crash":
            key = ("our_crash", json.dumps(od)[:80], "")
        elif s == "sdk_crash":
            key = ("sdk_crash", o if o == "accepted" else od, sd.split(":")[0])
        elif o != s:
            key = ("accept/reject", od if o == "rejected" else "accepted",
                   sd if s == "rejected" else "accepted")
        elif o == "rejected" and od != sd:
            key = ("kind", od, sd)
        elif o == "accepted" and compare_fields(od, sd):
            key = ("fields", ",".join(compare_fields(od, sd)), "")
        else:
            continue
        groups[key + (explain(key[0], key[1], key[2], data),)].append(name)
    os.unlink(tmp) if os.path.exists(tmp) else None

    print(f"inputs: {len(seen)} distinct ({len(inputs)} given)")
    for k, v in sorted(counts.items()):
        print(f"  {k}: {v}")
    print("disagreements (group | ours | sdk | count | explanation | examples):")
    report, unexplained = [], 0
    for (group, od, sd, why), names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        unexplained += why is None
        print(f"  {group} | {od} | {sd} | {len(names)} | {why or 'UNEXPLAINED'} | "
              f"{', '.join(names[:3])}")
        report.append({"group": group, "ours": od, "sdk": sd, "count": len(names),
                       "explanation": why, "examples": names[:10]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "disagreements": report}, f, indent=1)
    if args.fail_unexplained and unexplained:
        sys.exit(1)


if __name__ == "__main__":
    main()
