//! `MANIFEST.json`: size and BLAKE3 of every corpus file (AVP-CONF-3).
//!
//! Verification is all-or-nothing (AVP-CONF-4): a changed, missing or unlisted
//! file means the corpus is not the published one, so no verdict computed from
//! it could be trusted. The digest of `MANIFEST.json` itself names the corpus
//! in every report (AVP-CONF-5).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ConformanceError;
pub use crate::error::IntegrityProblem;

/// The manifest's file name at the corpus root.
pub const MANIFEST_FILE: &str = "MANIFEST.json";

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex BLAKE3 of the contents.
    pub blake3: String,
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `suite` field, if present.
    pub suite: Option<String>,
    /// `suite_version` field, if present.
    pub suite_version: Option<String>,
    /// BLAKE3 of the manifest file's bytes: the corpus' name in reports.
    pub digest: String,
    /// Listed files by `/`-separated path relative to the corpus root.
    pub files: BTreeMap<String, ManifestEntry>,
}

impl Manifest {
    /// Reads `<root>/MANIFEST.json`. Accepts `files` as a list of
    /// `{path, size, blake3}` or as a map from path to `{size, blake3}`.
    pub fn load(root: &Path) -> Result<Self, ConformanceError> {
        let path = root.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ConformanceError::io(&path, e))?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ConformanceError::format(&path, format!("not JSON: {e}")))?;
        let bad = |m: &str| ConformanceError::format(&path, m.to_string());
        let mut files = BTreeMap::new();
        let mut add = |name: &str, v: &Value| -> Result<(), ConformanceError> {
            let size = v
                .get("size")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("entry without integer `size`"))?;
            let blake3 = v
                .get("blake3")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("entry without string `blake3`"))?
                .to_ascii_lowercase();
            if files
                .insert(name.to_string(), ManifestEntry { size, blake3 })
                .is_some()
            {
                return Err(bad(&format!("{name} listed twice")));
            }
            Ok(())
        };
        match value.get("files") {
            Some(Value::Array(list)) => {
                for v in list {
                    let name = v
                        .get("path")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("entry without `path`"))?;
                    add(name, v)?;
                }
            }
            Some(Value::Object(map)) => {
                for (name, v) in map {
                    add(name, v)?;
                }
            }
            _ => return Err(bad("no `files` list")),
        }
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(Manifest {
            suite: text("suite"),
            suite_version: text("suite_version"),
            digest,
            files,
        })
    }

    /// Recomputes every digest under `root` and lists every difference
    /// (AVP-CONF-4). An empty list means the corpus is intact.
    pub fn verify(&self, root: &Path) -> Result<Vec<IntegrityProblem>, ConformanceError> {
        let mut on_disk = Vec::new();
        walk(root, root, &mut on_disk)?;
        let mut problems = Vec::new();
        for (rel, full) in &on_disk {
            let Some(entry) = self.files.get(rel) else {
                problems.push(IntegrityProblem::Unlisted(rel.clone()));
                continue;
            };
            let bytes = std::fs::read(full).map_err(|e| ConformanceError::io(full, e))?;
            let actual = bytes.len() as u64;
            if actual != entry.size {
                problems.push(IntegrityProblem::Size {
                    path: rel.clone(),
                    listed: entry.size,
                    actual,
                });
                continue;
            }
            let digest = blake3::hash(&bytes).to_hex().to_string();
            if digest != entry.blake3 {
                problems.push(IntegrityProblem::Digest {
                    path: rel.clone(),
                    listed: entry.blake3.clone(),
                    actual: digest,
                });
            }
        }
        for listed in self.files.keys() {
            if !on_disk.iter().any(|(rel, _)| rel == listed) {
                problems.push(IntegrityProblem::Missing(listed.clone()));
            }
        }
        Ok(problems)
    }
}

/// Loads the manifest and refuses (`ConformanceError::Integrity`) unless the
/// corpus matches it exactly.
pub fn load_verified(root: &Path) -> Result<Manifest, ConformanceError> {
    let manifest = Manifest::load(root)?;
    let problems = manifest.verify(root)?;
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(ConformanceError::Integrity(problems))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), ConformanceError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConformanceError::io(dir, e))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(|e| ConformanceError::io(dir, e))?.path());
    }
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(root, &path, out)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if rel != MANIFEST_FILE {
            out.push((rel, path));
        }
    }
    Ok(())
}
