//! Optional keyed BLAKE3 message authentication (spec/protocol/mac.md, AVP-MAC-*).
//!
//! The tag travels in the metadata `extra` map under [`TAG_KEY`], so an SDK
//! peer decodes a signed message unchanged. It covers the exact message bytes
//! (header, metadata, stored tensor bytes) with the tag's 64 hex digits read
//! as 64 ASCII zeros (AVP-MAC-3): the signer encodes with that placeholder and
//! fills the tag in place, so no length field changes and no re-encoding or
//! canonical form is needed to verify. Verification needs only the received
//! bytes, runs before decompression and the checksum, and compares in
//! constant time (AVP-MAC-5).

use std::borrow::Cow;

use crate::compress::Compression;
use crate::decode::check_header;
use crate::error::{Error, ErrorKind};
use crate::header::HEADER_LEN;
use crate::limits::Limits;
use crate::metadata::Metadata;
use crate::proto::{Reader, WT_LEN};

/// The `extra` key that carries the tag (AVP-MAC-2).
pub const TAG_KEY: &str = "avp.mac";
/// Length of the tag value: 32 bytes as lowercase hex (AVP-MAC-2).
pub const TAG_HEX_LEN: usize = 64;
/// What the tag value reads as while the MAC is computed (AVP-MAC-3).
pub const PLACEHOLDER: [u8; TAG_HEX_LEN] = [b'0'; TAG_HEX_LEN];
/// The BLAKE3 `derive_key` context that turns a key file into the MAC key (AVP-MAC-1).
pub const KEY_CONTEXT: &str = "AVP-MAC v1 message authentication key";
/// Shortest accepted key file, in bytes (AVP-MAC-1).
pub const MIN_KEY_FILE_LEN: usize = 16;

/// A 32-byte MAC key. Its `Debug` does not print the key.
#[derive(Clone)]
pub struct MacKey([u8; 32]);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    /// Derives the key from the bytes of a key file (AVP-MAC-1): BLAKE3
    /// `derive_key(KEY_CONTEXT, bytes)`, all bytes as they are (a trailing
    /// newline counts). Fewer than [`MIN_KEY_FILE_LEN`] bytes is `invalid_argument`.
    pub fn from_key_file_bytes(bytes: &[u8]) -> Result<MacKey, Error> {
        if bytes.len() < MIN_KEY_FILE_LEN {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "MAC key file has {} bytes, at least {MIN_KEY_FILE_LEN} are required",
                    bytes.len()
                ),
            ));
        }
        Ok(MacKey(blake3::derive_key(KEY_CONTEXT, bytes)))
    }

    /// Uses 32 bytes as the key directly (no derivation).
    pub fn from_raw(key: [u8; 32]) -> MacKey {
        MacKey(key)
    }
}

/// Where the tag value sits in a message, and how many bytes the MAC covers.
struct TagSpan {
    start: usize,
    end: usize,
    covered: usize,
}

fn bad_mac(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::BadMac, msg)
}

/// Finds the one `extra` entry keyed [`TAG_KEY`] (AVP-MAC-5). Header and
/// metadata framing errors keep their own kinds; a missing, repeated or
/// malformed tag is `bad_mac`.
fn locate(message: &[u8], limits: &Limits) -> Result<TagSpan, Error> {
    let header = check_header(message, limits)?;
    let meta_end = header.metadata_end();
    if message.len() < meta_end {
        return Err(Error::truncated(
            "metadata",
            meta_end as u64,
            message.len() as u64,
        ));
    }
    if message.len() < usize::try_from(header.message_len()).unwrap_or(usize::MAX) {
        return Err(Error::truncated(
            "message",
            header.message_len(),
            message.len() as u64,
        ));
    }
    locate_in_metadata(message, meta_end, header.message_len(), limits)
}

/// The tag's place, from the header and metadata alone (`prefix` holds at
/// least the first `meta_end` bytes); `covered` is `12 + payload_length`.
fn locate_in_metadata(
    prefix: &[u8],
    meta_end: usize,
    covered: u64,
    limits: &Limits,
) -> Result<TagSpan, Error> {
    let meta = prefix
        .get(HEADER_LEN..meta_end)
        .ok_or_else(|| Error::truncated("metadata", meta_end as u64, prefix.len() as u64))?;
    let covered = usize::try_from(covered).unwrap_or(usize::MAX);
    let mut found: Option<(usize, usize)> = None;
    let mut count = 0usize;
    let mut r = Reader::new(meta);
    while !r.is_empty() {
        let (field, wt) = r.tag()?;
        if (field, wt) != (14, WT_LEN) {
            r.skip(field, wt, limits.max_group_depth)?;
            continue;
        }
        let entry = r.len_delimited()?;
        // Offset of `entry` inside the message.
        let entry_at = meta_end
            .saturating_sub(r.remaining())
            .saturating_sub(entry.len());
        if let Some((key, value)) = map_entry(entry, limits)? {
            if key == TAG_KEY.as_bytes() {
                count = count.saturating_add(1);
                found = Some((entry_at.saturating_add(value.0), value.1));
            }
        }
    }
    let (start, len) = match (count, found) {
        (0, _) | (_, None) => return Err(bad_mac(format!("no {TAG_KEY:?} entry: unsigned"))),
        (1, Some(f)) => f,
        _ => return Err(bad_mac(format!("{count} {TAG_KEY:?} entries"))),
    };
    if len != TAG_HEX_LEN {
        return Err(bad_mac(format!(
            "tag is {len} bytes, not {TAG_HEX_LEN} hex digits"
        )));
    }
    Ok(TagSpan {
        start,
        end: start.saturating_add(TAG_HEX_LEN),
        covered,
    })
}

