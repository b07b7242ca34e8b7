//! The resolver: the SDK's six rules, in its order, with its exact outputs
//! (AVP-HS-5..AVP-HS-10), plus the weights-digest refusal (AVP-HS-22).

use core::fmt;

use crate::identity::ModelIdentity;
use crate::json::{JsonString, Object};
use crate::vocab::count_vocab_overlap;
use crate::weights::WeightsDigest;

/// Fewest shared token strings for the vocab_overlap rule (AVP-HS-9).
pub const MIN_VOCAB_OVERLAP: usize = 100;

/// The negotiated communication mode (the SDK's `CommunicationMode`): the
/// codec's Metadata `mode`, one type for both (`name()` is the SDK's
/// `mode.name`, `wire_value()` the Metadata value).
pub use avp_codec::Mode;

/// Which rule decided (the SDK's `resolution_path` strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResolutionPath {
    /// Rule 1: equal non-empty model hashes.
    HashMatch,
    /// Rule 2: same family, hidden size and layer count.
    StructuralMatch,
    /// Rule 3: equal non-empty tokenizer hashes.
    SharedTokenizer,
    /// Rule 4: a calibrated map file for the pair exists.
    AvpMapFile,
    /// Rule 5: at least 100 shared token strings.
    VocabOverlap,
    /// Rule 6: nothing matched.
    JsonFallback,
}

impl ResolutionPath {
    /// The SDK's string.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolutionPath::HashMatch => "hash_match",
            ResolutionPath::StructuralMatch => "structural_match",
            ResolutionPath::SharedTokenizer => "shared_tokenizer",
            ResolutionPath::AvpMapFile => "avp_map_file",
            ResolutionPath::VocabOverlap => "vocab_overlap",
            ResolutionPath::JsonFallback => "json_fallback",
        }
    }
}

impl fmt::Display for ResolutionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answers rule 4: does a map file for this pair exist? Given the map id
/// `{src16}_{tgt16}` (AVP-HS-7). Implemented over a directory by the `fs`
/// module; tests use an in-memory set.
pub trait MapLookup {
    /// True when a map for `map_id` is available.
    fn has_map(&self, map_id: &str) -> bool;
}

impl<F: Fn(&str) -> bool> MapLookup for F {
    fn has_map(&self, map_id: &str) -> bool {
        self(map_id)
    }
}

/// The optional inputs of a resolution.
#[derive(Clone, Copy, Default)]
pub struct ResolveOptions<'a> {
    /// Map-file registry for rule 4; `None` = no maps.
    pub maps: Option<&'a dyn MapLookup>,
    /// Source (local) and target (remote) vocabularies for rule 5.
    pub vocabularies: Option<(&'a Object, &'a Object)>,
    /// Local weights digest (extension, AVP-HS-22).
    pub local_weights: Option<WeightsDigest>,
    /// Remote weights digest (extension, AVP-HS-22).
    pub remote_weights: Option<WeightsDigest>,
}

/// The outcome, as the SDK's `SessionInfo` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// LATENT or JSON.
    pub mode: Mode,
    /// Which rule decided.
    pub resolution_path: ResolutionPath,
    /// `""`, `vocab:<16 hex>`, `<src16>_<tgt16>` or `vocab_overlap:<N>`.
    pub avp_map_id: String,
    /// True when both sides sent weights digests that differ, so rules 1
    /// and 2 were skipped (AVP-HS-22).
    pub weights_mismatch: bool,
}

/// Python's `s[:16]`.
fn prefix16(s: &JsonString) -> JsonString {
    s.prefix_code_points(16)
}

/// The rule-4 map id `{src[:16]}_{tgt[:16]}` (AVP-HS-7), or `None` when a
/// prefix holds anything but ASCII letters and digits (divergence: the SDK
/// builds a file path from whatever the peer sent).
pub fn map_id(source_hash: &JsonString, target_hash: &JsonString) -> Option<String> {
    let a = prefix16(source_hash);
    let b = prefix16(target_hash);
    let safe = |s: &JsonString| s.as_wtf8().iter().all(u8::is_ascii_alphanumeric);
    if !safe(&a) || !safe(&b) {
        return None;
    }
    Some(format!("{}_{}", a.to_string_lossy(), b.to_string_lossy()))
}

/// Resolves the mode for `local` talking to `remote` (AVP-HS-5..AVP-HS-10,
/// AVP-HS-22). Pure: no clock, no files; map files come through
/// `options.maps`.
pub fn resolve(
    local: &ModelIdentity,
    remote: &ModelIdentity,
    options: &ResolveOptions<'_>,
) -> Resolution {
    let weights_mismatch = matches!(
        (options.local_weights, options.remote_weights),
        (Some(a), Some(b)) if a != b
    );
    let latent = |path: ResolutionPath, map_id: String| Resolution {
        mode: Mode::Latent,
        resolution_path: path,
        avp_map_id: map_id,
        weights_mismatch,
    };

    if !weights_mismatch {
        // Rule 1 (AVP-HS-5).
        if !local.model_hash.is_empty()
            && !remote.model_hash.is_empty()
            && local.model_hash == remote.model_hash
        {
            return latent(ResolutionPath::HashMatch, String::new());
        }
        // Rule 2 (AVP-HS-6): only the local side is tested for non-empty and
        // positive; equality carries it over.
        if !local.model_family.is_empty()
            && local.model_family == remote.model_family
            && local.hidden_dim > 0
            && local.hidden_dim == remote.hidden_dim
            && local.num_layers > 0
            && local.num_layers == remote.num_layers
        {
            return latent(ResolutionPath::StructuralMatch, String::new());
        }
    }
    // Rule 3 (AVP-HS-7).
    if !local.tokenizer_hash.is_empty()
        && !remote.tokenizer_hash.is_empty()
        && local.tokenizer_hash == remote.tokenizer_hash
    {
        let id = format!(
            "vocab:{}",
            prefix16(&local.tokenizer_hash).to_string_lossy()
        );
        return latent(ResolutionPath::SharedTokenizer, id);
    }
    // Rule 4 (AVP-HS-8).
    if !local.model_hash.is_empty() && !remote.model_hash.is_empty() {
        if let (Some(maps), Some(id)) =
            (options.maps, map_id(&local.model_hash, &remote.model_hash))
        {
            if maps.has_map(&id) {
                return latent(ResolutionPath::AvpMapFile, id);
            }
        }
    }
    // Rule 5 (AVP-HS-9).
    if let Some((source, target)) = options.vocabularies {
        let overlap = count_vocab_overlap(source, target, MIN_VOCAB_OVERLAP);
        if overlap > 0 {
            return latent(
                ResolutionPath::VocabOverlap,
                format!("vocab_overlap:{overlap}"),
            );
        }
    }
    // Rule 6 (AVP-HS-10).
    Resolution {
        mode: Mode::Json,
        resolution_path: ResolutionPath::JsonFallback,
        avp_map_id: String::new(),
        weights_mismatch,
    }
}
