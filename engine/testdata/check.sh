#!/usr/bin/env bash
# Regenerates the engine fixtures into a temp dir and compares them with the committed ones
# (engine/testdata/README.md). Fails if the generator, the SDK or the pinned packages changed
# what they produce.
#
# The SDK run is repeated under each CPU code path named in AVP_FIXTURE_CAPS (default: the
# machine's own, then libtorch's portable `default` kernels with MKL and oneDNN held to AVX2),
# so that a machine with AVX-512 also checks what an AVX2-only or an old CPU computes, and the
# fixtures stay valid on any x86-64 machine (issue: "passes on any machine").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
caps="${AVP_FIXTURE_CAPS:-native default}"
for cap in $caps; do
    case "$cap" in
        native) env_=() ;;
        default | avx2 | avx512)
            env_=(ATEN_CPU_CAPABILITY="$cap" MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) ;;
        *) echo "check.sh: unknown capability '$cap' (native, default, avx2, avx512)" >&2; exit 2 ;;
    esac
    echo "-- fixtures regenerated with the CPU path: $cap ${env_[*]}"
    tmp=$(mktemp -d)
    if ! env "${env_[@]}" "$py" "$here/gen_models.py" "$tmp" >"$tmp.log" 2>&1; then
        cat "$tmp.log"; rm -rf "$tmp" "$tmp.log"; exit 1
    fi
    rm -f "$tmp.log"
    status=0
    "$py" "$here/compare_fixtures.py" "$here" "$tmp" --spread || status=$?
    rm -rf "$tmp"
    [ "$status" = 0 ] || exit "$status"
done
