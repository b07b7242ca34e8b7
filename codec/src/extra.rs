//! [`Extra`]: the `extra` map (Metadata field 14, AVP-WIRE-9, AVP-WIRE-12).
//!
//! Decoding validates every entry (UTF-8, limits, entry structure) but does
//! not build a map: the entries stay in the metadata bytes and are read back
//! when asked for. A small message therefore decodes without a heap
//! allocation, while the map semantics stay those of upb: keys are unique,
//! the last entry for a key wins, iteration is in key order. Any change
//! turns the value into an ordinary `BTreeMap` first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::proto::{Reader, WT_LEN};

/// Metadata field number of `extra`.
const F_EXTRA: u32 = 14;

/// String keys to string values, iterated in key order (code point order,
/// which is byte order for UTF-8).
#[derive(Clone)]
pub struct Extra<'a> {
    /// When set, the entries are those of this (already validated) Metadata
    /// message and `map` is `None`.
    wire: Option<&'a [u8]>,
    /// `None` until a map is built: dropping a decoded message then costs
    /// no `BTreeMap` teardown.
    map: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

impl<'a> Extra<'a> {
    /// An empty map.
    pub const fn new() -> Extra<'a> {
        Extra {
            wire: None,
            map: None,
        }
    }

    /// A view of the entries of `metadata`, a Metadata message whose entries
    /// the parser has already validated.
    pub(crate) fn from_wire(metadata: &'a [u8]) -> Extra<'a> {
        Extra {
            wire: Some(metadata),
            map: None,
        }
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        match self.wire {
            Some(bytes) => sorted_wire(bytes).len(),
            None => self.map.as_ref().map_or(0, BTreeMap::len),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        match self.wire {
            Some(bytes) => wire_entries(bytes).next().is_none(),
            None => self.map.as_ref().is_none_or(BTreeMap::is_empty),
        }
    }

    /// The value for `key` (the last one on the wire, as upb keeps it).
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.wire {
            Some(bytes) => wire_entries(bytes)
                .filter(|(k, _)| *k == key)
                .last()
                .map(|(_, v)| v),
            None => self.map.as_ref()?.get(key).map(|v| v.as_ref()),
        }
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> Iter<'_> {
        match self.wire {
            Some(bytes) => Iter(IterRepr::Sorted(sorted_wire(bytes).into_iter())),
            None => match &self.map {
                Some(m) => Iter(IterRepr::Map(m.iter())),
                None => Iter(IterRepr::Sorted(Vec::new().into_iter())),
            },
        }
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// The entries as a map that can be changed (built from the wire on first use).
    pub fn map_mut(&mut self) -> &mut BTreeMap<Cow<'a, str>, Cow<'a, str>> {
        if let Some(bytes) = self.wire.take() {
            self.map = Some(
                wire_entries(bytes)
                    .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                    .collect(),
            );
        }
        self.map.get_or_insert_with(BTreeMap::new)
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(
        &mut self,
        key: impl Into<Cow<'a, str>>,
        value: impl Into<Cow<'a, str>>,
    ) -> Option<Cow<'a, str>> {
        self.map_mut().insert(key.into(), value.into())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Cow<'a, str>> {
        self.map_mut().remove(key)
    }

    /// A copy that owns its strings.
    pub fn into_owned(self) -> Extra<'static> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The entries as an ordinary map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Wire entries sorted by key, the last one for each key kept.
fn sorted_wire(metadata: &[u8]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = wire_entries(metadata).collect();
    // Reverse, then a stable sort: the last entry for a key comes first
    // among equals, and `dedup_by` keeps the first.
    v.reverse();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v.dedup_by(|later, earlier| later.0 == earlier.0);
    v
}

/// The map entries of a validated Metadata message, in wire order. Entries
/// that carry unknown fields are not map entries (upb keeps them as unknown
/// fields), so they are skipped here as the parser skipped them.
pub(crate) fn wire_entries(metadata: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    let mut r = Reader::new(metadata);
    std::iter::from_fn(move || {
        while !r.is_empty() {
            let (field, wt) = r.tag().ok()?;
            if (field, wt) == (F_EXTRA, WT_LEN) {
                if let Some(entry) = entry(r.len_delimited().ok()?) {
                    return Some(entry);
                }
            } else {
                // The parser already bounded group nesting by the limit.
                r.skip(field, wt, usize::MAX).ok()?;
            }
        }
        None
    })
}

/// Key and value of one map entry, `None` if it has any other field.
fn entry(bytes: &[u8]) -> Option<(&str, &str)> {
    let mut r = Reader::new(bytes);
    let (mut key, mut value) = ("", "");
    while !r.is_empty() {
        match r.tag().ok()? {
            (1, WT_LEN) => key = std::str::from_utf8(r.len_delimited().ok()?).ok()?,
            (2, WT_LEN) => value = std::str::from_utf8(r.len_delimited().ok()?).ok()?,
            _ => return None,
        }
    }
    Some((key, value))
}

impl Default for Extra<'_> {
    fn default() -> Self {
        Extra::new()
    }
}

impl fmt::Debug for Extra<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Extra<'_> {
    fn eq(&self, other: &Extra<'_>) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Extra<'_> {}

impl std::ops::Index<&str> for Extra<'_> {
    type Output = str;
    /// The value for `key`; panics if absent, like `BTreeMap`'s index.
    fn index(&self, key: &str) -> &str {
        #[allow(clippy::expect_used)] // the documented contract of Index
        self.get(key).expect("no entry for this key in extra")
    }
}

impl<'a, K: Into<Cow<'a, str>>, V: Into<Cow<'a, str>>> FromIterator<(K, V)> for Extra<'a> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Extra {
            wire: None,
            map: Some(
                iter.into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }
}

impl<'a> From<BTreeMap<Cow<'a, str>, Cow<'a, str>>> for Extra<'a> {
    fn from(m: BTreeMap<Cow<'a, str>, Cow<'a, str>>) -> Self {
        Extra {
            wire: None,
            map: Some(m),
        }
    }
}

impl<'e> IntoIterator for &'e Extra<'_> {
    type Item = (&'e str, &'e str);
    type IntoIter = Iter<'e>;
    fn into_iter(self) -> Iter<'e> {
        self.iter()
    }
}

