#!/usr/bin/env bash
# Short bounded fuzzing of every cargo-fuzz target (FUZZING.md), for CI.
#
#   scripts/fuzz_smoke.sh [SECONDS_PER_TARGET]      (default 10; AVP_FUZZ_SECONDS overrides, 0 skips)
#
# - cargo-fuzz missing and not installable (offline, no registry): prints why and exits 0,
#   because the corpus replay in `cargo test` (codec/tests/fuzz_corpus.rs,
#   handshake/tests/fuzz_corpus.rs) already ran every committed input.
# - the fuzz crate failing to build, or any target finding a crash: exits 1.
# Runs on plain stable: `-s none` needs no nightly flags (no ASan; the parsers are
# #![forbid(unsafe_code)], so panics, overflow checks and debug assertions are what matter).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${AVP_FUZZ_SECONDS:-${1:-10}}
if [ "$secs" = 0 ]; then
    echo "fuzz smoke: skipped (0 seconds)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz smoke: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! timeout 600 cargo install cargo-fuzz --locked >/tmp/avp-cargo-fuzz-install.log 2>&1; then
        echo "fuzz smoke: SKIPPED, cargo-fuzz is not installable here (see /tmp/avp-cargo-fuzz-install.log);"
        echo "            the corpus replay in cargo test covered every committed input"
        exit 0
    fi
fi
cd "$root/fuzz"
cargo fuzz build -s none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in $(cargo fuzz list); do
    dict=dict/avp.dict
    case $target in json_fallback | json_parse | canonical_json) dict=dict/json.dict ;; esac
    # The seeds live in the crate that owns the parser: codec, handshake or transport.
    seeds=""
    for crate in codec handshake transport; do
        [ -d "$root/$crate/tests/fuzz_seeds/$target" ] && seeds="$root/$crate/tests/fuzz_seeds/$target"
    done
    if [ -z "$seeds" ]; then
        echo "fuzz smoke: $target has no seed directory <crate>/tests/fuzz_seeds/$target" >&2
        failed+=("$target")
        continue
    fi
    mkdir -p "$work/$target" "$work/artifacts/$target"
    # A fresh corpus dir so CI never writes into the repo; seeds are read only.
    if cargo fuzz run -s none "$target" "$work/$target" "$seeds" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -dict="$dict" \
        -artifact_prefix="$work/artifacts/$target/" >"$work/$target.log" 2>&1; then
        echo "fuzz smoke: $target ok ($(grep -o 'Done [0-9]* runs' "$work/$target.log" || echo '?'))"
    else
        echo "fuzz smoke: $target FAILED"
        tail -40 "$work/$target.log"
        for a in "$work/artifacts/$target"/*; do
            [ -e "$a" ] && echo "crash input (base64): $(base64 -w0 "$a")"
        done
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz smoke: failed: ${failed[*]} (a crash: add the input under <crate>/tests/fuzz_seeds/<target>/regressions/ and fix)" >&2
    exit 1
fi
