//! `avp inspect FILE`: a human-readable view of a message (spec/impl/cli.md,
//! AVP-CLI-6; AVP-CLI-24 for extended KV payloads and `--original`).
//!
//! Header, metadata, sizes, warnings, and tensor statistics: for a KV cache
//! one row per layer (L2 norm, min, max, NaN and Inf counts of K and of V);
//! for a hidden state the same statistics over the whole tensor. Statistics
//! accumulate as the tensor streams through one window (`stream_in`), so a
//! 256 MiB cache is inspected in a few MiB (AVP-CLI-4).

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use avp_codec::ErrorKind;
use avp_codec::kv::KvCache;
use avp_codec::kv_quant::{KvExt, KvPart, KvScheme, relative_errors};
use avp_codec::tensor::{Stats, TensorView};
use clap::Args;

use super::decode::hex;
use super::kv_file::{ChunkedFile, Invalid, is_chunk, scan_chunked};
use super::stream_in::{Decoded, TensorStats, Want};

/// Arguments of `avp inspect`.
#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// Decode strictly (AVP-WIRE-20).
    #[arg(long)]
    strict: bool,
    /// The context this one was made from (any KV file `avp convert` reads): adds
    /// per-layer reconstruction errors of K and V against it (AVP-CLI-24).
    #[arg(long, value_name = "FILE")]
    original: Option<PathBuf>,
    /// The message file, or `-` for stdin.
    file: PathBuf,
}

fn num(v: Option<f32>) -> String {
    match v {
        Some(x) => format!("{x:.4}"),
        None => "-".to_owned(),
    }
}

fn stats_cells(s: &Stats) -> String {
    format!(
        "{:>12.4} {:>10} {:>10} {:>5} {:>5}",
        s.l2_norm,
        num(s.min),
        num(s.max),
        s.nan,
        s.inf
    )
}

/// The report text (a pure function, so tests and snapshots see exactly what is printed).
pub(crate) fn report(d: &Decoded) -> String {
    report_at(d, 0)
}

