//! The `weights_digest` extension (AVP-HS-20..AVP-HS-23): BLAKE3 over a
//! model's safetensors tensors in a canonical order, independent of how the
//! tensors are split across files.
//!
//! This module is sans-I/O: it parses headers from bytes and hashes tensor
//! bytes handed to it. The `fs` feature adds the directory walker.
//!
//! Layout hashed (AVP-HS-21): for each tensor, `leaf = BLAKE3(data)` over its
//! raw bytes as stored; then
//!
//! ```text
//! root = BLAKE3( "avp-weights-digest-v1\n"
//!              || u64le(tensor_count)
//!              || for each tensor, in ascending byte order of its UTF-8 name:
//!                   u64le(len(name)) || name
//!                   || u64le(len(dtype)) || dtype
//!                   || u64le(ndim) || u64le(dim) for each dim
//!                   || u64le(byte_len) || leaf )
//! ```

use crate::error::Error;
use crate::hash::hex;
use crate::json::{self, Value};

/// Domain-separation prefix of the root hash (AVP-HS-21).
pub const DOMAIN: &[u8] = b"avp-weights-digest-v1\n";

/// Largest safetensors header accepted (the `safetensors` library's own limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A 32-byte weights digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightsDigest(pub [u8; 32]);

impl WeightsDigest {
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses exactly 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let nibble = |c: u8| match c {
                b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
                b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
                _ => None,
            };
            let (hi, lo) = match pair {
                [h, l] => (nibble(*h)?, nibble(*l)?),
                _ => return None,
            };
            *slot = (hi << 4) | lo;
        }
        Some(WeightsDigest(out))
    }
}

/// One tensor of a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// dtype string as written (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Offset of the first byte, relative to the start of the data section.
    pub begin: u64,
    /// Offset one past the last byte, relative to the start of the data section.
    pub end: u64,
}

impl TensorEntry {
    /// Number of data bytes.
    pub fn byte_len(&self) -> u64 {
        self.end.saturating_sub(self.begin)
    }
}

/// A parsed safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// The tensors, in header order.
    pub tensors: Vec<TensorEntry>,
    /// Absolute file offset of the data section (`8 + header_len`).
    pub data_start: u64,
}

/// Reads the header length from the first 8 bytes of a safetensors file and
/// checks it against [`MAX_HEADER_LEN`] and the file size.
pub fn header_len(first8: [u8; 8], file_len: u64) -> Result<u64, Error> {
    let n = u64::from_le_bytes(first8);
    if n > MAX_HEADER_LEN {
        return Err(Error::Safetensors(format!(
            "header length {n} exceeds {MAX_HEADER_LEN}"
        )));
    }
    if n > file_len.saturating_sub(8) {
        return Err(Error::Safetensors(format!(
            "header length {n} runs past the end of the {file_len}-byte file"
        )));
    }
    Ok(n)
}

/// Bytes per element for the dtypes whose size is known; `None` for others
/// (whose byte ranges are hashed as declared).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Parses the JSON header (the bytes after the 8-byte length) and checks
/// every tensor: offsets ordered and inside `data_len`, byte length equal to
/// the element count times the dtype size where that size is known.
pub fn parse_header(header: &[u8], data_len: u64) -> Result<SafetensorsHeader, Error> {
    let value = json::parse(header).map_err(|e| Error::Safetensors(format!("header: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Safetensors("header is not a JSON object".into()))?;
    let mut tensors = Vec::with_capacity(obj.len());
    for (key, entry) in obj.iter() {
        let name = key
            .as_str()
            .ok_or_else(|| Error::Safetensors("a tensor name holds a lone surrogate".into()))?;
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| Error::Safetensors(format!("tensor `{name}`: {what}"));
        let fields = entry
            .as_object()
            .ok_or_else(|| bad("entry is not an object"))?;
        let dtype = fields
            .get("dtype")
            .and_then(Value::as_json_str)
            .and_then(|s| s.as_str())
            .ok_or_else(|| bad("`dtype` is not a string"))?;
        let as_u64 = |v: &Value| match v {
            Value::Int(i) => i.as_u64(),
            _ => None,
        };
        let shape = match fields.get("shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(as_u64)
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| bad("`shape` holds a non-integer"))?,
            _ => return Err(bad("`shape` is not a list")),
        };
        let (begin, end) = match fields.get("data_offsets") {
            Some(Value::Array(pair)) => match pair.as_slice() {
                [b, e] => (
                    as_u64(b).ok_or_else(|| bad("bad data_offsets"))?,
                    as_u64(e).ok_or_else(|| bad("bad data_offsets"))?,
                ),
                _ => return Err(bad("`data_offsets` is not a pair")),
            },
            _ => return Err(bad("`data_offsets` is not a list")),
        };
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
            )));
        }
        if let Some(size) = dtype_size(dtype) {
            let expected = shape
                .iter()
                .try_fold(size, |acc, d| acc.checked_mul(*d))
                .ok_or_else(|| bad("shape overflows"))?;
            if expected != end.saturating_sub(begin) {
                return Err(bad(&format!(
                    "{} bytes declared, shape and dtype need {expected}",
                    end.saturating_sub(begin)
                )));
            }
        }
        tensors.push(TensorEntry {
            name: name.to_owned(),
            dtype: dtype.to_owned(),
            shape,
            begin,
            end,
        });
    }
    let header_len = u64::try_from(header.len()).unwrap_or(u64::MAX);
    Ok(SafetensorsHeader {
        tensors,
        data_start: header_len.saturating_add(8),
    })
}

