//! Compact contexts on the sending side (issue 17; spec/impl/transport.md
//! AVP-HTTP-103/84): once the handshake says what the peer accepts, a KV
//! context goes out quantized (`--kv-quant`), as the positions after a
//! context the peer holds (`--delta-from`), both, or in full. A delta the
//! peer cannot place (409 `missing_prefix`/`prefix_mismatch`) is followed by
//! the full context, once, without being asked (AVP-KVD-5).

use std::fmt;

use anyhow::{Context, Result, bail};
use avp_codec::kv::{KvCache, KvHeader};
use avp_codec::kv_delta::{common_prefix_len, prefix_address};
use avp_codec::kv_quant::{KvExtHeader, KvScheme, PrefixAddress, QuantParams, encode_ext};
use avp_codec::{DecodeOptions, Message, PayloadType, Shape, decode_with, encode_prefix};
use avp_transport::kv_wire::{DELTA_BASE_KEY, KvCapabilities};
use avp_transport::{AvpClient, TransportError};
use serde_json::Value;

/// What `--kv-quant-fallback` does when the peer did not announce the scheme.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum QuantFallback {
    // Plain comments: doc comments would switch `avp send --help` to its long layout.
    // Send nothing; exit 3.
    #[default]
    Error,
    // Send the context unquantized (a plain KV_CACHE message, or a plain delta).
    Full,
}

/// Exit status when the peer cannot take what was asked and no fallback
/// was allowed (AVP-HTTP-103).
pub(crate) const EXIT_NOT_NEGOTIATED: u8 = 3;

/// The peer did not announce a capability the message needs.
#[derive(Debug)]
pub(crate) struct NotNegotiated(pub(crate) String);

impl fmt::Display for NotNegotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotNegotiated {}

/// What to make of a KV message before sending it.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// Quantize with this scheme (int8/int4) when the peer announced it.
    pub(crate) quant: Option<KvScheme>,
    /// What to do when it did not.
    pub(crate) fallback: QuantFallback,
    /// A KV message the peer should hold (the previous turn, or any context
    /// that shares a prefix with this one): send only the positions after
    /// the shared prefix when the peer announced `kv_delta`.
    pub(crate) base: Option<&'a [u8]>,
}

/// What went out, for the caller's report.
pub(crate) struct Sent {
    /// The peer's answer to the last request.
    pub(crate) answer: Result<Value, TransportError>,
    /// Bytes of every message sent, in order (two when a delta fell back).
    pub(crate) sizes: Vec<usize>,
    /// How the last message was made, e.g. `int8 delta [12, 20)` or `plain`.
    pub(crate) form: String,
}

