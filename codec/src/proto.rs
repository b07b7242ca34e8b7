//! Minimal proto3 wire-format reading and writing (AVP-WIRE-10, AVP-WIRE-11).
//!
//! Only what the Metadata message needs: varints, length-delimited fields and
//! skipping every wire type, groups included. Rules follow upb, the parser
//! the SDK runs: varints of up to 10 bytes (bits past 64 dropped), tags of up
//! to 5 bytes, field number 0 and wire types 6/7 rejected.

use crate::error::Error;

/// Proto3 wire types.
pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_FIXED64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_START_GROUP: u8 = 3;
pub(crate) const WT_END_GROUP: u8 = 4;
pub(crate) const WT_FIXED32: u8 = 5;

/// A cursor over a borrowed protobuf message.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    /// The whole message: `rest` is always a suffix of it, so its last
    /// 8 bytes hold a short `rest` in their top bytes.
    whole: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader {
            rest: bytes,
            whole: bytes,
        }
    }

    /// Bytes not read yet (offsets are `total - remaining`).
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// A base-128 varint of at most 10 bytes; bits above 64 are dropped as upb does.
    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, Error> {
        // Fast path: tags, lengths and small values are one byte; dimensions
        // such as 896 are two.
        if let Some((&b, rest)) = self.rest.split_first() {
            if b < 0x80 {
                self.rest = rest;
                return Ok(u64::from(b));
            }
            if let Some((&b1, rest)) = rest.split_first() {
                if b1 < 0x80 {
                    self.rest = rest;
                    return Ok(u64::from(b & 0x7f) | u64::from(b1) << 7);
                }
            }
        }
        self.varint_slow()
    }

    #[inline]
    fn varint_slow(&mut self) -> Result<u64, Error> {
        // Up to 8 bytes from one little-endian word: the first clear high bit
        // ends the varint, and three shift-and-mask steps drop the
        // continuation bits (values of 3+ bytes, such as the checksum, land
        // here). With fewer than 8 bytes left, the word is the last 8 bytes of
        // the message shifted down, its top bytes zero: a stop bit found
        // there is past the end, so the byte loop below reports the cut.
        let avail = self.rest.len().min(8);
        let word = match (self.rest.first_chunk::<8>(), self.whole.last_chunk::<8>()) {
            (Some(chunk), _) => Some(u64::from_le_bytes(*chunk)),
            (None, Some(last)) => Some(
                u64::from_le_bytes(*last)
                    .wrapping_shr(8u32.wrapping_sub(avail as u32).wrapping_mul(8)),
            ),
            (None, None) => None,
        };
        if let Some(word) = word {
            let ends = !word & 0x8080_8080_8080_8080;
            // Bit 8k+7 for a varint of k+1 bytes (64 if none, never below
            // `8 * avail` when only padding ends it).
            let stop = ends.trailing_zeros();
            if (stop as usize) < avail.saturating_mul(8) {
                // `63 ^ stop` == 63 - stop.
                let mut v = word & u64::MAX.wrapping_shr(63 ^ stop) & 0x7f7f_7f7f_7f7f_7f7f;
                v = (v & 0x007f_007f_007f_007f) | ((v & 0x7f00_7f00_7f00_7f00) >> 1);
                v = (v & 0x0000_3fff_0000_3fff) | ((v & 0x3fff_0000_3fff_0000) >> 2);
                v = (v & 0x0000_0000_0fff_ffff) | ((v & 0x0fff_ffff_0000_0000) >> 4);
                let len = ((stop >> 3) as usize).wrapping_add(1);
                self.rest = self.rest.get(len..).unwrap_or_default();
                return Ok(v);
            }
        }
        let mut value: u64 = 0;
        for (i, &byte) in self.rest.iter().enumerate().take(10) {
            // i <= 9, so the shift stays below 64.
            let shift = (i as u32).wrapping_mul(7);
            value |= u64::from(byte & 0x7f).wrapping_shl(shift);
            if byte & 0x80 == 0 {
                self.rest = self.rest.get(i.saturating_add(1)..).unwrap_or_default();
                return Ok(value);
            }
        }
        if self.rest.len() < 10 {
            Err(Error::malformed("varint runs past the end of its field"))
        } else {
            Err(Error::malformed("varint longer than 10 bytes"))
        }
    }

    /// A field key: (field number, wire type).
    #[inline(always)]
    pub(crate) fn tag(&mut self) -> Result<(u32, u8), Error> {
        // Fast path: fields 1..=15 with a valid wire type fit in one byte.
        if let Some((&b, rest)) = self.rest.split_first() {
            if (8..0x80).contains(&b) && b & 7 <= WT_FIXED32 {
                self.rest = rest;
                return Ok((u32::from(b >> 3), b & 7));
            }
        }
        self.tag_slow()
    }

    #[inline(never)]
    fn tag_slow(&mut self) -> Result<(u32, u8), Error> {
        let start = self.rest.len();
        let raw = self.varint()?;
        if start.saturating_sub(self.rest.len()) > 5 || raw > u64::from(u32::MAX) {
            return Err(Error::malformed("field tag wider than 32 bits"));
        }
        let field = (raw >> 3) as u32;
        let wire_type = (raw & 7) as u8;
        if field == 0 {
            return Err(Error::malformed("field number 0"));
        }
        if wire_type > WT_FIXED32 {
            return Err(Error::malformed(format!("invalid wire type {wire_type}")));
        }
        Ok((field, wire_type))
    }

    #[inline]
    pub(crate) fn bytes(&mut self, n: u64) -> Result<&'a [u8], Error> {
        match usize::try_from(n) {
            Ok(n) if n <= self.rest.len() => {
                let (head, tail) = self.rest.split_at(n);
                self.rest = tail;
                Ok(head)
            }
            _ => Err(self.overrun(n)),
        }
    }

    #[cold]
    #[inline(never)]
    fn overrun(&self, n: u64) -> Error {
        Error::malformed(format!(
            "field length {n} exceeds the {} bytes left in the metadata",
            self.rest.len()
        ))
    }

    /// The payload of a length-delimited field.
    #[inline]
    pub(crate) fn len_delimited(&mut self) -> Result<&'a [u8], Error> {
        let n = self.varint()?;
        self.bytes(n)
    }

    /// Skips the value of an unknown field (AVP-WIRE-11), groups included.
    pub(crate) fn skip(
        &mut self,
        field: u32,
        wire_type: u8,
        depth_left: usize,
    ) -> Result<(), Error> {
        match wire_type {
            WT_VARINT => self.varint().map(drop),
            WT_FIXED64 => self.bytes(8).map(drop),
            WT_LEN => self.len_delimited().map(drop),
            WT_FIXED32 => self.bytes(4).map(drop),
            WT_START_GROUP => {
                let Some(depth_left) = depth_left.checked_sub(1) else {
                    return Err(Error::new(
                        crate::ErrorKind::LimitExceeded,
                        "unknown groups nested deeper than the limit",
                    ));
                };
                loop {
                    if self.rest.is_empty() {
                        return Err(Error::malformed("group without an end tag"));
                    }
                    let (inner, wt) = self.tag()?;
                    if wt == WT_END_GROUP {
                        if inner != field {
                            return Err(Error::malformed("end-group tag does not match its start"));
                        }
                        return Ok(());
                    }
                    self.skip(inner, wt, depth_left)?;
                }
            }
            _ => Err(Error::malformed("end-group tag without a start-group")),
        }
    }
}

