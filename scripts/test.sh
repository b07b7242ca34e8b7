#!/usr/bin/env bash
# Runs every test of the workspace, after installing what they need.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup-venv.sh
export PATH="$root/.venv/bin:$PATH"

echo "== chromium (headless screenshot of the conformance HTML report, cli/tests/conformance_html.rs)"
if ! command -v chromium >/dev/null 2>&1; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
        || echo "WARNING: could not install chromium; the HTML screenshot test will skip"
fi

echo "== conformance vectors (regenerated with the SDK, diffed)"
bash conformance/gen/check.sh
echo "== engine fixtures (regenerated with the SDK on the native and on a portable CPU path, compared)"
bash engine/testdata/check.sh
echo "== the fixture check rejects planted mistakes (engine/testdata/mutants.py)"
python engine/testdata/mutants.py
echo "== module seams: no two modules of a crate import each other, every module says its job"
python3 scripts/module_cycles.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -q -- -D warnings
echo "== no default features: the library crates and the plain \`avp\` binary build and lint without any feature"
# Everything else here runs with --all-features, which would hide an item only a feature uses.
cargo clippy -p avp-json -p avp-codec -p avp-handshake -p avp-cli --all-targets --no-default-features -q -- -D warnings
echo "== MSRV: cargo +<rust-version> check of the default members (installs the toolchain if missing)"
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml | head -n 1)
case "$msrv" in *.*.*) ;; *) msrv="$msrv.0" ;; esac
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$msrv" --profile minimal
fi
cargo +"$msrv" check -q
echo "== cargo test (all crates, engine included)"
cargo test --workspace --all-features
echo "== Python package avp_rs (python/): pip install ./python, its tests, the SDK's own tests under avp_rs.install()"
python -m pip install -q --disable-pip-version-check -r python/requirements-test.txt
python -m pip install -q --disable-pip-version-check ./python
python -m pytest -q -p no:cacheprovider python/tests
python python/sdk_tests/run.py
# Results must not depend on the CPU: run the engine's tests again on libtorch's portable
# kernels, with MKL and oneDNN held to AVX2 (what an AVX2-only or an older CPU computes).
# `--workspace --all-features` with test names (not `-p avp-engine`) keeps the feature set of
# the run above, so nothing is rebuilt: engine/tests/fixtures.rs, cli/tests/engine.rs and the
# two-agent pipeline's token comparisons (engine/tests/pipeline.rs, cli/tests/pipeline.rs), the
# quantized and chunked export/import (engine/tests/kv_quant.rs, cli/tests/kv_quant_engine.rs,
# engine/tests/chunked.rs).
echo "== engine tests on the portable CPU path (ATEN_CPU_CAPABILITY=default)"
ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
    cargo test --workspace --all-features --test fixtures --test engine --test pipeline \
        --test kv_quant --test kv_quant_engine --test chunked
echo "== the engine tests reject the same planted mistakes (engine/testdata/engine_mutants.sh)"
bash engine/testdata/engine_mutants.sh
echo "== fuzz smoke (each cargo-fuzz target ~10 s; skipped when cargo-fuzz cannot be installed)"
bash scripts/fuzz_smoke.sh
