//! The little of the wire format the transport must read before a body is
//! complete: the 12-byte header and the routing strings of the metadata.
//!
//! Interim: this stands in for `avp_codec::peek` until the codec branch is
//! merged (then these two functions become thin calls into it). It never
//! touches tensor bytes, so its cost does not depend on the payload size.

use std::fmt;

/// Size of the fixed header (AVP-WIRE header: magic, version, flags, two u32 LE lengths).
pub const HEADER_SIZE: usize = 12;
const MAGIC: [u8; 2] = [0x41, 0x56];
const PROTOCOL_VERSION: u8 = 1;

/// The fixed header of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Flag bits (compressed, has_map, kv_cache).
    pub flags: u8,
    /// Bytes after the header: metadata plus tensor bytes.
    pub payload_length: u32,
    /// Bytes of protobuf metadata right after the header.
    pub metadata_length: u32,
}

impl FrameHeader {
    /// Total length the header declares for the whole message.
    pub fn declared_total(&self) -> u64 {
        HEADER_SIZE as u64 + u64::from(self.payload_length)
    }
}

/// The metadata strings a router or a store needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingInfo {
    /// Metadata field 1.
    pub session_id: String,
    /// Metadata field 2.
    pub source_agent_id: String,
    /// Metadata field 3.
    pub target_agent_id: String,
}

/// Why the first bytes of a body are not an AVP message. The names are the
/// codec's error kinds (AVP-ERR), so HTTP error bodies use the same words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireProblem {
    /// The first two bytes are not "AV".
    BadMagic,
    /// The version byte is not 1.
    UnsupportedVersion(u8),
    /// The metadata length exceeds the payload length, or the protobuf is broken.
    MalformedMetadata(&'static str),
}

impl WireProblem {
    /// The error kind string (AVP-ERR vocabulary).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::MalformedMetadata(_) => "malformed_metadata",
        }
    }
}

impl fmt::Display for WireProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("not an AVP message: bad magic (expected 0x4156)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::MalformedMetadata(why) => write!(f, "malformed metadata: {why}"),
        }
    }
}

/// Parses the 12-byte header; `bytes` may be longer (only the first 12 are read).
/// Returns `Ok(None)` when fewer than 12 bytes are available yet.
pub fn peek_header(bytes: &[u8]) -> Result<Option<FrameHeader>, WireProblem> {
    let Some(head) = bytes.get(..HEADER_SIZE) else {
        return Ok(None);
    };
    let mut fixed = [0u8; HEADER_SIZE];
    fixed.copy_from_slice(head);
    if fixed[..2] != MAGIC {
        return Err(WireProblem::BadMagic);
    }
    if fixed[2] != PROTOCOL_VERSION {
        return Err(WireProblem::UnsupportedVersion(fixed[2]));
    }
    let payload_length = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let metadata_length = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if metadata_length > payload_length {
        return Err(WireProblem::MalformedMetadata(
            "metadata_length is larger than payload_length",
        ));
    }
    Ok(Some(FrameHeader {
        flags: fixed[3],
        payload_length,
        metadata_length,
    }))
}

/// Reads the routing strings out of protobuf metadata bytes, skipping every
/// other field by its wire type. Rejects truncated or ill-typed fields.
pub fn scan_metadata(mut meta: &[u8]) -> Result<RoutingInfo, WireProblem> {
    let mut info = RoutingInfo::default();
    while !meta.is_empty() {
        let key = read_varint(&mut meta)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                read_varint(&mut meta)?;
            }
            1 => meta = skip(meta, 8)?,
            5 => meta = skip(meta, 4)?,
            2 => {
                let len = usize::try_from(read_varint(&mut meta)?)
                    .map_err(|_| WireProblem::MalformedMetadata("length does not fit"))?;
                let value = meta.get(..len).ok_or(WireProblem::MalformedMetadata(
                    "field runs past the metadata",
                ))?;
                let text = || {
                    String::from_utf8(value.to_vec())
                        .map_err(|_| WireProblem::MalformedMetadata("string field is not UTF-8"))
                };
                match field {
                    1 => info.session_id = text()?,
                    2 => info.source_agent_id = text()?,
                    3 => info.target_agent_id = text()?,
                    _ => {}
                }
                meta = skip(meta, len)?;
            }
            _ => {
                return Err(WireProblem::MalformedMetadata(
                    "unsupported protobuf wire type",
                ));
            }
        }
    }
    Ok(info)
}

fn skip(bytes: &[u8], n: usize) -> Result<&[u8], WireProblem> {
    bytes.get(n..).ok_or(WireProblem::MalformedMetadata(
        "field runs past the metadata",
    ))
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64, WireProblem> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or(WireProblem::MalformedMetadata("truncated varint"))?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            return Err(WireProblem::MalformedMetadata("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireProblem::MalformedMetadata(
        "varint longer than 10 bytes",
    ))
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
    fn header_needs_twelve_bytes_and_checks_magic_and_version() {
        assert_eq!(peek_header(&[0x41, 0x56]), Ok(None));
        let good = header(10, 4);
        assert_eq!(
            peek_header(&good),
            Ok(Some(FrameHeader {
                flags: 0,
                payload_length: 10,
                metadata_length: 4
            }))
        );
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(peek_header(&bad), Err(WireProblem::BadMagic));
        let mut v2 = good;
        v2[2] = 2;
        assert_eq!(peek_header(&v2), Err(WireProblem::UnsupportedVersion(2)));
        assert!(peek_header(&header(3, 4)).is_err());
    }

    #[test]
    fn metadata_scan_finds_ids_and_skips_other_fields() {
        // field 5 varint 300, field 3 "bob", field 15 fixed? (varint), field 1 "s"
        let meta = [
            0x28, 0xac, 0x02, 0x1a, 3, b'b', b'o', b'b', 0x78, 7, 0x0a, 1, b's',
        ];
        let info = scan_metadata(&meta).expect("valid metadata");
        assert_eq!(info.target_agent_id, "bob");
        assert_eq!(info.session_id, "s");
        assert!(scan_metadata(&[0x1a, 9, b'x']).is_err());
        assert!(scan_metadata(&[0x0b]).is_err());
        assert!(scan_metadata(&[0x28, 0xff]).is_err());
    }
}
