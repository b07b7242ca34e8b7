#!/usr/bin/env bash
# Re-runs every vector generator (conformance/gen/gen_<area>.py) into a
# temporary directory and diffs the result, MANIFEST.json included, against
# the committed conformance/vectors. Fails when anything differs: the
# committed vectors must be exactly what the generators (and the SDK) produce.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
py="$root/.venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for gen in conformance/gen/gen_*.py; do
    area=$(basename "$gen" .py)
    area=${area#gen_}
    echo "== regenerating $area"
    "$py" "$gen" "$tmp/$area" >/dev/null
done
# Areas without a generator in this checkout are compared as committed.
for dir in conformance/vectors/*/; do
    area=$(basename "$dir")
    [ -e "$tmp/$area" ] || cp -r "$dir" "$tmp/$area"
done
"$py" conformance/gen/manifest.py "$tmp" >/dev/null
if ! diff -r conformance/vectors "$tmp"; then
    echo "conformance/vectors differ from what the generators produce (see above)" >&2
    exit 1
fi
echo "conformance vectors: committed files match the generators"
