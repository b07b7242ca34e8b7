#!/usr/bin/env python3
"""An adapter that breaks the protocol on purpose, for the runner's own tests.

Usage: misbehaving.py [--crash SUBSTR] [--hang SUBSTR] [--garbage SUBSTR] [--bad-seq SUBSTR]
Cases whose ID contains SUBSTR get that misbehaviour; every other case is
answered "skipped". The runner must turn each misbehaviour into an ERROR for
that case only, restart the adapter, and go on.
"""

import json
import sys
import time

args = sys.argv[1:]
modes = dict(zip(args[0::2], args[1::2]))

for line in sys.stdin:
    req = json.loads(line)
    seq, case = req.get("seq"), req.get("case") or ""
    if req.get("cmd") == "hello":
        print(json.dumps({"seq": seq, "protocol": 1, "implementation": {"name": "misbehaving", "version": "0"}}), flush=True)
        continue
    if req.get("cmd") == "stop":
        print(json.dumps({"seq": seq, "ok": True}), flush=True)
        break
    if modes.get("--crash") and modes["--crash"] in case:
        print(f"about to crash on {case}", file=sys.stderr, flush=True)
        sys.exit(3)
    if modes.get("--hang") and modes["--hang"] in case:
        time.sleep(600)
    if modes.get("--garbage") and modes["--garbage"] in case:
        print("this is not json", flush=True)
        continue
    if modes.get("--bad-seq") and modes["--bad-seq"] in case:
        print(json.dumps({"seq": seq + 1000, "outcome": "skipped", "reason": "x"}), flush=True)
        continue
    print(json.dumps({"seq": seq, "outcome": "skipped", "reason": "misbehaving adapter"}), flush=True)
