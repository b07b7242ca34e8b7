//! [`Shape`]: the `tensor_shape` list (Metadata field 9, AVP-WIRE-9).
//!
//! Real shapes have one to five dimensions, so up to [`Shape::INLINE`] of them
//! live inside the value itself and only longer ones go to the heap. That
//! keeps `peek` and `decode` of a typical message free of allocations, which
//! is most of their cost for small messages.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Dimensions kept inline before spilling to a `Vec`.
const INLINE: usize = 6;

/// A tensor shape: a list of `u32` dimensions that dereferences to `[u32]`.
///
/// Build one from a `Vec<u32>`, a slice or an array (`vec![1, 896].into()`,
/// `Shape::from([1, 896])`); compare it with any of those.
#[derive(Clone)]
pub struct Shape(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, dims: [u32; INLINE] },
    Heap(Vec<u32>),
}

impl Shape {
    /// How many dimensions fit without a heap allocation.
    pub const INLINE: usize = INLINE;

    /// The empty shape (no `tensor_shape` on the wire).
    pub const fn new() -> Shape {
        Shape(Repr::Inline {
            len: 0,
            dims: [0; INLINE],
        })
    }

    /// The dimensions.
    pub fn as_slice(&self) -> &[u32] {
        match &self.0 {
            Repr::Inline { len, dims } => dims.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap(v) => v,
        }
    }

    /// Appends a dimension, moving to the heap past [`Shape::INLINE`].
    pub fn push(&mut self, dim: u32) {
        match &mut self.0 {
            Repr::Inline { len, dims } => {
                if let Some(slot) = dims.get_mut(usize::from(*len)) {
                    *slot = dim;
                    *len = len.saturating_add(1);
                } else {
                    let mut v = Vec::with_capacity(INLINE.saturating_mul(2));
                    v.extend_from_slice(dims);
                    v.push(dim);
                    self.0 = Repr::Heap(v);
                }
            }
            Repr::Heap(v) => v.push(dim),
        }
    }

    /// Removes every dimension.
    pub fn clear(&mut self) {
        *self = Shape::new();
    }
}

/// Collects dimensions in plain locals while a parser runs and builds the
/// [`Shape`] once at the end: updating the enum in place on every dimension
/// made the compiler copy it through overlapping stack stores.
pub(crate) struct ShapeBuilder {
    dims: [u32; INLINE],
    len: usize,
    /// Every dimension, once there are more than [`INLINE`].
    spill: Vec<u32>,
}

impl ShapeBuilder {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        ShapeBuilder {
            dims: [0; INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// Dimensions pushed so far.
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The dimensions pushed so far.
    #[inline(always)]
    pub(crate) fn as_slice(&self) -> &[u32] {
        match self.dims.get(..self.len) {
            Some(inline) => inline,
            None => &self.spill,
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, dim: u32) {
        if let Some(slot) = self.dims.get_mut(self.len) {
            *slot = dim;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.dims);
            }
            self.spill.push(dim);
        }
        self.len = self.len.saturating_add(1);
    }

    #[inline(always)]
    pub(crate) fn finish(self) -> Shape {
        if self.len <= INLINE {
            Shape(Repr::Inline {
                len: self.len as u8,
                dims: self.dims,
            })
        } else {
            Shape(Repr::Heap(self.spill))
        }
    }
}

impl Default for Shape {
    fn default() -> Self {
        Shape::new()
    }
}

impl Deref for Shape {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        self.as_slice()
    }
}

impl AsRef<[u32]> for Shape {
    fn as_ref(&self) -> &[u32] {
        self.as_slice()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for Shape {
    fn eq(&self, other: &Shape) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Shape {}

impl Hash for Shape {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq<[u32]> for Shape {
    fn eq(&self, other: &[u32]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u32]> for Shape {
    fn eq(&self, other: &&[u32]) -> bool {
        self.as_slice() == *other
    }
}

impl PartialEq<Vec<u32>> for Shape {
    fn eq(&self, other: &Vec<u32>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> PartialEq<[u32; N]> for Shape {
    fn eq(&self, other: &[u32; N]) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl FromIterator<u32> for Shape {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut s = Shape::new();
        for d in iter {
            s.push(d);
        }
        s
    }
}

impl From<&[u32]> for Shape {
    fn from(dims: &[u32]) -> Self {
        if dims.len() <= INLINE {
            dims.iter().copied().collect()
        } else {
            Shape(Repr::Heap(dims.to_vec()))
        }
    }
}

impl From<Vec<u32>> for Shape {
    fn from(dims: Vec<u32>) -> Self {
        if dims.len() <= INLINE {
            dims.as_slice().into()
        } else {
            Shape(Repr::Heap(dims))
        }
    }
}

impl<const N: usize> From<[u32; N]> for Shape {
    fn from(dims: [u32; N]) -> Self {
        dims.as_slice().into()
    }
}

impl From<Shape> for Vec<u32> {
    fn from(s: Shape) -> Self {
        match s.0 {
            Repr::Heap(v) => v,
            Repr::Inline { .. } => s.as_slice().to_vec(),
        }
    }
}

impl<'s> IntoIterator for &'s Shape {
    type Item = &'s u32;
    type IntoIter = std::slice::Iter<'s, u32>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn inline_then_heap_keeps_every_dimension_in_order() {
        let mut s = Shape::new();
        let mut reference = Vec::new();
        for d in 0..40u32 {
            s.push(d * 3);
            reference.push(d * 3);
            assert_eq!(s, reference);
            assert_eq!(s.len(), reference.len());
        }
        assert_eq!(Vec::from(s.clone()), reference);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn conversions_agree_at_the_inline_boundary() {
        for n in [0usize, 1, INLINE - 1, INLINE, INLINE + 1, 33] {
            let v: Vec<u32> = (0..n as u32).map(|d| d + 7).collect();
            let a = Shape::from(v.clone());
            let b = Shape::from(v.as_slice());
            let c: Shape = v.iter().copied().collect();
            assert_eq!(a, b);
            assert_eq!(b, c);
            assert_eq!(a, v);
            assert_eq!(format!("{a:?}"), format!("{v:?}"));
        }
        assert_eq!(Shape::from([1, 896]), [1, 896]);
    }
}
