//! The API other crates use (AVP-HASH-6): what serde_json refuses and Python
//! writes round-trips; accessors, building, writing in Python's two styles,
//! and the parse options of the JSON fallback (AVP-LIM-7, AVP-JSON-4).
#![allow(clippy::unwrap_used, clippy::float_cmp)]

use avp_json::{
    JsonErrorKind, Object, ParseOptions, Value, WriteOptions, parse, parse_with, to_string,
};

#[test]
fn python_only_numbers_round_trip() {
    // json.dumps writes these; json.loads reads them; serde_json refuses them.
    let v = parse(
        b"[NaN, Infinity, -Infinity, 1e400, -0.0, 100, 100.0, 123456789012345678901234567890]",
    )
    .unwrap();
    let items = v.as_array().unwrap();
    assert!(items[0].as_f64().unwrap().is_nan());
    assert_eq!(items[3].as_f64(), Some(f64::INFINITY));
    assert_eq!(items[5].as_i64(), Some(100));
    assert_eq!(items[6].as_i64(), None);
    assert_eq!(items[7].as_u64(), None);
    assert_eq!(
        to_string(&v, WriteOptions::PYTHON_DEFAULT).unwrap(),
        "[NaN, Infinity, -Infinity, Infinity, -0.0, 100, 100.0, 123456789012345678901234567890]"
    );
}

#[test]
fn objects_build_read_and_write_in_both_styles() {
    let doc = Value::from(
        Object::new()
            .with("b", 1i64)
            .with("a", "x")
            .with("c", vec![Value::Null, true.into(), 2.5.into()])
            .with("b", 3u32),
    );
    assert_eq!(doc.get("b").and_then(Value::as_u64), Some(3));
    assert_eq!(doc.get("a").and_then(Value::as_str), Some("x"));
    assert_eq!(
        doc.get("c").and_then(Value::as_array).map(<[Value]>::len),
        Some(3)
    );
    assert!(doc.get("missing").is_none() && doc.get("c").unwrap().get("x").is_none());
    assert_eq!(
        to_string(&doc, WriteOptions::PYTHON_DEFAULT).unwrap(),
        r#"{"b": 3, "a": "x", "c": [null, true, 2.5]}"#
    );
    assert_eq!(
        to_string(&doc, WriteOptions::COMPACT).unwrap(),
        r#"{"b":3,"a":"x","c":[null,true,2.5]}"#
    );
    assert_eq!(
        avp_json::to_canonical(&doc).unwrap(),
        r#"{"a":"x","b":3,"c":[null,true,2.5]}"#
    );
}

#[test]
fn depth_limits_and_number_text() {
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let three = ParseOptions::PYTHON.with_max_depth(3);
    assert!(parse_with(nested(3).as_bytes(), &three).is_ok());
    assert_eq!(
        parse_with(nested(4).as_bytes(), &three).unwrap_err().kind,
        JsonErrorKind::TooDeep
    );
    let with_scalars = three.with_scalars_adding_a_level(true);
    assert!(parse_with(nested(2).as_bytes(), &with_scalars).is_ok());
    assert!(parse_with(nested(3).as_bytes(), &with_scalars).is_err());
    let kept = ParseOptions::PYTHON.with_number_text_kept(true);
    let v = parse_with(b"[1e5, 1.50, -0, NaN]", &kept).unwrap();
    assert_eq!(
        to_string(&v, WriteOptions::PYTHON_DEFAULT).unwrap(),
        "[1e5, 1.50, -0, NaN]"
    );
    assert_eq!(v.as_array().unwrap()[0].as_f64(), Some(100000.0));
    assert!(!v.as_array().unwrap()[2].is_truthy());
}

#[test]
fn writer_refuses_values_too_deep_as_caller_fault() {
    let mut v = Value::Null;
    for _ in 0..=avp_json::MAX_DEPTH {
        v = Value::Array(vec![v]);
    }
    let err = to_string(&v, WriteOptions::COMPACT).unwrap_err();
    assert_eq!(err.kind, JsonErrorKind::TooDeepToWrite);
    assert!(!err.is_input_fault());
    assert!(parse(b"[").unwrap_err().is_input_fault());
}
