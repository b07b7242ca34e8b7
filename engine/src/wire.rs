//! The engine's only contact with the AVP wire format: building and reading
//! KV_CACHE and HIDDEN_STATE messages (AVP-ENG-7).
//!
//! INTERIM: until the `avp-codec` crate lands on this branch, this module
//! carries a minimal writer/reader for exactly the fields the engine uses
//! (proto3 Metadata fields 5-10, 14, 15 and the 12-byte header), with the
//! same byte layout as the SDK's `encode()` (map entries sorted by key). The
//! public surface of this module is the switch-over point: `encode_message`
//! and `decode_message` will call `avp_codec::encode` / `avp_codec::decode`.

use std::collections::BTreeMap;

use crate::error::{EngineError, Result};

/// KV-cache inner format v1 header length (`<IIIIB`).
pub const KV_HEADER_LEN: usize = 17;

/// Wire payload types the engine writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// A hidden-state vector.
    HiddenState,
    /// A serialized KV-cache.
    KvCache,
}

/// Wire data types (`DataType` enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDtype {
    /// 0
    Float32,
    /// 1
    Float16,
    /// 2
    BFloat16,
}

impl WireDtype {
    /// The metadata enum value; the KV inner header uses the same numbers.
    pub fn code(self) -> u8 {
        match self {
            Self::Float32 => 0,
            Self::Float16 => 1,
            Self::BFloat16 => 2,
        }
    }

    /// From an enum value.
    pub fn from_code(c: u64) -> Option<Self> {
        match c {
            0 => Some(Self::Float32),
            1 => Some(Self::Float16),
            2 => Some(Self::BFloat16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Float16 | Self::BFloat16 => 2,
        }
    }
}

/// The metadata fields the engine reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMeta {
    /// Field 5.
    pub hidden_dim: u32,
    /// Field 6.
    pub num_layers: u32,
    /// Field 7.
    pub payload: PayloadKind,
    /// Field 8.
    pub dtype: WireDtype,
    /// Field 9.
    pub tensor_shape: Vec<u32>,
    /// Field 14.
    pub extra: BTreeMap<String, String>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Encodes one uncompressed message: header, metadata, tensor bytes.
pub fn encode_message(meta: &WireMeta, tensor: &[u8]) -> Result<Vec<u8>> {
    let mut m = Vec::new();
    for (field, v) in [
        (5u64, u64::from(meta.hidden_dim)),
        (6, u64::from(meta.num_layers)),
    ] {
        if v != 0 {
            varint(&mut m, field << 3);
            varint(&mut m, v);
        }
    }
    if meta.payload == PayloadKind::KvCache {
        varint(&mut m, 7 << 3);
        varint(&mut m, 1);
    }
    if meta.dtype.code() != 0 {
        varint(&mut m, 8 << 3);
        varint(&mut m, u64::from(meta.dtype.code()));
    }
    if !meta.tensor_shape.is_empty() {
        let mut packed = Vec::new();
        for &d in &meta.tensor_shape {
            varint(&mut packed, u64::from(d));
        }
        bytes_field(&mut m, 9, &packed);
    }
    for (k, v) in &meta.extra {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, k.as_bytes());
        bytes_field(&mut entry, 2, v.as_bytes());
        bytes_field(&mut m, 14, &entry);
    }
    varint(&mut m, 15 << 3);
    varint(&mut m, u64::from(crc32(tensor)));
    let total = m
        .len()
        .checked_add(tensor.len())
        .and_then(|t| u32::try_from(t).ok());
    let (Some(total), Ok(meta_len)) = (total, u32::try_from(m.len())) else {
        return Err(EngineError::InvalidArgument(
            "message larger than 4 GiB".into(),
        ));
    };
    let flags: u8 = if meta.payload == PayloadKind::KvCache {
        0x04
    } else {
        0
    };
    let mut out = Vec::with_capacity(12 + total as usize);
    out.extend_from_slice(&[0x41, 0x56, 1, flags]);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(tensor);
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| bad("length overflow"))?;
        if n > self.0.len() {
            return Err(bad("field runs past the metadata"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

fn bad(m: &str) -> EngineError {
    EngineError::InvalidContext(m.to_owned())
}

/// A decoded message: metadata and the (uncompressed) tensor bytes.
#[derive(Debug)]
pub struct WireMessage<'a> {
    /// Metadata fields the engine uses.
    pub meta: WireMeta,
    /// Tensor bytes.
    pub tensor: &'a [u8],
}

/// Decodes an uncompressed message, verifying length fields and checksum.
pub fn decode_message(bytes: &[u8]) -> Result<WireMessage<'_>> {
    let header = bytes
        .get(..12)
        .ok_or_else(|| bad("shorter than the 12-byte header"))?;
    if header.get(..2) != Some(&[0x41, 0x56][..]) {
        return Err(bad("bad magic"));
    }
    if header.get(2) != Some(&1) {
        return Err(bad("unsupported version"));
    }
    if header.get(3).is_some_and(|f| f & 1 != 0) {
        return Err(EngineError::Unsupported(
            "compressed messages (needs the codec crate)".into(),
        ));
    }
    let le = |r: std::ops::Range<usize>| -> u32 {
        let mut a = [0u8; 4];
        if let Some(s) = header.get(r) {
            a.copy_from_slice(s);
        }
        u32::from_le_bytes(a)
    };
    let (payload_len, meta_len) = (le(4..8) as usize, le(8..12) as usize);
    let body = bytes.get(12..).unwrap_or_default();
    if payload_len > body.len() || meta_len > payload_len {
        return Err(bad("truncated message"));
    }
    let (meta_bytes, rest) = body.split_at(meta_len);
    let tensor = rest.get(..payload_len - meta_len).unwrap_or_default();
    let mut r = Reader(meta_bytes);
    let mut meta = WireMeta {
        hidden_dim: 0,
        num_layers: 0,
        payload: PayloadKind::HiddenState,
        dtype: WireDtype::Float32,
        tensor_shape: Vec::new(),
        extra: BTreeMap::new(),
    };
    let mut checksum = None;
    while !r.0.is_empty() {
        let key = r.varint()?;
        let (field, wt) = (key >> 3, key & 7);
        match wt {
            0 => {
                let v = r.varint()?;
                match field {
                    5 => meta.hidden_dim = v as u32,
                    6 => meta.num_layers = v as u32,
                    7 => {
                        meta.payload = match v {
                            0 => PayloadKind::HiddenState,
                            1 => PayloadKind::KvCache,
                            _ => return Err(bad("unsupported payload type")),
                        }
                    }
                    8 => {
                        meta.dtype =
                            WireDtype::from_code(v).ok_or_else(|| bad("unsupported dtype"))?
                    }
                    9 => meta.tensor_shape.push(v as u32),
                    15 => checksum = Some(v as u32),
                    _ => {}
                }
            }
            2 => {
                let len = r.varint()?;
                let data = r.take(len)?;
                if field == 9 {
                    let mut p = Reader(data);
                    while !p.0.is_empty() {
                        meta.tensor_shape.push(p.varint()? as u32);
                    }
                } else if field == 14 {
                    let mut e = Reader(data);
                    let (mut k, mut v) = (String::new(), String::new());
                    while !e.0.is_empty() {
                        let key = e.varint()?;
                        if key & 7 != 2 {
                            return Err(bad("malformed extra entry"));
                        }
                        let len = e.varint()?;
                        let s = std::str::from_utf8(e.take(len)?)
                            .map_err(|_| bad("extra is not UTF-8"))?;
                        if key >> 3 == 1 {
                            k = s.to_owned()
                        } else {
                            v = s.to_owned()
                        }
                    }
                    meta.extra.insert(k, v);
                }
            }
            1 => {
                r.take(8)?;
            }
            5 => {
                r.take(4)?;
            }
            _ => return Err(bad("malformed metadata")),
        }
    }
    if let Some(c) = checksum {
        if crc32(tensor) != c {
            return Err(bad("payload checksum mismatch"));
        }
    }
    Ok(WireMessage { meta, tensor })
}

/// CRC-32 (IEEE), as zlib computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *slot = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table
            .get(((crc ^ u32::from(b)) & 0xff) as usize)
            .copied()
            .unwrap_or(0)
            ^ (crc >> 8);
    }
    !crc
}

