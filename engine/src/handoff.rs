//! The sender's half of the pipeline (AVP-PIPE-3), sans I/O: which payload a
//! resolved handshake asks for ([`Transfer::for_resolution`]), and the
//! messages for each ([`kv_cache_message`], [`projected_message`]).
//!
//! Why here and not in the transport: the transport must not link libtorch
//! and the engine must not open sockets, so the engine says *what* to send
//! and the caller sends it. A Rust program gets the pipeline in a few lines:
//!
//! ```ignore
//! let result = client.handshake(&identity).await?;            // avp-transport
//! let bytes = match Transfer::for_resolution(result.mode, result.resolution_path) {
//!     Transfer::KvCache => kv_cache_message(&ctx)?,            // same model
//!     Transfer::ProjectedHiddenState => projected_message(&engine, &target, &map, &ctx)?,
//!     Transfer::Text => { /* client.send_text(json!({"content": text, ..})) */ }
//! };
//! client.transmit(bytes.into()).await?;
//! ```
//!
//! `avp think --to URL` (cli/src/cmd/handoff.rs) is that recipe with
//! addressing and reporting.

use std::collections::BTreeMap;
use std::path::Path;

use avp_handshake::{Mode, ResolutionPath};

use crate::context::LatentContext;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::project::{ProjectionMap, map_file_name, project, project_with_map_file};
use crate::wire::{KvDtype, PayloadKind, WireMeta, encode_message};

/// What the sender transmits for a resolved handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transfer {
    /// The same model (hash or structural match): the whole KV-cache.
    KvCache,
    /// A different model with a shared or overlapping vocabulary (or a map
    /// file): the last hidden state projected into the target's embeddings.
    ProjectedHiddenState,
    /// Nothing latent fits: the text the sender generates, as a JSON message.
    Text,
}

impl Transfer {
    /// The SDK's choice: rules 1-2 share a model, rules 3-5 share a vocabulary
    /// (or a calibrated map), rule 6 shares nothing (AVP-HS-5..10).
    pub fn for_resolution(mode: Mode, path: ResolutionPath) -> Transfer {
        match (mode, path) {
            (Mode::Latent, ResolutionPath::HashMatch | ResolutionPath::StructuralMatch) => {
                Transfer::KvCache
            }
            (
                Mode::Latent,
                ResolutionPath::SharedTokenizer
                | ResolutionPath::AvpMapFile
                | ResolutionPath::VocabOverlap,
            ) => Transfer::ProjectedHiddenState,
            _ => Transfer::Text,
        }
    }

    /// A short name for reports: `kv_cache`, `hidden_state` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            Transfer::KvCache => "kv_cache",
            Transfer::ProjectedHiddenState => "hidden_state",
            Transfer::Text => "text",
        }
    }
}

/// The KV_CACHE message of a context (the SDK's `to_bytes()`).
pub fn kv_cache_message(ctx: &LatentContext) -> Result<Vec<u8>> {
    ctx.to_bytes()
}

/// The receiving model, as far as a HIDDEN_STATE message names it.
#[derive(Debug, Clone, Copy)]
pub struct TargetModel<'a> {
    /// Its model hash (`extra.model_hash`, and the second half of `avp_map_id`).
    pub model_hash: &'a str,
    /// Its `model_type` (`extra.model_family`).
    pub model_family: &'a str,
    /// Its layer count (metadata `num_layers`).
    pub num_layers: usize,
}

/// The HIDDEN_STATE message `avp project` writes (AVP-ENG-17): `ctx`'s last
/// hidden state on `source`, projected into `target` through `map`, float32
/// `[D_target]`, `avp_map_id` `<src16>_<tgt16>`, `extra` naming the target.
pub fn projected_message(
    source: &Engine,
    target: &Engine,
    map: &ProjectionMap,
    ctx: &LatentContext,
) -> Result<Vec<u8>> {
    let v = project(source, target, map, last_hidden(ctx)?)?;
    let names = TargetModel {
        model_hash: target.model_hash(),
        model_family: target.model_family(),
        num_layers: target.config().decoder.num_layers,
    };
    hidden_state_message(&v, source.model_hash(), names, ctx.num_steps)
}

/// [`projected_message`] for a sender without the target's weights: the
/// target rows come from the pair's map file (AVP-ENG-15), the target's
/// names from its handshake identity.
pub fn projected_message_from_map_file(
    source: &Engine,
    map_file: &Path,
    target: TargetModel<'_>,
    ctx: &LatentContext,
) -> Result<Vec<u8>> {
    let (v, _) = project_with_map_file(source, map_file, target.model_hash, last_hidden(ctx)?)?;
    hidden_state_message(&v, source.model_hash(), target, ctx.num_steps)
}

fn last_hidden(ctx: &LatentContext) -> Result<&tch::Tensor> {
    ctx.last_hidden.as_ref().ok_or_else(|| {
        EngineError::InvalidArgument("the context has no hidden state to project".into())
    })
}

/// A float32 HIDDEN_STATE message of a projected vector `[D]`.
fn hidden_state_message(
    projected: &tch::Tensor,
    source_hash: &str,
    target: TargetModel<'_>,
    num_steps: usize,
) -> Result<Vec<u8>> {
    let v = projected
        .f_reshape([-1])?
        .f_to_device(tch::Device::Cpu)?
        .f_to_kind(tch::Kind::Float)?;
    let d = v.numel();
    let mut bytes = vec![0u8; d.saturating_mul(4)];
    v.f_copy_data_u8(&mut bytes, d)?;
    let extra: BTreeMap<String, String> = [
        ("model_hash", target.model_hash.to_owned()),
        ("model_family", target.model_family.to_owned()),
        ("num_steps", num_steps.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let too_big = |what: &str| EngineError::InvalidArgument(format!("{what} exceeds u32"));
    let width = u32::try_from(d).map_err(|_| too_big("hidden size"))?;
    let map_id = map_file_name(source_hash, target.model_hash);
    let meta = WireMeta {
        hidden_dim: width,
        num_layers: u32::try_from(target.num_layers).map_err(|_| too_big("layer count"))?,
        payload: PayloadKind::HiddenState,
        dtype: KvDtype::Float32,
        tensor_shape: vec![width],
        avp_map_id: map_id.split('.').next().unwrap_or_default().to_owned(),
        extra,
    };
    encode_message(&meta, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolution_picks_the_payload() {
        use ResolutionPath as P;
        let latent = |p| Transfer::for_resolution(Mode::Latent, p);
        assert_eq!(latent(P::HashMatch), Transfer::KvCache);
        assert_eq!(latent(P::StructuralMatch), Transfer::KvCache);
        assert_eq!(latent(P::SharedTokenizer), Transfer::ProjectedHiddenState);
        assert_eq!(latent(P::AvpMapFile), Transfer::ProjectedHiddenState);
        assert_eq!(latent(P::VocabOverlap), Transfer::ProjectedHiddenState);
        assert_eq!(
            Transfer::for_resolution(Mode::Json, P::JsonFallback),
            Transfer::Text
        );
    }
}
