#!/usr/bin/env python3
"""Compare two fixture trees (the committed one and a fresh gen_models.py run).

Usage:  .venv/bin/python engine/testdata/compare_fixtures.py COMMITTED_DIR FRESH_DIR [--spread]

Looks at models/ and expected/ only. Every file must exist on both sides. Byte-identical files
pass. Otherwise each file is compared by what it is (engine/testdata/README.md, "Tolerances"):
  models/**      byte-identical (weights, tokenizers, configs, templates);
  *.avp          parsed as AVP messages: header fields exact except the two lengths that follow
                 the checksum's varint width; every metadata field exact except
                 `payload_checksum`, which must equal the CRC-32 of the payload it covers (on each
                 side); then by `payload_type`: KV_CACHE = 17-byte inner header exact + floats of
                 the header's dtype, HIDDEN_STATE = floats of the metadata's dtype, anything else
                 byte-identical;
  *.safetensors  same keys, dtypes and shapes; integers exact; floats within tolerance;
  *.json         same structure, strings/ints/token ids exact, floats within tolerance; a
                 `*_layout` object is checked against the .avp file it describes, on each side.
Floats are compared as a norm ratio over the whole tensor, ||a - b||_2 / ||b||_2, with NaN
exactly where the other side has NaN; the bound depends on the precision the values were
computed in (TOLERANCE). `--spread` prints the largest measured ratio per precision class, the
numbers the tolerances are derived from. Exits 1 on any mismatch and prints how many files only
matched within tolerance (so a non-bit-deterministic run is visible, not hidden).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

# Norm-ratio bounds per precision class, derived in engine/testdata/README.md ("Tolerances"):
# float32 from the spread measured between CPU capabilities (default, avx2, avx512, MKL/oneDNN
# limited to AVX2) with a margin of ~20x; half precision from the distance between the SDK's
# half-precision run and its float32 run (two runs on different CPUs are each about that far
# from the float32 result, so they may be twice that far apart), with a margin on top. The
# "hidden" classes are final hidden states after latent steps, where rounding compounds.
TOLERANCE = {
    "float32": 1e-4,
    "float16": 5e-3,
    "float16 hidden": 5e-3,
    "bfloat16": 3e-2,
    "bfloat16 hidden": 1e-1,
}
EXACT_ONLY = ("models/",)
HEADER_LEN = 12
KV_HEADER_LEN = 17
PAYLOAD_HIDDEN_STATE, PAYLOAD_KV_CACHE = 0, 1  # the protobuf PayloadType enum
_KV_DTYPE = {0: "float32", 1: "float16", 2: "bfloat16"}
# codec DataType enum (the metadata's `dtype`): float32, float16, bfloat16.
_META_DTYPE = {0: "float32", 1: "float16", 2: "bfloat16"}

# Largest ratio seen per class in this run (for --spread).
SPREAD: dict[str, float] = defaultdict(float)


def _floats(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":  # widen exactly: the 16 bits are the top half of a float32
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, np.dtype(dtype))


def norm_ratio(a: np.ndarray, b: np.ndarray) -> float | str:
    """||a - b|| / ||b|| in float64, or a string saying why the two cannot be compared."""
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if not np.array_equal(nan_a, nan_b):
        return "NaN positions differ"
    a64, b64 = a64[~nan_a], b64[~nan_b]
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))):
        return "infinite values" if not np.array_equal(a64, b64) else 0.0
    denom = float(np.linalg.norm(b64))
    diff = float(np.linalg.norm(a64 - b64))
    if denom == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / denom


def floats_close(a: np.ndarray, b: np.ndarray, cls: str, what: str) -> str | None:
    r = norm_ratio(a, b)
    if isinstance(r, str):
        return f"{what}: {r}"
    SPREAD[cls] = max(SPREAD[cls], r)
    tol = TOLERANCE[cls]
    return None if r <= tol else f"{what}: norm ratio {r:.3e} > {tol:.0e} ({cls})"


# ---------------------------------------------------------------------------------------------
# AVP messages
# ---------------------------------------------------------------------------------------------

def parse_avp(data: bytes):
    """(header fields, metadata, payload) of one message; raises ValueError if malformed."""
    from avp.avp_pb2 import Metadata  # the SDK's protobuf schema: every field, by name
    from avp.codec import decode  # the SDK's codec: checks magic, version and lengths

    decode(data)
    magic, version, flags, payload_len, meta_len = struct.unpack("<2sBBII", data[:HEADER_LEN])
    if HEADER_LEN + payload_len != len(data) or meta_len > payload_len:
        raise ValueError("lengths disagree with the header")
    meta = Metadata.FromString(data[HEADER_LEN:HEADER_LEN + meta_len])
    return (magic, version, flags), meta, data[HEADER_LEN + meta_len:]


def layout_of(data: bytes) -> dict:
    """What gen_models.py's wire_layout() records, recomputed from the bytes."""
    meta_len = int.from_bytes(data[8:12], "little")
    return {
        "header_bytes": HEADER_LEN,
        "metadata_offset": HEADER_LEN,
        "metadata_len": meta_len,
        "payload_offset": HEADER_LEN + meta_len,
        "payload_len": len(data) - HEADER_LEN - meta_len,
        "total_len": len(data),
    }


