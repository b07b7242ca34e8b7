//! The Metadata protobuf (AVP-WIRE-9 .. AVP-WIRE-14): types, parser, writer.
//!
//! Parsing borrows every string from the input (no copies); the writer
//! emits exactly what the SDK's upb serializer emits for the same values:
//! fields in number order, proto3 defaults omitted, `tensor_shape` packed,
//! map entries with both key and value, `extra` sorted by key.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::error::{Error, ErrorKind};
use crate::extra::{Extra, wire_entries};
use crate::limits::Limits;
use crate::proto::{self, Reader, WT_LEN, WT_VARINT};
use crate::shape::{Shape, ShapeBuilder};

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $value:literal => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value),+
        }

        impl $name {
            /// The value on the wire.
            pub fn wire_value(self) -> i32 {
                self as i32
            }

            /// The accepted value for `v`, or `None` (AVP-WIRE-13: reject unknown values).
            pub fn from_wire(v: i32) -> Option<Self> {
                match v {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The name used in JSON output and the conformance vectors.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses [`Self::name`] back.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            fn check(raw: i32) -> Result<Self, Error> {
                Self::from_wire(raw).ok_or_else(|| {
                    Error::new(ErrorKind::UnknownEnum, format!(concat!("unknown ", $what, " value {}"), raw))
                })
            }
        }

        impl std::fmt::Display for $name {
            /// [`Self::name`].
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum!(
    /// Metadata field 7 (AVP-WIRE-13). The proto also names `EMBEDDING = 2`,
    /// but the SDK rejects it, so v1 does too.
    PayloadType, "payload_type" {
        /// A hidden-state tensor.
        #[default]
        HiddenState = 0 => "HIDDEN_STATE",
        /// A KV cache in the inner format of spec/protocol/kv-cache.md.
        KvCache = 1 => "KV_CACHE",
        /// A KV cache in the extended inner format (spec/protocol/kv-quant.md,
        /// AVP-KVQ-1): quantized and/or delta. 2 stays the proto's EMBEDDING.
        KvCacheExt = 3 => "KV_CACHE_EXT",
    }
);

wire_enum!(
    /// Metadata field 8: element type of the tensor bytes (AVP-WIRE-13).
    DataType, "dtype" {
        /// IEEE 754 binary32, little-endian.
        #[default]
        Float32 = 0 => "FLOAT32",
        /// IEEE 754 binary16, little-endian.
        Float16 = 1 => "FLOAT16",
        /// bfloat16 (upper half of a binary32), little-endian.
        Bfloat16 = 2 => "BFLOAT16",
        /// Signed 8-bit integer.
        Int8 = 3 => "INT8",
    }
);

wire_enum!(
    /// Metadata field 10: the negotiated communication mode (AVP-WIRE-13).
    Mode, "mode" {
        /// Latent (tensor) communication.
        #[default]
        Latent = 0 => "LATENT",
        /// JSON fallback (`JSON_MODE` in the proto).
        Json = 1 => "JSON",
    }
);

impl PayloadType {
    /// True for both KV-cache payload types: flag bit 2 is set for either
    /// (AVP-WIRE-4, AVP-KVQ-1).
    pub fn is_kv_cache(self) -> bool {
        matches!(self, PayloadType::KvCache | PayloadType::KvCacheExt)
    }
}

impl DataType {
    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            DataType::Float32 => 4,
            DataType::Float16 | DataType::Bfloat16 => 2,
            DataType::Int8 => 1,
        }
    }
}

/// Decoded Metadata. Strings borrow from the message (`Cow::Borrowed`) after
/// decoding; to encode, build one with [`Metadata::new`] and the `with_*`
/// setters (owned or borrowed strings). The spec may add fields, so it is
/// `#[non_exhaustive]`: no struct literals outside this crate.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata<'a> {
    /// Field 1.
    pub session_id: Cow<'a, str>,
    /// Field 2.
    pub source_agent_id: Cow<'a, str>,
    /// Field 3.
    pub target_agent_id: Cow<'a, str>,
    /// Field 4.
    pub model_id: Cow<'a, str>,
    /// Field 5.
    pub hidden_dim: u32,
    /// Field 6.
    pub num_layers: u32,
    /// Field 7.
    pub payload_type: PayloadType,
    /// Field 8.
    pub dtype: DataType,
    /// Field 9 (repeated uint32; packed when written). Short shapes are
    /// stored inline, so decoding one allocates nothing.
    pub tensor_shape: Shape,
    /// Field 10.
    pub mode: Mode,
    /// Field 11 (proto3 `optional`). The encoder sets it itself (AVP-WIRE-16).
    pub compression: Option<Cow<'a, str>>,
    /// Field 13. Field 12 is reserved.
    pub avp_map_id: Cow<'a, str>,
    /// Field 14, `map<string,string>`; written sorted by key (AVP-WIRE-12).
    /// After decoding, the entries are read from the message on access.
    pub extra: Extra<'a>,
    /// Field 15 (proto3 `optional`): CRC-32 of the uncompressed tensor bytes.
    /// The encoder computes it itself (AVP-WIRE-15).
    pub payload_checksum: Option<u32>,
}

