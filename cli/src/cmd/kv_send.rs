//! Compact contexts on the sending side (issue 17; spec/impl/transport.md
//! AVP-HTTP-103/84): once the handshake says what the peer accepts, a KV
//! context goes out quantized (`--kv-quant`), as the positions after a
//! context the peer holds (`--delta-from`), both, or in full. A delta the
//! peer cannot place (409 `missing_prefix`/`prefix_mismatch`) is followed by
//! the full context, once, without being asked (AVP-KVD-5).

use std::fmt;

use anyhow::{Context, Result, bail};
use avp_codec::kv::{KvCache, KvHeader};
use avp_codec::kv_delta::prefix_address;
use avp_codec::kv_quant::{KvExtHeader, KvScheme, PrefixAddress, QuantParams, encode_ext};
use avp_codec::{Compression, DecodeOptions, Message, PayloadType, Shape, decode_with, encode};
use avp_transport::kv_wire::KvCapabilities;
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
    /// A KV message the peer should hold (the previous turn): send only the
    /// positions after it when the peer announced `kv_delta`.
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
        Some(base) => {
            let found = check_continues(base, &full, &model_hash)?;
            if caps.delta {
                Some(found)
            } else {
                crate::out::note(
                    "avp: the peer did not announce kv_delta: sending the full context",
                );
                None
            }
        }
    };
    let start = prefix.map_or(0, |(p, _)| p);
    let first = compact(message, &decoded, &full, scheme, prefix)?;
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

/// `base`'s length `p` and the address of `[0, p)`, after checking that
/// `full` starts with it: same shape, and the prefix addresses agree (AVP-KVD-1).
fn check_continues(
    base: &[u8],
    full: &KvCache<'_>,
    model_hash: &str,
) -> Result<(u32, PrefixAddress)> {
    let decoded =
        decode_with(base, &DecodeOptions::DEFAULT).context("decoding the --delta-from base")?;
    if decoded.metadata.payload_type != PayloadType::KvCache {
        bail!(
            "--delta-from needs a KV_CACHE message; the base is {}",
            decoded.metadata.payload_type.name()
        );
    }
    let base_hash = decoded.metadata.extra.get("model_hash").unwrap_or_default();
    let kv = KvCache::parse(&decoded.payload).context("the base's KV-cache payload")?;
    let (b, f) = (kv.header, full.header);
    let p = b.seq_len;
    let same_shape = (b.num_layers, b.num_kv_heads, b.head_dim, b.dtype)
        == (f.num_layers, f.num_kv_heads, f.head_dim, f.dtype);
    if !same_shape || p == 0 || p > f.seq_len || base_hash != model_hash {
        bail!(
            "the context does not continue the --delta-from base (base: {p} positions of model {base_hash:?}, context: {} of {model_hash:?}, shapes {})",
            f.seq_len,
            if same_shape { "agree" } else { "differ" }
        );
    }
    let address = prefix_address(full, p, model_hash)?;
    if prefix_address(&kv, p, model_hash)? != address {
        bail!("the context's first {p} positions are not the --delta-from base's");
    }
    Ok((p, address))
}

/// The message to send: `original` itself when nothing changes, else a
/// `KV_CACHE_EXT` message with `decoded`'s metadata carrying `full` in
/// `scheme`: positions `[p, n)` when `prefix` gives `p` and the address of
/// `[0, p)` (hashed once, by the continuity check), else all of them.
fn compact(
    original: &[u8],
    decoded: &Message<'_>,
    full: &KvCache<'_>,
    scheme: KvScheme,
    prefix: Option<(u32, PrefixAddress)>,
) -> Result<Vec<u8>> {
    let (start, address) = match prefix {
        Some((p, address)) => (p, Some(address)),
        None => (0, None),
    };
    if scheme == KvScheme::None && start == 0 {
        return Ok(original.to_vec());
    }
    let params = params_for(scheme, &full.header, start);
    let payload = encode_ext(full, &params, start, address.as_ref())?;
    let mut metadata = decoded.metadata.clone();
    metadata.payload_type = PayloadType::KvCacheExt;
    metadata.dtype = full.header.dtype.data_type();
    metadata.tensor_shape = Shape::default();
    metadata.compression = None;
    metadata.payload_checksum = None;
    Ok(encode(&metadata, &payload, Compression::None)?)
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
