//! `tokenizer_hash_of_tokens` (the entry point for bindings that read a
//! `{str: int}` map directly) hashes exactly what `tokenizer_hash` does
//! for the same vocabulary as an `Object` (AVP-HASH-10).

use avp_handshake::json::{JsonString, Object, Value};
use avp_handshake::{tokenizer_hash_of_tokens, tokenizer_hash_with_threads};

fn tokens(size: usize) -> Vec<(String, u32)> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut token = String::from(["", "Ġ", "ĠĠĠĠĠĠĠĠĠĠĠĠ", "\"\\\u{1}"][(state % 4) as usize]);
        for i in 0..(state >> 8) % 7 {
            let c = (state >> (12 + 5 * i)) % 40;
            token.push(match c {
                0 => '\u{4e2d}',
                1 => '\u{1F600}',
                2 => 'é',
                _ => char::from(b'a' + (c % 26) as u8),
            });
        }
        if seen.insert(token.clone()) {
            // Ids in any order, up to just below u32::MAX.
            let id = if out.len() % 1000 == 7 {
                u32::MAX - 1
            } else {
                (state >> 40) as u32
            };
            out.push((token, id));
        }
    }
    out
}

#[test]
fn avp_hash_10_tokens_entry_matches_the_object_hash() {
    for size in [0usize, 1, 5_000, 70_001] {
        let owned = tokens(size);
        let pairs: Vec<(&str, u32)> = owned.iter().map(|(t, id)| (t.as_str(), *id)).collect();
        let object = Object::from_distinct(
            owned
                .iter()
                .map(|(t, id)| (JsonString::from(t.as_str()), Value::from(u64::from(*id))))
                .collect(),
        );
        let want = tokenizer_hash_with_threads(&object, 1).unwrap();
        for threads in [1, 2] {
            assert_eq!(
                tokenizer_hash_of_tokens(&pairs, threads).unwrap(),
                want,
                "{size} tokens, {threads} threads"
            );
        }
    }
}

#[test]
fn avp_hash_10_tokens_entry_refuses_the_reserved_id() {
    let err = tokenizer_hash_of_tokens(&[("a", 1), ("b", u32::MAX)], 1).unwrap_err();
    assert!(err.to_string().contains("4294967295"), "{err}");
}
