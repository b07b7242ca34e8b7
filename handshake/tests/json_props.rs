//! Property tests of the JSON layer (AVP-HASH-2..AVP-HASH-6): canonical
//! output re-parses to the same value, every f64 survives the Python repr,
//! and no input makes the parser panic or overflow the stack.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use avp_handshake::json::{self, Int, JsonString, Object, Value, WriteOptions, write_py_float};
use avp_handshake::{JsonErrorKind, model_hash};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn string_strategy() -> impl Strategy<Value = JsonString> {
    // Any code points, lone surrogates included (built through an escape,
    // the only way they enter).
    prop::collection::vec(
        // (is an escape already, text)
        prop_oneof![
            any::<char>().prop_map(|c| (false, c.to_string())),
            (0xd800u32..0xe000).prop_map(|u| (true, format!("\\u{u:04x}"))),
            Just((false, "\"".to_string())),
            Just((true, "\\\\".to_string())),
        ],
        0..6,
    )
    .prop_map(|parts| {
        let mut lit = String::from("\"");
        for (is_escape, p) in parts {
            if is_escape {
                lit.push_str(&p);
            } else {
                for c in p.chars() {
                    match c {
                        '"' => lit.push_str("\\\""),
                        '\\' => lit.push_str("\\\\"),
                        c if (c as u32) < 0x20 => lit.push_str(&format!("\\u{:04x}", c as u32)),
                        c => lit.push(c),
                    }
                }
            }
        }
        lit.push('"');
        match json::parse(lit.as_bytes()).unwrap() {
            Value::Str(s) => s,
            _ => unreachable!(),
        }
    })
}

fn int_strategy() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|v| Value::Int(Int::from(v))),
        any::<u64>().prop_map(|v| Value::Int(Int::from(v))),
        // Beyond 64 bits.
        ("-?[1-9][0-9]{19,60}").prop_map(|s| json::parse(s.as_bytes()).unwrap()),
    ]
}

fn value_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int_strategy(),
        any::<f64>().prop_map(Value::Float),
        string_strategy().prop_map(Value::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((string_strategy(), inner), 0..6).prop_map(|entries| {
                let mut o = Object::new();
                for (k, v) in entries {
                    o.insert(k, v);
                }
                Value::Object(o)
            }),
        ]
    })
}

