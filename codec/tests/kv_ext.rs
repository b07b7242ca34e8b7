//! Quantized and delta KV payloads (spec/protocol/kv-quant.md AVP-KVQ-*,
//! spec/protocol/kv-delta.md AVP-KVD-*): round trips, bit-exact
//! dequantization, every typed error, truncation sweep, and what the
//! Python SDK 0.6.2 does with such a message.
#![cfg(feature = "kv-delta")]

use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_delta::{
    assemble, assemble_into, assembled_len, common_prefix_len, missing_prefix, prefix_address,
    split_delta,
};
use avp_codec::kv_quant::{
    KVX_HEADER_LEN, KvExt, KvPart, KvScheme, PrefixAddress, QuantParams, ScaleDtype, encode_ext,
    encode_ext_into, f32_to_bf16, f32_to_f16, relative_errors,
};
use avp_codec::tensor::{bf16_to_f32, f16_to_f32};
use avp_codec::{ErrorKind, Limits};

/// A deterministic KV v1 payload: values in about [-4, 4] with some structure.
fn kv_payload(layers: u32, heads: u32, dim: u32, seq: u32, dtype: KvDtype) -> Vec<u8> {
    let header = KvHeader {
        num_layers: layers,
        num_kv_heads: heads,
        head_dim: dim,
        seq_len: seq,
        dtype,
    };
    let n = (heads * dim * seq) as usize;
    let mut state = 0x1234_5678u32;
    let mut tensor = |salt: f32| {
        let mut out = Vec::new();
        for i in 0..n {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            let x = 3.0 * noise + salt * ((i % dim as usize) as f32 / dim as f32);
            match dtype {
                KvDtype::Float16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
                KvDtype::Bfloat16 => out.extend_from_slice(&f32_to_bf16(x).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        out
    };
    let tensors: Vec<(Vec<u8>, Vec<u8>)> = (0..layers)
        .map(|l| (tensor(l as f32), tensor(-(l as f32))))
        .collect();
    write_kv_cache(&header, tensors.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap()
}

fn kind_of(payload: &[u8]) -> ErrorKind {
    KvExt::parse(payload).unwrap_err().kind()
}

fn set_u32(payload: &mut [u8], at: usize, v: u32) {
    payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn f16_narrowing_rounds_half_to_even_and_round_trips_every_half() {
    // AVP-KVQ-7: narrowing is IEEE round-half-to-even.
    for bits in 0u16..=u16::MAX {
        let x = f16_to_f32(bits);
        if x.is_nan() {
            assert!(f16_to_f32(f32_to_f16(x)).is_nan());
        } else {
            assert_eq!(f32_to_f16(x), bits, "{bits:#06x}");
        }
    }
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even 1.
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    assert_eq!(f32_to_f16(65520.0), 0x7c00, "overflow is infinity");
    assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
}

#[test]
fn int8_round_trip_is_accurate_and_bit_exact_to_the_formula() {
    // AVP-KVQ-2, AVP-KVQ-5: layout, scale = amax/127, q = rne(x/s), x^ = q*s;
    // AVP-KVQ-8: it dequantizes to the KV v1 layout; AVP-KVQ-20: the codec API.
    let raw = kv_payload(2, 2, 64, 5, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    // The default stores f16 scales: 8.25 bits a value.
    let default = encode_ext(&kv, &QuantParams::INT8, 0, None).unwrap();
    assert_eq!(default.len(), KVX_HEADER_LEN + 2 * 2 * (2 * 5 * (2 + 64)));
    let f32_scales = QuantParams {
        scale_dtype: ScaleDtype::F32,
        ..QuantParams::INT8
    };
    let q = encode_ext(&kv, &f32_scales, 0, None).unwrap();
    assert_eq!(&q[..4], b"AVKX");
    let ext = KvExt::parse(&q).unwrap();
    assert_eq!(ext.header.scheme, KvScheme::Int8);
    assert_eq!(ext.header.scales_per_tensor, 2 * 5);
    // 8.5 bits a value: 64 int8 + one f32 scale per group.
    assert_eq!(q.len(), KVX_HEADER_LEN + 2 * 2 * (2 * 5 * (4 + 64)));
    let out = ext.dequantize().unwrap();
    let back = KvCache::parse(&out).unwrap();
    assert_eq!(back.header, kv.header);
    for e in relative_errors(&ext, &kv).unwrap() {
        assert!(e.key < 0.01 && e.value < 0.01, "{e:?}");
    }
    // First group of layer 0's K, by hand.
    let section = ext.section(0, KvPart::Key).unwrap();
    let scale = f32::from_le_bytes(section[..4].try_into().unwrap());
    let xs: Vec<f32> = kv.layer(0).unwrap().key.iter_f32().take(64).collect();
    let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
    assert_eq!(scale, amax / 127.0);
    let qs = &section[10 * 4..10 * 4 + 64];
    for ((x, &qb), deq) in xs.iter().zip(qs).zip(back.layer(0).unwrap().key.iter_f32()) {
        let qv = (x / scale).round_ties_even().clamp(-127.0, 127.0);
        assert_eq!(qb as i8 as f32, qv);
        assert_eq!(deq, f16_to_f32(f32_to_f16(qv * scale)));
    }
}

#[test]
fn int4_keys_per_channel_values_per_token_with_residual() {
    // AVP-KVQ-6: KIVI layout; the residual tokens come back unchanged.
    let raw = kv_payload(2, 2, 64, 70, KvDtype::Bfloat16);
    let kv = KvCache::parse(&raw).unwrap();
    let params = QuantParams {
        residual: 6,
        ..QuantParams::INT4
    };
    let q = encode_ext(&kv, &params, 0, None).unwrap();
    let ext = KvExt::parse(&q).unwrap();
    assert_eq!(ext.header.quantized_tokens(), 64);
    assert_eq!(ext.header.scales_per_tensor, 2 * 64 * 64 / 32);
    let out = ext.dequantize().unwrap();
    let back = KvCache::parse(&out).unwrap();
    for e in relative_errors(&ext, &kv).unwrap() {
        assert!(e.key < 0.15 && e.value < 0.15, "{e:?}");
    }
    let row = 64 * 2;
    for l in 0..2 {
        let (a, b) = (kv.layer(l).unwrap(), back.layer(l).unwrap());
        for h in 0..2 {
            let head = |t: &[u8]| t[h * 70 * row + 64 * row..(h + 1) * 70 * row].to_vec();
            assert_eq!(head(a.key.bytes()), head(b.key.bytes()));
            assert_eq!(head(a.value.bytes()), head(b.value.bytes()));
        }
    }
    // Nibble order: element 0 in the low nibble (AVP-KVQ-6).
    let section = ext.section(0, KvPart::Value).unwrap();
    let groups = ext.header.scales_per_tensor as usize;
    let scale = f16_to_f32(u16::from_le_bytes(section[..2].try_into().unwrap()));
    let min = f16_to_f32(u16::from_le_bytes(
        section[groups * 2..groups * 2 + 2].try_into().unwrap(),
    ));
    let byte = section[groups * 4];
    let first: Vec<f32> = back.layer(0).unwrap().value.iter_f32().take(2).collect();
    let deq = |q: u8| bf16_to_f32(f32_to_bf16(f32::from(q) * scale + min));
    assert_eq!(first, vec![deq(byte & 15), deq(byte >> 4)]);
}

#[test]
fn f16_scales_and_float32_contexts_round_trip() {
    let raw = kv_payload(1, 1, 32, 64, KvDtype::Float32);
    let kv = KvCache::parse(&raw).unwrap();
    for params in [
        QuantParams {
            scale_dtype: ScaleDtype::F16,
            group_size: 32,
            ..QuantParams::INT8
        },
        QuantParams {
            group_size: 64,
            scale_dtype: ScaleDtype::F32,
            ..QuantParams::INT4
        },
    ] {
        let result = encode_ext(&kv, &params, 0, None);
        if params.scheme == KvScheme::Int4 {
            // 64 does not divide head_dim 32: a caller error, not a payload.
            assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidArgument);
            continue;
        }
        let ext_bytes = result.unwrap();
        let ext = KvExt::parse(&ext_bytes).unwrap();
        let errs = relative_errors(&ext, &kv).unwrap();
        assert!(errs[0].key < 0.01, "{errs:?}");
    }
}

#[test]
fn plain_delta_splits_and_assembles_byte_identically() {
    // AVP-KVD-2 (delta payload), AVP-KVD-3 (a base longer than p that starts
    // with P), AVP-KVD-20 (split, assemble, assemble_into).
    for dtype in [KvDtype::Float32, KvDtype::Float16, KvDtype::Bfloat16] {
        let raw = kv_payload(3, 2, 16, 20, dtype);
        let kv = KvCache::parse(&raw).unwrap();
        let (address, delta) = split_delta(&kv, 12, "mh", &QuantParams::NONE).unwrap();
        let ext = KvExt::parse(&delta).unwrap();
        assert_eq!(ext.prefix, Some(address));
        assert_eq!(ext.header.seq_start, 12);
        // The base may be longer than p: any context that starts with P.
        assert_eq!(assemble(&kv, "mh", &ext).unwrap(), raw);
        let prefix_only = truncate_kv(&kv, 12);
        let base = KvCache::parse(&prefix_only).unwrap();
        assert_eq!(prefix_address(&base, 12, "mh").unwrap(), address);
        assert_eq!(assemble(&base, "mh", &ext).unwrap(), raw);
        let mut out = vec![0u8; assembled_len(&ext) as usize];
        assemble_into(&base, &address, &ext, &mut out).unwrap();
        assert_eq!(out, raw);
    }
}

/// The KV v1 payload of positions [0, p).
fn truncate_kv(kv: &KvCache<'_>, p: u32) -> Vec<u8> {
    let h = KvHeader {
        seq_len: p,
        ..kv.header
    };
    let row = kv.header.head_dim as usize * kv.header.dtype.element_type().size();
    let cut = |t: &[u8]| -> Vec<u8> {
        t.chunks(row * kv.header.seq_len as usize)
            .flat_map(|head| head[..row * p as usize].to_vec())
            .collect()
    };
    let layers: Vec<_> = kv
        .layers()
        .map(|l| (cut(l.key.bytes()), cut(l.value.bytes())))
        .collect();
    write_kv_cache(&h, layers.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap()
}

#[test]
fn kvd_30_common_prefix_is_the_first_differing_position_in_any_head() {
    // AVP-KVD-30: p is where the first layer, tensor or head differs.
    let raw = kv_payload(3, 2, 16, 20, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let short = truncate_kv(&kv, 12);
    let short_kv = KvCache::parse(&short).unwrap();
    assert_eq!(common_prefix_len(&kv, &kv).unwrap(), 20);
    assert_eq!(common_prefix_len(&kv, &short_kv).unwrap(), 12);
    assert_eq!(common_prefix_len(&short_kv, &kv).unwrap(), 12);
    // A fork: position 7 of the last layer's V, second head, changes.
    let row = 16 * 2;
    let tensor = 2 * 20 * row;
    let mut fork = raw.clone();
    let at = 17 + 5 * tensor + 20 * row + 7 * row + 3;
    fork[at] ^= 0x40;
    let fork_kv = KvCache::parse(&fork).unwrap();
    assert_eq!(common_prefix_len(&kv, &fork_kv).unwrap(), 7);
    fork[17] ^= 1;
    let fork_kv = KvCache::parse(&fork).unwrap();
    assert_eq!(common_prefix_len(&kv, &fork_kv).unwrap(), 0);
    let other = kv_payload(3, 2, 16, 20, KvDtype::Float32);
    let err = common_prefix_len(&kv, &KvCache::parse(&other).unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeltaMismatch);
}

#[test]
fn prefix_address_follows_its_definition() {
    // AVP-KVD-1: BLAKE3(domain || u32 len || model hash || KV v1 payload of [0, p)).
    let raw = kv_payload(2, 2, 8, 9, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let prefix = truncate_kv(&kv, 4);
    let mut h = blake3::Hasher::new();
    h.update(b"avp-kv-prefix-v1\n");
    h.update(&3u32.to_le_bytes());
    h.update(b"abc");
    h.update(&prefix);
    assert_eq!(
        prefix_address(&kv, 4, "abc").unwrap().0,
        *h.finalize().as_bytes()
    );
    assert_ne!(
        prefix_address(&kv, 4, "abd").unwrap(),
        prefix_address(&kv, 4, "abc").unwrap()
    );
    assert_eq!(
        prefix_address(&kv, 10, "abc").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn quantized_delta_assembles_prefix_exactly_and_tail_dequantized() {
    let raw = kv_payload(2, 2, 64, 40, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let (_, delta) = split_delta(&kv, 8, "m", &QuantParams::INT8).unwrap();
    let ext = KvExt::parse(&delta).unwrap();
    let full = assemble(&kv, "m", &ext).unwrap();
    let tail = ext.dequantize().unwrap();
    let (a, t) = (
        KvCache::parse(&full).unwrap(),
        KvCache::parse(&tail).unwrap(),
    );
    let row = 64 * 2;
    for l in 0..2 {
        for h in 0..2 {
            let full_head = &a.layer(l).unwrap().key.bytes()[h * 40 * row..(h + 1) * 40 * row];
            let orig_head = &kv.layer(l).unwrap().key.bytes()[h * 40 * row..(h + 1) * 40 * row];
            assert_eq!(full_head[..8 * row], orig_head[..8 * row]);
            assert_eq!(
                full_head[8 * row..],
                t.layer(l).unwrap().key.bytes()[h * 32 * row..(h + 1) * 32 * row]
            );
        }
    }
}

#[test]
fn delta_errors_are_typed() {
    // AVP-KVD-4 (check order and kinds), AVP-KVD-5 (missing_prefix).
    let raw = kv_payload(2, 2, 8, 10, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let (address, delta) = split_delta(&kv, 6, "m", &QuantParams::NONE).unwrap();
    let ext = KvExt::parse(&delta).unwrap();
    // Another model hash: another address.
    assert_eq!(
        assemble(&kv, "other", &ext).unwrap_err().kind(),
        ErrorKind::PrefixMismatch
    );
    let mut out = vec![0u8; assembled_len(&ext) as usize];
    let wrong = PrefixAddress([7; 32]);
    assert_eq!(
        assemble_into(&kv, &wrong, &ext, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::PrefixMismatch
    );
    // Base shorter than p.
    let short = truncate_kv(&kv, 5);
    let short = KvCache::parse(&short).unwrap();
    assert_eq!(
        assemble_into(&short, &address, &ext, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::DeltaMismatch
    );
    // Another dtype, another head count.
    let other = kv_payload(2, 2, 8, 10, KvDtype::Bfloat16);
    let other = KvCache::parse(&other).unwrap();
    assert_eq!(
        assemble_into(&other, &address, &ext, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::DeltaMismatch
    );
    let other = kv_payload(2, 1, 8, 10, KvDtype::Float16);
    let other = KvCache::parse(&other).unwrap();
    assert_eq!(
        assemble_into(&other, &address, &ext, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::DeltaMismatch
    );
    // Wrong output size, a full payload passed as a delta: caller errors.
    let mut small = vec![0u8; 3];
    assert_eq!(
        assemble_into(&kv, &address, &ext, &mut small)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let full = encode_ext(&kv, &QuantParams::NONE, 0, None).unwrap();
    let full = KvExt::parse(&full).unwrap();
    assert_eq!(
        assemble_into(&kv, &address, &full, &mut out)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let missing = missing_prefix(&address);
    assert_eq!(missing.kind().as_str(), "missing_prefix");
    assert!(missing.message().contains(&address.to_hex()));
}

#[test]
fn malformed_payloads_give_typed_errors() {
    // AVP-KVQ-3: check order and error kinds; AVP-KVQ-4: scheme parameters.
    let raw = kv_payload(1, 2, 64, 4, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let good = encode_ext(&kv, &QuantParams::INT8, 0, None).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        kind_of(&p)
    };
    assert_eq!(kind_of(&good[..39]), ErrorKind::Truncated);
    assert_eq!(edit(&|p| p[0] = b'X'), ErrorKind::Inconsistent);
    assert_eq!(edit(&|p| p[4] = 2), ErrorKind::UnsupportedVersion);
    assert_eq!(edit(&|p| p[5] = 4), ErrorKind::UnknownEnum);
    assert_eq!(edit(&|p| p[6] = 3), ErrorKind::UnknownEnum);
    assert_eq!(edit(&|p| p[7] = 2), ErrorKind::UnknownEnum);
    assert_eq!(
        edit(&|p| set_u32(p, 20, 5)),
        ErrorKind::Inconsistent,
        "seq_start > seq_len"
    );
    assert_eq!(edit(&|p| set_u32(p, 28, 0)), ErrorKind::BadGroupSize);
    assert_eq!(edit(&|p| set_u32(p, 28, 65)), ErrorKind::BadGroupSize);
    assert_eq!(
        edit(&|p| set_u32(p, 28, 48)),
        ErrorKind::BadGroupSize,
        "48 does not divide 64"
    );
    assert_eq!(
        edit(&|p| set_u32(p, 32, 1)),
        ErrorKind::Inconsistent,
        "int8 residual"
    );
    assert_eq!(edit(&|p| set_u32(p, 36, 9)), ErrorKind::ScaleCountMismatch);
    assert_eq!(
        edit(&|p| p.push(0)),
        ErrorKind::Inconsistent,
        "trailing byte"
    );
    assert_eq!(
        edit(&|p| {
            p.pop();
        }),
        ErrorKind::Truncated
    );
    assert_eq!(
        edit(&|p| set_u32(p, 8, u32::MAX)),
        ErrorKind::Truncated,
        "huge layer count"
    );
    // Scheme int4: group size must be 32 or 64 and divide the quantized tokens.
    assert_eq!(edit(&|p| p[5] = 2), ErrorKind::BadGroupSize);
    let zero_raw = kv_payload(0, 2, 64, 4, KvDtype::Float16);
    let zero_layers = KvCache::parse(&zero_raw).unwrap();
    let mut many = encode_ext(&zero_layers, &QuantParams::INT8, 0, None).unwrap();
    set_u32(&mut many, 8, 5000);
    set_u32(&mut many, 12, 0);
    set_u32(&mut many, 36, 0);
    assert_eq!(kind_of(&many), ErrorKind::LimitExceeded);
    assert!(KvExt::parse_with_limits(&many, &Limits::DEFAULT.with_max_kv_layers(5000)).is_ok());
    // A negative or non-finite scale is refused when dequantizing.
    let mut p = good.clone();
    p[40..44].copy_from_slice(&(-1.0f32).to_le_bytes());
    let ext = KvExt::parse(&p).unwrap();
    assert_eq!(
        ext.dequantize().unwrap_err().kind(),
        ErrorKind::Inconsistent
    );
    p[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let ext = KvExt::parse(&p).unwrap();
    assert_eq!(
        ext.dequantize().unwrap_err().kind(),
        ErrorKind::Inconsistent
    );
}

#[test]
fn every_truncation_of_every_scheme_fails_without_panicking() {
    let raw = kv_payload(2, 1, 64, 33, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let int4 = QuantParams {
        residual: 1,
        ..QuantParams::INT4
    };
    for (params, start) in [(QuantParams::NONE, 3), (QuantParams::INT8, 0), (int4, 0)] {
        let address = (start > 0).then(|| prefix_address(&kv, start, "m").unwrap());
        let p = encode_ext(&kv, &params, start, address.as_ref()).unwrap();
        assert!(KvExt::parse(&p).unwrap().dequantize().is_ok());
        for cut in 0..p.len() {
            assert!(
                KvExt::parse(&p[..cut]).is_err(),
                "{} cut at {cut}",
                params.scheme.name()
            );
        }
    }
}

#[test]
fn quantizing_refuses_what_the_format_cannot_carry() {
    let raw = kv_payload(1, 1, 64, 4, KvDtype::Float32);
    let kv = KvCache::parse(&raw).unwrap();
    // int4 over 4 tokens: 32 does not divide them (needs a residual of 4).
    assert_eq!(
        encode_ext(&kv, &QuantParams::INT4, 0, None)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let all_residual = QuantParams {
        residual: 4,
        ..QuantParams::INT4
    };
    assert!(encode_ext(&kv, &all_residual, 0, None).is_ok());
    let mut nan = raw.clone();
    nan[17..21].copy_from_slice(&f32::NAN.to_le_bytes());
    let kv = KvCache::parse(&nan).unwrap();
    assert_eq!(
        encode_ext(&kv, &QuantParams::INT8, 0, None)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        encode_ext(&kv, &QuantParams::NONE, 2, None)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument,
        "a delta needs an address"
    );
}

/// AVP-KVQ-1: an SDK 0.6.2 receiver that gets a KV_CACHE_EXT message
/// anyway fails loudly (its decode() rejects payload_type 3) instead of
/// reading the quantized bytes as float16. Skipped without the .venv.
#[test]
fn sdk_0_6_2_refuses_an_extended_kv_message() {
    use avp_codec::{Compression, Metadata, PayloadType, encode};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no .venv/bin/python");
        return;
    }
    let raw = kv_payload(1, 1, 64, 4, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let q = encode_ext(&kv, &QuantParams::INT8, 0, None).unwrap();
    let metadata = Metadata::new()
        .with_payload_type(PayloadType::KvCacheExt)
        .with_dtype(avp_codec::DataType::Float16)
        .with_model_id("m");
    let message = encode(&metadata, &q, Compression::None).unwrap();
    // Our decoder reads it back (the flag bit 2 matches KV_CACHE_EXT).
    let ours = avp_codec::decode_with(&message, &avp_codec::DecodeOptions::strict()).unwrap();
    assert_eq!(ours.metadata.payload_type, PayloadType::KvCacheExt);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-kvx-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("msg.avp");
    std::fs::write(&file, &message).unwrap();
    let script = r#"
import sys
from avp.codec import decode
from avp.errors import DecodeError
try:
    decode(open(sys.argv[1], 'rb').read())
    print('DECODED')
except DecodeError as e:
    print('DecodeError:', e)
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("DecodeError: Unknown payload_type value 3"),
        "SDK said: {stdout}"
    );
}

/// The textbook narrowing (sign, exponent, mantissa; round half to even on
/// the dropped bits), kept here to check the codec's branch-light one.
fn f32_to_f16_reference(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x007f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x0200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let round = |half: u32, rem: u32, halfway: u32| {
        if rem > halfway || (rem == halfway && half & 1 == 1) {
            half + 1
        } else {
            half
        }
    };
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        return sign | round(m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1)) as u16;
    }
    sign | round(((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000) as u16
}

#[test]
fn f16_narrowing_matches_the_textbook_rounding_on_a_sweep_of_floats() {
    // AVP-KVQ-7: every 257th binary32 bit pattern, both signs, all exponents.
    let mut checked = 0u32;
    for bits in (0..=u32::MAX).step_by(257) {
        let x = f32::from_bits(bits);
        let (fast, slow) = (f32_to_f16(x), f32_to_f16_reference(x));
        if x.is_nan() {
            assert_eq!(fast & 0x7c00, 0x7c00);
            assert_ne!(fast & 0x03ff, 0);
        } else {
            assert_eq!(fast, slow, "{x:e} ({bits:#010x})");
        }
        checked += 1;
    }
    assert!(checked > 16_000_000);
}

#[test]
fn encode_into_reuses_the_buffer_and_writes_the_same_bytes() {
    // AVP-KVQ-20: encode_ext_into clears and refills the caller's buffer.
    let raw = kv_payload(2, 2, 64, 32, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let mut buf = vec![0xEE; 7];
    for params in [QuantParams::INT4, QuantParams::INT8, QuantParams::NONE] {
        encode_ext_into(&kv, &params, 0, None, &mut buf).unwrap();
        assert_eq!(buf, encode_ext(&kv, &params, 0, None).unwrap());
    }
    let cap = buf.capacity();
    encode_ext_into(&kv, &QuantParams::INT8, 0, None, &mut buf).unwrap();
    assert_eq!(
        buf.capacity(),
        cap,
        "no new allocation for a smaller payload"
    );
}

#[test]
fn dtype_conversion_narrows_by_round_half_to_even() {
    // AVP-KVQ-20 (`--kv-dtype`), AVP-KVQ-7 rounding.
    use avp_codec::kv_quant::convert_dtype;
    let raw = kv_payload(2, 2, 8, 5, KvDtype::Float32);
    let kv = KvCache::parse(&raw).unwrap();
    let half = convert_dtype(&kv, KvDtype::Float16).unwrap();
    let h = KvCache::parse_with(&half, true).unwrap();
    assert_eq!(
        h.header,
        KvHeader {
            dtype: KvDtype::Float16,
            ..kv.header
        }
    );
    for (a, b) in kv.layers().zip(h.layers()) {
        for (x, y) in a.value.iter_f32().zip(b.value.iter_f32()) {
            assert_eq!(y, f16_to_f32(f32_to_f16(x)));
        }
    }
    // float16 -> float32 -> float16 is the identity; so is bfloat16 via float32.
    let wide = convert_dtype(&h, KvDtype::Float32).unwrap();
    let back = convert_dtype(&KvCache::parse(&wide).unwrap(), KvDtype::Float16).unwrap();
    assert_eq!(back, half);
    let bf = convert_dtype(&kv, KvDtype::Bfloat16).unwrap();
    let bf_kv = KvCache::parse(&bf).unwrap();
    let bf_again = convert_dtype(
        &KvCache::parse(&convert_dtype(&bf_kv, KvDtype::Float32).unwrap()).unwrap(),
        KvDtype::Bfloat16,
    )
    .unwrap();
    assert_eq!(bf_again, bf);
}

#[test]
fn a_delta_of_zero_positions_confirms_the_base() {
    // AVP-KVD-2: `p = n` is allowed (the receiver already has everything);
    // every scheme writes it (sections of no bytes) and it assembles to the base.
    let raw = kv_payload(2, 2, 64, 64, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    for params in [
        QuantParams::NONE,
        QuantParams::INT8,
        QuantParams::INT4,
        QuantParams::INT8_CHANNEL,
    ] {
        let (address, delta) = split_delta(&kv, 64, "m", &params).unwrap();
        let ext = KvExt::parse(&delta).unwrap();
        assert_eq!((ext.header.seq_start, ext.header.seq_len), (64, 64));
        assert_eq!(ext.prefix, Some(address));
        assert_eq!(assemble(&kv, "m", &ext).unwrap(), raw, "{params:?}");
        let tail = ext.dequantize().unwrap();
        assert_eq!(KvCache::parse(&tail).unwrap().header.seq_len, 0);
    }
}

/// Keys whose channels 3 and 17 are 10x and 50x the others (real models
/// have such outlier key channels), values without outliers.
fn outlier_kv(seq: u32, dtype: KvDtype) -> Vec<u8> {
    let (heads, dim) = (2u32, 64u32);
    let header = KvHeader {
        num_layers: 1,
        num_kv_heads: heads,
        head_dim: dim,
        seq_len: seq,
        dtype,
    };
    let mut state = 0x9e37_79b9u32;
    let mut tensor = |outliers: bool| {
        let mut out = Vec::new();
        for i in 0..(heads * seq * dim) as usize {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut x = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            match (outliers, i % dim as usize) {
                (true, 3) => x += 10.0,
                (true, 17) => x = -50.0 + 3.0 * x,
                _ => {}
            }
            match dtype {
                KvDtype::Float16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        out
    };
    let (k, v) = (tensor(true), tensor(false));
    write_kv_cache(&header, [(&k[..], &v[..])]).unwrap()
}

#[test]
fn avp_kvq_31_int8_channel_layout_and_bit_exact_arithmetic() {
    // AVP-KVQ-31: scales, codes; AVP-KVQ-32: AVP-KVQ-5's arithmetic with
    // keys grouped per channel over g tokens (70 = 64 + a last group of 6),
    // values per token.
    let raw = kv_payload(2, 2, 64, 70, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let params = QuantParams::INT8_CHANNEL;
    assert_eq!((params.group_size, params.residual), (64, 0));
    let q = encode_ext(&kv, &params, 0, None).unwrap();
    let ext = KvExt::parse(&q).unwrap();
    assert_eq!(ext.header.scheme, KvScheme::Int8Channel);
    assert_eq!(q[5], 3, "scheme byte");
    assert_eq!(ext.header.quantized_tokens(), 70);
    // H x ceil(tq/g) x D key scales, H x tq x D/g value scales; G is the keys'.
    let (groups, vgroups) = (2 * 2 * 64, 2 * 70);
    assert_eq!(ext.header.scales_per_tensor, groups as u32);
    assert_eq!(ext.header.part_scales(KvPart::Value), Some(vgroups as u64));
    // f16 scales, one byte a value.
    let (ksection, vsection) = (groups * 2 + 2 * 70 * 64, vgroups * 2 + 2 * 70 * 64);
    assert_eq!(ext.section(1, KvPart::Key).unwrap().len(), ksection);
    assert_eq!(ext.section(1, KvPart::Value).unwrap().len(), vsection);
    assert_eq!(q.len(), KVX_HEADER_LEN + 2 * (ksection + vsection));
    let out = ext.dequantize().unwrap();
    let back = KvCache::parse(&out).unwrap();
    assert_eq!(back.header, kv.header);
    for e in relative_errors(&ext, &kv).unwrap() {
        assert!(e.key < 0.01 && e.value < 0.01, "{e:?}");
    }
    let (orig, deq) = (kv.layer(1).unwrap(), back.layer(1).unwrap());
    let k: Vec<f32> = orig.key.iter_f32().collect();
    let v: Vec<f32> = orig.value.iter_f32().collect();
    let kd: Vec<f32> = deq.key.iter_f32().collect();
    let vd: Vec<f32> = deq.value.iter_f32().collect();
    let at = |h: usize, s: usize, c: usize| (h * 70 + s) * 64 + c;
    let round = |x: f32| f16_to_f32(f32_to_f16(x));
    let code = |x: f32, s: f32| (x / s).round_ties_even().clamp(-127.0, 127.0);
    // Keys of head 1, channel 5: a group over tokens 0..64, then one over 64..70.
    let ksec = ext.section(1, KvPart::Key).unwrap();
    for (block, tokens) in [(0, 0..64), (1, 64..70)] {
        let kgroup = (2 + block) * 64 + 5; // (h * ceil(tq / g) + s / g) * D + c
        let kscale = f16_to_f32(u16::from_le_bytes(
            ksec[kgroup * 2..kgroup * 2 + 2].try_into().unwrap(),
        ));
        let amax = tokens
            .clone()
            .fold(0f32, |a, s| a.max(k[at(1, s, 5)].abs()));
        assert_eq!(kscale, round(amax / 127.0));
        for s in tokens {
            let qb = ksec[groups * 2 + (70 + s) * 64 + 5] as i8;
            assert_eq!(f32::from(qb), code(k[at(1, s, 5)], kscale), "token {s}");
            assert_eq!(kd[at(1, s, 5)], round(f32::from(qb) * kscale));
        }
    }
    // Values of head 0, token 9: one group over the 64 channels.
    let vsec = ext.section(1, KvPart::Value).unwrap();
    let vscale = f16_to_f32(u16::from_le_bytes(
        vsec[9 * 2..9 * 2 + 2].try_into().unwrap(),
    ));
    let amax = (0..64).fold(0f32, |a, c| a.max(v[at(0, 9, c)].abs()));
    assert_eq!(vscale, round(amax / 127.0));
    for c in 0..64 {
        let qb = vsec[vgroups * 2 + 9 * 64 + c] as i8;
        assert_eq!(f32::from(qb), code(v[at(0, 9, c)], vscale));
        assert_eq!(vd[at(0, 9, c)], round(f32::from(qb) * vscale));
    }
    // A residual (AVP-KVQ-30, the sender's option): its tokens come back
    // unchanged, after the codes of the others.
    let params = QuantParams {
        residual: 6,
        ..QuantParams::INT8_CHANNEL
    };
    let q = encode_ext(&kv, &params, 0, None).unwrap();
    let ext = KvExt::parse(&q).unwrap();
    let (groups, vgroups) = (2 * 64, 2 * 64);
    assert_eq!(ext.header.part_scales(KvPart::Key), Some(groups));
    assert_eq!(ext.header.part_scales(KvPart::Value), Some(vgroups));
    let section = groups as usize * 2 + 2 * 64 * 64 + 2 * 6 * 64 * 2;
    assert_eq!(q.len(), KVX_HEADER_LEN + 2 * 2 * section);
    let out = ext.dequantize().unwrap();
    let deq = KvCache::parse(&out).unwrap();
    let deq = deq.layer(1).unwrap();
    let kd: Vec<f32> = deq.key.iter_f32().collect();
    let vd: Vec<f32> = deq.value.iter_f32().collect();
    for h in 0..2 {
        for s in 64..70 {
            for c in 0..64 {
                assert_eq!(kd[at(h, s, c)].to_bits(), k[at(h, s, c)].to_bits());
                assert_eq!(vd[at(h, s, c)].to_bits(), v[at(h, s, c)].to_bits());
            }
        }
    }
}

#[test]
fn avp_kvq_32_int8_channel_keeps_outlier_keys_within_one_percent() {
    // Issue 17: int8 <= 1 % on keys with outlier channels. Per token
    // (scheme 1) the 50x channel sets every group's scale; per channel
    // (scheme 3) it sets only its own.
    let raw = outlier_kv(128, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let per_token = encode_ext(&kv, &QuantParams::INT8, 0, None).unwrap();
    let per_channel = encode_ext(&kv, &QuantParams::INT8_CHANNEL, 0, None).unwrap();
    let e1 = relative_errors(&KvExt::parse(&per_token).unwrap(), &kv).unwrap()[0];
    let e3 = relative_errors(&KvExt::parse(&per_channel).unwrap(), &kv).unwrap()[0];
    assert!(e3.key < 0.01 && e3.value < 0.01, "{e3:?}");
    assert!(
        e3.key * 4.0 < e1.key,
        "per channel {e3:?}, per token {e1:?}"
    );
    // 8.25 bits a value: at most 0.53 of float16.
    assert!((per_channel.len() as f64) < 0.53 * raw.len() as f64);
}

#[test]
fn avp_kvq_30_int8_channel_parameters_give_typed_errors() {
    // AVP-KVQ-30 (scheme parameters) in AVP-KVQ-3's order.
    let raw = kv_payload(1, 2, 64, 35, KvDtype::Float16);
    let kv = KvCache::parse(&raw).unwrap();
    let params = QuantParams {
        group_size: 32,
        residual: 3,
        ..QuantParams::INT8_CHANNEL
    };
    let good = encode_ext(&kv, &params, 0, None).unwrap();
    assert!(KvExt::parse(&good).unwrap().dequantize().is_ok());
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.clone();
        f(&mut p);
        kind_of(&p)
    };
    assert_eq!(edit(&|p| set_u32(p, 28, 0)), ErrorKind::BadGroupSize);
    assert_eq!(edit(&|p| set_u32(p, 28, 65)), ErrorKind::BadGroupSize);
    assert_eq!(
        edit(&|p| set_u32(p, 28, 48)),
        ErrorKind::BadGroupSize,
        "48 divides neither head_dim 64 nor 32 tokens"
    );
    assert_eq!(
        edit(&|p| set_u32(p, 32, 2)),
        ErrorKind::ScaleCountMismatch,
        "33 quantized tokens: two key groups a channel, not one"
    );
    assert_eq!(
        edit(&|p| set_u32(p, 32, 36)),
        ErrorKind::Inconsistent,
        "residual over the 35 tokens"
    );
    assert_eq!(edit(&|p| set_u32(p, 36, 63)), ErrorKind::ScaleCountMismatch);
    assert_eq!(edit(&|p| p.push(0)), ErrorKind::Inconsistent);
    assert_eq!(
        edit(&|p| {
            p.pop();
        }),
        ErrorKind::Truncated
    );
    // A negative or NaN scale is refused when dequantizing.
    for bits in [0xbc00u16, 0x7e00] {
        let mut p = good.clone();
        p[40..42].copy_from_slice(&bits.to_le_bytes());
        let ext = KvExt::parse(&p).unwrap();
        assert_eq!(
            ext.dequantize().unwrap_err().kind(),
            ErrorKind::Inconsistent
        );
    }
    // The sender's side: no residual is needed (a last key group of 3
    // tokens); NaN in either part and an overflowing scale are refused.
    let no_residual = QuantParams {
        residual: 0,
        ..params
    };
    let short_group = encode_ext(&kv, &no_residual, 0, None).unwrap();
    let ext = KvExt::parse(&short_group).unwrap();
    assert_eq!(ext.header.scales_per_tensor, 2 * 2 * 64);
    assert!(ext.dequantize().is_ok());
    for at in [KV_HEADER + 2 * 64, KV_HEADER + 34 * 64 * 2] {
        let mut nan = raw.clone();
        nan[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let kv = KvCache::parse(&nan).unwrap();
        assert_eq!(
            encode_ext(&kv, &params, 0, None).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "NaN at byte {at}"
        );
    }
    let mut big = kv_payload(1, 1, 32, 32, KvDtype::Float32);
    big[KV_HEADER..KV_HEADER + 4].copy_from_slice(&1e30f32.to_le_bytes());
    let big = KvCache::parse(&big).unwrap();
    let f16_scales = QuantParams {
        group_size: 32,
        ..QuantParams::INT8_CHANNEL
    };
    assert_eq!(
        encode_ext(&big, &f16_scales, 0, None).unwrap_err().kind(),
        ErrorKind::InvalidArgument,
        "scale over binary16's range"
    );
}

const KV_HEADER: usize = 17;

#[test]
fn int8_channel_truncations_and_deltas() {
    // AVP-KVQ-3 for scheme 3: every prefix fails; a quantized delta
    // assembles on its base (AVP-KVD-4).
    let raw = kv_payload(2, 1, 32, 40, KvDtype::Bfloat16);
    let kv = KvCache::parse(&raw).unwrap();
    let params = QuantParams {
        group_size: 16,
        ..QuantParams::INT8_CHANNEL
    }
    .with_leftover_residual(40 - 7);
    assert_eq!(params.residual, 0, "33 tokens: a last key group of 1");
    let address = prefix_address(&kv, 7, "m").unwrap();
    let p = encode_ext(&kv, &params, 7, Some(&address)).unwrap();
    let ext = KvExt::parse(&p).unwrap();
    for cut in 0..p.len() {
        assert!(KvExt::parse(&p[..cut]).is_err(), "cut at {cut}");
    }
    let base = truncate_kv(&kv, 7);
    let base = KvCache::parse(&base).unwrap();
    let whole = assemble(&base, "m", &ext).unwrap();
    let whole = KvCache::parse(&whole).unwrap();
    assert_eq!(whole.header, kv.header);
    for (a, b) in kv.layers().zip(whole.layers()) {
        let n = 7 * 32 * 2;
        assert_eq!(
            a.key.bytes()[..n],
            b.key.bytes()[..n],
            "the prefix is exact"
        );
    }
}

#[test]
fn avp_kvq_30_int8_channel_group_fitted_to_the_head() {
    // The sender's choice: the largest g | head_dim up to 64, no residual.
    let fit = |d| {
        let p = QuantParams::int8_channel_for(d);
        (p.group_size, p.residual, p.scale_dtype)
    };
    assert_eq!(fit(64), (64, 0, ScaleDtype::F16));
    assert_eq!(fit(128), (64, 0, ScaleDtype::F16));
    assert_eq!(fit(96), (48, 0, ScaleDtype::F16));
    assert_eq!(fit(12), (12, 0, ScaleDtype::F16));
    // Whatever it picks quantizes, at any length.
    for (d, t) in [(12u32, 7u32), (16, 45), (64, 3), (8, 0), (64, 65)] {
        let raw = kv_payload(1, 1, d, t, KvDtype::Float16);
        let kv = KvCache::parse(&raw).unwrap();
        let params = QuantParams::int8_channel_for(d);
        let q = encode_ext(&kv, &params, 0, None).unwrap();
        KvExt::parse(&q).unwrap().dequantize().unwrap();
    }
}

mod int8_channel_properties {
    //! AVP-KVQ-31/32 as properties: for any shape, group, scale dtype and
    //! values, every quantized element is within half its group's stored
    //! scale of the original (or the clamp's distance, when rounding the
    //! scale made it smaller), and every residual element is exact.
    use super::*;
    use proptest::prelude::*;

    fn context(heads: u32, dim: u32, seq: u32, values: &[f32]) -> Vec<u8> {
        let header = KvHeader {
            num_layers: 1,
            num_kv_heads: heads,
            head_dim: dim,
            seq_len: seq,
            dtype: KvDtype::Float32,
        };
        let n = (heads * dim * seq) as usize;
        let tensor = |offset: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| {
                    let mut x = values[(i + offset) % values.len()];
                    if i % dim as usize == 1 {
                        x *= 40.0; // an outlier key (and value) channel
                    }
                    x.to_le_bytes()
                })
                .collect()
        };
        let (k, v) = (tensor(0), tensor(7));
        write_kv_cache(&header, [(&k[..], &v[..])]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn avp_kvq_32_error_within_half_a_scale_and_residual_exact(
            heads in 1u32..3,
            dim_pick in 0usize..4,
            seq in 0u32..70,
            group_pick in 0usize..8,
            extra_residual in 0u32..3,
            f16_scales in any::<bool>(),
            values in proptest::collection::vec(-8.0f32..8.0, 1..64),
        ) {
            let dim = [2u32, 8, 12, 64][dim_pick];
            let divisors: Vec<u32> = (1..=dim.min(64)).filter(|g| dim % g == 0).collect();
            let g = divisors[group_pick % divisors.len()];
            let params = QuantParams {
                group_size: g,
                residual: extra_residual.min(seq),
                scale_dtype: if f16_scales { ScaleDtype::F16 } else { ScaleDtype::F32 },
                ..QuantParams::INT8_CHANNEL
            };
            let raw = context(heads, dim, seq, &values);
            let kv = KvCache::parse(&raw).unwrap();
            let q = encode_ext(&kv, &params, 0, None).unwrap();
            let ext = KvExt::parse(&q).unwrap();
            let back = ext.dequantize().unwrap();
            let back = KvCache::parse(&back).unwrap();
            let (d, t, tq) = (dim as usize, seq as usize, (seq - params.residual) as usize);
            let g = g as usize;
            let layer = (kv.layer(0).unwrap(), back.layer(0).unwrap());
            for (key, (orig, deq)) in [(true, (layer.0.key, layer.1.key)), (false, (layer.0.value, layer.1.value))] {
                let x: Vec<f32> = orig.iter_f32().collect();
                let y: Vec<f32> = deq.iter_f32().collect();
                let at = |h: usize, s: usize, c: usize| (h * t + s) * d + c;
                for h in 0..heads as usize {
                    for s in 0..t {
                        for c in 0..d {
                            let i = at(h, s, c);
                            if s >= tq {
                                prop_assert_eq!(x[i].to_bits(), y[i].to_bits(), "residual");
                                continue;
                            }
                            // The element's group (AVP-KVQ-31) and its amax.
                            let amax = if key {
                                // The last group of a channel is shorter when g does not divide tq.
                                let s0 = s / g * g;
                                (s0..(s0 + g).min(tq)).map(|u| x[at(h, u, c)].abs()).fold(0f32, f32::max)
                            } else {
                                let c0 = c / g * g;
                                (c0..c0 + g).map(|u| x[at(h, s, u)].abs()).fold(0f32, f32::max)
                            };
                            // Half a step of the stored scale s', or the clamp's distance
                            // amax - 127 s' when rounding made s' smaller; plus the
                            // binary32 roundings of x / s' and q * s'.
                            let s = if f16_scales {
                                f16_to_f32(f32_to_f16(amax / 127.0))
                            } else {
                                amax / 127.0
                            };
                            let bound = (s * 0.5).max(amax - 127.0 * s) + s * 1e-4 + amax * 1e-6;
                            prop_assert!((x[i] - y[i]).abs() <= bound,
                                "{} ({h},{s},{c}): {} vs {}, amax {amax}", if key { "K" } else { "V" }, x[i], y[i]);
                        }
                    }
                }
            }
        }
    }
}

/// AVP-KVQ-31/32 by the letter: one division per value, groups found by
/// the index formulas, scales and codes written in order. The codec's
/// quantizer (fused widening and per-channel maxima) must give these bytes.
fn int8_channel_reference(kv: &KvCache<'_>, g: usize, sd: ScaleDtype, r: usize) -> Vec<u8> {
    let h = kv.header;
    let (heads, t, d) = (
        h.num_kv_heads as usize,
        h.seq_len as usize,
        h.head_dim as usize,
    );
    let tq = t - r;
    let gt = tq.div_ceil(g);
    let es = h.dtype.element_type().size();
    let round = |x: f32| match sd {
        ScaleDtype::F16 => f16_to_f32(f32_to_f16(x)),
        _ => x,
    };
    let put = |out: &mut Vec<u8>, s: f32| match sd {
        ScaleDtype::F16 => out.extend_from_slice(&f32_to_f16(s).to_le_bytes()),
        _ => out.extend_from_slice(&s.to_le_bytes()),
    };
    let code = |x: f32, s: f32| {
        if s == 0.0 {
            0u8
        } else {
            (x / s).round_ties_even().clamp(-127.0, 127.0) as i8 as u8
        }
    };
    let header = KvExt::parse(
        &encode_ext(
            kv,
            &QuantParams {
                group_size: g as u32,
                scale_dtype: sd,
                residual: r as u32,
                ..QuantParams::INT8_CHANNEL
            },
            0,
            None,
        )
        .unwrap(),
    )
    .unwrap()
    .header;
    let mut out = header.to_bytes().to_vec();
    for layer in kv.layers() {
        for (key, tensor) in [(true, layer.key), (false, layer.value)] {
            let x: Vec<f32> = tensor.iter_f32().collect();
            let at = |hh: usize, s: usize, c: usize| (hh * t + s) * d + c;
            let mut scales = vec![
                0f32;
                if key {
                    heads * gt * d
                } else {
                    heads * tq * d / g
                }
            ];
            for hh in 0..heads {
                for s in 0..tq {
                    for c in 0..d {
                        let (i, amax) = if key {
                            let s0 = s / g * g;
                            let amax = (s0..(s0 + g).min(tq))
                                .fold(0f32, |a, u| a.max(x[at(hh, u, c)].abs()));
                            ((hh * gt + s / g) * d + c, amax)
                        } else {
                            let c0 = c / g * g;
                            let amax = (c0..c0 + g).fold(0f32, |a, u| a.max(x[at(hh, s, u)].abs()));
                            ((hh * tq + s) * (d / g) + c / g, amax)
                        };
                        scales[i] = round(amax / 127.0);
                    }
                }
            }
            for &s in &scales {
                put(&mut out, s);
            }
            for hh in 0..heads {
                for s in 0..tq {
                    for c in 0..d {
                        let i = if key {
                            (hh * gt + s / g) * d + c
                        } else {
                            (hh * tq + s) * (d / g) + c / g
                        };
                        out.push(code(x[at(hh, s, c)], scales[i]));
                    }
                }
            }
            let bytes = tensor.bytes();
            for hh in 0..heads {
                out.extend_from_slice(&bytes[at(hh, tq, 0) * es..at(hh, t, 0) * es]);
            }
        }
    }
    out
}

#[test]
fn avp_kvq_32_int8_channel_quantizer_equals_the_per_value_reference() {
    // Every dtype, both scale dtypes, lengths the group does not divide, a
    // residual, a head_dim over one run of 64 and a tiny scale (binary16
    // rounds it to 0: codes 0) in one key channel.
    for dtype in [KvDtype::Float16, KvDtype::Bfloat16, KvDtype::Float32] {
        for (dim, seq, g, r) in [
            (128u32, 70u32, 64usize, 0usize),
            (12, 11, 4, 2),
            (64, 33, 32, 0),
            (8, 5, 8, 0),
        ] {
            let mut raw = kv_payload(2, 2, dim, seq, dtype);
            let es = dtype.element_type().size();
            let tiny: Vec<u8> = match dtype {
                KvDtype::Float16 => 1u16.to_le_bytes().to_vec(),
                KvDtype::Bfloat16 => f32_to_bf16(1e-30).to_le_bytes().to_vec(),
                _ => 1e-30f32.to_le_bytes().to_vec(),
            };
            for s in 0..seq as usize {
                let at = 17 + (s * dim as usize + 1) * es; // head 0, channel 1 of layer 0's keys
                raw[at..at + es].copy_from_slice(&tiny);
            }
            let kv = KvCache::parse(&raw).unwrap();
            for sd in [ScaleDtype::F16, ScaleDtype::F32] {
                let params = QuantParams {
                    group_size: g as u32,
                    scale_dtype: sd,
                    residual: r as u32,
                    ..QuantParams::INT8_CHANNEL
                };
                let got = encode_ext(&kv, &params, 0, None).unwrap();
                let want = int8_channel_reference(&kv, g, sd, r);
                assert!(got == want, "{dtype:?} d {dim} t {seq} g {g} r {r} {sd:?}");
            }
        }
    }
}

#[test]
fn avp_kvq_32_int8_channel_refuses_a_non_finite_value_in_a_short_last_key_group() {
    // The fused key widening refuses infinity and NaN wherever they are,
    // naming the value (AVP-KVQ-32 refers to AVP-KVQ-5's refusals).
    for dtype in [KvDtype::Float16, KvDtype::Bfloat16, KvDtype::Float32] {
        let raw = kv_payload(1, 1, 64, 35, dtype);
        let es = dtype.element_type().size();
        let bad: [(Vec<u8>, &str); 2] = match dtype {
            KvDtype::Float16 => [
                (0x7c00u16.to_le_bytes().to_vec(), "inf"),
                (0x7e00u16.to_le_bytes().to_vec(), "NaN"),
            ],
            KvDtype::Bfloat16 => [
                (0x7f80u16.to_le_bytes().to_vec(), "inf"),
                (0x7fc0u16.to_le_bytes().to_vec(), "NaN"),
            ],
            _ => [
                (f32::INFINITY.to_le_bytes().to_vec(), "inf"),
                (f32::NAN.to_le_bytes().to_vec(), "NaN"),
            ],
        };
        for (bytes, name) in bad {
            for token in [0usize, 33] {
                let mut p = raw.clone();
                let at = 17 + (token * 64 + 9) * es;
                p[at..at + es].copy_from_slice(&bytes);
                let kv = KvCache::parse(&p).unwrap();
                let e = encode_ext(
                    &kv,
                    &QuantParams {
                        group_size: 32,
                        ..QuantParams::INT8_CHANNEL
                    },
                    0,
                    None,
                )
                .unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidArgument,
                    "{dtype:?} {name} at {token}"
                );
                assert!(e.message().contains(name), "{dtype:?}: {}", e.message());
            }
        }
    }
}
