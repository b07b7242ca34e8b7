#!/usr/bin/env python3
"""Runs the avp SDK 0.6.2's own test suite with ``avp_rs.install()`` active.

Downloads the avp==0.6.2 sdist from PyPI once (pinned by SHA-256, cached),
runs the test files that exercise what ``install()`` replaces, and compares
the outcomes with expectations.json (test id -> why we differ on purpose):
an unexpected failure fails the run, and so does a stale expectation (an
entry whose test now passes or no longer exists).

    .venv/bin/python python/sdk_tests/run.py            # with install()
    .venv/bin/python python/sdk_tests/run.py --baseline # the SDK alone

Exit status: 0 as expected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDIST = "avp-0.6.2.tar.gz"
SDIST_SHA256 = "179a4b2a4598940561a243f06a909ab8da771ac4faa8aff50f52bd672fa257a3"
# The SDK test files that exercise the codec, compression, KV cache, hashing,
# handshake, errors, JSON fallback, and the SDK code built on them (transport,
# session, context store, types, contexts, connectors, rosetta). All of them
# pass with the SDK alone (`--baseline`); none needs a network or a GPU.
TEST_FILES = [
    "test_codec.py",
    "test_codec_v2.py",
    "test_compression.py",
    "test_kv_cache.py",
    "test_spec_vectors.py",
    "test_handshake.py",
    "test_errors.py",
    "test_fallback.py",
    "test_transport.py",
    "test_types.py",
    "test_session.py",
    "test_context_store.py",
    # Code built on the replaced functions: AVPContext.to_bytes/from_bytes,
    # inspect(), connectors and rosetta computing model hashes.
    "test_high_level_api.py",
    "test_integration.py",
    "test_latent_primitives.py",
    "test_debug.py",
    "test_easy.py",
    "test_connectors.py",
    "test_ollama_connector.py",
    "test_rosetta.py",
]


def cache_dir() -> Path:
    # Under the (git-ignored) venv by default, so CI reuses it between runs.
    default = HERE.parent.parent / ".venv" / "avp-sdk-cache"
    return Path(os.environ.get("AVP_SDK_CACHE", default))


def sdist_tests() -> Path:
    cache = cache_dir()
    tests = cache / "avp-0.6.2" / "tests"
    if tests.is_dir():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / SDIST
    if not archive.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "avp==0.6.2", "-d", str(cache)],
            check=True,
        )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        archive.unlink()
        sys.exit(f"{SDIST}: sha256 {digest}, expected {SDIST_SHA256}; deleted, rerun to fetch again")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("avp-0.6.2/tests/")]
        tar.extractall(cache, members=members, filter="data")
    return tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", action="store_true", help="run the SDK alone, without install()")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    tests = sdist_tests()
    expectations = json.loads((HERE / "expectations.json").read_text())["expected_failures"]
    with tempfile.TemporaryDirectory() as tmp:
        outcomes_path = Path(tmp) / "outcomes.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        env["AVP_RS_SDK_OUTCOMES"] = str(outcomes_path)
        env["AVP_RS_SDK_BASELINE"] = "1" if args.baseline else "0"
        cmd = [sys.executable, "-m", "pytest", "-p", "avp_rs_sdk_plugin", "-p", "no:cacheprovider",
               "-q" if not args.verbose else "-v", "-rfE", *TEST_FILES]
        subprocess.run(cmd, cwd=tests, env=env)
        if not outcomes_path.is_file():
            print("sdk_tests: pytest wrote no outcomes", file=sys.stderr)
            return 1
        outcomes = json.loads(outcomes_path.read_text())
    failed = sorted(t for t, o in outcomes.items() if o in ("failed", "error"))
    passed = sorted(t for t, o in outcomes.items() if o == "passed")
    skipped = sorted(t for t, o in outcomes.items() if o == "skipped")
    problems = []
    if args.baseline:
        problems += [f"FAIL (SDK alone) {t}" for t in failed]
    else:
        problems += [f"UNEXPECTED FAIL {t}" for t in failed if t not in expectations]
        for t, reason in sorted(expectations.items()):
            if t not in outcomes:
                problems.append(f"STALE {t}: no such test ({reason})")
            elif outcomes[t] == "passed":
                problems.append(f"STALE {t}: passes now ({reason})")
    mode = "SDK alone" if args.baseline else "with avp_rs.install()"
    print(f"sdk_tests ({mode}): {len(passed)} passed, {len(failed)} failed "
          f"({len(set(failed) & set(expectations))} expected), {len(skipped)} skipped by the SDK's own markers")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
