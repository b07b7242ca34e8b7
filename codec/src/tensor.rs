//! Typed, zero-copy views of tensor bytes (little-endian elements).
//!
//! A [`TensorView`] borrows the payload and converts elements to `f32` on
//! the fly (binary16 and bfloat16 widen exactly, int8 casts), so statistics
//! over a 256 MiB KV cache allocate nothing. With the `ndarray` feature a
//! view also converts into an owned `ndarray::ArrayD<f32>`.

use crate::metadata::DataType;

/// Element types that appear in AVP payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// binary32.
    F32,
    /// binary16.
    F16,
    /// bfloat16.
    Bf16,
    /// int8.
    I8,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::F32 => 4,
            ElementType::F16 | ElementType::Bf16 => 2,
            ElementType::I8 => 1,
        }
    }
}

impl From<DataType> for ElementType {
    fn from(d: DataType) -> Self {
        match d {
            DataType::Float32 => ElementType::F32,
            DataType::Float16 => ElementType::F16,
            DataType::Bfloat16 => ElementType::Bf16,
            DataType::Int8 => ElementType::I8,
        }
    }
}

// Exact widening (AVP-KVQ-7), branch-free so that loops over rows vectorise.
pub use crate::f16::{bf16_to_f32, f16_to_f32};

/// A borrowed tensor: bytes, element type and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorView<'a> {
    bytes: &'a [u8],
    element: ElementType,
}

impl<'a> TensorView<'a> {
    /// A view of `bytes` as elements of `element`; a trailing partial element is ignored.
    pub fn new(bytes: &'a [u8], element: ElementType) -> Self {
        TensorView { bytes, element }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.element
    }

    /// Number of whole elements.
    pub fn len(&self) -> usize {
        self.bytes
            .len()
            .checked_div(self.element.size())
            .unwrap_or(0)
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements widened to f32.
    pub fn iter_f32(&self) -> impl Iterator<Item = f32> + 'a {
        let element = self.element;
        self.bytes
            .chunks_exact(element.size())
            .map(move |c| match (element, c) {
                (ElementType::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
                (ElementType::F16, &[a, b]) => f16_to_f32(u16::from_le_bytes([a, b])),
                (ElementType::Bf16, &[a, b]) => bf16_to_f32(u16::from_le_bytes([a, b])),
                (ElementType::I8, &[a]) => f32::from(a as i8),
                _ => f32::NAN, // unreachable: chunks_exact yields element-sized chunks
            })
    }

    /// Summary statistics in one pass.
    pub fn stats(&self) -> Stats {
        let mut acc = StatsAccumulator::default();
        acc.update(self);
        acc.finish()
    }

    /// The elements as an owned f32 array of `shape` (its product must equal [`Self::len`]).
    #[cfg(feature = "ndarray")]
    pub fn to_ndarray(&self, shape: &[usize]) -> Option<ndarray::ArrayD<f32>> {
        let data: Vec<f32> = self.iter_f32().collect();
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).ok()
    }
}

/// What [`TensorView::stats`] reports. NaNs are counted and left out of
/// everything else; infinities are counted, bound min/max, and are left out
/// of the L2 norm (which is over the finite elements).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Elements seen.
    pub count: u64,
    /// NaN elements.
    pub nan: u64,
    /// ±Inf elements.
    pub inf: u64,
    /// Smallest non-NaN element.
    pub min: Option<f32>,
    /// Largest non-NaN element.
    pub max: Option<f32>,
    /// Euclidean norm of the finite elements.
    pub l2_norm: f64,
}

/// [`Stats`] over a tensor that arrives in pieces (a streamed payload):
/// feeding consecutive views gives exactly what [`TensorView::stats`] gives
/// for their concatenation, bit for bit (the same per-element updates in the
/// same order). Pieces must split at element boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatsAccumulator {
    count: u64,
    nan: u64,
    inf: u64,
    min: Option<f32>,
    max: Option<f32>,
    sum_sq: f64,
}

impl StatsAccumulator {
    /// Adds the elements of `view`.
    pub fn update(&mut self, view: &TensorView<'_>) {
        for v in view.iter_f32() {
            self.count = self.count.saturating_add(1);
            if v.is_nan() {
                self.nan = self.nan.saturating_add(1);
                continue;
            }
            if v.is_infinite() {
                self.inf = self.inf.saturating_add(1);
            } else {
                self.sum_sq += f64::from(v) * f64::from(v);
            }
            self.min = Some(self.min.map_or(v, |m: f32| m.min(v)));
            self.max = Some(self.max.map_or(v, |m: f32| m.max(v)));
        }
    }

    /// The statistics of everything added.
    pub fn finish(&self) -> Stats {
        Stats {
            count: self.count,
            nan: self.nan,
            inf: self.inf,
            min: self.min,
            max: self.max,
            l2_norm: self.sum_sq.sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]
    use super::*;

    #[test]
    fn f16_widening_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn bf16_widening_is_the_upper_half() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn stats_count_nan_and_inf_separately() {
        let vals = [3.0f32, -4.0, f32::NAN, f32::INFINITY];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = TensorView::new(&bytes, ElementType::F32).stats();
        assert_eq!((s.count, s.nan, s.inf), (4, 1, 1));
        assert_eq!(s.min, Some(-4.0));
        assert_eq!(s.max, Some(f32::INFINITY));
        assert_eq!(s.l2_norm, 5.0);
    }

    #[test]
    fn accumulated_pieces_equal_the_whole() {
        let vals: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let whole = TensorView::new(&bytes, ElementType::F32).stats();
        let mut acc = StatsAccumulator::default();
        for piece in bytes.chunks(4 * 37) {
            acc.update(&TensorView::new(piece, ElementType::F32));
        }
        let pieces = acc.finish();
        assert_eq!(pieces, whole);
        assert_eq!(pieces.l2_norm.to_bits(), whole.l2_norm.to_bits());
        assert_eq!(pieces.count, 1000);
    }
}
