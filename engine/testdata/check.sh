#!/usr/bin/env bash
# Regenerates the engine fixtures into a temp dir and compares them with the committed ones
# (engine/testdata/README.md). Fails if the generator, the SDK or the pinned packages changed
# what they produce.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" "$here/gen_models.py" "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log"; rm -f "$tmp.log"; exit 1; }
rm -f "$tmp.log"
"$py" "$here/compare_fixtures.py" "$here" "$tmp"