/// Defines `with_<field>` setters: `into` ones take anything convertible to
/// the field (strings, shapes, extras), plain ones the field's own type (so
/// that integer literals need no suffix).
macro_rules! setters {
    ($($(#[$doc:meta])* $kind:ident $name:ident: $field:ident: $ty:ty),+ $(,)?) => {
        $( setters!(@one $(#[$doc])* $kind $name $field $ty); )+
    };
    (@one $(#[$doc:meta])* into $name:ident $field:ident $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            self.$field = value.into();
            self
        }
    };
    (@one $(#[$doc:meta])* plain $name:ident $field:ident $ty:ty) => {
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };
}

impl<'a> Metadata<'a> {
    /// Every field at its proto3 default (empty strings, zeros,
    /// `HIDDEN_STATE`, `FLOAT32`, `LATENT`, no extras, no compression or checksum).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Sets field 1, `session_id`.
        into with_session_id: session_id: Cow<'a, str>,
        /// Sets field 2, `source_agent_id`.
        into with_source_agent_id: source_agent_id: Cow<'a, str>,
        /// Sets field 3, `target_agent_id`.
        into with_target_agent_id: target_agent_id: Cow<'a, str>,
        /// Sets field 4, `model_id`.
        into with_model_id: model_id: Cow<'a, str>,
        /// Sets field 5, `hidden_dim`.
        plain with_hidden_dim: hidden_dim: u32,
        /// Sets field 6, `num_layers`.
        plain with_num_layers: num_layers: u32,
        /// Sets field 7, `payload_type`.
        plain with_payload_type: payload_type: PayloadType,
        /// Sets field 8, `dtype`.
        plain with_dtype: dtype: DataType,
        /// Sets field 9, `tensor_shape`.
        into with_tensor_shape: tensor_shape: Shape,
        /// Sets field 10, `mode`.
        plain with_mode: mode: Mode,
        /// Sets field 13, `avp_map_id`.
        into with_avp_map_id: avp_map_id: Cow<'a, str>,
        /// Sets field 14, `extra`.
        into with_extra: extra: Extra<'a>,
    }

    /// Sets field 11, `compression` (`"zstd"` or none). The encoder checks
    /// it against its options (AVP-API-1).
    #[must_use]
    pub fn with_compression(mut self, compression: Option<impl Into<Cow<'a, str>>>) -> Self {
        self.compression = compression.map(Into::into);
        self
    }

    /// Sets field 15, `payload_checksum`. The encoder checks it against the
    /// tensor (AVP-API-2).
    #[must_use]
    pub fn with_payload_checksum(mut self, checksum: Option<u32>) -> Self {
        self.payload_checksum = checksum;
        self
    }

    /// Adds one `extra` entry.
    #[must_use]
    pub fn with_extra_entry(
        mut self,
        key: impl Into<Cow<'a, str>>,
        value: impl Into<Cow<'a, str>>,
    ) -> Self {
        self.extra.insert(key, value);
        self
    }
}

const F_SESSION: u32 = 1;
const F_SOURCE: u32 = 2;
const F_TARGET: u32 = 3;
const F_MODEL: u32 = 4;
const F_HIDDEN_DIM: u32 = 5;
const F_NUM_LAYERS: u32 = 6;
const F_PAYLOAD_TYPE: u32 = 7;
const F_DTYPE: u32 = 8;
const F_SHAPE: u32 = 9;
const F_MODE: u32 = 10;
const F_COMPRESSION: u32 = 11;
const F_MAP_ID: u32 = 13;
const F_EXTRA: u32 = 14;
const F_CHECKSUM: u32 = 15;

#[cold]
#[inline(never)]
fn not_utf8(field: &str) -> Error {
    Error::malformed(format!("{field}: string is not valid UTF-8"))
}

/// UTF-8 validation shared by all string fields of one metadata message.
///
/// Tags and one-byte lengths are ASCII, and ASCII never joins or splits a
/// UTF-8 sequence, so a string field followed by ASCII bytes is valid exactly
/// when the field is. The first string of such a run validates the whole run
/// once; later strings inside it are sliced from it at char boundaries. An
/// SDK message's four ids thus cost one `from_utf8` call, not four.
struct Utf8Run<'a> {
    /// The metadata bytes the string fields are slices of.
    base: &'a [u8],
    /// Offset of `run` in `base`.
    start: usize,
    /// A validated stretch of `base`.
    run: &'a str,
}

impl<'a> Utf8Run<'a> {
    fn new(base: &'a [u8]) -> Self {
        Utf8Run {
            base,
            start: 0,
            run: "",
        }
    }

    /// `field` (a slice of `base`) as a string, or `malformed_metadata`.
    #[inline]
    fn str(&mut self, field: &'a [u8], name: &str) -> Result<&'a str, Error> {
        let offset = (field.as_ptr() as usize).wrapping_sub(self.base.as_ptr() as usize);
        let from = offset.wrapping_sub(self.start);
        let inside = from
            .checked_add(field.len())
            .and_then(|to| self.run.get(from..to));
        match inside {
            Some(s) => Ok(s),
            None => self.validate(offset, field, name),
        }
    }

    /// Validates `field` and the ASCII bytes after it as the new run.
    #[inline(never)]
    fn validate(&mut self, offset: usize, field: &'a [u8], name: &str) -> Result<&'a str, Error> {
        // `offset` comes from the field's address, so when `base` has bytes at
        // `offset..end` they are the field's own bytes, whatever `field` was
        // sliced from; the same holds for the slice `str` returns.
        let end = offset.saturating_add(field.len());
        let window = match (self.base.get(offset..end), self.base.get(end..)) {
            (Some(_), Some(after)) => {
                let with_ascii = end.saturating_add(ascii_prefix_len(after));
                self.base.get(offset..with_ascii).unwrap_or(field)
            }
            _ => field,
        };
        let run = std::str::from_utf8(window).map_err(|_| not_utf8(name))?;
        self.start = offset;
        self.run = run;
        run.get(..field.len()).ok_or_else(|| not_utf8(name))
    }
}

/// How many leading bytes are ASCII, read a word at a time.
fn ascii_prefix_len(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut n = 0usize;
    for word in &mut words {
        let Some(word) = word.first_chunk::<8>() else {
            break;
        };
        let high = u64::from_le_bytes(*word) & 0x8080_8080_8080_8080;
        if high != 0 {
            return n.saturating_add((high.trailing_zeros() / 8) as usize);
        }
        n = n.saturating_add(8);
    }
    let tail = words
        .remainder()
        .iter()
        .take_while(|b| b.is_ascii())
        .count();
    n.saturating_add(tail)
}

/// The fields the decoder's checks read, as parsed (see [`Metadata::parse_then`]).
pub(crate) struct ParsedFields<'s, 'a> {
    pub(crate) payload_type: PayloadType,
    pub(crate) dtype: DataType,
    pub(crate) tensor_shape: &'s [u32],
    pub(crate) compression: Option<&'a str>,
    pub(crate) avp_map_id: &'a str,
    pub(crate) payload_checksum: Option<u32>,
}

impl<'a> Metadata<'a> {
    /// Parses a Metadata message under proto3 rules (AVP-WIRE-10, AVP-WIRE-11):
    /// any field order, last scalar wins, packed and unpacked `tensor_shape`,
    /// unknown fields (and known fields with another wire type) skipped, uint32
    /// and enum varints truncated to 32 bits. Enum values are checked after the
    /// whole message is read, so only the final value counts (AVP-WIRE-13).
    #[inline(always)]
    pub fn parse(bytes: &'a [u8], limits: &Limits) -> Result<Metadata<'a>, Error> {
        Self::parse_then(bytes, limits, |_| Ok(())).map(|(m, ())| m)
    }

    /// [`Metadata::parse`], then `then` on the parsed fields before the
    /// `Metadata` is built. `decode` runs its checks there: the value is then
    /// built once, straight into the caller's result, instead of being held
    /// across the checks and copied (300 bytes) at the end.
    #[inline(always)]
    pub(crate) fn parse_then<T>(
        bytes: &'a [u8],
        limits: &Limits,
        then: impl FnOnce(&ParsedFields<'_, 'a>) -> Result<T, Error>,
    ) -> Result<(Metadata<'a>, T), Error> {
        // Fields land in plain locals and the struct is built once at the end:
        // assigning into `Cow` fields in the loop would test-and-drop the old
        // value on every write.
        let (mut session_id, mut source_agent_id, mut target_agent_id) = ("", "", "");
        let (mut model_id, mut avp_map_id) = ("", "");
        let mut compression: Option<&'a str> = None;
        let (mut hidden_dim, mut num_layers) = (0u32, 0u32);
        let (mut payload_type, mut dtype, mut mode) = (0i32, 0i32, 0i32);
        let mut payload_checksum = None;
        let mut tensor_shape = ShapeBuilder::new();
        // Entries are validated here and read back from `bytes` on access;
        // distinct keys are only counted once the raw count passes the limit.
        let mut raw_entries = 0usize;
        let mut distinct_keys: Option<BTreeSet<&'a str>> = None;
        let mut run = Utf8Run::new(bytes);
        let mut r = Reader::new(bytes);
        while !r.is_empty() {
            let field_start = bytes.len().saturating_sub(r.remaining());
            let (field, wt) = r.tag()?;
            match (field, wt) {
                (F_SESSION, WT_LEN) => session_id = run.str(r.len_delimited()?, "session_id")?,
                (F_SOURCE, WT_LEN) => {
                    source_agent_id = run.str(r.len_delimited()?, "source_agent_id")?
                }
                (F_TARGET, WT_LEN) => {
                    target_agent_id = run.str(r.len_delimited()?, "target_agent_id")?
                }
                (F_MODEL, WT_LEN) => model_id = run.str(r.len_delimited()?, "model_id")?,
                (F_HIDDEN_DIM, WT_VARINT) => hidden_dim = r.varint()? as u32,
                (F_NUM_LAYERS, WT_VARINT) => num_layers = r.varint()? as u32,
                (F_PAYLOAD_TYPE, WT_VARINT) => payload_type = r.varint()? as i32,
                (F_DTYPE, WT_VARINT) => dtype = r.varint()? as i32,
                (F_MODE, WT_VARINT) => mode = r.varint()? as i32,
                (F_SHAPE, WT_VARINT) => {
                    let v = r.varint()? as u32;
                    push_dim(&mut tensor_shape, v, limits)?;
                }
                (F_SHAPE, WT_LEN) => {
                    let mut packed = Reader::new(r.len_delimited()?);
                    while !packed.is_empty() {
                        let v = packed.varint()? as u32;
                        push_dim(&mut tensor_shape, v, limits)?;
                    }
                }
                (F_COMPRESSION, WT_LEN) => {
                    compression = Some(run.str(r.len_delimited()?, "compression")?)
                }
                (F_MAP_ID, WT_LEN) => avp_map_id = run.str(r.len_delimited()?, "avp_map_id")?,
                (F_EXTRA, WT_LEN) => {
                    // An entry with unknown fields is kept by upb as an unknown
                    // field of the message, not as a map entry (AVP-WIRE-12).
                    let Some((k, _)) = parse_map_entry(r.len_delimited()?, limits, &mut run)?
                    else {
                        continue;
                    };
                    raw_entries = raw_entries.saturating_add(1);
                    if raw_entries <= limits.max_extra_entries {
                        continue;
                    }
                    // Past the limit in raw entries: count distinct keys, as a map would.
                    let keys = distinct_keys.get_or_insert_with(|| {
                        let seen = bytes.get(..field_start).unwrap_or_default();
                        wire_entries(seen).map(|(k, _)| k).collect()
                    });
                    keys.insert(k);
                    if keys.len() > limits.max_extra_entries {
                        return Err(Error::new(
                            ErrorKind::LimitExceeded,
                            format!("more than {} extra entries", limits.max_extra_entries),
                        ));
                    }
                }
                (F_CHECKSUM, WT_VARINT) => payload_checksum = Some(r.varint()? as u32),
                _ => r.skip(field, wt, limits.max_group_depth)?,
            }
        }
        // The SDK checks dtype, then payload_type, then mode.
        let dtype = DataType::check(dtype)?;
        let payload_type = PayloadType::check(payload_type)?;
        let mode = Mode::check(mode)?;
        let after = then(&ParsedFields {
            payload_type,
            dtype,
            tensor_shape: tensor_shape.as_slice(),
            compression,
            avp_map_id,
            payload_checksum,
        })?;
        let metadata = Metadata {
            session_id: Cow::Borrowed(session_id),
            source_agent_id: Cow::Borrowed(source_agent_id),
            target_agent_id: Cow::Borrowed(target_agent_id),
            model_id: Cow::Borrowed(model_id),
            hidden_dim,
            num_layers,
            payload_type,
            dtype,
            tensor_shape: tensor_shape.finish(),
            mode,
            compression: compression.map(Cow::Borrowed),
            avp_map_id: Cow::Borrowed(avp_map_id),
            extra: if raw_entries == 0 {
                Extra::new()
            } else {
                Extra::from_wire(bytes)
            },
            payload_checksum,
        };
        Ok((metadata, after))
    }

    /// Bytes [`Metadata::write`] produces.
    pub fn encoded_len(&self) -> usize {
        metadata_len(self, self.compression.as_deref(), self.payload_checksum)
    }

    /// Appends the protobuf encoding of these exact field values to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_metadata(
            self,
            self.compression.as_deref(),
            self.payload_checksum,
            out,
        );
    }

    /// A copy that owns its strings.
    pub fn into_owned(self) -> Metadata<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        Metadata {
            session_id: own(self.session_id),
            source_agent_id: own(self.source_agent_id),
            target_agent_id: own(self.target_agent_id),
            model_id: own(self.model_id),
            hidden_dim: self.hidden_dim,
            num_layers: self.num_layers,
            payload_type: self.payload_type,
            dtype: self.dtype,
            tensor_shape: self.tensor_shape,
            mode: self.mode,
            compression: self.compression.map(own),
            avp_map_id: own(self.avp_map_id),
            extra: self.extra.into_owned(),
            payload_checksum: self.payload_checksum,
        }
    }
}

#[inline(always)]
fn push_dim(shape: &mut ShapeBuilder, v: u32, limits: &Limits) -> Result<(), Error> {
    if shape.len() >= limits.max_shape_rank {
        return Err(rank_exceeded(limits));
    }
    shape.push(v);
    Ok(())
}

#[cold]
#[inline(never)]
fn rank_exceeded(limits: &Limits) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!(
            "tensor_shape has more than {} entries",
            limits.max_shape_rank
        ),
    )
}

/// One `extra` entry: key and value default to "", and `None` when the entry
/// carries any other field (then it is not a map entry at all, as in upb).
#[inline(always)]
fn parse_map_entry<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    run: &mut Utf8Run<'a>,
) -> Result<Option<(&'a str, &'a str)>, Error> {
    // What upb writes: key (field 1) then value (field 2), short lengths.
    if let [0x0a, key_len, rest @ ..] = bytes {
        if let Some((key, [0x12, value_len, value @ ..])) =
            rest.split_at_checked(usize::from(*key_len))
        {
            if *key_len < 0x80 && usize::from(*value_len) == value.len() && value.len() < 0x80 {
                // Keys and values are short: validating each on its own
                // is cheaper than opening a run for them.
                let key = std::str::from_utf8(key).map_err(|_| not_utf8("extra key"))?;
                let value = std::str::from_utf8(value).map_err(|_| not_utf8("extra value"))?;
                return entry_within_limits(key, value, limits).map(Some);
            }
        }
    }
    parse_map_entry_general(bytes, limits, run)
}

/// [`parse_map_entry`] for entries in any other layout.
#[inline(never)]
fn parse_map_entry_general<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    run: &mut Utf8Run<'a>,
) -> Result<Option<(&'a str, &'a str)>, Error> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = ("", "");
    let mut has_unknown = false;
    while !r.is_empty() {
        match r.tag()? {
            (1, WT_LEN) => key = run.str(r.len_delimited()?, "extra key")?,
            (2, WT_LEN) => value = run.str(r.len_delimited()?, "extra value")?,
            (field, wt) => {
                r.skip(field, wt, limits.max_group_depth)?;
                has_unknown = true;
            }
        }
    }
    if has_unknown {
        return Ok(None);
    }
    entry_within_limits(key, value, limits).map(Some)
}

