//! Cross-model projection ("Rosetta Stone", AVP-ENG-13, AVP-ENG-14, AVP-ENG-16): a source model's last
//! hidden state mapped into a target model's input-embedding space through
//! the vocabulary, with no learned parameters.
//!
//! * vocab-mediated (identical vocabularies): `p = softmax(h · W_srcᵀ)` over
//!   the first `min(V_src, V_tgt)` rows of both tables (models of one family
//!   may pad their tables differently), `e = p · E_tgt`;
//! * vocab-overlap (≥ 100 shared token strings): the same over the shared
//!   tokens only, sorted by token string (code-point order, as Python sorts);
//!
//! then `e` is scaled to the target's mean input-embedding row norm.
//!
//! # Map file format (AVP-ENG-15)
//! A safetensors file `{source_hash[..16]}_{target_hash[..16]}.avpmap.safetensors`
//! (the pair name the handshake's `avp_map_file` rule looks for) in a maps
//! directory. Tensors: `w_map` (F32 `[rows, D_tgt]`, the target embedding
//! rows used), `target_norm` (F32 `[]`) and, for vocab-overlap,
//! `src_indices` / `tgt_indices` (I64 `[N]`). Metadata (strings):
//! `format = "avp-map"`, `version = "1"`, `method` (`vocab_mediated` |
//! `vocab_overlap`), `source_hash`, `target_hash`, `source_dim`, `target_dim`,
//! `overlap_count`, `overlap_ratio`. A file that does not [`ProjectionMap::fits`]
//! the two loaded models is recalibrated, never trusted; the projection
//! itself reads the rows from the loaded target model (the same values).
//! Unlike the SDK's torch pickle, a safetensors file cannot execute code.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::cache::to_i64;
use crate::engine::Engine;
use crate::error::{EngineError, Result, io_err};
use crate::latent::{normalise_to, target_norm};

/// Fewest shared token strings for vocab-overlap projection (the SDK's threshold).
pub const MIN_OVERLAP: usize = 100;

/// How the projection goes through the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProjectionMethod {
    /// Same vocabulary.
    VocabMediated,
    /// Shared token strings only.
    VocabOverlap,
}

impl ProjectionMethod {
    /// The SDK's method name.
    pub fn name(self) -> &'static str {
        match self {
            Self::VocabMediated => "vocab_mediated",
            Self::VocabOverlap => "vocab_overlap",
        }
    }
}

/// A calibrated source → target projection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionMap {
    /// Method.
    pub method: ProjectionMethod,
    /// Source model hash.
    pub source_hash: String,
    /// Target model hash.
    pub target_hash: String,
    /// Source hidden size.
    pub source_dim: usize,
    /// Target hidden size.
    pub target_dim: usize,
    /// Source ids of shared tokens (vocab-overlap).
    pub src_indices: Vec<i64>,
    /// Target ids of shared tokens (vocab-overlap).
    pub tgt_indices: Vec<i64>,
    /// Number of shared tokens (vocab-overlap).
    pub overlap_count: usize,
    /// Shared / smaller vocabulary (1.0 for vocab-mediated).
    pub overlap_ratio: f64,
    /// Mean input-embedding row norm of the target.
    pub target_norm: f32,
    /// Rows of `w_map`: the target embedding rows the projection uses.
    pub w_map_rows: usize,
}

