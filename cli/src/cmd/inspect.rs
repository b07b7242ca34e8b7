//! `avp inspect FILE`: a human-readable view of a message (spec/cli.md, AVP-CLI-6).
//!
//! Header, metadata, sizes, warnings, and tensor statistics: for a KV cache
//! one row per layer (L2 norm, min, max, NaN and Inf counts of K and of V);
//! for a hidden state the same statistics over the whole tensor. Statistics
//! stream over borrowed bytes (`avp_codec::tensor::TensorView`), so a
//! 256 MiB cache is inspected without a second copy.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use avp_codec::kv::KvCache;
use avp_codec::tensor::{ElementType, Stats, TensorView};
use avp_codec::{DecodeOptions, Message, PayloadType, decode_with};
use clap::Args;

use super::decode::{codec_error, io_error, read_input};

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
pub(crate) fn report(msg: &Message<'_>, file_len: usize) -> String {
    let mut o = String::new();
    let h = &msg.header;
    let m = &msg.metadata;
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
        stored,
        msg.payload.len()
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
        if msg.was_compressed() { "zstd" } else { "none" }
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
    for w in &msg.warnings {
        let _ = writeln!(o, "warning: {} ({})", w, w.code());
    }
    let header_row = format!(
        "{:>12} {:>10} {:>10} {:>5} {:>5}",
        "l2_norm", "min", "max", "nan", "inf"
    );
    if m.payload_type == PayloadType::KvCache {
        match KvCache::parse(&msg.payload) {
            Ok(kv) => {
                let kh = kv.header;
                let _ = writeln!(
                    o,
                    "kv cache: {} layers, {} kv heads, head_dim {}, seq_len {}, {}",
                    kh.num_layers,
                    kh.num_kv_heads,
                    kh.head_dim,
                    kh.seq_len,
                    kh.dtype.name()
                );
                for w in &kv.warnings {
                    let _ = writeln!(o, "warning: {w}");
                }
                let _ = writeln!(o, "{:>5} {:>1} {header_row}", "layer", "");
                for layer in kv.layers() {
                    let _ = writeln!(
                        o,
                        "{:>5} K {}",
                        layer.index,
                        stats_cells(&layer.key.stats())
                    );
                    let _ = writeln!(
                        o,
                        "{:>5} V {}",
                        layer.index,
                        stats_cells(&layer.value.stats())
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(o, "kv cache: not readable: {e}");
            }
        }
    } else {
        let view = TensorView::new(&msg.payload, ElementType::from(m.dtype));
        let s = view.stats();
        let _ = writeln!(
            o,
            "hidden state: {} elements of {}",
            s.count,
            m.dtype.name()
        );
        let _ = writeln!(o, "{:>7} {header_row}", "");
        let _ = writeln!(o, "{:>7} {}", "tensor", stats_cells(&s));
    }
    o
}

pub(crate) fn run(args: InspectArgs) -> ExitCode {
    let data = match read_input(&args.file) {
        Ok(d) => d,
        Err(e) => return io_error(&args.file, &e),
    };
    let opts = DecodeOptions::default().with_strict(args.strict);
    match decode_with(&data, &opts) {
        Ok(msg) => match crate::out::text(&report(&msg, data.len())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        Err(e) => codec_error(&e),
    }
}