/// Iterator over [`Extra`] entries in key order.
pub struct Iter<'e>(IterRepr<'e>);

enum IterRepr<'e> {
    Sorted(std::vec::IntoIter<(&'e str, &'e str)>),
    Map(std::collections::btree_map::Iter<'e, Cow<'e, str>, Cow<'e, str>>),
}

impl<'e> Iterator for Iter<'e> {
    type Item = (&'e str, &'e str);
    fn next(&mut self) -> Option<(&'e str, &'e str)> {
        match &mut self.0 {
            IterRepr::Sorted(it) => it.next(),
            IterRepr::Map(it) => it.next().map(|(k, v)| (k.as_ref(), v.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::proto::put_tag;
    use crate::{Limits, Metadata};

    fn entry_bytes(k: &str, v: &str) -> Vec<u8> {
        let mut e = Vec::new();
        for (field, s) in [(1, k), (2, v)] {
            put_tag(&mut e, field, WT_LEN);
            crate::proto::put_varint(&mut e, s.len() as u64);
            e.extend_from_slice(s.as_bytes());
        }
        e
    }

    /// A Metadata message holding these raw `extra` entries, in this order.
    fn metadata_with(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut m = Vec::new();
        for e in entries {
            put_tag(&mut m, F_EXTRA, WT_LEN);
            crate::proto::put_varint(&mut m, e.len() as u64);
            m.extend_from_slice(e);
        }
        m
    }

    /// AVP-WIRE-12: the wire view behaves as upb's map: last entry wins, key
    /// order, entries with unknown fields are not entries; and it equals the
    /// same map built in memory.
    #[test]
    fn wire_12_wire_view_is_a_map() {
        let mut odd = entry_bytes("skipped", "x");
        odd.extend_from_slice(&[0x18, 0x01]); // field 3, varint: not a map entry
        let bytes = metadata_with(&[
            entry_bytes("b", "1"),
            entry_bytes("a", "2"),
            odd,
            entry_bytes("b", "3"),
            entry_bytes("", ""),
        ]);
        let m = Metadata::parse(&bytes, &Limits::DEFAULT).unwrap();
        let e = &m.extra;
        assert_eq!(e.len(), 3);
        assert!(!e.is_empty());
        assert_eq!(e.get("b"), Some("3"));
        assert_eq!(&e["a"], "2");
        assert_eq!(e.get("skipped"), None);
        assert!(e.contains_key(""));
        let pairs: Vec<(&str, &str)> = e.iter().collect();
        assert_eq!(pairs, [("", ""), ("a", "2"), ("b", "3")]);
        let built: Extra<'_> = [("a", "2"), ("b", "3"), ("", "")].into_iter().collect();
        assert_eq!(*e, built);
        assert_eq!(format!("{e:?}"), format!("{built:?}"));
        assert_eq!(e.clone().into_owned(), built);
    }

    /// Changing a decoded map first turns it into an in-memory map with the same entries.
    #[test]
    fn mutation_materialises_the_wire_entries() {
        let bytes = metadata_with(&[entry_bytes("k", "v"), entry_bytes("k", "w")]);
        let mut m = Metadata::parse(&bytes, &Limits::DEFAULT).unwrap();
        assert_eq!(m.extra.insert("n", "1"), None);
        assert_eq!(m.extra.remove("k").as_deref(), Some("w"));
        assert_eq!(m.extra.keys().collect::<Vec<_>>(), ["n"]);
    }

    /// AVP-LIM-5: the entry limit counts distinct keys, as a map would, even
    /// when duplicates push the raw entry count past it.
    #[test]
    fn lim_5_limit_counts_distinct_keys() {
        let limits = Limits::DEFAULT.with_max_extra_entries(2);
        let dup = metadata_with(&[
            entry_bytes("a", "1"),
            entry_bytes("b", "1"),
            entry_bytes("a", "2"),
            entry_bytes("b", "2"),
        ]);
        assert_eq!(Metadata::parse(&dup, &limits).unwrap().extra.len(), 2);
        let three = metadata_with(&[
            entry_bytes("a", "1"),
            entry_bytes("a", "2"),
            entry_bytes("b", "1"),
            entry_bytes("c", "1"),
        ]);
        let err = Metadata::parse(&three, &limits).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::LimitExceeded);
    }
}
