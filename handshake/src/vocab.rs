//! Vocabularies: from a HF `tokenizer.json` exactly as
//! `PreTrainedTokenizerFast(tokenizer_file=...).get_vocab()` returns it
//! (AVP-HASH-11), and the vocabulary-overlap count (AVP-HS-8).

use std::collections::{HashMap, HashSet};

use crate::error::Error;
use crate::json::{Int, JsonString, Object, Value};

/// The model part of `tokenizer.json` (`model.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ModelKind {
    /// `vocab` is a `{token: id}` object (BPE, WordPiece, WordLevel).
    Map,
    /// `vocab` is a list of `[piece, score]`; the id is the position.
    Unigram,
}

/// The vocabulary of a parsed `tokenizer.json` as `get_vocab()` gives it:
/// the model's `token -> id` map, then every added token laid over it.
///
/// Added tokens are re-added the way the `tokenizers` library loads a file:
/// in file order, skipping empty contents, and **ignoring the `id` written in
/// the file**. A token already known (as an added token or in the model
/// vocabulary) keeps that id; a new one gets the next free id, starting at
/// the model vocabulary's size (or one past the largest added id when that
/// is larger).
pub fn vocab_from_tokenizer_json(doc: &Value) -> Result<Object, Error> {
    let root = doc.as_object().ok_or_else(|| {
        Error::Tokenizer(format!("top level is {}, not an object", doc.type_name()))
    })?;
    let model = root
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::Tokenizer("no `model` object".into()))?;
    let kind = match model
        .get("type")
        .and_then(Value::as_json_str)
        .and_then(JsonString::as_str)
    {
        Some("BPE" | "WordPiece" | "WordLevel") => ModelKind::Map,
        Some("Unigram") => ModelKind::Unigram,
        Some(other) => {
            return Err(Error::Tokenizer(format!(
                "unsupported model.type `{other}`"
            )));
        }
        None => {
            return Err(Error::Tokenizer(
                "`model.type` is missing or not a string".into(),
            ));
        }
    };
    let vocab_value = model
        .get("vocab")
        .ok_or_else(|| Error::Tokenizer("`model.vocab` is missing".into()))?;

    // The model's (token, id) pairs with distinct tokens, and its size.
    let (model_vocab, model_size): (Vec<(&JsonString, u32)>, usize) = match kind {
        ModelKind::Map => {
            let map = vocab_value
                .as_object()
                .ok_or_else(|| Error::Tokenizer("`model.vocab` is not an object".into()))?;
            // Duplicate keys were already merged by the parser (last wins,
            // as serde's map does), so the size is the number of distinct tokens.
            let pairs = map
                .iter()
                .map(|(token, id)| Ok((token, token_id(id, token)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            let size = pairs.len();
            (pairs, size)
        }
        ModelKind::Unigram => {
            let Value::Array(pieces) = vocab_value else {
                return Err(Error::Tokenizer("`model.vocab` is not a list".into()));
            };
            let mut pairs = Vec::with_capacity(pieces.len());
            for (position, piece) in pieces.iter().enumerate() {
                let token = match piece {
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::Str(token), Value::Int(_) | Value::Float(_)] => token,
                        _ => {
                            return Err(Error::Tokenizer(format!(
                                "vocab entry {position} is not [piece, score]"
                            )));
                        }
                    },
                    _ => {
                        return Err(Error::Tokenizer(format!(
                            "vocab entry {position} is not [piece, score]"
                        )));
                    }
                };
                let id = u32::try_from(position)
                    .map_err(|_| Error::Tokenizer("more than 2^32 vocabulary entries".into()))?;
                pairs.push((token, id));
            }
            // A repeated piece takes its later position, as the library's map
            // does: stable sort by token, keep the last of each run.
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            let mut distinct: Vec<(&JsonString, u32)> = Vec::with_capacity(pairs.len());
            for pair in pairs {
                match distinct.last_mut() {
                    Some(last) if last.0 == pair.0 => *last = pair,
                    _ => distinct.push(pair),
                }
            }
            // Unigram counts list entries, repeated pieces included.
            (distinct, pieces.len())
        }
    };
    let model_size = u32::try_from(model_size)
        .map_err(|_| Error::Tokenizer("more than 2^32 vocabulary entries".into()))?;

    // Added token contents in file order, first occurrence only, non-empty.
    let mut added: Vec<&JsonString> = Vec::new();
    if let Some(list) = root.get("added_tokens") {
        let Value::Array(list) = list else {
            return Err(Error::Tokenizer("`added_tokens` is not a list".into()));
        };
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for (position, entry) in list.iter().enumerate() {
            let content = entry
                .as_object()
                .and_then(|o| o.get("content"))
                .and_then(Value::as_json_str)
                .ok_or_else(|| {
                    Error::Tokenizer(format!("added_tokens[{position}] has no string `content`"))
                })?;
            if !content.is_empty() && seen.insert(content.as_wtf8()) {
                added.push(content);
            }
        }
    }

    // Which added contents the model already knows (one pass over the model
    // vocabulary, hashing only tokens whose length some added content has).
    let added_index: HashMap<&[u8], usize> = added
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_wtf8(), i))
        .collect();
    let added_lengths: HashSet<usize> = added.iter().map(|c| c.as_wtf8().len()).collect();
    let mut model_ids: Vec<Option<u32>> = vec![None; added.len()];
    for (token, id) in &model_vocab {
        let bytes = token.as_wtf8();
        if added_lengths.contains(&bytes.len()) {
            if let Some(slot) = added_index.get(bytes).and_then(|&i| model_ids.get_mut(i)) {
                *slot = Some(*id);
            }
        }
    }

    let mut entries: Vec<(JsonString, Value)> =
        Vec::with_capacity(model_vocab.len().saturating_add(added.len()));
    entries.extend(
        model_vocab
            .iter()
            .map(|(token, id)| ((*token).clone(), Value::Int(Int::from(u64::from(*id))))),
    );
    // Known contents keep the model's id (already in `entries`); new ones
    // take the next ids in file order.
    let mut next_id = model_size;
    for (content, model_id) in added.iter().zip(model_ids) {
        if model_id.is_none() {
            entries.push((
                (*content).clone(),
                Value::Int(Int::from(u64::from(next_id))),
            ));
            next_id = next_id
                .checked_add(1)
                .ok_or_else(|| Error::Tokenizer("added token ids overflow u32".into()))?;
        }
    }
    Ok(Object::from_distinct(entries))
}

