//! `avp inspect FILE`: a human-readable view of a message (spec/impl/cli.md, AVP-CLI-6).
//!
//! Header, metadata, sizes, warnings, and tensor statistics: for a KV cache
//! one row per layer (L2 norm, min, max, NaN and Inf counts of K and of V);
//! for a hidden state the same statistics over the whole tensor. Statistics
//! accumulate as the tensor streams through one window (`stream_in`), so a
//! 256 MiB cache is inspected in a few MiB (AVP-CLI-4).

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use avp_codec::tensor::Stats;
use clap::Args;

use super::stream_in::{Decoded, TensorStats, Want};

/// Arguments of `avp inspect`.
#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// Decode strictly (AVP-WIRE-20).
    #[arg(long)]
    strict: bool,
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
            for (index, pair) in stats.chunks(2).enumerate() {
                if let [k, v] = pair {
                    let _ = writeln!(o, "{index:>5} K {}", stats_cells(k));
                    let _ = writeln!(o, "{index:>5} V {}", stats_cells(v));
                }
            }
        }
        Some(TensorStats::Kv(Err(e))) => {
            let _ = writeln!(o, "kv cache: not readable: {e}");
        }
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

pub(crate) fn run(args: InspectArgs) -> ExitCode {
    let want = Want {
        blake3: false,
        stats: true,
    };
    let decoded = match super::decode::read_decoded(&args.file, args.strict, None, want) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match crate::out::text(&report(&decoded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