fn write(v: &Value, options: WriteOptions) -> String {
    let mut s = String::new();
    json::write_value(&mut s, v, options).unwrap();
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn avp_hash_2_canonical_roundtrips_through_parser(v in value_strategy()) {
        for options in [WriteOptions::CANONICAL, WriteOptions::COMPACT, WriteOptions::PYTHON_DEFAULT] {
            let text = write(&v, options);
            // ensure_ascii: the output is pure ASCII.
            prop_assert!(text.is_ascii());
            let back = json::parse(text.as_bytes()).unwrap();
            // Written forms compare NaN as equal, unlike `==`.
            prop_assert_eq!(write(&back, options), text.clone());
            prop_assert_eq!(write(&back, WriteOptions::CANONICAL), write(&v, WriteOptions::CANONICAL));
        }
        prop_assert!(model_hash(&v).is_ok());
    }

    #[test]
    fn avp_hash_3_every_f64_survives_python_repr(bits in any::<u64>()) {
        let x = f64::from_bits(bits);
        let mut s = String::new();
        write_py_float(&mut s, x);
        match json::parse(s.as_bytes()).unwrap() {
            Value::Float(y) if x.is_nan() => prop_assert!(y.is_nan()),
            Value::Float(y) => prop_assert_eq!(y.to_bits(), x.to_bits(), "{}", s),
            other => prop_assert!(false, "{s} parsed as {other:?}"),
        }
        // Fixed notation carries a '.', scientific a signed two-digit exponent.
        if let Some((_, exp)) = s.split_once('e') {
            prop_assert!(exp.starts_with('+') || exp.starts_with('-'));
            prop_assert!(exp.len() >= 3);
        } else if x.is_finite() {
            prop_assert!(s.contains('.'), "{}", s);
        }
    }

    /// AVP-HS-14: no JSON value makes the typed readers panic.
    #[test]
    fn avp_hs_14_readers_never_panic_on_any_json(v in value_strategy()) {
        let _ = avp_handshake::HelloMessage::from_value(&v).map(|h| h.weights_digest());
        let _ = avp_handshake::ModelIdentity::from_value(&v, "x");
        let _ = avp_handshake::identity_from_config(&v, JsonString::default());
        let _ = avp_handshake::vocab_from_tokenizer_json(&v);
        let _ = avp_handshake::vocab_from_document(&v);
        let text = write(&v, WriteOptions::COMPACT);
        let _ = avp_handshake::weights::parse_header(text.as_bytes(), 1 << 20);
        // Wrapped as the parts the readers look into.
        let mut model = Object::new();
        model.insert("type", Value::from("BPE"));
        model.insert("vocab", v.clone());
        let mut root = Object::new();
        root.insert("model", Value::Object(model));
        root.insert("added_tokens", Value::Array(vec![v]));
        let _ = avp_handshake::vocab_from_tokenizer_json(&Value::Object(root));
    }

    /// AVP-HASH-1, AVP-HASH-4: on objects with many keys sharing long
    /// prefixes (the stack sort's tie-break), long texts (the hash sink's
    /// spill) and non-plain strings (the escaping fallback), the canonical
    /// form equals the entries sorted by code point and written unsorted,
    /// and `model_hash` is SHA-256 of exactly that text.
    #[test]
    fn avp_hash_1_model_hash_is_sha256_of_the_sorted_text(
        entries in prop::collection::vec(
            (
                prop_oneof![Just(""), Just("a"), Just("num_attention_"), Just("attention_dropout_prob"), Just("é\u{1F600}")],
                "[a-z_\"\\\\\u{0}-\u{1f}é]{0,20}",
                prop_oneof![
                    any::<i64>().prop_map(|v| Value::Int(Int::from(v))),
                    any::<f64>().prop_map(Value::Float),
                    "[ -~é]{0,30}".prop_map(|s| Value::from(s.as_str())),
                ],
            ),
            0..90,
        )
    ) {
        let mut object = Object::new();
        for (prefix, rest, value) in entries {
            object.insert(format!("{prefix}{rest}"), value);
        }
        let mut sorted: Vec<_> = object.clone().into_entries();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut by_hand = Object::new();
        for (k, v) in sorted {
            by_hand.insert(k, v);
        }
        let value = Value::Object(object);
        let canonical = write(&value, WriteOptions::CANONICAL);
        prop_assert_eq!(&canonical, &write(&Value::Object(by_hand), WriteOptions::COMPACT));
        let digest = Sha256::digest(canonical.as_bytes());
        let want: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(model_hash(&value).unwrap(), want);
    }

    /// AVP-HASH-10: the tokenizer hash equals SHA-256 of the general
    /// writer's `[[token,id],...]` in code-point order, for tokens that tie
    /// on long prefixes, need every kind of escape (quotes, controls,
    /// 2/3/4-byte characters, lone surrogates) and ids of any JSON type.
    #[test]
    fn avp_hash_10_tokenizer_hash_is_sha256_of_the_sorted_pairs(
        entries in prop::collection::vec(
            (
                prop_oneof![Just(""), Just("Ġ"), Just("ĠĠĠĠĠĠĠĠ"), Just("abcdefghijkl"), Just("\u{7}\"")],
                string_strategy(),
                prop_oneof![
                    4 => (0u64..200_000).prop_map(Value::from),
                    1 => Just(Value::from(u64::from(u32::MAX))),
                    1 => int_strategy(),
                    1 => any::<f64>().prop_map(Value::Float),
                    1 => Just(Value::from("id")),
                ],
            ),
            0..60,
        )
    ) {
        let mut vocab = Object::new();
        for (prefix, rest, id) in entries {
            let mut key = JsonString::from(prefix).as_wtf8().to_vec();
            key.extend_from_slice(rest.as_wtf8());
            // Through the parser, the only way lone surrogates enter.
            let mut literal = String::new();
            json::write_value(&mut literal, &Value::Str(JsonString::from(prefix)), WriteOptions::COMPACT).unwrap();
            let mut rest_literal = String::new();
            json::write_value(&mut rest_literal, &Value::Str(rest), WriteOptions::COMPACT).unwrap();
            // Both literals are ASCII: drop the prefix's closing quote and the rest's opening one.
            let joined = format!("{}{}", &literal[..literal.len() - 1], &rest_literal[1..]);
            let Value::Str(token) = json::parse(joined.as_bytes()).unwrap() else { unreachable!() };
            prop_assert_eq!(token.as_wtf8(), key.as_slice());
            vocab.insert(token, id);
        }
        let mut pairs: Vec<_> = vocab.clone().into_entries();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let list = Value::Array(
            pairs.into_iter().map(|(k, v)| Value::Array(vec![Value::Str(k), v])).collect(),
        );
        let text = write(&list, WriteOptions::COMPACT);
        let want: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(avp_handshake::tokenizer_hash(&vocab).unwrap(), want);
    }

    #[test]
    fn avp_hash_6_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = json::parse(&bytes);
    }

    #[test]
    fn avp_hash_6_parser_never_panics_on_json_like_text(s in "[\\[\\]{}\",:0-9eE.+\\-a-zNIty\\\\u ]{0,40}") {
        let _ = json::parse(s.as_bytes());
    }
}

