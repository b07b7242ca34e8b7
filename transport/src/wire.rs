//! What the transport reads of a message before its body is complete, and the
//! full check once it is: thin calls into `avp-codec` (its incremental
//! `parse_header` and `parse_prefix`, which say how many more bytes they
//! need, and `decode_with`), so the server, the router and the codec
//! agree on every rule and every error kind (AVP-ERR vocabulary).
//!
//! Only [`check_complete`] touches tensor bytes; the router never calls it.

use avp_codec::chunk::{ChunkDescriptor, ChunkInfo, descriptor_of};
use avp_codec::mac::MacKey;
use avp_codec::{
    DecodeOptions, ErrorKind, Header, Limits, decode_with, parse_header, parse_prefix,
};
use http::StatusCode;

pub use avp_codec::{Error as WireError, HEADER_LEN, Status};

/// Largest metadata block accepted before the tensor bytes (AVP-LIM-1, 1 MiB).
pub const MAX_METADATA: u32 = Limits::DEFAULT.max_metadata_len;

/// The metadata strings a router or a store needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingInfo {
    /// Metadata field 1.
    pub session_id: String,
    /// Metadata field 2.
    pub source_agent_id: String,
    /// Metadata field 3.
    pub target_agent_id: String,
    /// Metadata field 10 by name (`LATENT` or `JSON`), checked against the
    /// session the message claims (AVP-HTTP-35).
    pub mode: &'static str,
}

/// The header, once its 12 bytes are in `bytes` (the codec's
/// `parse_header`): `NeedMore(n)` before that; bad magic and version are
/// refused at once, and a metadata block over [`MAX_METADATA`] before it is
/// buffered.
pub fn header_status(bytes: &[u8]) -> Result<Status<Header>, WireError> {
    parse_header(bytes, &options().limits)
}

/// Header and metadata checked by the codec (its `parse_prefix`), once
/// `12 + metadata_length` bytes are in `bytes`; `NeedMore(n)` before that,
/// with `n` counted by the codec from what the header declares.
pub fn routing_status(bytes: &[u8]) -> Result<Status<RoutingInfo>, WireError> {
    Ok(match parse_prefix(bytes, &options())? {
        Status::NeedMore(n) => Status::NeedMore(n),
        Status::Complete((peeked, _)) => Status::Complete(RoutingInfo {
            session_id: peeked.metadata.session_id.into_owned(),
            source_agent_id: peeked.metadata.source_agent_id.into_owned(),
            target_agent_id: peeked.metadata.target_agent_id.into_owned(),
            mode: peeked.metadata.mode.name(),
        }),
    })
}

/// The codec's full compatible-mode decode of a complete message (checksum,
/// enums, decompression within limits, AVP-HTTP-31), after verifying the
/// keyed MAC when `key` is set (AVP-MAC-5/7: a missing or wrong tag is
/// `bad_mac`, found before any decompression or checksum work); the warning
/// codes it reported. The bytes are not kept: the caller stores them as received.
pub fn check_complete(bytes: &[u8], key: Option<&MacKey>) -> Result<Vec<&'static str>, WireError> {
    if let Some(key) = key {
        avp_codec::mac::verify(bytes, key, &options().limits)?;
    }
    let message = decode_with(bytes, &options())?;
    Ok(message.warnings.iter().map(|w| w.code()).collect())
}

/// A complete message received at the chunk endpoint (AVP-HTTP-81):
/// checked as [`check_complete`] does, then read as a chunk (AVP-CHK-2/3).
/// `Ok(None)` when it has no chunk descriptor or is compressed (chunks
/// never are: their stored bytes are streamed back through the digest);
/// else its [`ChunkInfo`] and where its layer bytes start in `bytes`.
pub fn check_chunk(
    bytes: &[u8],
    key: Option<&MacKey>,
) -> Result<Option<(ChunkInfo, usize)>, WireError> {
    if let Some(key) = key {
        avp_codec::mac::verify(bytes, key, &options().limits)?;
    }
    let message = decode_with(bytes, &options())?;
    if message.was_compressed() {
        return Ok(None);
    }
    let Some(info) = ChunkInfo::of_message(&message)? else {
        return Ok(None);
    };
    let start = HEADER_LEN
        .saturating_add(message.header.metadata_length as usize)
        .saturating_add(avp_codec::kv::KV_HEADER_LEN);
    Ok(Some((info, start)))
}

/// The descriptor in a message's header and metadata (`bytes` holds at
/// least those), without the tensor bytes: what a router or a recovering
/// assembly reads. `NeedMore(n)` until the metadata is complete.
pub fn chunk_prefix_status(bytes: &[u8]) -> Result<Status<Option<ChunkDescriptor>>, WireError> {
    Ok(match parse_prefix(bytes, &options())? {
        Status::NeedMore(n) => Status::NeedMore(n),
        Status::Complete((peeked, _)) => Status::Complete(descriptor_of(&peeked.metadata)?),
    })
}

/// The status for a codec error: 413 for a limit, 400 for everything else
/// the peer sent (AVP-HTTP-14).
pub fn status_for(err: &WireError) -> StatusCode {
    match err.kind() {
        ErrorKind::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        kind if kind.is_peer_fault() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn options() -> DecodeOptions {
    DecodeOptions::DEFAULT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload: u32, meta: u32) -> Vec<u8> {
        let mut h = vec![0x41, 0x56, 1, 0];
        h.extend_from_slice(&payload.to_le_bytes());
        h.extend_from_slice(&meta.to_le_bytes());
        h
    }

    #[test]
    fn header_needs_twelve_bytes_and_is_checked_at_once() {
        assert_eq!(header_status(&[0x41, 0x56]), Ok(Status::NeedMore(10)));
        let Ok(Status::Complete(good)) = header_status(&header(10, 4)) else {
            panic!("a valid header");
        };
        assert_eq!((good.payload_length, good.metadata_length), (10, 4));
        let mut bad = header(10, 4);
        bad[0] = b'X';
        assert_eq!(
            header_status(&bad).map_err(|e| e.kind()).err(),
            Some(ErrorKind::BadMagic)
        );
        let mut v2 = header(10, 4);
        v2[2] = 2;
        assert_eq!(
            header_status(&v2).map_err(|e| e.kind()).err(),
            Some(ErrorKind::UnsupportedVersion)
        );
        assert!(
            header_status(&header(3, 4)).is_err(),
            "metadata longer than the payload"
        );
        let huge = header_status(&header(u32::MAX, MAX_METADATA + 1))
            .expect_err("metadata over the limit");
        assert_eq!(status_for(&huge), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn routing_strings_come_from_the_codec_peek() {
        let meta = [0x1a, 3, b'b', b'o', b'b', 0x0a, 1, b's'];
        let mut message = header(meta.len() as u32, meta.len() as u32);
        message.extend_from_slice(&meta);
        // The codec counts what the metadata still needs from the header.
        assert_eq!(
            routing_status(&message[..14]).expect("a good start"),
            Status::NeedMore(message.len() - 14)
        );
        let Ok(Status::Complete(info)) = routing_status(&message) else {
            panic!("valid metadata");
        };
        assert_eq!(
            (info.target_agent_id.as_str(), info.session_id.as_str()),
            ("bob", "s")
        );
        let mut broken = header(3, 3);
        broken.extend_from_slice(&[0x1a, 9, b'x']);
        assert_eq!(
            status_for(&routing_status(&broken).expect_err("broken")),
            StatusCode::BAD_REQUEST
        );
    }
}