/// Bytes a varint of `v` takes.
pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; 0 still takes one byte.
    let bits = 64usize.saturating_sub((v | 1).leading_zeros() as usize);
    bits.div_ceil(7)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(crate) fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )]
    use super::*;

    #[test]
    fn varint_len_matches_writer() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(Reader::new(&out).varint().unwrap(), v);
        }
    }

    /// The reference: one byte at a time, as the spec words it.
    fn varint_bytewise(bytes: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, &b) in bytes.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
            if b & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }

    #[test]
    fn wire_10_word_fast_path_agrees_with_bytewise_reading() {
        // Every length 1..=10, minimal and non-minimal, followed by bytes
        // with and without the high bit so the 8-byte word sees both.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for v in [
            0u64,
            1,
            127,
            128,
            896,
            16383,
            16384,
            0x0f67_224b,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            cases.push(out);
        }
        for len in 1..=10usize {
            let mut nonminimal = vec![0x80u8; len - 1];
            nonminimal.push(0x00);
            cases.push(nonminimal);
            let mut ones = vec![0xffu8; len - 1];
            ones.push(0x01);
            cases.push(ones);
        }
        for case in cases {
            for tail in [
                &[][..],
                &[0x00; 9],
                &[0xff; 9],
                &[0x81, 0x01, 0x7f, 0x80, 0, 0, 0, 0, 0],
            ] {
                let mut input = case.clone();
                input.extend_from_slice(tail);
                let mut r = Reader::new(&input);
                let (want, used) = varint_bytewise(&input).unwrap();
                assert_eq!(r.varint().unwrap(), want, "{input:02x?}");
                assert_eq!(r.remaining(), input.len() - used, "{input:02x?}");
            }
        }
        // A short varint at the very end of a longer message is read from
        // the message's last word; cut short there, it still fails cleanly.
        for case in [
            &[0x05u8][..],
            &[0x80, 0x07],
            &[0x9b, 0xbf, 0xe1, 0xd0, 0x0a],
            &[0xff; 7],
        ] {
            for prefix in [1usize, 7, 9] {
                let mut input = vec![0x55u8; prefix];
                input.extend_from_slice(case);
                let mut r = Reader::new(&input);
                r.bytes(prefix as u64).unwrap();
                match varint_bytewise(case) {
                    Some((want, _)) => {
                        assert_eq!(r.varint().unwrap(), want, "{input:02x?}");
                        assert!(r.is_empty());
                    }
                    None => assert!(r.varint().is_err(), "{input:02x?}"),
                }
            }
        }
        // Eight or more continuation bytes in the word fall back and still fail cleanly.
        assert!(Reader::new(&[0x80; 12]).varint().is_err());
        assert!(Reader::new(&[0x80; 9]).varint().is_err());
    }

    #[test]
    fn ten_byte_varint_drops_high_bits_eleven_fails() {
        let ten = [0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f];
        assert_eq!(Reader::new(&ten).varint().unwrap() & 0xff, 1);
        let eleven = [
            0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ];
        assert!(Reader::new(&eleven).varint().is_err());
    }
}