/// Streams one tensor's bytes into its leaf hash.
#[derive(Clone, Debug, Default)]
pub struct LeafHasher(blake3::Hasher);

impl LeafHasher {
    /// A fresh leaf hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the tensor.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The leaf hash.
    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The leaf hash of a tensor held in memory.
pub fn leaf_hash(bytes: &[u8]) -> [u8; 32] {
    let mut h = LeafHasher::new();
    h.update(bytes);
    h.finalize()
}

/// Combines leaf hashes into the digest (AVP-HS-21). Sorts by name; a name
/// present twice is an error.
pub fn combine(mut leaves: Vec<(TensorEntry, [u8; 32])>) -> Result<WeightsDigest, Error> {
    leaves.sort_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
    for pair in leaves.windows(2) {
        if let [a, b] = pair {
            if a.0.name == b.0.name {
                return Err(Error::DuplicateTensor(a.0.name.clone()));
            }
        }
    }
    let mut root = blake3::Hasher::new();
    let u64le = |h: &mut blake3::Hasher, v: u64| {
        h.update(&v.to_le_bytes());
    };
    let len64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    root.update(DOMAIN);
    u64le(&mut root, len64(leaves.len()));
    for (entry, leaf) in &leaves {
        u64le(&mut root, len64(entry.name.len()));
        root.update(entry.name.as_bytes());
        u64le(&mut root, len64(entry.dtype.len()));
        root.update(entry.dtype.as_bytes());
        u64le(&mut root, len64(entry.shape.len()));
        for d in &entry.shape {
            u64le(&mut root, *d);
        }
        u64le(&mut root, entry.byte_len());
        root.update(leaf);
    }
    Ok(WeightsDigest(*root.finalize().as_bytes()))
}

/// The digest of safetensors files held in memory (each a complete file).
/// Single-threaded; the `fs` module streams and parallelises.
pub fn digest_safetensors_bytes(files: &[&[u8]]) -> Result<WeightsDigest, Error> {
    let mut leaves = Vec::new();
    for file in files {
        let first8: [u8; 8] = file
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Safetensors("shorter than 8 bytes".into()))?;
        let file_len = u64::try_from(file.len()).unwrap_or(u64::MAX);
        let n = header_len(first8, file_len)?;
        let n = usize::try_from(n).map_err(|_| Error::Safetensors("header too large".into()))?;
        let header_end = n.saturating_add(8);
        let header = file.get(8..header_end).unwrap_or_default();
        let data = file.get(header_end..).unwrap_or_default();
        let parsed = parse_header(header, u64::try_from(data.len()).unwrap_or(u64::MAX))?;
        for t in parsed.tensors {
            let range = usize::try_from(t.begin)
                .ok()
                .zip(usize::try_from(t.end).ok());
            let bytes = range
                .and_then(|(b, e)| data.get(b..e))
                .ok_or_else(|| Error::Safetensors(format!("tensor `{}` out of range", t.name)))?;
            let leaf = leaf_hash(bytes);
            leaves.push((t, leaf));
        }
    }
    combine(leaves)
}