/// Sends `message` (an encoded AVP message) to `client`'s peer, whose
/// hello announced `caps`, made compact by `plan` as far as the peer
/// allows. A `KV_CACHE_EXT` message is sent as it is, or refused
/// ([`NotNegotiated`]) when it needs a capability the peer lacks.
pub(crate) async fn send_kv(
    client: &AvpClient,
    caps: KvCapabilities,
    message: &[u8],
    plan: &Plan<'_>,
) -> Result<Sent> {
    let decoded =
        decode_with(message, &DecodeOptions::DEFAULT).context("decoding the message to send")?;
    if decoded.metadata.payload_type == PayloadType::KvCacheExt {
        if plan.quant.is_some() || plan.base.is_some() {
            bail!(
                "the message is already KV_CACHE_EXT; --kv-quant and --delta-from take a plain KV_CACHE message"
            );
        }
        let header = KvExtHeader::parse(&decoded.payload).context("the KV_CACHE_EXT payload")?;
        if let Some(capability) = caps.missing_for(&header) {
            return Err(NotNegotiated(format!(
                "the peer did not announce {capability}, which this {} message needs (AVP-KVQ-1); make it a plain KV message first (avp convert IN -o OUT --kv-dtype float16)",
                header.scheme.name()
            ))
            .into());
        }
        let answer = client.transmit(message.to_vec().into()).await;
        return Ok(Sent {
            answer,
            sizes: vec![message.len()],
            form: format!("{} as given", header.scheme.name()),
        });
    }
    if decoded.metadata.payload_type != PayloadType::KvCache {
        bail!(
            "--kv-quant and --delta-from need a KV_CACHE message; this one is {}",
            decoded.metadata.payload_type.name()
        );
    }
    let full = KvCache::parse(&decoded.payload).context("the KV-cache payload")?;
    let model_hash = decoded
        .metadata
        .extra
        .get("model_hash")
        .unwrap_or_default()
        .to_owned();
    let scheme = match plan.quant {
        None => KvScheme::None,
        Some(scheme) if caps.accepts_scheme(scheme) => scheme,
        Some(scheme) => {
            let why = format!(
                "the peer did not announce {} in its hello (AVP-KVQ-1)",
                KvCapabilities::scheme_capability(scheme).unwrap_or("its capability")
            );
            match plan.fallback {
                QuantFallback::Error => {
                    return Err(NotNegotiated(format!(
                        "{why}; nothing sent (--kv-quant-fallback full sends the context unquantized)"
                    ))
                    .into());
                }
                QuantFallback::Full => {
                    crate::out::note(format_args!("avp: {why}: sending it unquantized"));
                    KvScheme::None
                }
            }
        }
    };
    let prefix = match plan.base {
        None => None,
        Some(base) => match shared_prefix(base, &full, &model_hash)? {
            None => {
                crate::out::note(
                    "avp: the context shares no position with the --delta-from base: sending the full context",
                );
                None
            }
            Some(found) if caps.delta => Some(found),
            Some(_) => {
                crate::out::note(
                    "avp: the peer did not announce kv_delta: sending the full context",
                );
                None
            }
        },
    };
    let start = prefix.as_ref().map_or(0, |d| d.p);
    let first = compact(message, &decoded, &full, scheme, prefix.as_ref())?;
    let mut sizes = vec![first.len()];
    let mut answer = client.transmit(first.into()).await;
    let mut form = form_name(scheme, start, full.header.seq_len);
    if start > 0 {
        if let Err(TransportError::Status {
            status: 409,
            kind: Some(kind),
            ..
        }) = &answer
        {
            if kind == "missing_prefix" || kind == "prefix_mismatch" {
                crate::out::note(format_args!(
                    "avp: the peer answered {kind} to the delta: sending the full context once (AVP-KVD-5)"
                ));
                let again = compact(message, &decoded, &full, scheme, None)?;
                sizes.push(again.len());
                answer = client.transmit(again.into()).await;
                form = form_name(scheme, 0, full.header.seq_len);
            }
        }
    }
    Ok(Sent {
        answer,
        sizes,
        form,
    })
}

/// Where a delta starts and what names its base.
pub(crate) struct DeltaStart {
    /// Positions `[0, p)` are the base's (AVP-KVD-30).
    pub(crate) p: u32,
    /// Their address (AVP-KVD-1).
    pub(crate) address: PrefixAddress,
    /// When the base is longer than `p`: the address of all its positions,
    /// sent as the `avp.delta_base` hint (AVP-KVD-31).
    pub(crate) hint: Option<PrefixAddress>,
}

/// The prefix `full` shares with `base` (AVP-KVD-30): `None` when they
/// share no position; an error when they cannot share one (not KV, another
/// shape or model). The bytes are compared, so `[0, p)` is hashed once, from
/// `full`; the base is hashed whole only when it is longer than `p` (the hint).
pub(crate) fn shared_prefix(
    base: &[u8],
    full: &KvCache<'_>,
    model_hash: &str,
) -> Result<Option<DeltaStart>> {
    // The base's bytes only choose p and the hint: the address is hashed
    // from the context sent, and the receiver checks it against what it
    // holds (AVP-KVD-3), so a damaged base costs a fallback, never a wrong
    // context. Its checksum is not worth a pass over it.
    let mut unverified = DecodeOptions::DEFAULT;
    unverified.verify_checksum = false;
    let decoded = decode_with(base, &unverified).context("decoding the --delta-from base")?;
    if decoded.metadata.payload_type != PayloadType::KvCache {
        bail!(
            "--delta-from needs a KV_CACHE message; the base is {}",
            decoded.metadata.payload_type.name()
        );
    }
    let base_hash = decoded.metadata.extra.get("model_hash").unwrap_or_default();
    if base_hash != model_hash {
        bail!(
            "the --delta-from base is a context of model {base_hash:?}, the context of {model_hash:?}"
        );
    }
    let kv = KvCache::parse(&decoded.payload).context("the base's KV-cache payload")?;
    // p = n (the base holds the whole context) sends a delta of no
    // positions, which confirms the base (AVP-KVD-2).
    let p = common_prefix_len(&kv, full)
        .context("the context and the --delta-from base cannot share a prefix")?;
    if p == 0 {
        return Ok(None);
    }
    let address = prefix_address(full, p, model_hash)?;
    let hint = if p < kv.header.seq_len {
        Some(prefix_address(&kv, kv.header.seq_len, model_hash)?)
    } else {
        None
    };
    Ok(Some(DeltaStart { p, address, hint }))
}