def cmp_avp(a: Path, b: Path) -> str | None:
    try:
        (ha, ma, pa), (hb, mb, pb) = parse_avp(a.read_bytes()), parse_avp(b.read_bytes())
    except Exception as e:  # noqa: BLE001 - any decode failure is a mismatch worth reporting
        return f"not a valid AVP message: {e}"
    if ha != hb:
        return f"header differs: {ha} vs {hb}"
    for side, meta, payload in (("committed", ma, pa), ("fresh", mb, pb)):
        if meta.payload_checksum != zlib.crc32(payload):
            return f"{side}: payload_checksum does not cover its payload"
    for field in ma.DESCRIPTOR.fields:
        if field.name == "payload_checksum":
            continue
        va, vb = getattr(ma, field.name), getattr(mb, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            va, vb = dict(va), dict(vb)
        if va != vb:
            return f"metadata.{field.name}: {va!r} vs {vb!r}"
    if len(pa) != len(pb):
        return f"payload length {len(pa)} vs {len(pb)}"
    if ma.payload_type == PAYLOAD_KV_CACHE:
        if pa[:KV_HEADER_LEN] != pb[:KV_HEADER_LEN]:
            return "KV inner header differs"
        dtype_byte = struct.unpack("<IIIIB", pa[:KV_HEADER_LEN])[4]
        if dtype_byte not in _KV_DTYPE:
            return f"unknown KV dtype byte {dtype_byte}"
        cls = _KV_DTYPE[dtype_byte]
        return floats_close(_floats(pa[KV_HEADER_LEN:], cls), _floats(pb[KV_HEADER_LEN:], cls),
                            cls, "KV payload")
    if ma.payload_type == PAYLOAD_HIDDEN_STATE:
        cls = _META_DTYPE.get(ma.dtype)
        if cls is None:
            return f"unknown dtype {ma.dtype}"
        return floats_close(_floats(pa, cls), _floats(pb, cls), cls, "hidden state")
    return None if pa == pb else "payload differs"


# ---------------------------------------------------------------------------------------------
# safetensors and JSON
# ---------------------------------------------------------------------------------------------

def array_class(key: str, expected: dict) -> str:
    """Precision class of an array in arrays.safetensors (all stored as float32)."""
    if key.startswith("native."):  # think_native_dtype: computed in the checkpoint's dtype
        return f'{expected.get("checkpoint_dtype", "float32")} hidden'
    return "float32"


def cmp_safetensors(a: Path, b: Path, expected: dict) -> str | None:
    ta, tb = load_file(str(a)), load_file(str(b))
    if sorted(ta) != sorted(tb):
        return f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for k in sorted(ta):
        x, y = ta[k], tb[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"tensor {k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if x.dtype.kind in "iub":
            if not np.array_equal(x, y):
                return f"tensor {k}: integers differ"
            continue
        err = floats_close(x, y, array_class(k, expected), f"tensor {k}")
        if err:
            return err
    return None


def json_close(x, y, dirs: tuple[Path, Path], path="$") -> str | None:
    if isinstance(x, float) or isinstance(y, float):
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return f"{path}: {x!r} vs {y!r}"
        # Scalars are float32 results (norms, margins rounded to 6 decimals): the float32 bound,
        # relative to max(|y|, 1) so that a rounded margin near 0 is not judged by its last digit.
        r = abs(x - y) / max(abs(y), 1.0)
        SPREAD["float32"] = max(SPREAD["float32"], r)
        tol = TOLERANCE["float32"]
        return None if r <= tol else f"{path}: {x} vs {y}"
    if type(x) is not type(y):
        return f"{path}: type {type(x).__name__} vs {type(y).__name__}"
    if isinstance(x, dict):
        if sorted(x) != sorted(y):
            return f"{path}: keys differ"
        for k in x:
            if k.endswith("_layout") and isinstance(x.get(k[: -len("_layout")]), str):
                # The checksum's varint width moves metadata_len by a byte when any payload bit
                # differs; what must hold is that each layout describes its own file.
                file_key = k[: -len("_layout")]
                for d, obj in zip(dirs, (x, y)):
                    f = d / obj[file_key]
                    if not f.is_file() or layout_of(f.read_bytes()) != obj[k]:
                        return f"{path}.{k}: does not describe {f}"
                if x[k]["payload_len"] != y[k]["payload_len"]:
                    return f"{path}.{k}.payload_len differs"
                continue
            err = json_close(x[k], y[k], dirs, f"{path}.{k}")
            if err:
                return err
        return None
    if isinstance(x, list):
        if len(x) != len(y):
            return f"{path}: length {len(x)} vs {len(y)}"
        for i, (u, v) in enumerate(zip(x, y)):
            err = json_close(u, v, dirs, f"{path}[{i}]")
            if err:
                return err
        return None
    return None if x == y else f"{path}: {x!r} vs {y!r}"


def compare_file(left: Path, right: Path, rel: str) -> str | None:
    a, b = left / rel, right / rel
    if rel.startswith(EXACT_ONLY):
        return "differs (must be byte-identical)"
    if rel.endswith(".avp"):
        return cmp_avp(a, b)
    if rel.endswith(".safetensors"):
        exp = a.parent / "expected.json"
        expected = json.loads(exp.read_text()) if exp.is_file() else {}
        return cmp_safetensors(a, b, expected)
    if rel.endswith(".json"):
        return json_close(json.loads(a.read_text()), json.loads(b.read_text()),
                          (a.parent, b.parent))
    return "differs"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    spread = "--spread" in sys.argv[1:]
    left, right = Path(args[0]), Path(args[1])

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for sub in ("models", "expected")
                for p in (root / sub).rglob("*") if p.is_file()}

    fl, fr = files(left), files(right)
    failures = [f"only in {left}: {f}" for f in sorted(fl - fr)]
    failures += [f"only in {right}: {f}" for f in sorted(fr - fl)]
    within_tol = []
    for rel in sorted(fl & fr):
        if (left / rel).read_bytes() == (right / rel).read_bytes():
            continue
        err = compare_file(left, right, rel)
        if err:
            failures.append(f"{rel}: {err}")
        else:
            within_tol.append(rel)
    for f in failures:
        print("MISMATCH", f)
    if within_tol and not spread:
        print(f"{len(within_tol)} file(s) not bit-identical but within tolerance:")
        for f in within_tol:
            print("  ~", f)
    if spread:
        for cls in TOLERANCE:
            print(f"spread {cls:9} {SPREAD.get(cls, 0.0):.3e}  (tolerance {TOLERANCE[cls]:.0e})")
    total = len(fl | fr)
    print(f"compared {total} files: {total - len(failures) - len(within_tol)} identical, "
          f"{len(within_tol)} within tolerance, {len(failures)} mismatched")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