#[test]
fn avp_hash_6_deep_nesting_is_an_error_not_a_crash() {
    for open in ["[", "{\"a\":"] {
        let text = open.repeat(200_000);
        let err = json::parse(text.as_bytes()).unwrap_err();
        assert_eq!(err.kind, JsonErrorKind::TooDeep);
    }
    // 512 levels are fine.
    let ok = format!("{}{}", "[".repeat(512), "]".repeat(512));
    assert!(json::parse(ok.as_bytes()).is_ok());
    let too_deep = format!("{}{}", "[".repeat(513), "]".repeat(513));
    assert_eq!(
        json::parse(too_deep.as_bytes()).unwrap_err().kind,
        JsonErrorKind::TooDeep
    );
}

#[test]
fn avp_hash_6_writer_refuses_values_deeper_than_the_limit() {
    let mut v = Value::Null;
    for _ in 0..600 {
        v = Value::Array(vec![v]);
    }
    assert!(json::to_canonical(&v).is_err());
}

#[test]
fn avp_hash_6_python_dict_semantics_for_duplicate_keys() {
    let v = json::parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
    assert_eq!(write(&v, WriteOptions::COMPACT), r#"{"a":3,"b":2}"#);
    // Above the index threshold too.
    let mut text = String::from("{");
    for i in 0..300 {
        text.push_str(&format!("\"k{i}\":{i},"));
    }
    text.push_str("\"k3\":\"last\",\"k299\":\"end\"}");
    let v = json::parse(text.as_bytes()).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 300);
    assert_eq!(o.get("k299"), Some(&Value::from("end")));
    assert_eq!(o.get("k3"), Some(&Value::from("last")));
    assert_eq!(o.iter().nth(3).unwrap().0.as_str(), Some("k3"));
}

#[test]
fn avp_hash_4_keys_sort_by_code_point_not_utf16() {
    // U+FF61 sorts before U+1F600 by code point, after it by UTF-16 unit.
    let v = json::parse("{\"\u{1F600}\":1,\"\u{FF61}\":2}".as_bytes()).unwrap();
    assert_eq!(
        json::to_canonical(&v).unwrap(),
        r#"{"\uff61":2,"\ud83d\ude00":1}"#
    );
}