/// [`report`] of a message whose first KV layer is layer `first_layer` of
/// its context (a chunk's), so rows carry the context's layer numbers.
fn report_at(d: &Decoded, first_layer: usize) -> String {
    let mut o = String::new();
    let h = &d.header;
    let m = &d.metadata;
    let file_len = d.input_len;
    let _ = writeln!(o, "AVP message, {file_len} bytes");
    let mut flags = Vec::new();
    if h.flags.compressed() {
        flags.push("compressed");
    }
    if h.flags.has_map() {
        flags.push("has_map");
    }
    if h.flags.kv_cache() {
        flags.push("kv_cache");
    }
    if h.flags.unknown_bits() != 0 {
        flags.push("unknown-bits");
    }
    let _ = writeln!(o, "header");
    let _ = writeln!(o, "  version          {}", h.version);
    let _ = writeln!(
        o,
        "  flags            0x{:02x} [{}]",
        h.flags.0,
        flags.join(", ")
    );
    let _ = writeln!(o, "  payload_length   {}", h.payload_length);
    let _ = writeln!(o, "  metadata_length  {}", h.metadata_length);
    let stored = h.payload_length.saturating_sub(h.metadata_length);
    let _ = writeln!(
        o,
        "  tensor bytes     {} stored, {} decoded",
        stored, d.tensor.len
    );
    let _ = writeln!(o, "metadata");
    for (k, v) in [
        ("session_id", &m.session_id),
        ("source_agent_id", &m.source_agent_id),
        ("target_agent_id", &m.target_agent_id),
        ("model_id", &m.model_id),
        ("avp_map_id", &m.avp_map_id),
    ] {
        let _ = writeln!(o, "  {k:<16} {v:?}");
    }
    let _ = writeln!(o, "  hidden_dim       {}", m.hidden_dim);
    let _ = writeln!(o, "  num_layers       {}", m.num_layers);
    let _ = writeln!(o, "  payload_type     {}", m.payload_type.name());
    let _ = writeln!(o, "  dtype            {}", m.dtype.name());
    let _ = writeln!(o, "  tensor_shape     {:?}", m.tensor_shape);
    let _ = writeln!(o, "  mode             {}", m.mode.name());
    let _ = writeln!(
        o,
        "  compression      {}",
        if h.flags.compressed() { "zstd" } else { "none" }
    );
    match m.payload_checksum {
        Some(c) => {
            let _ = writeln!(o, "  payload_checksum 0x{c:08x} (verified)");
        }
        None => {
            let _ = writeln!(o, "  payload_checksum absent");
        }
    }
    for (k, v) in &m.extra {
        let _ = writeln!(o, "  extra[{k:?}] = {v:?}");
    }
    for w in &d.warnings {
        let _ = writeln!(o, "warning: {} ({})", w, w.code());
    }
    let header_row = format!(
        "{:>12} {:>10} {:>10} {:>5} {:>5}",
        "l2_norm", "min", "max", "nan", "inf"
    );
    match &d.tensor.stats {
        Some(TensorStats::Kv(Ok((kh, warnings, stats)))) => {
            let _ = writeln!(
                o,
                "kv cache: {} layers, {} kv heads, head_dim {}, seq_len {}, {}",
                kh.num_layers,
                kh.num_kv_heads,
                kh.head_dim,
                kh.seq_len,
                kh.dtype.name()
            );
            for w in warnings {
                let _ = writeln!(o, "warning: {w}");
            }
            let _ = writeln!(o, "{:>5} {:>1} {header_row}", "layer", "");
            for (index, pair) in (first_layer..).zip(stats.chunks(2)) {
                if let [k, v] = pair {
                    let _ = writeln!(o, "{index:>5} K {}", stats_cells(k));
                    let _ = writeln!(o, "{index:>5} V {}", stats_cells(v));
                }
            }
        }
        Some(TensorStats::Kv(Err(e))) => {
            let _ = writeln!(o, "kv cache: not readable: {e}");
        }
        Some(TensorStats::Ext(_)) => {} // ext_report, which can fail
        Some(TensorStats::Hidden(s)) => {
            let _ = writeln!(
                o,
                "hidden state: {} elements of {}",
                s.count,
                m.dtype.name()
            );
            let _ = writeln!(o, "{:>7} {header_row}", "");
            let _ = writeln!(o, "{:>7} {}", "tensor", stats_cells(s));
        }
        None => {}
    }
    o
}

/// The extended KV part of the report (AVP-CLI-24): the scheme, the delta,
/// sizes, statistics of the dequantized tensors, and with `original` the
/// reconstruction errors per layer. Fails on what the payload's layout or
/// scale values make invalid (AVP-KVQ-3) and on an original of another shape.
pub(crate) fn ext_report(
    payload: &[u8],
    original: Option<&KvCache<'_>>,
) -> Result<String, Invalid> {
    let mut o = String::new();
    let ext = KvExt::parse(payload)?;
    let h = &ext.header;
    let _ = writeln!(
        o,
        "kv cache (extended): {} layers, {} kv heads, head_dim {}, seq_len {}, {}",
        h.num_layers,
        h.num_kv_heads,
        h.head_dim,
        h.seq_len,
        h.dtype.name()
    );
    match h.scheme {
        KvScheme::None => {
            let _ = writeln!(o, "  scheme           none (floats in {})", h.dtype.name());
        }
        scheme => {
            let _ = writeln!(
                o,
                "  scheme           {}, group_size {}, scale_dtype {}, residual {}, {} scales per tensor",
                scheme.name(),
                h.group_size,
                super::decode::scale_name(h.scale_dtype),
                h.residual,
                h.scales_per_tensor
            );
        }
    }
    match ext.prefix {
        Some(prefix) => {
            let _ = writeln!(
                o,
                "  delta            positions [{}, {}) on the prefix {}",
                h.seq_start,
                h.seq_len,
                prefix.to_hex()
            );
        }
        None => {
            let _ = writeln!(o, "  delta            no (the whole context)");
        }
    }
    let dequantized = ext.dequantized_len();
    let _ = writeln!(
        o,
        "  stored           {} bytes; {} dequantized ({:.3} of it)",
        payload.len(),
        dequantized,
        payload.len() as f64 / dequantized.max(1) as f64
    );
    let header_row = format!(
        "{:>12} {:>10} {:>10} {:>5} {:>5}",
        "l2_norm", "min", "max", "nan", "inf"
    );
    let _ = writeln!(o, "dequantized");
    let _ = writeln!(o, "{:>5} {:>1} {header_row}", "layer", "");
    let len = usize::try_from(ext.tensor_bytes()).unwrap_or(usize::MAX);
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| Invalid {
        kind: ErrorKind::LimitExceeded,
        message: format!("a dequantized tensor of {len} bytes does not fit in memory"),
    })?;
    buf.resize(len, 0);
    let el = h.dtype.element_type();
    let mut max_abs = Vec::new();
    for layer in 0..h.num_layers as usize {
        for (part, name) in [(KvPart::Key, "K"), (KvPart::Value, "V")] {
            ext.dequantize_tensor(layer, part, &mut buf)?;
            let stats = TensorView::new(&buf, el).stats();
            let _ = writeln!(o, "{layer:>5} {name} {}", stats_cells(&stats));
            if let Some(orig) = original {
                max_abs.push(max_abs_error(&ext, orig, layer, part, &buf));
            }
        }
    }
    if let Some(orig) = original {
        let errors = relative_errors(&ext, orig)?;
        let _ = writeln!(
            o,
            "reconstruction against the original (||x^-x||/||x|| and max |x^-x| over positions [{}, {}))",
            h.seq_start, h.seq_len
        );
        let _ = writeln!(
            o,
            "{:>5} {:>12} {:>12} {:>12} {:>12}",
            "layer", "K rel", "K max_abs", "V rel", "V max_abs"
        );
        for (layer, (e, m)) in errors.iter().zip(max_abs.chunks(2)).enumerate() {
            let (mk, mv) = match m {
                [k, v] => (*k, *v),
                _ => (f32::NAN, f32::NAN),
            };
            let _ = writeln!(
                o,
                "{layer:>5} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
                e.key, mk, e.value, mv
            );
        }
    }
    Ok(o)
}

