//! The engine's only contact with the AVP wire format, through `avp-codec`:
//! building and reading KV_CACHE, KV_CACHE_EXT and HIDDEN_STATE messages
//! (AVP-ENG-7, AVP-ENG-17, AVP-ENG-28).
//!
//! [`WireMeta`] is the slice of the Metadata the engine reads and writes;
//! everything else (header, checksum, compression, limits, proto3 rules) is
//! the codec's. `extra` is written sorted by key, as the codec always does.

use std::borrow::Cow;
use std::collections::BTreeMap;

pub use avp_codec::kv::{KV_HEADER_LEN, KvDtype, KvHeader};
use avp_codec::{Compression, DataType, Metadata, Mode, PayloadType};

use crate::error::{EngineError, Result};

/// Wire payload types the engine writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadKind {
    /// A hidden-state vector.
    HiddenState,
    /// A serialized KV-cache.
    KvCache,
    /// A quantized or delta KV-cache (AVP-KVQ-1; see kv_quant.rs).
    KvCacheExt,
}

impl PayloadKind {
    /// The protocol's name of the payload type.
    pub fn name(self) -> &'static str {
        match self {
            PayloadKind::HiddenState => "HIDDEN_STATE",
            PayloadKind::KvCache => "KV_CACHE",
            PayloadKind::KvCacheExt => "KV_CACHE_EXT",
        }
    }
}

/// The metadata fields the engine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMeta {
    /// Field 5.
    pub hidden_dim: u32,
    /// Field 6.
    pub num_layers: u32,
    /// Field 7.
    pub payload: PayloadKind,
    /// Field 8.
    pub dtype: KvDtype,
    /// Field 9.
    pub tensor_shape: Vec<u32>,
    /// Field 13 (sets the HAS_MAP flag when non-empty).
    pub avp_map_id: String,
    /// Field 14.
    pub extra: BTreeMap<String, String>,
}

/// A decoded message: the metadata the engine uses and the (decompressed) tensor bytes.
#[derive(Debug)]
pub struct WireMessage<'a> {
    /// Metadata fields the engine uses.
    pub meta: WireMeta,
    /// Tensor bytes (borrowed from the input unless the message was compressed).
    pub tensor: Cow<'a, [u8]>,
}

/// Encodes one uncompressed message (metadata mode LATENT).
pub fn encode_message(meta: &WireMeta, tensor: &[u8]) -> Result<Vec<u8>> {
    avp_codec::encode(&metadata_of(meta), tensor, Compression::None).map_err(EngineError::Wire)
}

/// The codec metadata of `meta` (mode LATENT): what [`encode_message`]
/// writes, and the base every chunk of a chunked context repeats.
pub(crate) fn metadata_of(meta: &WireMeta) -> Metadata<'_> {
    Metadata::new()
        .with_hidden_dim(meta.hidden_dim)
        .with_num_layers(meta.num_layers)
        .with_payload_type(match meta.payload {
            PayloadKind::HiddenState => PayloadType::HiddenState,
            PayloadKind::KvCache => PayloadType::KvCache,
            PayloadKind::KvCacheExt => PayloadType::KvCacheExt,
        })
        .with_dtype(meta.dtype.data_type())
        .with_tensor_shape(meta.tensor_shape.as_slice())
        .with_mode(Mode::Latent)
        .with_avp_map_id(Cow::Borrowed(meta.avp_map_id.as_str()))
        .with_extra(
            meta.extra
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                .collect::<avp_codec::Extra<'_>>(),
        )
}

/// Decodes a message (compatible mode: what the SDK accepts), verifying the checksum.
pub fn decode_message(bytes: &[u8]) -> Result<WireMessage<'_>> {
    let msg = avp_codec::decode(bytes).map_err(EngineError::Wire)?;
    wire_message(msg)
}

/// Decodes one chunk of a chunked context (spec/protocol/chunked.md):
/// the message as [`decode_message`] reads it and the codec's view of the
/// chunk (descriptor, KV header, checksum), `None` for a message that is no chunk.
pub(crate) fn decode_chunk(
    bytes: &[u8],
) -> Result<Option<(WireMessage<'_>, avp_codec::chunk::ChunkInfo)>> {
    let msg = avp_codec::decode(bytes).map_err(EngineError::Wire)?;
    match avp_codec::chunk::ChunkInfo::of_message(&msg).map_err(EngineError::Wire)? {
        None => Ok(None),
        Some(info) => Ok(Some((wire_message(msg)?, info))),
    }
}

fn wire_message(msg: avp_codec::Message<'_>) -> Result<WireMessage<'_>> {
    let m = &msg.metadata;
    let payload = match m.payload_type {
        PayloadType::HiddenState => PayloadKind::HiddenState,
        PayloadType::KvCache => PayloadKind::KvCache,
        PayloadType::KvCacheExt => PayloadKind::KvCacheExt,
        other => {
            return Err(EngineError::InvalidContext(format!(
                "payload type {} is not supported",
                other.name()
            )));
        }
    };
    let dtype = match m.dtype {
        DataType::Float32 => KvDtype::Float32,
        DataType::Float16 => KvDtype::Float16,
        DataType::Bfloat16 => KvDtype::Bfloat16,
        other => {
            return Err(EngineError::InvalidContext(format!(
                "dtype {} is not supported",
                other.name()
            )));
        }
    };
    let meta = WireMeta {
        hidden_dim: m.hidden_dim,
        num_layers: m.num_layers,
        payload,
        dtype,
        tensor_shape: m.tensor_shape.to_vec(),
        avp_map_id: m.avp_map_id.to_string(),
        extra: m
            .extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    Ok(WireMessage {
        meta,
        tensor: msg.payload,
    })
}

/// Bytes per element of a KV dtype.
pub fn element_size(d: KvDtype) -> usize {
    match d {
        KvDtype::Float32 => 4,
        _ => 2,
    }
}
