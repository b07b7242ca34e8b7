//! The engine crate's seams (issue 15): every module in `src/lib.rs` carries a
//! one-line job and a module doc, and no two modules import each other,
//! directly or around a longer loop (`crate::x` paths, `use crate::{x::..}`
//! groups and `super::x` outside the unit tests all count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the sibling modules its non-test code names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src dir") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            let text = std::fs::read_to_string(&path).expect("read module");
            modules.insert(name.to_owned(), text);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, text)| {
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: String = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut used = BTreeSet::new();
            for prefix in ["crate::", "super::"] {
                for (at, _) in code.match_indices(prefix) {
                    let rest = &code[at + prefix.len()..];
                    if let Some(group) = rest.strip_prefix('{') {
                        // `use crate::{a::X, b::{Y, Z}}`: every path head in the group.
                        let group = &group[..group.find("};").unwrap_or(group.len())];
                        for part in group.split([',', '{', '}', '\n']) {
                            let head = part.trim().split("::").next().unwrap_or("");
                            used.insert(head.to_owned());
                        }
                    } else {
                        let head: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        used.insert(head);
                    }
                }
            }
            let used = used
                .into_iter()
                .filter(|m| names.contains(m) && m != name)
                .collect();
            (name.clone(), used)
        })
        .collect()
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 5, "found only {:?}", graph.keys());
    // Depth-first search for any loop; a pair is the shortest one.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(start) = path.iter().position(|n| *n == node) {
            panic!("module loop: {:?} -> {node}", &path[start..]);
        }
        if !done.insert(node) {
            return;
        }
        path.push(node);
        for next in &graph[node] {
            visit(next, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn every_module_says_its_job() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let mut seen = 0;
    for line in lib.lines() {
        let decl = line.trim_start_matches("pub ");
        let Some(rest) = decl.strip_prefix("mod ") else {
            continue;
        };
        let name = rest.split(';').next().unwrap_or("").trim();
        let (_, job) = rest.split_once("//").unwrap_or(("", ""));
        assert!(
            job.trim().len() > 10,
            "`mod {name}` in lib.rs has no job line"
        );
        let text = std::fs::read_to_string(src.join(format!("{name}.rs"))).expect("module");
        assert!(text.starts_with("//!"), "{name}.rs has no module doc");
        seen += 1;
    }
    assert!(seen > 5, "only {seen} modules found in lib.rs");
}