#[test]
fn avp_hash_5_lone_surrogates_survive() {
    let v = json::parse(br#"["\ud800","\udc00\ud800","\ud83d\ude00"]"#).unwrap();
    assert_eq!(
        json::to_canonical(&v).unwrap(),
        r#"["\ud800","\udc00\ud800","\ud83d\ude00"]"#
    );
    let Value::Array(items) = &v else { panic!() };
    assert_eq!(items[0].as_json_str().unwrap().as_str(), None);
    assert_eq!(items[2].as_json_str().unwrap().as_str(), Some("\u{1F600}"));
}

#[test]
fn avp_hash_6_errors_carry_kind_and_offset() {
    let cases: &[(&[u8], JsonErrorKind, usize)] = &[
        (b"", JsonErrorKind::UnexpectedEnd, 0),
        (b"[1,]", JsonErrorKind::UnexpectedChar, 3),
        (b"{1:2}", JsonErrorKind::ExpectedKey, 1),
        (b"{\"a\" 1}", JsonErrorKind::ExpectedColon, 5),
        (b"\"a\tb\"", JsonErrorKind::ControlCharacter, 2),
        (b"\"\\x\"", JsonErrorKind::BadEscape, 2),
        (b"-", JsonErrorKind::BadNumber, 1),
        (b"1 2", JsonErrorKind::TrailingData, 2),
        (b"\xef\xbb\xbf{}", JsonErrorKind::ByteOrderMark, 0),
        (b"\"\xff\"", JsonErrorKind::InvalidUtf8, 1),
    ];
    for (input, kind, offset) in cases {
        let err = json::parse(input).unwrap_err();
        assert_eq!(
            (err.kind, err.offset),
            (*kind, *offset),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long = "7".repeat(4301);
    assert_eq!(
        json::parse(long.as_bytes()).unwrap_err().kind,
        JsonErrorKind::IntegerTooLong
    );
    assert!(json::parse("7".repeat(4300).as_bytes()).is_ok());
}

/// AVP-HASH-10 on vocabularies large enough for the two-core path (which
/// splits the entries, sorts the halves apart and merges them): the same
/// hash as the general writer's sorted pair list. Tokens share long
/// prefixes across the halves, and some ids are not u32.
#[test]
fn avp_hash_10_two_core_tokenizer_hash_matches_the_general_writer() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for size in [40_000usize, 70_001] {
        // Built as JSON text and parsed (Object::insert is a linear search).
        let mut seen = std::collections::HashSet::new();
        let mut text = String::from("{");
        let mut number = 0u64;
        while seen.len() < size {
            let r = next();
            let mut token = String::new();
            match r % 4 {
                0 => token.push_str("ĠĠĠĠĠĠĠĠ"),
                1 => token.push('Ġ'),
                2 => token.push_str("\"\\\u{1}"),
                _ => {}
            }
            for i in 0..(r >> 8) % 6 {
                let c = (r >> (12 + 5 * i)) % 40;
                token.push(match c {
                    0 => '\u{4e2d}',
                    1 => '\u{1F600}',
                    2 => 'é',
                    _ => char::from(b'a' + (c % 26) as u8),
                });
            }
            let id = match r % 97 {
                0 => Value::Int(Int::from(-5i64)),
                1 => Value::Float(0.5),
                2 => Value::from(u64::from(u32::MAX) + 7),
                _ => Value::from(number),
            };
            number += 1;
            if !seen.insert(token.clone()) {
                continue;
            }
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&write(&Value::from(token.as_str()), WriteOptions::COMPACT));
            text.push(':');
            text.push_str(&write(&id, WriteOptions::COMPACT));
        }
        text.push('}');
        let Value::Object(vocab) = json::parse(text.as_bytes()).unwrap() else {
            unreachable!()
        };
        assert_eq!(vocab.len(), size);
        let mut pairs: Vec<_> = vocab.clone().into_entries();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let list = Value::Array(
            pairs
                .into_iter()
                .map(|(k, v)| Value::Array(vec![Value::Str(k), v]))
                .collect(),
        );
        let text = write(&list, WriteOptions::COMPACT);
        let want: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            avp_handshake::tokenizer_hash(&vocab).unwrap(),
            want,
            "{size} tokens"
        );
    }
}
