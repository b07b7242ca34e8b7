//! The `ndarray` entry points of the quantized KV format (AVP-KVQ-20):
//! quantizing f32 views gives the bytes quantizing the KV v1 payload gives,
//! whatever the views' strides, and dequantized layers come back as the f32
//! arrays a receiver yields.
#![cfg(feature = "ndarray")]
#![allow(clippy::unwrap_used, clippy::float_cmp)]

use avp_codec::ErrorKind;
use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_quant::{
    KvExt, KvPart, PrefixAddress, QuantParams, encode_ext, encode_ext_ndarray, f32_to_f16,
};
use avp_codec::tensor::f16_to_f32;
use ndarray::{Array3, Axis, s};

const HEADS: usize = 2;
const SEQ: usize = 64;
const DIM: usize = 64;

/// Two layers of deterministic keys and values, [HEADS, SEQ, DIM].
fn layers() -> Vec<(Array3<f32>, Array3<f32>)> {
    let mut state = 0x2545_f491u32;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    (0..2)
        .map(|l| {
            let k = Array3::from_shape_simple_fn((HEADS, SEQ, DIM), &mut next)
                .mapv(|x| 4.0 * x + l as f32);
            let v = Array3::from_shape_simple_fn((HEADS, SEQ, DIM), &mut next);
            (k, v)
        })
        .collect()
}