/// AVP-LIM-11 on one entry.
#[inline(always)]
fn entry_within_limits<'a>(
    key: &'a str,
    value: &'a str,
    limits: &Limits,
) -> Result<(&'a str, &'a str), Error> {
    let longest = key.len().max(value.len());
    if longest > limits.max_extra_string_len {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "extra entry of {longest} bytes exceeds the limit of {} (AVP-LIM-11)",
                limits.max_extra_string_len
            ),
        ));
    }
    Ok((key, value))
}

fn string_field_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field_len(field, s.len())
    }
}

#[allow(clippy::arithmetic_side_effects)] // sizes of values in memory; the encoder checks the total against u32
fn len_field_len(field: u32, n: usize) -> usize {
    proto::tag_len(field) + proto::varint_len(n as u64) + n
}

#[allow(clippy::arithmetic_side_effects)] // sizes of values in memory; the encoder checks the total against u32
fn varint_field_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        proto::tag_len(field) + proto::varint_len(v)
    }
}

fn enum_wire(v: i32) -> u64 {
    // Proto3 enums are int32; negatives sign-extend to 10 bytes.
    i64::from(v) as u64
}

#[allow(clippy::arithmetic_side_effects)] // sizes of values in memory; the encoder checks the total against u32
fn shape_body_len(shape: &[u32]) -> usize {
    shape.iter().map(|&d| proto::varint_len(u64::from(d))).sum()
}