/// A map entry's key bytes and its value's (offset in the entry, length);
/// `None` for an entry with unknown fields, which is not a map entry
/// (AVP-WIRE-12). The last key and value win, as in decoding.
#[allow(clippy::type_complexity)]
fn map_entry<'a>(
    entry: &'a [u8],
    limits: &Limits,
) -> Result<Option<(&'a [u8], (usize, usize))>, Error> {
    let mut r = Reader::new(entry);
    let mut key: &[u8] = &[];
    let mut value = (0usize, 0usize);
    while !r.is_empty() {
        match r.tag()? {
            (1, WT_LEN) => key = r.len_delimited()?,
            (2, WT_LEN) => {
                let v = r.len_delimited()?;
                let at = entry
                    .len()
                    .saturating_sub(r.remaining())
                    .saturating_sub(v.len());
                value = (at, v.len());
            }
            (field, wt) => {
                r.skip(field, wt, limits.max_group_depth)?;
                return Ok(None);
            }
        }
    }
    Ok(Some((key, value)))
}

/// The keyed BLAKE3 of the covered bytes, the tag read as [`PLACEHOLDER`] (AVP-MAC-3/4).
fn compute(message: &[u8], span: &TagSpan, key: &MacKey) -> Result<blake3::Hash, Error> {
    let internal = || Error::new(ErrorKind::Internal, "MAC span out of bounds after checks");
    let before = message.get(..span.start).ok_or_else(internal)?;
    let after = message.get(span.end..span.covered).ok_or_else(internal)?;
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(before);
    h.update(&PLACEHOLDER);
    h.update(after);
    Ok(h.finalize())
}

/// The 32 tag bytes from their 64 lowercase hex digits.
fn parse_tag(hex: &[u8]) -> Result<[u8; 32], Error> {
    let mut given = [0u8; 32];
    if hex.len() != TAG_HEX_LEN {
        return Err(bad_mac("tag is not 64 hex digits"));
    }
    for (out, pair) in given.iter_mut().zip(hex.chunks_exact(2)) {
        let (Some(&hi), Some(&lo)) = (pair.first(), pair.get(1)) else {
            return Err(bad_mac("tag is not 64 hex digits"));
        };
        match (hex_digit(hi), hex_digit(lo)) {
            (Some(h), Some(l)) => *out = (h << 4) | l,
            _ => return Err(bad_mac("tag is not 64 lowercase hex digits")),
        }
    }
    Ok(given)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(b.wrapping_sub(b'a').wrapping_add(10)),
        _ => None,
    }
}

/// Verifies a message's tag with `key` (AVP-MAC-5): the message must carry
/// exactly one well-formed tag equal to the keyed BLAKE3 of its bytes.
/// Needs only header, metadata and the stored tensor bytes: call it before
/// [`crate::decode_with`] so unauthenticated bytes are never decompressed.
pub fn verify(message: &[u8], key: &MacKey, limits: &Limits) -> Result<(), Error> {
    let span = locate(message, limits)?;
    let given_hex = message
        .get(span.start..span.end)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "MAC tag out of bounds"))?;
    let given = parse_tag(given_hex)?;
    let actual = compute(message, &span, key)?;
    compare(&actual, given)
}

fn compare(actual: &blake3::Hash, given: [u8; 32]) -> Result<(), Error> {
    // blake3::Hash compares in constant time.
    if *actual == blake3::Hash::from_bytes(given) {
        Ok(())
    } else {
        Err(bad_mac(
            "tag does not match the message (wrong key or modified bytes)",
        ))
    }
}

/// [`verify`] for a message that arrives in pieces, in constant memory: give
/// it the header and metadata first ([`StreamVerifier::new`]), then every
/// later byte ([`StreamVerifier::update`]; bytes past the covered end are
/// ignored), then ask [`StreamVerifier::finish`]. The verdict, error kinds
/// and their order equal [`verify`] on the concatenation: only a header
/// error is reported at once; truncation, metadata framing and tag errors
/// wait for `finish`, as `verify` checks completeness before the metadata.
pub struct StreamVerifier {
    hasher: blake3::Hasher,
    /// Message bytes received so far, the prefix included.
    received: u64,
    /// `12 + payload_length`: the bytes the MAC covers.
    covered: u64,
    /// The tag the message carries, or why it has none (reported by `finish`).
    given: Result<[u8; 32], Error>,
}

