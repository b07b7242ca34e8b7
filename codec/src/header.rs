//! The fixed 12-byte message header (AVP-WIRE-1 .. AVP-WIRE-7).

use crate::error::{Error, ErrorKind};

/// The two magic bytes, ASCII "AV" (AVP-WIRE-2).
pub const MAGIC: [u8; 2] = [0x41, 0x56];
/// The only protocol version this codec reads and writes (AVP-WIRE-3).
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes (AVP-WIRE-1).
pub const HEADER_LEN: usize = 12;

/// The flags byte (AVP-WIRE-4). Bits are routing hints; the metadata is authoritative.
///
/// Not `#[non_exhaustive]`: it is the raw byte, so a bit a later spec
/// defines is already representable (and reported by [`Flags::unknown_bits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Bit 0: the tensor bytes are zstd-compressed.
    pub const COMPRESSED: u8 = 0x01;
    /// Bit 1: the message carries a Rosetta map id (`avp_map_id` non-empty).
    pub const HAS_MAP: u8 = 0x02;
    /// Bit 2: the payload is a KV cache.
    pub const KV_CACHE: u8 = 0x04;
    /// All bits AVP v1 defines.
    pub const KNOWN: u8 = Self::COMPRESSED | Self::HAS_MAP | Self::KV_CACHE;

    /// Bit 0 is set.
    pub fn compressed(self) -> bool {
        self.0 & Self::COMPRESSED != 0
    }
    /// Bit 1 is set.
    pub fn has_map(self) -> bool {
        self.0 & Self::HAS_MAP != 0
    }
    /// Bit 2 is set.
    pub fn kv_cache(self) -> bool {
        self.0 & Self::KV_CACHE != 0
    }
    /// The bits v1 does not define (AVP-WIRE-4: ignored, strict mode rejects).
    pub fn unknown_bits(self) -> u8 {
        self.0 & !Self::KNOWN
    }
}

/// A parsed header. `payload_length` counts metadata plus tensor bytes (AVP-WIRE-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version byte (always [`VERSION`] once parsed).
    pub version: u8,
    /// The flags byte.
    pub flags: Flags,
    /// Metadata length plus tensor byte length (u32 LE at offset 4).
    pub payload_length: u32,
    /// Length of the protobuf Metadata (u32 LE at offset 8).
    pub metadata_length: u32,
}

impl Header {
    /// Parses the first 12 bytes. Fewer bytes give `truncated`; then magic and
    /// version are checked in that order (AVP-WIRE-2, AVP-WIRE-3, AVP-WIRE-6).
    #[inline(always)]
    pub fn parse(input: &[u8]) -> Result<Header, Error> {
        let Some(bytes) = input.first_chunk::<HEADER_LEN>() else {
            return Err(Error::truncated(
                "header",
                HEADER_LEN as u64,
                input.len() as u64,
            ));
        };
        let [m0, m1, version, flags, p0, p1, p2, p3, l0, l1, l2, l3] = *bytes;
        if [m0, m1] != MAGIC {
            return Err(Error::new(
                ErrorKind::BadMagic,
                format!("expected magic 0x4156, got 0x{m0:02x}{m1:02x}"),
            ));
        }
        if version != VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!(
                    "unsupported protocol version {version} (this codec reads version {VERSION})"
                ),
            ));
        }
        Ok(Header {
            version,
            flags: Flags(flags),
            payload_length: u32::from_le_bytes([p0, p1, p2, p3]),
            metadata_length: u32::from_le_bytes([l0, l1, l2, l3]),
        })
    }

    /// The header's 12 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [p0, p1, p2, p3] = self.payload_length.to_le_bytes();
        let [l0, l1, l2, l3] = self.metadata_length.to_le_bytes();
        let [m0, m1] = MAGIC;
        [
            m0,
            m1,
            self.version,
            self.flags.0,
            p0,
            p1,
            p2,
            p3,
            l0,
            l1,
            l2,
            l3,
        ]
    }

    /// Offset where the metadata ends and the tensor bytes begin:
    /// 12 + `metadata_length` (AVP-WIRE-5).
    #[inline]
    pub fn metadata_end(&self) -> usize {
        HEADER_LEN.saturating_add(self.metadata_length as usize)
    }

    /// Total message length the header declares: 12 + `payload_length` (AVP-WIRE-5).
    pub fn message_len(&self) -> u64 {
        (HEADER_LEN as u64).saturating_add(u64::from(self.payload_length))
    }

    /// Length of the tensor bytes as stored (possibly compressed):
    /// `payload_length - metadata_length`, or `None` when the metadata claims
    /// more than the payload holds (AVP-WIRE-7).
    pub fn stored_tensor_len(&self) -> Option<u32> {
        self.payload_length.checked_sub(self.metadata_length)
    }
}
