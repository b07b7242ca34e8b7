//! The latent step of LatentMAS: turning the last hidden state back into an
//! input embedding (AVP-ENG-5), and the on-disk realignment cache.
//!
//! Untied embeddings: `e = normalise(h · W, target_norm)` with
//! `W = (E_outᵀE_out + 1e-5·I)⁻¹ E_outᵀE_in` and `target_norm` the mean L2
//! norm of the input-embedding rows. Tied embeddings: the soft embedding
//! `softmax(h · Eᵀ) · E` (the SDK does not normalise this one). Everything is
//! computed in float32 on the model's device, as the SDK computes it in
//! float32 (on the host); the result is cast to the model's dtype.
//!
//! # Realignment cache format (AVP-ENG-6)
//! `<cache_dir>/realign/<model_hash>.safetensors`, a safetensors file with
//! tensors `w_realign` (F32 `[D, D]`) and `target_norm` (F32, shape `[]`), and
//! string metadata `format = "avp-realign"`, `version = "1"`,
//! `model_hash`, `lambda = "1e-05"`, and a weights fingerprint
//! `fingerprint` = `"<Σ|E_in|₂ mean>:<‖E_out‖_F>"` (two f32 printed with
//! Rust's shortest round-trip formatting). A file whose fingerprint, shape or
//! dtype does not match is ignored and recomputed: unlike the SDK's cache,
//! which is keyed by the config hash alone, a fine-tune with an unchanged
//! config never picks up another model's matrix. `cache_dir` defaults to
//! `$AVP_CACHE_DIR`, else `$HOME/.avp`. Writes go to a temporary file that is
//! renamed into place, so a reader never sees a half-written file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::decoder::Decoder;
use crate::error::{EngineError, Result, io_err};

/// Ridge term of the realignment solve (the SDK's `lambda_reg`).
pub const REALIGN_LAMBDA: f64 = 1e-5;

/// Maps a hidden state `[1, D]` to the next step's input embedding.
#[derive(Debug)]
pub enum LatentProjector {
    /// Untied embeddings: ridge realignment matrix and target norm (scalar tensor).
    Realign {
        /// `[D, D]` float32.
        w: Tensor,
        /// Scalar float32.
        target_norm: Tensor,
    },
    /// Tied embeddings: soft embedding through the vocabulary.
    Soft {
        /// Input embeddings `[V, D]` in float32.
        embed: Tensor,
    },
}

impl LatentProjector {
    /// Applies the projection to `h` (`[B, D]`, any float dtype); returns float32 `[B, D]`.
    pub fn apply(&self, h: &Tensor) -> Result<Tensor> {
        let hf = h.f_to_kind(Kind::Float)?;
        match self {
            Self::Realign { w, target_norm } => {
                let a = hf.f_matmul(w)?;
                normalise_to(&a, target_norm)
            }
            Self::Soft { embed } => {
                let logits = hf.f_matmul(&embed.f_tr()?)?;
                let p = logits.f_softmax(-1, Kind::Float)?;
                Ok(p.f_matmul(embed)?)
            }
        }
    }
}

/// `x · (target / max(‖x‖, 1e-6))` row-wise, as the SDK normalises.
pub(crate) fn normalise_to(x: &Tensor, target_norm: &Tensor) -> Result<Tensor> {
    let n = x
        .f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?
        .f_clamp_min(1e-6)?;
    Ok(x.f_mul(&target_norm.f_div(&n)?)?)
}

/// Mean L2 norm of the rows of the input embeddings (float32 scalar tensor).
pub fn target_norm(model: &Decoder) -> Result<Tensor> {
    let e = model.input_embeddings().f_to_kind(Kind::Float)?;
    Ok(e.f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?
        .f_mean(Kind::Float)?)
}

/// Computes `W = (E_outᵀE_out + λI)⁻¹ E_outᵀE_in` and the target norm on the model's device.
pub fn compute_realignment(model: &Decoder) -> Result<(Tensor, Tensor)> {
    let ein = model.input_embeddings().f_to_kind(Kind::Float)?;
    let eout = model.output_embeddings().f_to_kind(Kind::Float)?;
    let d = ein.size().get(1).copied().unwrap_or(0);
    let gram = eout.f_tr()?.f_matmul(&eout)?;
    let eye = Tensor::f_eye(d, (Kind::Float, gram.device()))?.f_mul_scalar(REALIGN_LAMBDA)?;
    let gram = gram.f_add(&eye)?;
    let rhs = eout.f_tr()?.f_matmul(&ein)?;
    // LAPACK hands back a column-major result; make it row-major so a matrix
    // read back from the cache multiplies bit-identically.
    let w = Tensor::f_linalg_solve(&gram, &rhs, true)?.f_contiguous()?;
    Ok((w, target_norm(model)?))
}