/// The same context as a float16 KV v1 payload.
fn kv_v1(layers: &[(Array3<f32>, Array3<f32>)]) -> Vec<u8> {
    let header = KvHeader {
        num_layers: layers.len() as u32,
        num_kv_heads: HEADS as u32,
        head_dim: DIM as u32,
        seq_len: SEQ as u32,
        dtype: KvDtype::Float16,
    };
    let half = |a: &Array3<f32>| -> Vec<u8> {
        a.iter()
            .flat_map(|x| f32_to_f16(*x).to_le_bytes())
            .collect()
    };
    let tensors: Vec<(Vec<u8>, Vec<u8>)> = layers.iter().map(|(k, v)| (half(k), half(v))).collect();
    write_kv_cache(&header, tensors.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap()
}

#[test]
fn avp_kvq_20_quantizing_views_matches_quantizing_the_kv_payload() {
    let layers = layers();
    let raw = kv_v1(&layers);
    let kv = KvCache::parse(&raw).unwrap();
    for params in [
        QuantParams::INT8,
        QuantParams::INT4,
        QuantParams::INT8_CHANNEL,
        QuantParams::NONE,
    ] {
        let from_views = encode_ext_ndarray(
            layers.iter().map(|(k, v)| (k.view(), v.view())),
            KvDtype::Float16,
            &params,
            0,
            None,
        )
        .unwrap();
        assert_eq!(
            from_views,
            encode_ext(&kv, &params, 0, None).unwrap(),
            "{params:?}"
        );
    }
    // A delta from views too.
    let address = PrefixAddress([9; 32]);
    let delta = encode_ext_ndarray(
        layers.iter().map(|(k, v)| (k.view(), v.view())),
        KvDtype::Float16,
        &QuantParams::INT8,
        32,
        Some(&address),
    )
    .unwrap();
    assert_eq!(
        delta,
        encode_ext(&kv, &QuantParams::INT8, 32, Some(&address)).unwrap()
    );
}

#[test]
fn avp_kvq_20_views_in_any_layout_give_the_same_bytes() {
    let layers = layers();
    let expected = encode_ext_ndarray(
        layers.iter().map(|(k, v)| (k.view(), v.view())),
        KvDtype::Float16,
        &QuantParams::INT8,
        0,
        None,
    )
    .unwrap();
    // Stored [SEQ, HEADS, DIM] (as a model's cache often is) and viewed
    // through permuted axes: same logical [HEADS, SEQ, DIM] values.
    let permuted: Vec<(Array3<f32>, Array3<f32>)> = layers
        .iter()
        .map(|(k, v)| {
            let t = |a: &Array3<f32>| {
                a.view()
                    .permuted_axes([1, 0, 2])
                    .as_standard_layout()
                    .into_owned()
            };
            (t(k), t(v))
        })
        .collect();
    let views = permuted.iter().map(|(k, v)| {
        (
            k.view().permuted_axes([1, 0, 2]),
            v.view().permuted_axes([1, 0, 2]),
        )
    });
    let got = encode_ext_ndarray(views, KvDtype::Float16, &QuantParams::INT8, 0, None).unwrap();
    assert_eq!(got, expected);
    // A strided slice of a wider array (every other channel).
    let wide: Vec<Array3<f32>> = layers
        .iter()
        .flat_map(|(k, v)| [k, v])
        .map(|a| {
            let mut w = Array3::<f32>::zeros((HEADS, SEQ, 2 * DIM));
            w.slice_mut(s![.., .., ..;2]).assign(a);
            w
        })
        .collect();
    let views = wide
        .chunks_exact(2)
        .map(|p| (p[0].slice(s![.., .., ..;2]), p[1].slice(s![.., .., ..;2])));
    let got = encode_ext_ndarray(views, KvDtype::Float16, &QuantParams::INT8, 0, None).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn avp_kvq_20_dequantized_layers_are_what_the_receiver_yields() {
    let layers = layers();
    let q = encode_ext_ndarray(
        layers.iter().map(|(k, v)| (k.view(), v.view())),
        KvDtype::Float16,
        &QuantParams::INT4,
        0,
        None,
    )
    .unwrap();
    let ext = KvExt::parse(&q).unwrap();
    let plain = ext.dequantize().unwrap();
    let back = KvCache::parse(&plain).unwrap();
    for (index, (k, v)) in layers.iter().enumerate() {
        let (dk, dv) = ext.dequantize_layer_f32(index).unwrap();
        let layer = back.layer(index).unwrap();
        for (got, want) in [(&dk, layer.key), (&dv, layer.value)] {
            assert_eq!(got.dim(), (HEADS, SEQ, DIM));
            let wanted: Vec<f32> = want.iter_f32().collect();
            assert_eq!(got.as_slice().unwrap(), &wanted[..]);
        }
        // int4 stays within 10 % of the original (AVP-KVQ-6 on this data).
        for (got, orig) in [(&dk, k), (&dv, v)] {
            let diff = (got - orig).mapv(|x| x * x).sum().sqrt();
            let norm = orig.mapv(|x| x * x).sum().sqrt();
            assert!(diff / norm < 0.10, "{}", diff / norm);
        }
    }
    // Into a view with other strides: the same values.
    let mut transposed = Array3::<f32>::zeros((DIM, SEQ, HEADS));
    let view = transposed.view_mut().reversed_axes();
    ext.dequantize_tensor_f32_into(1, KvPart::Value, view)
        .unwrap();
    let (_, dv) = ext.dequantize_layer_f32(1).unwrap();
    assert_eq!(transposed.view().reversed_axes(), dv.view());
    assert_eq!(
        dv[[1, 2, 3]],
        f16_to_f32(f32_to_f16(dv[[1, 2, 3]])),
        "values are exactly representable in the context's dtype"
    );
}

#[test]
fn avp_kvq_20_bad_shapes_are_invalid_argument() {
    let layers = layers();
    let short = layers[1].0.slice_axis(Axis(1), (0..32).into());
    let kind = encode_ext_ndarray(
        [
            (layers[0].0.view(), layers[0].1.view()),
            (short, layers[1].1.view()),
        ],
        KvDtype::Float16,
        &QuantParams::INT8,
        0,
        None,
    )
    .unwrap_err()
    .kind();
    assert_eq!(kind, ErrorKind::InvalidArgument);
    let none: [(ndarray::ArrayView3<f32>, ndarray::ArrayView3<f32>); 0] = [];
    let kind = encode_ext_ndarray(none, KvDtype::Float16, &QuantParams::INT8, 0, None)
        .unwrap_err()
        .kind();
    assert_eq!(kind, ErrorKind::InvalidArgument);
    let q = encode_ext_ndarray(
        layers.iter().map(|(k, v)| (k.view(), v.view())),
        KvDtype::Float16,
        &QuantParams::INT8,
        0,
        None,
    )
    .unwrap();
    let ext = KvExt::parse(&q).unwrap();
    let mut wrong = Array3::<f32>::zeros((HEADS, SEQ - 1, DIM));
    let kind = ext
        .dequantize_tensor_f32_into(0, KvPart::Key, wrong.view_mut())
        .unwrap_err()
        .kind();
    assert_eq!(kind, ErrorKind::InvalidArgument);
    // A non-finite value is refused like in the byte API.
    let mut bad = layers[0].0.clone();
    bad[[0, 0, 0]] = f32::NAN;
    let kind = encode_ext_ndarray(
        [(bad.view(), layers[0].1.view())],
        KvDtype::Float16,
        &QuantParams::INT8,
        0,
        None,
    )
    .unwrap_err()
    .kind();
    assert_eq!(kind, ErrorKind::InvalidArgument);
}
