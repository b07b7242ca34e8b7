//! Checkpoint loading: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json` (AVP-ENG-2).
//!
//! Files are read one at a time and parsed with the `safetensors` crate (header
//! bounds-checked there); each tensor is copied once into a libtorch tensor,
//! converted to the requested dtype and moved to the device. No unsafe code:
//! `Tensor::f_from_data_size` copies from a slice whose length we check
//! against shape × element size first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result, io_err};

/// Named tensors on one device, taken out one by one by the model builder.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
}

/// Maps a safetensors dtype to a libtorch kind (only float weights are accepted).
fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// The safetensors files of a model directory, in a stable order.
pub(crate) fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Config {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| EngineError::Config {
            path: index.clone(),
            message: "no weight_map object".into(),
        })?;
    let mut files: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v.as_str().ok_or_else(|| EngineError::Config {
            path: index.clone(),
            message: "weight_map values must be file names".into(),
        })?;
        // A shard name must stay inside the model directory.
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(EngineError::Config {
                path: index.clone(),
                message: format!("shard name {name:?} leaves the model directory"),
            });
        }
        if !files.iter().any(|f| f == name) {
            files.push(name.to_owned());
        }
    }
    files.sort();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl Weights {
    /// Loads every tensor of the checkpoint in `dir` as `kind` onto `device`.
    pub(crate) fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for path in checkpoint_files(dir)? {
            // Read, not mmap: mapping is `unsafe` (another process may
            // truncate the file under us) and the copy is transient (one
            // shard at a time), so peak memory is weights + one shard.
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| EngineError::Config {
                path: path.clone(),
                message: format!("not a safetensors file: {e}"),
            })?;
            for (name, view) in st.tensors() {
                let src_kind = kind_of(view.dtype()).ok_or_else(|| EngineError::BadWeight {
                    name: name.clone(),
                    message: format!("dtype {:?} is not a float type", view.dtype()),
                })?;
                let shape: Vec<i64> = view
                    .shape()
                    .iter()
                    .map(|&d| i64::try_from(d))
                    .collect::<Result<_, _>>()
                    .map_err(|_| EngineError::BadWeight {
                        name: name.clone(),
                        message: "shape overflows".into(),
                    })?;
                let numel = view
                    .shape()
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d));
                let expected = numel.and_then(|n| n.checked_mul(src_kind.elt_size_in_bytes()));
                if expected != Some(view.data().len()) {
                    return Err(EngineError::BadWeight {
                        name,
                        message: "byte length does not match shape".into(),
                    });
                }
                let t = Tensor::f_from_data_size(view.data(), &shape, src_kind)?;
                let t = t.f_to_device(device)?.f_to_kind(kind)?;
                tensors.insert(name, t);
            }
        }
        Ok(Self { tensors })
    }

    /// Takes a tensor out, checking its shape.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| EngineError::MissingWeight(name.to_owned()))?;
        check_shape(name, &t, shape)?;
        Ok(t)
    }
}

pub(crate) fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    let got = t.size();
    let same = got.len() == shape.len()
        && got
            .iter()
            .zip(shape)
            .all(|(&g, &s)| usize::try_from(g).ok() == Some(s));
    if same {
        Ok(())
    } else {
        Err(EngineError::BadWeight {
            name: name.to_owned(),
            message: format!("shape {got:?}, expected {shape:?}"),
        })
    }
}

impl Weights {
    /// Wraps tensors made elsewhere (random initialisation).
    pub(crate) fn from_tensors(list: Vec<(String, Tensor)>) -> Self {
        Self {
            tensors: list.into_iter().collect(),
        }
    }
}
