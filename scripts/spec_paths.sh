#!/usr/bin/env bash
# Rewrites citations of the old flat spec layout (spec/wire.md, spec/http.md,
# ...) to the split one (spec/protocol/*.md, spec/impl/*.md); spec/README.md
# has the alias table this follows. Citations that name a rule which moved to
# another document than its old file's (e.g. "spec/handshake.md, AVP-CLI-101", now in
# spec/impl/cli.md) are rewritten to that document first; every other path
# goes where its whole file went.
#
# Usage: scripts/spec_paths.sh [PATHSPEC...]   (default: every tracked file)
# Idempotent: a rewritten path no longer matches any pattern. spec/README.md
# (whose alias table must keep the old names) and this script are skipped.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

# Specific citations first (a rule that left its old file's new home), then
# whole files. Each entry: sed expression, applied in order.
rules=(
  's#spec/handshake\.md §7#spec/impl/cli.md#g'
  's#spec/handshake\.md, AVP-CLI-#spec/impl/cli.md, AVP-CLI-#g'
  's#spec/handshake\.md, AVP-HS-1\([34]\)\([^0-9]\|$\)#spec/impl/handshake.md, AVP-HS-1\1\2#g'
  's#spec/http\.md\([ ,(]*\)AVP-HTTP-\(1[679]\|34\|4[12]\|6[0-3]\|70\|74\)\([^0-9]\|$\)#spec/impl/transport.md\1AVP-HTTP-\2\3#g'
  's#spec/limits\.md, AVP-LIM-8\([^0-9]\|$\)#spec/impl/codec.md, AVP-LIM-8\1#g'
  's#spec/kv-cache\.md, AVP-KV-6#spec/impl/codec.md, AVP-KV-6#g'
  's#spec/wire\.md, AVP-WIRE-\(19\|21\|23\)\([^0-9]\|$\)#spec/impl/codec.md, AVP-WIRE-\1\2#g'
  's#spec/errors\.md, AVP-ERR-2\([^0-9]\|$\)#spec/impl/codec.md, AVP-ERR-2\1#g'
  's#spec/conformance\.md\([ ,(]*\)AVP-CONF-\(6\|7\|16\|3[0-3]\)\([^0-9]\|$\)#spec/impl/conformance-runner.md\1AVP-CONF-\2\3#g'
  's#spec/wire\.md §5#spec/protocol/json-fallback.md#g'
  's#spec/wire\.md §6#spec/protocol/wire.md §5#g'
  's#spec/\(wire\|kv-cache\|errors\|limits\|handshake\|http\|mac\|conformance\)\.md#spec/protocol/\1.md#g'
  's#spec/\(engine\|cli\)\.md#spec/impl/\1.md#g'
)
sed_args=()
for r in "${rules[@]}"; do sed_args+=(-e "$r"); done

old='spec/\(wire\|kv-cache\|errors\|limits\|handshake\|http\|mac\|conformance\|engine\|cli\)\.md'
git ls-files -z -- "$@" |
  while IFS= read -r -d '' f; do
    case "$f" in
      spec/README.md | scripts/spec_paths.sh) continue ;;
    esac
    [ -f "$f" ] || continue
    # grep -I skips binary files; only files that cite an old path are touched.
    if grep -Iq -e "$old" -- "$f"; then
      sed -i "${sed_args[@]}" -- "$f"
      echo "rewrote $f"
    fi
  done
