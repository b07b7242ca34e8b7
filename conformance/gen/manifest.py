#!/usr/bin/env python3
"""Write MANIFEST.json for a vectors tree: size and BLAKE3 of every file.

Usage: .venv/bin/python conformance/gen/manifest.py [VECTORS_DIR]
(default conformance/vectors). Covers every file under the tree, whatever
area wrote it, except MANIFEST.json itself. Deterministic (sorted paths).
"""

import json
import os
import sys

import blake3


def build(root):
    files, case_count = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            if rel == "MANIFEST.json":
                continue
            with open(path, "rb") as f:
                data = f.read()
            files.append({"path": rel, "size": len(data), "blake3": blake3.blake3(data).hexdigest()})
            if name.endswith(".json"):
                try:
                    doc = json.loads(data)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("cases"), list):
                    case_count += len(doc["cases"])
    files.sort(key=lambda f: f["path"])
    return {"suite": "avp-conformance", "suite_version": "1.0.0", "spec": {"wire": 1}, "hash": "blake3",
            "generator": {"manifest": "conformance/gen/manifest.py", "sdk": "avp==0.6.2"},
            "case_count": case_count, "aliases": {}, "files": files}


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "conformance/vectors"
    doc = build(root)
    with open(os.path.join(root, "MANIFEST.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"MANIFEST.json: {len(doc['files'])} files, {doc['case_count']} cases")


if __name__ == "__main__":
    main()