/// The reconstruction table of a plain context against its original
/// (AVP-CLI-24): same layers, heads, head size and positions; the dtypes
/// may differ (a `--kv-dtype float32` copy of a float16 original, say).
fn plain_errors(kv: &KvCache<'_>, original: &KvCache<'_>) -> Result<String, Invalid> {
    let (a, b) = (kv.header, original.header);
    if (a.num_layers, a.num_kv_heads, a.head_dim, a.seq_len)
        != (b.num_layers, b.num_kv_heads, b.head_dim, b.seq_len)
    {
        return Err(Invalid {
            kind: ErrorKind::InvalidArgument,
            message: format!(
                "the original has {} layers x {} heads x {} x {} positions, this context {} x {} x {} x {}",
                b.num_layers,
                b.num_kv_heads,
                b.head_dim,
                b.seq_len,
                a.num_layers,
                a.num_kv_heads,
                a.head_dim,
                a.seq_len
            ),
        });
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "reconstruction against the original (||x^-x||/||x|| and max |x^-x| over positions [0, {}))",
        a.seq_len
    );
    let _ = writeln!(
        o,
        "{:>5} {:>12} {:>12} {:>12} {:>12}",
        "layer", "K rel", "K max_abs", "V rel", "V max_abs"
    );
    for (layer, (x, y)) in kv.layers().zip(original.layers()).enumerate() {
        let [k, v] = [(x.key, y.key), (x.value, y.value)].map(|(got, want)| {
            let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, 0.0f32);
            for (g, w) in got.iter_f32().zip(want.iter_f32()) {
                let d = g - w;
                diff += f64::from(d) * f64::from(d);
                norm += f64::from(w) * f64::from(w);
                if d.abs() > worst || d.is_nan() {
                    worst = d.abs();
                }
            }
            let rel = if norm > 0.0 {
                (diff / norm).sqrt()
            } else if diff > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            (rel, worst)
        });
        let _ = writeln!(
            o,
            "{layer:>5} {:>12.6} {:>12.6} {:>12.6} {:>12.6}",
            k.0, k.1, v.0, v.1
        );
    }
    Ok(o)
}

