#!/usr/bin/env bash
# Creates or refreshes the project venv (.venv) from scripts/requirements.lock:
# the Python SDK (avp==0.6.2) that the golden vectors come from, and
# torch==2.11.0 whose bundled libtorch the engine links (.venv/libtorch).
# Idempotent: does nothing when the lock file has not changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
lock="$root/scripts/requirements.lock"
stamp="$venv/.lock-sha256"
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -e "$venv/libtorch/lib" ]; then
  exit 0
fi
echo "setup-venv: installing $lock into $venv (torch is ~5 GB; a few minutes)" >&2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$lock"
torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
# A fixed path for .cargo/config.toml, whatever the Python minor version is.
ln -sfn "$torch_dir" "$venv/libtorch"
echo "$want" > "$stamp"