fn token_id(id: &Value, token: &JsonString) -> Result<u32, Error> {
    match id {
        Value::Int(i) => i
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Error::Tokenizer(format!("id of `{token}` is not a u32"))),
        other => Err(Error::Tokenizer(format!(
            "id of `{token}` is {}",
            other.type_name()
        ))),
    }
}

/// The vocabulary of a JSON document that is either a `tokenizer.json` or a
/// plain `{token: id}` map (what `avp hash vocab` and `--local-tokenizer` take).
///
/// A document is a `tokenizer.json` when its top level has an object
/// `model` and a `version` or `added_tokens` member.
pub fn vocab_from_document(doc: &Value) -> Result<Object, Error> {
    let obj = doc
        .as_object()
        .ok_or_else(|| Error::field("(top level)", "an object", doc.type_name()))?;
    let is_tokenizer_json = obj.get("model").is_some_and(|m| m.as_object().is_some())
        && (obj.get("version").is_some() || obj.get("added_tokens").is_some());
    if is_tokenizer_json {
        vocab_from_tokenizer_json(doc)
    } else {
        Ok(obj.clone())
    }
}

/// Number of token strings the two vocabularies share, or 0 when that is
/// below `min_overlap` (the SDK's `_count_vocab_overlap`, AVP-HS-8).
pub fn count_vocab_overlap(a: &Object, b: &Object, min_overlap: usize) -> usize {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let set: HashSet<&[u8]> = small.iter().map(|(k, _)| k.as_wtf8()).collect();
    let count = large
        .iter()
        .filter(|(k, _)| set.contains(k.as_wtf8()))
        .count();
    if count >= min_overlap { count } else { 0 }
}