/// The largest `|x^ - x|` of one dequantized tensor (`[H, t, D]`, positions
/// `[p, n)`) against the original's same positions (checked to have the
/// payload's shape by `relative_errors` before the table is printed).
fn max_abs_error(
    ext: &KvExt<'_>,
    original: &KvCache<'_>,
    layer: usize,
    part: KvPart,
    dequantized: &[u8],
) -> f32 {
    let h = &ext.header;
    let Some(l) = original.layer(layer) else {
        return f32::NAN;
    };
    let tensor = if part == KvPart::Key { l.key } else { l.value };
    let el = h.dtype.element_type();
    let row = (h.head_dim as usize).saturating_mul(el.size());
    let (n, p) = (h.seq_len as usize, h.seq_start as usize);
    let t = n.saturating_sub(p);
    let mut worst = 0.0f32;
    for head in 0..h.num_kv_heads as usize {
        let orig = tensor
            .bytes()
            .get(row * (head * n + p)..row * (head * n + n))
            .unwrap_or_default();
        let got = dequantized
            .get(row * head * t..row * (head + 1) * t)
            .unwrap_or_default();
        for (a, b) in TensorView::new(orig, el)
            .iter_f32()
            .zip(TensorView::new(got, el).iter_f32())
        {
            let d = (a - b).abs();
            if d > worst || d.is_nan() {
                worst = d;
            }
        }
    }
    worst
}

/// The report of a chunked file (AVP-CLI-25): each chunk's report under a
/// line that places it, then the assembled context.
fn chunked_report(file: &ChunkedFile) -> String {
    let mut o = String::new();
    for c in &file.chunks {
        let d = &c.descriptor;
        let _ = writeln!(
            o,
            "chunk {} of {}: layers [{}, {}) of {}, at byte {}",
            d.index, d.count, d.layer_start, d.layer_end, d.num_layers, c.offset
        );
        o.push_str(&report_at(&c.decoded, d.layer_start as usize));
    }
    let h = &file.context;
    let _ = writeln!(
        o,
        "chunked context: {} messages, {} layers, {} kv heads, head_dim {}, seq_len {}, {}",
        file.chunks.len(),
        h.num_layers,
        h.num_kv_heads,
        h.head_dim,
        h.seq_len,
        h.dtype.name()
    );
    let _ = writeln!(o, "  context_id       {}", hex(&file.context_id));
    let _ = writeln!(
        o,
        "  context_digest   {} (verified)",
        hex(&file.context_digest)
    );
    let _ = writeln!(
        o,
        "  payload          {} bytes as one KV_CACHE message's",
        h.total_bytes().unwrap_or(0)
    );
    o
}

pub(crate) fn run(args: InspectArgs) -> ExitCode {
    let want = Want {
        blake3: false,
        stats: true,
    };
    let decoded = match super::decode::read_decoded(&args.file, args.strict, None, want) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let original = match &args.original {
        Some(path) => match super::kv_file::load_context(path, None, None) {
            Ok(c) => Some(c),
            Err(stop) => return super::decode::report_stop(stop),
        },
        None => None,
    };
    let original_kv = match original.as_ref().map(|c| c.kv()).transpose() {
        Ok(kv) => kv,
        Err(e) => return super::decode::codec_error(&e),
    };
    let mut text = if is_chunk(&decoded.metadata) {
        let opts = avp_codec::DecodeOptions::default().with_strict(args.strict);
        match scan_chunked(&args.file, &opts, want, None) {
            Ok(file) => chunked_report(&file),
            Err(stop) => return super::decode::report_stop(stop),
        }
    } else {
        report(&decoded)
    };
    match (&decoded.tensor.stats, &original_kv) {
        (Some(TensorStats::Ext(payload)), _) => match ext_report(payload, original_kv.as_ref()) {
            Ok(more) => text.push_str(&more),
            Err(e) => return e.report(),
        },
        (_, Some(orig)) => {
            // A plain or chunked context: compared whole, in memory.
            let table = super::kv_file::load_context(&args.file, None, None)
                .map_err(super::decode::report_stop)
                .and_then(|ctx| {
                    let kv = ctx.kv().map_err(|e| Invalid::from(e).report())?;
                    plain_errors(&kv, orig).map_err(|e| e.report())
                });
            match table {
                Ok(more) => text.push_str(&more),
                Err(code) => return code,
            }
        }
        _ => {}
    }
    match crate::out::text(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