/// The default cache directory: `$AVP_CACHE_DIR`, else `$HOME/.avp`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("AVP_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".avp"))
}

fn scalar_f32(t: &Tensor) -> Result<f32> {
    Ok(t.f_to_kind(Kind::Float)?.f_double_value(&[])? as f32)
}

fn fingerprint(model: &Decoder, tn: &Tensor) -> Result<String> {
    let eout = model.output_embeddings().f_to_kind(Kind::Float)?;
    let fro = eout.f_norm()?;
    Ok(format!("{}:{}", scalar_f32(tn)?, scalar_f32(&fro)?))
}

fn tensor_bytes_f32(t: &Tensor) -> Result<Vec<u8>> {
    let t = t
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let numel = t.numel();
    let mut buf = vec![
        0u8;
        numel
            .checked_mul(4)
            .ok_or_else(|| EngineError::InvalidArgument("tensor too large".into()))?
    ];
    t.f_copy_data_u8(&mut buf, numel)?;
    Ok(buf)
}

/// Loads the realignment for `model` from `cache_dir`, or computes and stores it.
pub fn load_or_compute(
    model: &Decoder,
    model_hash: &str,
    cache_dir: Option<&Path>,
) -> Result<LatentProjector> {
    let device = model.device();
    let Some(dir) = cache_dir else {
        let (w, target_norm) = compute_realignment(model)?;
        return Ok(LatentProjector::Realign { w, target_norm });
    };
    let tn = target_norm(model)?;
    let fp = fingerprint(model, &tn)?;
    let path = dir
        .join("realign")
        .join(format!("{model_hash}.safetensors"));
    let d = model.config().hidden_size;
    if let Some(w) = read_cached(&path, model_hash, &fp, d)? {
        return Ok(LatentProjector::Realign {
            w: w.f_to_device(device)?,
            target_norm: tn,
        });
    }
    let (w, tn) = compute_realignment(model)?;
    write_cached(&path, model_hash, &fp, &w, &tn)?;
    Ok(LatentProjector::Realign { w, target_norm: tn })
}

fn read_cached(path: &Path, model_hash: &str, fp: &str, d: usize) -> Result<Option<Tensor>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let Ok((_, meta)) = safetensors::SafeTensors::read_metadata(&bytes) else {
        return Ok(None);
    };
    let m = meta.metadata().clone().unwrap_or_default();
    let ok = m.get("format").map(String::as_str) == Some("avp-realign")
        && m.get("version").map(String::as_str) == Some("1")
        && m.get("model_hash").map(String::as_str) == Some(model_hash)
        && m.get("fingerprint").map(String::as_str) == Some(fp);
    if !ok {
        return Ok(None);
    }
    let Ok(st) = safetensors::SafeTensors::deserialize(&bytes) else {
        return Ok(None);
    };
    let Ok(view) = st.tensor("w_realign") else {
        return Ok(None);
    };
    if view.dtype() != safetensors::Dtype::F32
        || view.shape() != [d, d]
        || view.data().len() != d * d * 4
    {
        return Ok(None);
    }
    let di = crate::cache::to_i64(d)?;
    Ok(Some(Tensor::f_from_data_size(
        view.data(),
        &[di, di],
        Kind::Float,
    )?))
}

fn write_cached(path: &Path, model_hash: &str, fp: &str, w: &Tensor, tn: &Tensor) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let d = usize::try_from(w.size().first().copied().unwrap_or(0)).unwrap_or(0);
    let w_bytes = tensor_bytes_f32(w)?;
    let tn_bytes = tensor_bytes_f32(tn)?;
    let views = [
        (
            "w_realign",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d, d], &w_bytes),
        ),
        (
            "target_norm",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![], &tn_bytes),
        ),
    ];
    let mut list = Vec::new();
    for (name, v) in views {
        let v = v.map_err(|e| EngineError::InvalidArgument(format!("realign cache: {e}")))?;
        list.push((name, v));
    }
    let meta: HashMap<String, String> = [
        ("format", "avp-realign"),
        ("version", "1"),
        ("model_hash", model_hash),
        ("lambda", "1e-05"),
        ("fingerprint", fp),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let data = safetensors::serialize(list, Some(meta))
        .map_err(|e| EngineError::InvalidArgument(format!("realign cache: {e}")))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}
