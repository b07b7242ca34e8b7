//! Compact contexts on the receiving side (issue 17; spec/protocol/http.md
//! AVP-HTTP-100/81, spec/impl/transport.md AVP-HTTP-102): the `KV_CACHE_EXT`
//! capabilities an agent announces, the check that a message uses only
//! those, and the plain KV v1 message it is stored as (dequantized, and a
//! delta assembled onto its base from the store). Also the prefix address
//! a stored KV context is indexed under.

use avp_codec::kv::KvCache;
use avp_codec::kv_delta::{
    assemble_into, assembled_len, base_too_short, indexed_length_mismatch, missing_prefix,
    prefix_address,
};
use avp_codec::kv_quant::{KvExt, KvExtHeader, KvScheme, PrefixAddress};
use avp_codec::mac::MacKey;
use avp_codec::{
    Compression, DecodeOptions, Error as WireError, Metadata, PayloadType, Shape, decode_with,
    encode,
};
use bytes::Bytes;

use crate::store::{ContextStore, IndexedAs};

/// Capability: accepts `KV_CACHE_EXT` payloads of scheme int8 (AVP-KVQ-1).
pub const CAP_KV_INT8: &str = "kv_quant_int8";
/// Capability: accepts `KV_CACHE_EXT` payloads of scheme int4 (AVP-KVQ-1).
pub const CAP_KV_INT4: &str = "kv_quant_int4";
/// Capability: accepts `KV_CACHE_EXT` payloads of scheme int8-channel (AVP-KVQ-1, AVP-KVQ-30).
pub const CAP_KV_INT8_CHANNEL: &str = "kv_quant_int8_channel";
/// Capability: accepts delta payloads and answers `missing_prefix` (AVP-KVD-5).
pub const CAP_KV_DELTA: &str = "kv_delta";
/// Metadata `extra` key of a delta's base hint (AVP-KVD-31): 64 lowercase
/// hex digits, the address of all positions of a context the sender
/// believes the receiver holds, and which starts with the delta's prefix.
pub const DELTA_BASE_KEY: &str = "avp.delta_base";

/// Which `KV_CACHE_EXT` features a peer announced (or we announce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCapabilities {
    /// `kv_quant_int8`.
    pub int8: bool,
    /// `kv_quant_int4`.
    pub int4: bool,
    /// `kv_quant_int8_channel`.
    pub int8_channel: bool,
    /// `kv_delta`.
    pub delta: bool,
}

impl KvCapabilities {
    /// Everything this crate's agent implements (its default).
    pub const ALL: KvCapabilities = KvCapabilities {
        int8: true,
        int4: true,
        int8_channel: true,
        delta: true,
    };
    /// Nothing: a plain AVP v1 peer (the SDK 0.6.2).
    pub const NONE: KvCapabilities = KvCapabilities {
        int8: false,
        int4: false,
        int8_channel: false,
        delta: false,
    };

    /// The capability names set, in registry order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.int8, CAP_KV_INT8),
            (self.int4, CAP_KV_INT4),
            (self.int8_channel, CAP_KV_INT8_CHANNEL),
            (self.delta, CAP_KV_DELTA),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// From a hello's capabilities: `is_true(name)` says whether the
    /// capability's value is `true` (AVP-KVQ-1; any other value is absent).
    pub fn from_hello(is_true: impl Fn(&str) -> bool) -> KvCapabilities {
        KvCapabilities {
            int8: is_true(CAP_KV_INT8),
            int4: is_true(CAP_KV_INT4),
            int8_channel: is_true(CAP_KV_INT8_CHANNEL),
            delta: is_true(CAP_KV_DELTA),
        }
    }

    /// Whether the peer accepts `scheme` (scheme none needs no capability).
    pub fn accepts_scheme(self, scheme: KvScheme) -> bool {
        match scheme {
            KvScheme::Int8 => self.int8,
            KvScheme::Int4 => self.int4,
            KvScheme::Int8Channel => self.int8_channel,
            _ => true,
        }
    }