/// The KV inner header: `<IIIIB` num_layers, num_kv_heads, head_dim, seq_len, dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHeader {
    /// Layers.
    pub num_layers: u32,
    /// KV heads.
    pub num_kv_heads: u32,
    /// Head width.
    pub head_dim: u32,
    /// Positions.
    pub seq_len: u32,
    /// Element type.
    pub dtype: WireDtype,
}

impl KvHeader {
    /// The 17 header bytes.
    pub fn to_bytes(&self) -> [u8; KV_HEADER_LEN] {
        let mut b = [0u8; KV_HEADER_LEN];
        for (i, v) in [
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            self.seq_len,
        ]
        .iter()
        .enumerate()
        {
            if let Some(s) = b.get_mut(i * 4..i * 4 + 4) {
                s.copy_from_slice(&v.to_le_bytes());
            }
        }
        if let Some(last) = b.last_mut() {
            *last = self.dtype.code();
        }
        b
    }

    /// Parses the header; unknown dtype bytes are refused.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        let h = payload
            .get(..KV_HEADER_LEN)
            .ok_or_else(|| bad("KV payload shorter than its 17-byte header"))?;
        let u = |i: usize| -> u32 {
            let mut a = [0u8; 4];
            if let Some(s) = h.get(i * 4..i * 4 + 4) {
                a.copy_from_slice(s);
            }
            u32::from_le_bytes(a)
        };
        let dtype = h
            .get(16)
            .and_then(|&b| WireDtype::from_code(u64::from(b)))
            .ok_or_else(|| bad("unknown KV dtype byte"))?;
        Ok(Self {
            num_layers: u(0),
            num_kv_heads: u(1),
            head_dim: u(2),
            seq_len: u(3),
            dtype,
        })
    }

    /// Bytes of one K (or V) tensor, checked.
    pub fn tensor_bytes(&self) -> Option<usize> {
        (self.num_kv_heads as usize)
            .checked_mul(self.seq_len as usize)?
            .checked_mul(self.head_dim as usize)?
            .checked_mul(self.dtype.size())
    }
}