/// Builds the map for `source` → `target` (the SDK's `calibrate`).
pub fn calibrate(source: &Engine, target: &Engine) -> Result<ProjectionMap> {
    let _guard = tch::no_grad_guard();
    let src_vocab = source.prompt_format().vocab();
    let tgt_vocab = target.prompt_format().vocab();
    let tn = target_norm(target.model())?.f_double_value(&[])? as f32;
    let mut map = ProjectionMap {
        method: ProjectionMethod::VocabMediated,
        source_hash: source.model_hash().to_owned(),
        target_hash: target.model_hash().to_owned(),
        source_dim: source.config().decoder.hidden_size,
        target_dim: target.config().decoder.hidden_size,
        src_indices: Vec::new(),
        tgt_indices: Vec::new(),
        overlap_count: 0,
        overlap_ratio: 1.0,
        target_norm: tn,
        w_map_rows: 0,
    };
    if src_vocab == tgt_vocab {
        let rows = |e: &Engine| e.config().decoder.vocab_size;
        map.w_map_rows = rows(source).min(rows(target));
        return Ok(map);
    }
    let src_keys: BTreeSet<&String> = src_vocab.keys().collect();
    let shared: Vec<&String> = tgt_vocab
        .keys()
        .filter(|k| src_keys.contains(k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if shared.len() < MIN_OVERLAP {
        return Err(EngineError::NoProjectionPath {
            shared_tokens: shared.len(),
        });
    }
    let id = |v: &HashMap<String, u32>, t: &String| v.get(t).map(|&i| i64::from(i)).unwrap_or(0);
    map.method = ProjectionMethod::VocabOverlap;
    map.src_indices = shared.iter().map(|t| id(&src_vocab, t)).collect();
    map.tgt_indices = shared.iter().map(|t| id(&tgt_vocab, t)).collect();
    map.overlap_count = shared.len();
    map.w_map_rows = shared.len();
    map.overlap_ratio = shared.len() as f64 / src_vocab.len().min(tgt_vocab.len()).max(1) as f64;
    Ok(map)
}

fn rows(table: &Tensor, idx: &[i64], what: &str) -> Result<Tensor> {
    let n = table.size().first().copied().unwrap_or(0);
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i >= n) {
        return Err(EngineError::InvalidArgument(format!(
            "{what} index {bad} outside a table of {n} rows"
        )));
    }
    let t = Tensor::f_from_slice(idx)?.f_to_device(table.device())?;
    Ok(table.f_index_select(0, &t)?)
}

/// Projects source hidden states `[.., D_src]` to target embeddings
/// `[.., D_tgt]` (float32, on the target's device).
pub fn project(
    source: &Engine,
    target: &Engine,
    map: &ProjectionMap,
    hidden: &Tensor,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    if map.source_hash != source.model_hash() || map.target_hash != target.model_hash() {
        return Err(EngineError::InvalidArgument(
            "projection map was made for other models".into(),
        ));
    }
    let (w_src, e_tgt) = map.used_rows(source, target)?;
    project_rows(&w_src, &e_tgt, map.target_norm, hidden)
}

/// `softmax(h · W_srcᵀ) · E_tgt`, scaled to `target_norm`, in the hidden
/// state's dtype: the projection once its rows are chosen.
fn project_rows(
    w_src: &Tensor,
    e_tgt: &Tensor,
    target_norm: f32,
    hidden: &Tensor,
) -> Result<Tensor> {
    let h = hidden.f_to_device(w_src.device())?.f_to_kind(Kind::Float)?;
    let logits = h.f_matmul(&w_src.f_to_kind(Kind::Float)?.f_tr()?)?;
    let probs = logits
        .f_softmax(-1, Kind::Float)?
        .f_to_device(e_tgt.device())?;
    let e = probs.f_matmul(&e_tgt.f_to_kind(Kind::Float)?)?;
    let tn = Tensor::f_from_slice(&[target_norm])?
        .f_to_device(e.device())?
        .f_reshape([] as [i64; 0])?;
    let y = normalise_to(&e, &tn)?;
    // The SDK hands the vector back in the source hidden state's dtype
    // (huggingface.py `_np_to_torch`): round through it when that is not float32.
    match hidden.f_kind()? {
        Kind::Float => Ok(y),
        k => Ok(y.f_to_kind(k)?.f_to_kind(Kind::Float)?),
    }
}

/// Projects with a map file alone, for a sender without the target's
/// weights (AVP-PIPE-3): the file's `w_map` holds the target rows the
/// projection uses (AVP-ENG-15). The map must name `source` and
/// `target_hash`; returns the vector and the map.
pub fn project_with_map_file(
    source: &Engine,
    path: &Path,
    target_hash: &str,
    hidden: &Tensor,
) -> Result<(Tensor, ProjectionMap)> {
    let _guard = tch::no_grad_guard();
    let map = ProjectionMap::load(path)?;
    let s = &source.config().decoder;
    if map.source_hash != source.model_hash()
        || map.target_hash != target_hash
        || map.source_dim != s.hidden_size
    {
        return Err(EngineError::InvalidArgument(format!(
            "map file {} was made for other models",
            path.display()
        )));
    }
    let bad = |message: String| EngineError::Config {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let w = st.tensor("w_map").map_err(|e| bad(e.to_string()))?;
    // ProjectionMap::load checked: F32 [w_map_rows, target_dim].
    let rows_n = to_i64(map.w_map_rows)?;
    let e_tgt =
        Tensor::f_from_data_size(w.data(), &[rows_n, to_i64(map.target_dim)?], Kind::Float)?;
    let w_all = source.model().output_embeddings();
    let w_src = match map.method {
        ProjectionMethod::VocabMediated => {
            if rows_n > w_all.size().first().copied().unwrap_or(0) {
                return Err(bad("more rows than the source's vocabulary".into()));
            }
            w_all.f_narrow(0, 0, rows_n)?
        }
        ProjectionMethod::VocabOverlap => rows(w_all, &map.src_indices, "source")?,
    };
    let v = project_rows(&w_src, &e_tgt, map.target_norm, hidden)?;
    Ok((v, map))
}

/// The map file name for a model pair.
pub fn map_file_name(source_hash: &str, target_hash: &str) -> String {
    let s = source_hash.get(..16).unwrap_or(source_hash);
    let t = target_hash.get(..16).unwrap_or(target_hash);
    format!("{s}_{t}.avpmap.safetensors")
}

/// Where a pair's map lives inside `maps_dir`.
pub fn map_path(maps_dir: &Path, source_hash: &str, target_hash: &str) -> PathBuf {
    maps_dir.join(map_file_name(source_hash, target_hash))
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl ProjectionMap {
    /// The source output rows and target input rows the projection uses
    /// (truncated to the shorter table, or the shared tokens), in the models' dtype.
    pub fn used_rows(&self, source: &Engine, target: &Engine) -> Result<(Tensor, Tensor)> {
        let w_src = source.model().output_embeddings();
        let e_tgt = target.model().input_embeddings();
        Ok(match self.method {
            ProjectionMethod::VocabMediated => {
                let n = |t: &Tensor| t.size().first().copied().unwrap_or(0);
                let shared = n(w_src).min(n(e_tgt));
                (w_src.f_narrow(0, 0, shared)?, e_tgt.f_narrow(0, 0, shared)?)
            }
            ProjectionMethod::VocabOverlap => (
                rows(w_src, &self.src_indices, "source")?,
                rows(e_tgt, &self.tgt_indices, "target")?,
            ),
        })
    }

    /// Whether this map was made for exactly these two models (hashes,
    /// widths, table rows); a map file that fails this is recalibrated, never trusted.
    pub fn fits(&self, source: &Engine, target: &Engine) -> bool {
        let (s, t) = (&source.config().decoder, &target.config().decoder);
        let rows = match self.method {
            ProjectionMethod::VocabMediated => s.vocab_size.min(t.vocab_size),
            ProjectionMethod::VocabOverlap => self.tgt_indices.len(),
        };
        self.source_hash == source.model_hash()
            && self.target_hash == target.model_hash()
            && self.source_dim == s.hidden_size
            && self.target_dim == t.hidden_size
            && self.w_map_rows == rows
            && self
                .src_indices
                .iter()
                .all(|&i| i >= 0 && (i as usize) < s.vocab_size)
            && self
                .tgt_indices
                .iter()
                .all(|&i| i >= 0 && (i as usize) < t.vocab_size)
    }

    /// Writes the map file (atomically: temporary file, then rename), with
    /// `w_map` = the target embedding rows used, float32 (AVP-ENG-15).
    pub fn save(&self, path: &Path, source: &Engine, target: &Engine) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (_, e_tgt) = self.used_rows(source, target)?;
        let w = e_tgt
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let numel = w.numel();
        let mut w_bytes = vec![0u8; numel * 4];
        w.f_copy_data_u8(&mut w_bytes, numel)?;
        let tn = self.target_norm.to_le_bytes().to_vec();
        let si = i64_bytes(&self.src_indices);
        let ti = i64_bytes(&self.tgt_indices);
        let err = |e: safetensors::SafeTensorError| {
            EngineError::InvalidArgument(format!("map file: {e}"))
        };
        let mut views = vec![
            (
                "w_map",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![self.w_map_rows, self.target_dim],
                    &w_bytes,
                )
                .map_err(err)?,
            ),
            (
                "target_norm",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &tn)
                    .map_err(err)?,
            ),
        ];
        if self.method == ProjectionMethod::VocabOverlap {
            views.push((
                "src_indices",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::I64,
                    vec![self.src_indices.len()],
                    &si,
                )
                .map_err(err)?,
            ));
            views.push((
                "tgt_indices",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::I64,
                    vec![self.tgt_indices.len()],
                    &ti,
                )
                .map_err(err)?,
            ));
        }
        let meta: HashMap<String, String> = [
            ("format", "avp-map".to_owned()),
            ("version", "1".to_owned()),
            ("method", self.method.name().to_owned()),
            ("source_hash", self.source_hash.clone()),
            ("target_hash", self.target_hash.clone()),
            ("source_dim", self.source_dim.to_string()),
            ("target_dim", self.target_dim.to_string()),
            ("overlap_count", self.overlap_count.to_string()),
            ("overlap_ratio", self.overlap_ratio.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let data = safetensors::serialize(views, Some(meta)).map_err(err)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }

    /// Reads and validates a map file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let bad = |m: String| EngineError::Config {
            path: path.to_path_buf(),
            message: m,
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata lacks {k}")))
        };
        if get("format")? != "avp-map" || get("version")? != "1" {
            return Err(bad("not an avp-map version 1 file".into()));
        }
        let method = match get("method")?.as_str() {
            "vocab_mediated" => ProjectionMethod::VocabMediated,
            "vocab_overlap" => ProjectionMethod::VocabOverlap,
            other => return Err(bad(format!("method {other:?}"))),
        };
        let num = |k: &str| {
            get(k)?
                .parse::<usize>()
                .map_err(|_| bad(format!("{k} is not a count")))
        };
        let tn_view = st.tensor("target_norm").map_err(|e| bad(e.to_string()))?;
        let tn: [u8; 4] = tn_view
            .data()
            .try_into()
            .ok()
            .filter(|_| tn_view.dtype() == safetensors::Dtype::F32)
            .ok_or_else(|| bad("target_norm must be one F32".into()))?;
        let idx = |name: &str| -> Result<Vec<i64>> {
            let v = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            if v.dtype() != safetensors::Dtype::I64 || v.shape().len() != 1 {
                return Err(bad(format!("{name} must be I64 [N]")));
            }
            Ok(v.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect())
        };
        let (src_indices, tgt_indices) = if method == ProjectionMethod::VocabOverlap {
            let (s, t) = (idx("src_indices")?, idx("tgt_indices")?);
            if s.len() != t.len() || s.len() < MIN_OVERLAP {
                return Err(bad("index lists differ in length or are below 100".into()));
            }
            (s, t)
        } else {
            (Vec::new(), Vec::new())
        };
        let target_dim = num("target_dim")?;
        let w = st.tensor("w_map").map_err(|e| bad(e.to_string()))?;
        let w_map_rows = match w.shape() {
            [rows, d] if w.dtype() == safetensors::Dtype::F32 && *d == target_dim => *rows,
            _ => return Err(bad("w_map must be F32 [rows, target_dim]".into())),
        };
        if method == ProjectionMethod::VocabOverlap && w_map_rows != tgt_indices.len() {
            return Err(bad("w_map rows differ from the shared-token count".into()));
        }
        Ok(Self {
            method,
            w_map_rows,
            source_hash: get("source_hash")?,
            target_hash: get("target_hash")?,
            source_dim: num("source_dim")?,
            target_dim,
            overlap_count: num("overlap_count")?,
            overlap_ratio: get("overlap_ratio")?
                .parse()
                .map_err(|_| bad("overlap_ratio".into()))?,
            src_indices,
            tgt_indices,
            target_norm: f32::from_le_bytes(tn),
        })
    }
}