    /// The capability a quantized `scheme` needs (AVP-KVQ-1); `None` for
    /// scheme none, which needs none.
    pub fn scheme_capability(scheme: KvScheme) -> Option<&'static str> {
        match scheme {
            KvScheme::Int8 => Some(CAP_KV_INT8),
            KvScheme::Int4 => Some(CAP_KV_INT4),
            KvScheme::Int8Channel => Some(CAP_KV_INT8_CHANNEL),
            _ => None,
        }
    }

    /// The first capability a payload with `header` needs and `self` lacks
    /// (AVP-KVQ-1): the scheme's, then `kv_delta` for `seq_start > 0`.
    pub fn missing_for(self, header: &KvExtHeader) -> Option<&'static str> {
        if !self.accepts_scheme(header.scheme) {
            return Some(Self::scheme_capability(header.scheme).unwrap_or(CAP_KV_INT8));
        }
        (header.seq_start > 0 && !self.delta).then_some(CAP_KV_DELTA)
    }
}

/// Why a transmit was refused here (each maps to one HTTP answer, AVP-HTTP-100/81).
#[derive(Debug)]
#[non_exhaustive]
pub enum KvRefusal {
    /// Peer fault: the payload uses a capability this agent did not announce
    /// (400 `capability_not_announced`).
    NotAnnounced(&'static str),
    /// Peer fault: the dequantized or assembled message would exceed the
    /// transmit limit (413 `limit_exceeded`).
    TooLarge {
        /// Bytes the stored message would have.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The codec's verdict: a bad message, `missing_prefix`,
    /// `prefix_mismatch`, `delta_mismatch`, a bad scale.
    Wire(WireError),
    /// Our side: the base could not be read back from the store.
    Store(std::io::Error),
    /// Our bug: a check that passed did not hold later (500 `internal`).
    Internal(String),
}

/// A checked transmit, ready for the store.
#[derive(Debug)]
pub struct Accepted {
    /// What to store: the body as sent, or the plain KV message made from a
    /// `KV_CACHE_EXT` one.
    pub bytes: Bytes,
    /// Codes of what compatible decoding tolerated (AVP-HTTP-21).
    pub warnings: Vec<&'static str>,
    /// The stored KV context's full-length prefix address (indexed only
    /// when the agent announces `kv_delta`).
    pub kv_prefix: Option<PrefixAddress>,
    /// For a context assembled from a delta on `[0, p)`: `p` and its
    /// verified address, indexed too (AVP-HTTP-120).
    pub kv_boundary: Option<(u32, PrefixAddress)>,
    /// For a `KV_CACHE_EXT` message: what it carried.
    pub ext: Option<ExtReceived>,
}

/// What a `KV_CACHE_EXT` transmit carried (reported in the answer).
#[derive(Debug, Clone, Copy)]
pub struct ExtReceived {
    /// Its scheme's name (`none`, `int8`, `int4`).
    pub scheme: &'static str,
    /// First position carried (`> 0`: a delta).
    pub seq_start: u32,
    /// Length of the whole context.
    pub seq_len: u32,
    /// Bytes of the message as sent.
    pub received: u64,
}

/// The checks of AVP-HTTP-31 (keyed MAC first when `key` is set, then the
/// codec's compatible decode), then for KV messages AVP-HTTP-100/81: a
/// `KV_CACHE_EXT` message is checked against `caps`, dequantized (and a
/// delta assembled onto its base from `store`) into a plain KV message of
/// at most `limit` bytes. Blocking: run it off the async threads.
pub fn accept(
    bytes: Bytes,
    key: Option<&MacKey>,
    caps: KvCapabilities,
    store: &ContextStore,
    limit: u64,
) -> Result<Accepted, KvRefusal> {
    let options = DecodeOptions::DEFAULT;
    if let Some(key) = key {
        avp_codec::mac::verify(&bytes, key, &options.limits).map_err(KvRefusal::Wire)?;
    }
    let message = decode_with(&bytes, &options).map_err(KvRefusal::Wire)?;
    let warnings = message.warnings.iter().map(|w| w.code()).collect();
    let model_hash = message
        .metadata
        .extra
        .get("model_hash")
        .unwrap_or_default()
        .to_owned();
    match message.metadata.payload_type {
        PayloadType::KvCache => {
            // A KV payload our index cannot read is stored all the same
            // (AVP-HTTP-32); it just cannot be a delta's base.
            let kv_prefix = if caps.delta {
                KvCache::parse(&message.payload)
                    .ok()
                    .and_then(|kv| full_address(&kv, &model_hash).ok())
            } else {
                None
            };
            drop(message);
            Ok(Accepted {
                bytes,
                warnings,
                kv_prefix,
                kv_boundary: None,
                ext: None,
            })
        }
        PayloadType::KvCacheExt => {
            let ext = KvExt::parse(&message.payload).map_err(KvRefusal::Wire)?;
            if let Some(capability) = caps.missing_for(&ext.header) {
                return Err(KvRefusal::NotAnnounced(capability));
            }
            let hint = message
                .metadata
                .extra
                .get(DELTA_BASE_KEY)
                .and_then(crate::store::address_from_hex);
            let expanded = expand(&ext, store, &message.metadata, limit, hint)?;
            let mut metadata = message.metadata.clone();
            metadata.payload_type = PayloadType::KvCache;
            metadata.dtype = ext.header.dtype.data_type();
            metadata.tensor_shape = Shape::default();
            metadata.compression = None;
            metadata.payload_checksum = None;
            // The hint named the sender's base for this transfer; the stored
            // context is whole and names nothing (AVP-KVD-31).
            metadata.extra.remove(DELTA_BASE_KEY);
            let (stored, tensor) = expanded.into_message(&metadata)?;
            let kv_prefix = if caps.delta {
                let kv = KvCache::parse(&stored[tensor..]).map_err(internal)?;
                Some(full_address(&kv, &model_hash).map_err(internal)?)
            } else {
                None
            };
            Ok(Accepted {
                ext: Some(ExtReceived {
                    scheme: ext.header.scheme.name(),
                    seq_start: ext.header.seq_start,
                    seq_len: ext.header.seq_len,
                    received: bytes.len() as u64,
                }),
                bytes: stored,
                warnings,
                kv_prefix,
                // The delta's address was checked against the base's bytes.
                kv_boundary: ext
                    .prefix
                    .filter(|_| caps.delta && ext.header.seq_start > 0)
                    .map(|a| (ext.header.seq_start, a)),
            })
        }
        _ => Ok(Accepted {
            bytes: bytes.clone(),
            warnings,
            kv_prefix: None,
            kv_boundary: None,
            ext: None,
        }),
    }
}

/// The address a stored context is indexed under: all its positions (AVP-HTTP-102).
pub fn full_address(kv: &KvCache<'_>, model_hash: &str) -> Result<PrefixAddress, WireError> {
    prefix_address(kv, kv.header.seq_len, model_hash)
}

/// The KV v1 payload of the whole context: dequantized, and for a delta
/// assembled onto its base (AVP-KVD-3/4/5): the context indexed under the
/// delta's address (all its positions, or a boundary inside it,
/// AVP-HTTP-120), else the context the sender's `hint` names, whose
/// `[0, p)` is hashed here (AVP-HTTP-122).
fn expand(
    ext: &KvExt<'_>,
    store: &ContextStore,
    metadata: &Metadata<'_>,
    limit: u64,
    hint: Option<PrefixAddress>,
) -> Result<Expanded, KvRefusal> {
    let len = assembled_len(ext);
    // The stored message adds the header and metadata to the tensor.
    let bytes = len.saturating_add(metadata.encoded_len() as u64 + 64);
    if bytes > limit {
        return Err(KvRefusal::TooLarge { bytes, limit });
    }
    if ext.header.seq_start == 0 {
        return Ok(Expanded {
            buf: ext.dequantize().map_err(KvRefusal::Wire)?,
            room: 0,
        });
    }
    let Some(address) = ext.prefix else {
        return Err(internal("a delta without a prefix address after parse"));
    };
    let p = ext.header.seq_start;
    let (base_bytes, indexed) = match store.find_prefix(&address).map_err(KvRefusal::Store)? {
        Some((_, how, bytes)) => (bytes, Some(how)),
        None => {
            let hinted = match hint {
                Some(h) => store.find_prefix(&h).map_err(KvRefusal::Store)?,
                None => None,
            };
            match hinted {
                Some((_, _, bytes)) => (bytes, None),
                None => return Err(KvRefusal::Wire(missing_prefix(&address))),
            }
        }
    };
    let base_message =
        decode_with(&base_bytes, &DecodeOptions::DEFAULT).map_err(stored_unreadable)?;
    let base = KvCache::parse(&base_message.payload).map_err(stored_unreadable)?;
    let base_address = match indexed {
        // The index holds what we computed or verified from these bytes
        // when we stored them (AVP-KVD-3), for one length: the delta's
        // address must be of that length too.
        Some(how) => {
            let held = match how {
                IndexedAs::Whole => base.header.seq_len,
                IndexedAs::Boundary(q) => q,
            };
            if held != p {
                return Err(KvRefusal::Wire(indexed_length_mismatch(p, held)));
            }
            address
        }
        // A name the sender chose: hash what we hold (AVP-KVD-1/3).
        None => {
            let base_hash = base_message
                .metadata
                .extra
                .get("model_hash")
                .unwrap_or_default();
            if base.header.seq_len < p {
                return Err(KvRefusal::Wire(base_too_short(p, base.header.seq_len)));
            }
            prefix_address(&base, p, base_hash).map_err(KvRefusal::Wire)?
        }
    };
    // Room in front for the stored message's header and metadata, so that
    // the assembled context is written once, where the message needs it.
    let room = metadata.encoded_len().saturating_add(64);
    let total = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(room))
        .ok_or(KvRefusal::TooLarge {
            bytes: len,
            limit: usize::MAX as u64,
        })?;
    let mut buf = vec![0u8; total];
    let out = buf
        .get_mut(room..)
        .ok_or_else(|| internal("the assembly buffer is shorter than its room"))?;
    assemble_into(&base, &base_address, ext, out).map_err(KvRefusal::Wire)?;
    Ok(Expanded { buf, room })
}

/// A KV v1 payload at `buf[room..]`, with `room` bytes free in front of it.
struct Expanded {
    buf: Vec<u8>,
    room: usize,
}

impl Expanded {
    /// The plain message of `metadata` and this payload, and where the
    /// payload starts in it. The header and metadata go into the room when
    /// they fit (no copy of the payload); else the message is encoded anew.
    fn into_message(self, metadata: &Metadata<'_>) -> Result<(Bytes, usize), KvRefusal> {
        let Expanded { mut buf, room } = self;
        let tensor = buf.get(room..).unwrap_or_default();
        let prefix = avp_codec::encode_prefix(metadata, tensor).map_err(internal)?;
        match room.checked_sub(prefix.len()) {
            Some(start) => {
                buf.get_mut(start..room)
                    .ok_or_else(|| internal("the room moved"))?
                    .copy_from_slice(&prefix);
                Ok((Bytes::from(buf).slice(start..), prefix.len()))
            }
            None => {
                let stored = encode(metadata, tensor, Compression::None).map_err(internal)?;
                Ok((Bytes::from(stored), prefix.len()))
            }
        }
    }
}

fn internal(why: impl std::fmt::Display) -> KvRefusal {
    KvRefusal::Internal(why.to_string())
}

fn stored_unreadable(err: WireError) -> KvRefusal {
    KvRefusal::Store(std::io::Error::other(format!(
        "a stored base context no longer decodes: {err}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use avp_codec::kv::{KvDtype, KvHeader, write_kv_cache};
    use avp_codec::kv_quant::{QuantParams, encode_ext};
    use std::time::Duration;

    fn context(seq: u32) -> Vec<u8> {
        let header = KvHeader {
            num_layers: 2,
            num_kv_heads: 2,
            head_dim: 64,
            seq_len: seq,
            dtype: KvDtype::Float32,
        };
        // A value depends on (head, position, channel) only: a longer
        // context continues a shorter one.
        let tensor = |salt: u32| -> Vec<u8> {
            let mut out = Vec::new();
            for h in 0..2u32 {
                for p in 0..seq {
                    for c in 0..64u32 {
                        let i = (h * 131 + p * 17 + c * 5 + salt) % 97;
                        out.extend_from_slice(&(i as f32 / 10.0 - 4.0).to_le_bytes());
                    }
                }
            }
            out
        };
        let (k, v) = (tensor(1), tensor(2));
        write_kv_cache(&header, [(&k[..], &v[..]), (&k[..], &v[..])]).expect("kv")
    }

    fn message(payload_type: PayloadType, tensor: &[u8]) -> Bytes {
        let metadata = Metadata::new()
            .with_payload_type(payload_type)
            .with_dtype(avp_codec::DataType::Float32)
            .with_extra_entry("model_hash", "m");
        Bytes::from(encode(&metadata, tensor, Compression::None).expect("encode"))
    }

    /// AVP-HTTP-100, AVP-KVQ-30: scheme 3 needs `kv_quant_int8_channel`,
    /// and only that one (int8 and int4 announced do not admit it).
    #[test]
    fn http_100_int8_channel_needs_its_own_capability() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        let full = context(32);
        let kv = KvCache::parse(&full).expect("kv");
        let params = QuantParams {
            group_size: 32,
            ..QuantParams::INT8_CHANNEL
        };
        let q = encode_ext(&kv, &params, 0, None).expect("int8-channel");
        let caps = KvCapabilities {
            int8_channel: false,
            ..KvCapabilities::ALL
        };
        assert_eq!(
            caps.names(),
            ["kv_quant_int8", "kv_quant_int4", "kv_delta"],
            "registry order without it"
        );
        let refused = accept(
            message(PayloadType::KvCacheExt, &q),
            None,
            caps,
            &store,
            1 << 30,
        );
        assert!(
            matches!(refused, Err(KvRefusal::NotAnnounced(CAP_KV_INT8_CHANNEL))),
            "{refused:?}"
        );
        let only = KvCapabilities {
            int8_channel: true,
            ..KvCapabilities::NONE
        };
        let ok = accept(
            message(PayloadType::KvCacheExt, &q),
            None,
            only,
            &store,
            1 << 30,
        )
        .expect("announced");
        let stored = decode_with(&ok.bytes, &DecodeOptions::strict()).expect("plain v1");
        assert_eq!(stored.payload.len(), full.len());
    }

    /// AVP-HTTP-100: a scheme that was not announced is refused, typed.
    #[test]
    fn http_100_unannounced_schemes_are_refused() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        let full = context(32);
        let kv = KvCache::parse(&full).expect("kv");
        let q = encode_ext(&kv, &QuantParams::INT4, 0, None).expect("int4");
        let caps = KvCapabilities {
            int4: false,
            ..KvCapabilities::ALL
        };
        let refused = accept(
            message(PayloadType::KvCacheExt, &q),
            None,
            caps,
            &store,
            1 << 30,
        );
        assert!(
            matches!(refused, Err(KvRefusal::NotAnnounced(CAP_KV_INT4))),
            "{refused:?}"
        );
        let ok = accept(
            message(PayloadType::KvCacheExt, &q),
            None,
            KvCapabilities::ALL,
            &store,
            1 << 30,
        )
        .expect("announced");
        let stored = decode_with(&ok.bytes, &DecodeOptions::strict()).expect("plain v1");
        assert_eq!(stored.metadata.payload_type, PayloadType::KvCache);
        assert_eq!(stored.payload.len(), full.len());
        let too_small = accept(
            message(PayloadType::KvCacheExt, &q),
            None,
            KvCapabilities::ALL,
            &store,
            full.len() as u64,
        );
        assert!(matches!(too_small, Err(KvRefusal::TooLarge { .. })));
    }

    /// AVP-HTTP-101: a delta is assembled onto the indexed base into the
    /// full context; without the base it is `missing_prefix`; a delta that
    /// names the base's address but does not fit it is `delta_mismatch`.
    #[test]
    fn http_101_deltas_find_their_base_or_are_refused_typed() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        let (base, full) = (context(8), context(20));
        let kv = KvCache::parse(&full).expect("kv");
        let (address, delta) =
            avp_codec::kv_delta::split_delta(&kv, 8, "m", &QuantParams::NONE).expect("delta");
        let send = |payload: &[u8]| {
            accept(
                message(PayloadType::KvCacheExt, payload),
                None,
                KvCapabilities::ALL,
                &store,
                1 << 30,
            )
        };
        let missing = send(&delta);
        assert!(
            matches!(&missing, Err(KvRefusal::Wire(e)) if e.kind() == avp_codec::ErrorKind::MissingPrefix),
            "{missing:?}"
        );
        let stored = accept(
            message(PayloadType::KvCache, &base),
            None,
            KvCapabilities::ALL,
            &store,
            1 << 30,
        )
        .expect("base");
        assert_eq!(
            stored.kv_prefix,
            Some(address),
            "indexed at its full length"
        );
        let context = crate::store::StoredContext {
            id: crate::store::new_id(),
            session_id: String::new(),
            source_agent_id: String::new(),
            target_agent_id: String::new(),
            client_identity: None,
            len: 0,
            received_at: std::time::SystemTime::now(),
            path: None,
            text: false,
            kv_prefix: stored.kv_prefix,
            kv_boundary: None,
        };
        store.put(context, stored.bytes).expect("put");
        let assembled = send(&delta).expect("assembled");
        let got = decode_with(&assembled.bytes, &DecodeOptions::strict()).expect("v1");
        assert_eq!(&got.payload[..], &full[..], "byte for byte");

        // Another shape under the same (forged) address.
        let other = {
            let header = KvHeader {
                num_layers: 1,
                num_kv_heads: 2,
                head_dim: 64,
                seq_len: 20,
                dtype: KvDtype::Float32,
            };
            let t = vec![0u8; 2 * 64 * 20 * 4];
            write_kv_cache(&header, [(&t[..], &t[..])]).expect("kv")
        };
        let forged = encode_ext(
            &KvCache::parse(&other).expect("kv"),
            &QuantParams::NONE,
            8,
            Some(&address),
        )
        .expect("forged");
        let refused = send(&forged);
        assert!(
            matches!(&refused, Err(KvRefusal::Wire(e)) if e.kind() == avp_codec::ErrorKind::DeltaMismatch),
            "{refused:?}"
        );
        assert_eq!(store.indexed_prefixes(), 1, "nothing refused was indexed");
    }

    fn put(store: &ContextStore, accepted: Accepted) {
        let context = crate::store::StoredContext {
            id: crate::store::new_id(),
            session_id: String::new(),
            source_agent_id: String::new(),
            target_agent_id: String::new(),
            client_identity: None,
            len: 0,
            received_at: std::time::SystemTime::now(),
            path: None,
            text: false,
            kv_prefix: accepted.kv_prefix,
            kv_boundary: accepted.kv_boundary,
        };
        store.put(context, accepted.bytes).expect("put");
    }

    fn kind(result: &Result<Accepted, KvRefusal>) -> Option<avp_codec::ErrorKind> {
        match result {
            Err(KvRefusal::Wire(e)) => Some(e.kind()),
            _ => None,
        }
    }

    /// AVP-HTTP-120 (a delta's boundary is indexed with the context made
    /// from it), AVP-HTTP-122 (a hint names a longer context; the receiver
    /// hashes its `[0, p)` itself), and an address that names another
    /// length than the delta's start is `prefix_mismatch` (AVP-KVD-33).
    /// Hint answers: AVP-KVD-31, AVP-KVD-32.
    #[test]
    fn http_120_122_hints_and_boundaries_find_bases_inside_longer_contexts() {
        let store = ContextStore::in_memory(Duration::from_secs(60));
        let send = |payload: &[u8], hint: Option<PrefixAddress>| {
            let mut metadata = Metadata::new()
                .with_payload_type(PayloadType::KvCacheExt)
                .with_dtype(avp_codec::DataType::Float32)
                .with_extra_entry("model_hash", "m");
            if let Some(h) = hint {
                metadata = metadata.with_extra_entry(DELTA_BASE_KEY, h.to_hex());
            }
            let bytes = Bytes::from(encode(&metadata, payload, Compression::None).expect("encode"));
            accept(bytes, None, KvCapabilities::ALL, &store, 1 << 30)
        };
        let stored20 = accept(
            message(PayloadType::KvCache, &context(20)),
            None,
            KvCapabilities::ALL,
            &store,
            1 << 30,
        )
        .expect("stored");
        let whole20 = stored20.kv_prefix.expect("indexed");
        put(&store, stored20);
        let (full30, full40) = (context(30), context(40));
        let kv30 = KvCache::parse(&full30).expect("kv");
        let (address8, delta) =
            avp_codec::kv_delta::split_delta(&kv30, 8, "m", &QuantParams::NONE).expect("delta");
        assert_eq!(
            kind(&send(&delta, None)),
            Some(avp_codec::ErrorKind::MissingPrefix),
            "[0, 8) is only inside the stored 20 positions, and nothing names it"
        );
        assert_eq!(
            kind(&send(&delta, Some(PrefixAddress([3; 32])))),
            Some(avp_codec::ErrorKind::MissingPrefix),
            "a hint naming nothing"
        );
        let via_hint = send(&delta, Some(whole20)).expect("assembled via the hint");
        assert_eq!(via_hint.kv_boundary, Some((8, address8)));
        let got = decode_with(&via_hint.bytes, &DecodeOptions::strict()).expect("v1");
        assert_eq!(&got.payload[..], &full30[..]);
        put(&store, via_hint);
        // Turn 3 on the boundary [0, 8), no hint: found in the index.
        let kv40 = KvCache::parse(&full40).expect("kv");
        let (_, delta40) =
            avp_codec::kv_delta::split_delta(&kv40, 8, "m", &QuantParams::NONE).expect("delta");
        let via_boundary = send(&delta40, None).expect("assembled via the boundary");
        let got = decode_with(&via_boundary.bytes, &DecodeOptions::strict()).expect("v1");
        assert_eq!(&got.payload[..], &full40[..]);
        // A hint naming a context that does not start with the delta's prefix.
        let other = {
            let mut t = context(40);
            let at = t.len() - 1;
            t[17] ^= 0x10;
            t[at] ^= 0x10;
            t
        };
        let (_, foreign) = avp_codec::kv_delta::split_delta(
            &KvCache::parse(&other).expect("kv"),
            8,
            "m",
            &QuantParams::NONE,
        )
        .expect("delta");
        assert_eq!(
            kind(&send(&foreign, Some(whole20))),
            Some(avp_codec::ErrorKind::PrefixMismatch)
        );
        // The address of all 20 positions, claimed for a delta starting at 8.
        let forged =
            encode_ext(&kv30, &QuantParams::NONE, 8, Some(&whole20)).expect("forged delta");
        assert_eq!(
            kind(&send(&forged, None)),
            Some(avp_codec::ErrorKind::PrefixMismatch)
        );
    }
}