/// The message to send: `original` itself when nothing changes, else a
/// `KV_CACHE_EXT` message with `decoded`'s metadata carrying `full` in
/// `scheme`: positions `[p, n)` when `prefix` gives `p` and the address of
/// `[0, p)` (hashed once, by [`shared_prefix`]), with its hint, else all of them.
fn compact(
    original: &[u8],
    decoded: &Message<'_>,
    full: &KvCache<'_>,
    scheme: KvScheme,
    prefix: Option<&DeltaStart>,
) -> Result<Vec<u8>> {
    let (start, address) = match prefix {
        Some(d) => (d.p, Some(d.address)),
        None => (0, None),
    };
    if scheme == KvScheme::None && start == 0 {
        return Ok(original.to_vec());
    }
    let params = params_for(scheme, &full.header, start);
    let mut payload = encode_ext(full, &params, start, address.as_ref())?;
    let mut metadata = decoded.metadata.clone();
    metadata.payload_type = PayloadType::KvCacheExt;
    metadata.dtype = full.header.dtype.data_type();
    metadata.tensor_shape = Shape::default();
    metadata.compression = None;
    metadata.payload_checksum = None;
    // A stale hint copied from the input would name the wrong context.
    metadata.extra.remove(DELTA_BASE_KEY);
    if let Some(hint) = prefix.and_then(|d| d.hint) {
        metadata.extra.insert(DELTA_BASE_KEY, hint.to_hex());
    }
    // The header and metadata go in front of the payload in its own buffer
    // (a large one grows in place), not into a second allocation the size
    // of the message: its page faults cost more than the copy.
    let head = encode_prefix(&metadata, &payload)?;
    payload.splice(0..0, head);
    Ok(payload)
}

/// The scheme's defaults fitted to the shape: int8 groups are the largest
/// divisor of `head_dim` up to 64; int4 keeps the last `t mod 32` tokens
/// unquantized so that its per-channel key groups fill up (AVP-KVQ-4);
/// int8-channel takes the codec's fitted group and residual (AVP-KVQ-30).
pub(crate) fn params_for(scheme: KvScheme, header: &KvHeader, start: u32) -> QuantParams {
    let mut params = QuantParams::for_scheme(scheme);
    match scheme {
        KvScheme::Int8 => {
            params.group_size = (1..=64u32)
                .rev()
                .find(|g| header.head_dim % g == 0)
                .unwrap_or(1);
        }
        KvScheme::Int4 => {
            let tokens = header.seq_len.saturating_sub(start);
            params.residual = tokens % params.group_size.max(1);
        }
        KvScheme::Int8Channel => {
            params = QuantParams::int8_channel_for(header.head_dim);
        }
        _ => {}
    }
    params
}

fn form_name(scheme: KvScheme, start: u32, n: u32) -> String {
    let scheme = match scheme {
        KvScheme::None if start == 0 => "plain KV_CACHE",
        KvScheme::None => "unquantized",
        other => other.name(),
    };
    if start > 0 {
        format!("{scheme} delta [{start}, {n})")
    } else {
        format!("{scheme} context [0, {n})")
    }
}