impl std::fmt::Debug for StreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamVerifier")
            .field("received", &self.received)
            .field("covered", &self.covered)
            .finish_non_exhaustive()
    }
}

impl StreamVerifier {
    /// Starts with `prefix`: the message's first bytes, normally exactly its
    /// header and metadata (fewer when the input ends early). A header that
    /// fails AVP-WIRE-2/3/7 or the limits is refused here, with its own kind.
    pub fn new(prefix: &[u8], key: &MacKey, limits: &Limits) -> Result<Self, Error> {
        let header = check_header(prefix, limits)?;
        let meta_end = header.metadata_end();
        let covered = header.message_len();
        let span = if prefix.len() < meta_end {
            Err(Error::truncated(
                "metadata",
                meta_end as u64,
                prefix.len() as u64,
            ))
        } else {
            locate_in_metadata(prefix, meta_end, covered, limits)
        };
        let mut hasher = blake3::Hasher::new_keyed(&key.0);
        let given = span.and_then(|span| {
            let internal = || Error::new(ErrorKind::Internal, "MAC span out of bounds");
            let given = parse_tag(prefix.get(span.start..span.end).ok_or_else(internal)?)?;
            // The prefix as covered (AVP-MAC-3): the tag read as the
            // placeholder, nothing past the covered end.
            let end = prefix
                .len()
                .min(usize::try_from(covered).unwrap_or(usize::MAX));
            hasher.update(prefix.get(..span.start).ok_or_else(internal)?);
            hasher.update(&PLACEHOLDER);
            hasher.update(prefix.get(span.end..end).unwrap_or_default());
            Ok(given)
        });
        Ok(StreamVerifier {
            hasher,
            received: prefix.len() as u64,
            covered,
            given,
        })
    }

    /// Takes the next bytes of the message.
    pub fn update(&mut self, bytes: &[u8]) {
        let room = self.covered.saturating_sub(self.received);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        if self.given.is_ok() {
            self.hasher.update(bytes.get(..take).unwrap_or_default());
        }
        self.received = self.received.saturating_add(bytes.len() as u64);
    }

    /// The verdict of [`verify`] for everything given.
    pub fn finish(self) -> Result<(), Error> {
        if self.received < self.covered {
            // `verify` reports a short metadata before a short message.
            if let Err(e) = &self.given {
                if e.kind() == ErrorKind::Truncated {
                    return Err(e.clone());
                }
            }
            return Err(Error::truncated("message", self.covered, self.received));
        }
        let given = self.given?;
        compare(&self.hasher.finalize(), given)
    }
}

/// Fills in the tag of a message that carries the [`PLACEHOLDER`] as its
/// [`TAG_KEY`] value (AVP-MAC-6). Header lengths stay as they are.
pub fn sign_in_place(message: &mut [u8], key: &MacKey, limits: &Limits) -> Result<(), Error> {
    let span = locate(message, limits)?;
    if message.get(span.start..span.end) != Some(PLACEHOLDER.as_slice()) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "the tag entry does not hold the placeholder (already signed?)",
        ));
    }
    let tag = compute(message, &span, key)?;
    let hex = tag.to_hex();
    let slot = message
        .get_mut(span.start..span.end)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "MAC tag out of bounds"))?;
    slot.copy_from_slice(hex.as_bytes());
    Ok(())
}

/// Encodes a signed message (AVP-MAC-6): `metadata` with any existing tag
/// replaced by the placeholder, encoded as [`crate::encode`] does, then the
/// tag filled in.
pub fn encode_signed(
    metadata: &Metadata<'_>,
    payload: &[u8],
    compression: Compression,
    key: &MacKey,
) -> Result<Vec<u8>, Error> {
    let mut m = metadata.clone();
    let placeholder = std::str::from_utf8(&PLACEHOLDER)
        .map_err(|_| Error::new(ErrorKind::Internal, "placeholder is ASCII"))?;
    m.extra
        .insert(Cow::Borrowed(TAG_KEY), Cow::Borrowed(placeholder));
    let mut out = crate::encode(&m, payload, compression)?;
    // Signing our own encoding: the metadata may exceed the default limit
    // only if the caller built it so; check the framing with no limits.
    let unlimited = Limits::DEFAULT
        .with_max_metadata_len(u32::MAX)
        .with_max_extra_entries(usize::MAX)
        .with_max_extra_string_len(usize::MAX);
    sign_in_place(&mut out, key, &unlimited)?;
    Ok(out)
}
