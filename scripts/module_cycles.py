#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of each workspace crate.

A module `a` depends on `b` when a source file of `a` (src/a.rs or anything
under src/a/) names `crate::b` outside a comment: `use crate::b::X`,
`use crate::{b::X, ..}` or an inline path `crate::b::f()`. The crate root
(lib.rs/main.rs) only declares and re-exports, so its edges are ignored, and
so are code paths inside `#[cfg(test)]` modules (tests may reach anywhere).
Every strongly connected group of two or more modules is a cycle: printed
with the edges that close it, and the script exits 1.

It also checks that a reader of the crate root can name every module's one
job: each `mod x;` in lib.rs/main.rs carries a trailing `// job` comment (or a
`///` doc line right above it), and each module file starts with a `//!` doc.

Usage: scripts/module_cycles.py [CRATE_DIR ...]   (default: every crate in the workspace)
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOT_FILES = {"lib.rs", "main.rs"}
CRATE_PATH = re.compile(r"\bcrate::(\{[^;]*?\}|[A-Za-z_][A-Za-z0-9_]*)", re.S)
GROUP_HEAD = re.compile(r"(?:^|[{,])\s*([A-Za-z_][A-Za-z0-9_]*)")


def workspace_crates():
    """Directories of the workspace with a src/ tree (fuzz/ included: it is its own workspace)."""
    return sorted(p.parent.parent for p in ROOT.glob("*/src/lib.rs")) + sorted(
        p.parent.parent for p in ROOT.glob("*/src/main.rs") if not (p.parent / "lib.rs").exists()
    )


def strip_comments_and_tests(text):
    """Source without comments, string literals and `#[cfg(test)] mod ... { }` bodies."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    marker = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = marker.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return "".join(out)


def shown(path):
    """`path` relative to the repository when it is inside it."""
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


def top_module(src, path):
    rel = path.relative_to(src).parts
    if len(rel) == 1:
        return None if rel[0] in ROOT_FILES else rel[0][:-3]
    return rel[0]


def module_edges(crate):
    src = crate / "src"
    modules = {top_module(src, p) for p in src.rglob("*.rs")} - {None}
    edges = {}
    for path in sorted(src.rglob("*.rs")):
        here = top_module(src, path)
        if here is None or "bin" == path.relative_to(src).parts[0]:
            continue
        text = strip_comments_and_tests(path.read_text(encoding="utf-8"))
        if len(path.relative_to(src).parts) == 1:
            # In a top-level module `super` is the crate root.
            text = re.sub(r"\bsuper::", "crate::", text)
        for m in CRATE_PATH.finditer(text):
            target = m.group(1)
            names = GROUP_HEAD.findall(target[1:-1]) if target.startswith("{") else [target]
            for name in names:
                if name in modules and name != here:
                    edges.setdefault(here, {}).setdefault(name, set()).add(shown(path))
    return modules, edges


def strongly_connected(nodes, edges):
    """Tarjan's algorithm; returns the components with more than one node."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;(.*)$")


def undocumented_modules(crate):
    """`mod` declarations of the crate root without a job line, and module files without a `//!` doc."""
    src = crate / "src"
    problems = []
    for root_name in ROOT_FILES:
        root = src / root_name
        if not root.exists():
            continue
        lines = root.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MOD_DECL.match(line)
            if not m:
                continue
            name, tail = m.group(1), m.group(2)
            above = lines[i - 1].strip() if i else ""
            # Attributes (#[cfg(...)]) may sit between the doc line and the declaration.
            k = i - 1
            while k >= 0 and lines[k].strip().startswith("#["):
                k -= 1
            above = lines[k].strip() if k >= 0 else ""
            if "//" not in tail and not above.startswith("///"):
                problems.append(f"{shown(root)}: `mod {name};` has no job line")
            for file in (src / f"{name}.rs", src / name / "mod.rs"):
                if file.exists():
                    if not file.read_text(encoding="utf-8").lstrip().startswith("//!"):
                        problems.append(f"{shown(file)}: no `//!` module doc")
                    break
    return problems


def main(argv):
    crates = [Path(a).resolve() for a in argv] or workspace_crates()
    found = 0
    for crate in crates:
        for problem in undocumented_modules(crate):
            found += 1
            print(problem)
        modules, edges = module_edges(crate)
        for comp in strongly_connected(modules, edges):
            found += 1
            print(f"cycle in {shown(crate)}: {' <-> '.join(comp)}")
            for a in comp:
                for b in sorted(edges.get(a, {})):
                    if b in comp:
                        files = ", ".join(str(f) for f in sorted(edges[a][b]))
                        print(f"  {a} -> {b}  ({files})")
    if found:
        print(f"{found} problem(s): module cycles or modules without a job")
        return 1
    print(f"no module cycles in {len(crates)} crates; every module says its job")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
