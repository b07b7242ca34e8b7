#!/usr/bin/env python3
"""Compare two fixture trees (the committed one and a fresh gen_models.py run).

Usage:  .venv/bin/python engine/testdata/compare_fixtures.py COMMITTED_DIR FRESH_DIR

Looks at models/ and expected/ only. Every file must exist on both sides. Byte-identical files
pass. A file that differs passes only if it is a float container that agrees within tolerance:
  *.safetensors  same keys, dtypes and shapes; floats within REL_TOL (relative to the tensor's
                 largest magnitude), NaN exactly where the other side has NaN; integers exact;
  *.avp          same 12-byte header and metadata; KV payload floats within REL_TOL;
  *.json         same structure; floats within REL_TOL, everything else exact.
Model weights, tokenizers, configs and templates must be byte-identical. Exits 1 on any
mismatch and prints how many files only matched within tolerance (so a non-bit-deterministic
SDK run is visible, not hidden).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

# The Rust tests' own tolerance: loose enough for another CPU's SIMD paths, far tighter than any
# change in what the SDK computes.
REL_TOL = 1e-4
EXACT_ONLY = ("models/",)


def rel_close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "iub":
        return bool(np.array_equal(a, b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if not np.array_equal(nan_a, nan_b):
        return False
    a64, b64 = np.where(nan_a, 0, a64), np.where(nan_b, 0, b64)
    scale = max(float(np.max(np.abs(b64), initial=0.0)), 1e-6)
    return float(np.max(np.abs(a64 - b64), initial=0.0)) <= REL_TOL * scale


def cmp_safetensors(a: Path, b: Path) -> str | None:
    ta, tb = load_file(str(a)), load_file(str(b))
    if sorted(ta) != sorted(tb):
        return f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for k in ta:
        if not rel_close(ta[k], tb[k]):
            return f"tensor {k} differs beyond {REL_TOL}"
    return None


_KV_DTYPES = {0: np.float32, 1: np.float16}


def cmp_avp(a: Path, b: Path) -> str | None:
    da, db = a.read_bytes(), b.read_bytes()
    meta_len = int.from_bytes(da[8:12], "little")
    if da[:12 + meta_len] != db[:12 + meta_len] or len(da) != len(db):
        # The checksum lives in the metadata, so different payload bytes show up here too;
        # compare the metadata without it, then the payloads numerically.
        from avp.codec import decode

        ma, mb = decode(da).metadata, decode(db).metadata
        ma.payload_checksum = mb.payload_checksum = 0
        if ma != mb or len(da) != len(db):
            return "header/metadata differ"
    pa, pb = da[12 + meta_len:], db[12 + meta_len:]
    if pa[:17] != pb[:17]:
        return "KV inner header differs"
    dtype_byte = struct.unpack("<IIIIB", pa[:17])[4]
    if dtype_byte == 2:  # bfloat16: widen to float32 by shifting the 16 bits up
        fa = (np.frombuffer(pa[17:], np.uint16).astype(np.uint32) << 16).view(np.float32)
        fb = (np.frombuffer(pb[17:], np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        fa = np.frombuffer(pa[17:], _KV_DTYPES[dtype_byte])
        fb = np.frombuffer(pb[17:], _KV_DTYPES[dtype_byte])
    return None if rel_close(fa, fb) else f"KV payload differs beyond {REL_TOL}"


def json_close(x, y, path="$") -> str | None:
    if isinstance(x, float) or isinstance(y, float):
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return f"{path}: {x!r} vs {y!r}"
        # Absolute floor of REL_TOL: margins are rounded to 6 decimals, norms are O(1).
        return None if abs(x - y) <= REL_TOL * max(abs(y), 1.0) else f"{path}: {x} vs {y}"
    if type(x) is not type(y):
        return f"{path}: type {type(x).__name__} vs {type(y).__name__}"
    if isinstance(x, dict):
        if sorted(x) != sorted(y):
            return f"{path}: keys differ"
        for k in x:
            err = json_close(x[k], y[k], f"{path}.{k}")
            if err:
                return err
        return None
    if isinstance(x, list):
        if len(x) != len(y):
            return f"{path}: length {len(x)} vs {len(y)}"
        for i, (u, v) in enumerate(zip(x, y)):
            err = json_close(u, v, f"{path}[{i}]")
            if err:
                return err
        return None
    return None if x == y else f"{path}: {x!r} vs {y!r}"


def main() -> int:
    left, right = Path(sys.argv[1]), Path(sys.argv[2])
    files = lambda root: {  # noqa: E731
        str(p.relative_to(root)) for sub in ("models", "expected")
        for p in (root / sub).rglob("*") if p.is_file()
    }
    fl, fr = files(left), files(right)
    failures = [f"only in {left}: {f}" for f in sorted(fl - fr)]
    failures += [f"only in {right}: {f}" for f in sorted(fr - fl)]
    within_tol = []
    for rel in sorted(fl & fr):
        a, b = left / rel, right / rel
        if a.read_bytes() == b.read_bytes():
            continue
        if rel.startswith(EXACT_ONLY):
            failures.append(f"{rel}: differs (must be byte-identical)")
            continue
        if rel.endswith(".safetensors"):
            err = cmp_safetensors(a, b)
        elif rel.endswith(".avp"):
            err = cmp_avp(a, b)
        elif rel.endswith(".json"):
            err = json_close(json.loads(a.read_text()), json.loads(b.read_text()))
        else:
            err = "differs"
        if err:
            failures.append(f"{rel}: {err}")
        else:
            within_tol.append(rel)
    for f in failures:
        print("MISMATCH", f)
    if within_tol:
        print(f"{len(within_tol)} file(s) not bit-identical but within rel. tolerance {REL_TOL}:")
        for f in within_tol:
            print("  ~", f)
    total = len(fl | fr)
    print(f"compared {total} files: {total - len(failures) - len(within_tol)} identical, "
          f"{len(within_tol)} within tolerance, {len(failures)} mismatched")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
