#!/usr/bin/env bash
# The main job: build the release `avp` binary, run the conformance suite
# (this implementation, compatible and strict decoding, against the whole
# SDK-generated corpus: wire, KV, JSON fallback, handshake), then decode (JSON)
# and inspect every bundled golden wire vector and check each outcome against
# conformance/vectors/wire/cases.json.
# Needs only Rust and a system python3 (standard library).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "== building the release CLI"
cargo build --release -q -p avp-cli
avp="$root/target/release/avp"
export AVP_BIN="$avp"
mkdir -p target/avp-report
echo "== conformance: this implementation against conformance/vectors"
"$avp" conformance run --builtin compatible --builtin strict \
  --json target/avp-report/report.json --html target/avp-report/report.html
echo "   reports: target/avp-report/report.{json,html}"
echo
echo "== decode + inspect every golden wire vector"
python3 - <<'PY'
import json, os, subprocess, sys

avp = os.environ["AVP_BIN"]
base = "conformance/vectors/wire"
cases = [c for c in json.load(open(f"{base}/cases.json"))["cases"] if c["op"] == "decode"]
ok = bad = 0
for c in cases:
    path = f"{base}/{c['input']['file']}"
    exp = c["expect"]
    dec = subprocess.run([avp, "decode", "--json", path], capture_output=True, text=True)
    out = json.loads(dec.stdout)
    if exp["result"] == "invalid":
        good = dec.returncode == 1 and out["error"]["kind"] == exp["error_kind"]
        summary = f"rejected: {out.get('error', {}).get('kind')}"
    else:
        ins = subprocess.run([avp, "inspect", path], capture_output=True, text=True)
        warnings = [w["code"] for w in out.get("warnings", [])]
        good = dec.returncode == 0 and ins.returncode == 0
        if good and exp["result"] == "non_strict":
            good = [w for w in warnings if not w.startswith("kv_")] == exp["warnings"]
        m = out.get("metadata", {})
        summary = (f"{m.get('payload_type')} {m.get('dtype')} {out.get('payload', {}).get('length')} B"
                   + (f" kv={out['kv']['num_layers']}x{out['kv']['seq_len']}" if out.get("kv") else "")
                   + (f" warnings={warnings}" if warnings else ""))
        if os.environ.get("AVP_RUN_VERBOSE"):
            print(ins.stdout)
    ok += good
    bad += not good
    print(f"{'ok  ' if good else 'FAIL'} {c['id']:<55} {summary}")
print(f"\n{ok} of {len(cases)} golden wire vectors decoded/inspected as the SDK expects, {bad} failed")
sys.exit(1 if bad else 0)
PY
echo
echo "== example: avp inspect $root/conformance/vectors/wire/bin/kv-f16.avp"
"$avp" inspect conformance/vectors/wire/bin/kv-f16.avp