#[allow(clippy::arithmetic_side_effects)] // sizes of values in memory; the encoder checks the total against u32
fn entry_body_len(k: &str, v: &str) -> usize {
    len_field_len(1, k.len()) + len_field_len(2, v.len())
}

/// Encoded size with `compression` and `checksum` in place of the struct's own.
#[allow(clippy::arithmetic_side_effects)] // sizes of values in memory; the encoder checks the total against u32
pub(crate) fn metadata_len(
    m: &Metadata<'_>,
    compression: Option<&str>,
    checksum: Option<u32>,
) -> usize {
    let mut n = string_field_len(F_SESSION, &m.session_id)
        + string_field_len(F_SOURCE, &m.source_agent_id)
        + string_field_len(F_TARGET, &m.target_agent_id)
        + string_field_len(F_MODEL, &m.model_id)
        + varint_field_len(F_HIDDEN_DIM, m.hidden_dim.into())
        + varint_field_len(F_NUM_LAYERS, m.num_layers.into())
        + varint_field_len(F_PAYLOAD_TYPE, enum_wire(m.payload_type.wire_value()))
        + varint_field_len(F_DTYPE, enum_wire(m.dtype.wire_value()));
    if !m.tensor_shape.is_empty() {
        n += len_field_len(F_SHAPE, shape_body_len(&m.tensor_shape));
    }
    n += varint_field_len(F_MODE, enum_wire(m.mode.wire_value()));
    if let Some(c) = compression {
        n += len_field_len(F_COMPRESSION, c.len());
    }
    n += string_field_len(F_MAP_ID, &m.avp_map_id);
    for (k, v) in &m.extra {
        n += len_field_len(F_EXTRA, entry_body_len(k, v));
    }
    if let Some(c) = checksum {
        n += proto::tag_len(F_CHECKSUM) + proto::varint_len(c.into());
    }
    n
}

fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    proto::put_tag(out, field, WT_LEN);
    proto::put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        proto::put_tag(out, field, WT_VARINT);
        proto::put_varint(out, v);
    }
}

/// Writes the fields in number order, as upb does (AVP-WIRE-12).
pub(crate) fn write_metadata(
    m: &Metadata<'_>,
    compression: Option<&str>,
    checksum: Option<u32>,
    out: &mut Vec<u8>,
) {
    put_string(out, F_SESSION, &m.session_id);
    put_string(out, F_SOURCE, &m.source_agent_id);
    put_string(out, F_TARGET, &m.target_agent_id);
    put_string(out, F_MODEL, &m.model_id);
    put_varint_field(out, F_HIDDEN_DIM, m.hidden_dim.into());
    put_varint_field(out, F_NUM_LAYERS, m.num_layers.into());
    put_varint_field(out, F_PAYLOAD_TYPE, enum_wire(m.payload_type.wire_value()));
    put_varint_field(out, F_DTYPE, enum_wire(m.dtype.wire_value()));
    if !m.tensor_shape.is_empty() {
        proto::put_tag(out, F_SHAPE, WT_LEN);
        proto::put_varint(out, shape_body_len(&m.tensor_shape) as u64);
        for &d in &m.tensor_shape {
            proto::put_varint(out, d.into());
        }
    }
    put_varint_field(out, F_MODE, enum_wire(m.mode.wire_value()));
    if let Some(c) = compression {
        put_bytes(out, F_COMPRESSION, c.as_bytes());
    }
    put_string(out, F_MAP_ID, &m.avp_map_id);
    for (k, v) in &m.extra {
        proto::put_tag(out, F_EXTRA, WT_LEN);
        proto::put_varint(out, entry_body_len(k, v) as u64);
        put_bytes(out, 1, k.as_bytes());
        put_bytes(out, 2, v.as_bytes());
    }
    if let Some(c) = checksum {
        proto::put_tag(out, F_CHECKSUM, WT_VARINT);
        proto::put_varint(out, c.into());
    }
}
