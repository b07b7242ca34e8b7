//! The committed corpus loads completely: every case the manifest counts is
//! a case the runner will run (a case file that failed to parse once
//! vanished silently: lone UTF-16 surrogates, which Python's json writes).

use std::path::Path;

use avp_conformance::corpus::Corpus;

#[test]
fn conf_1_every_counted_case_is_loaded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let corpus = Corpus::load(&root).expect("the committed corpus verifies and loads");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("MANIFEST.json")).unwrap()).unwrap();
    let counted = manifest["case_count"].as_u64().expect("case_count") as usize;
    assert_eq!(corpus.cases.len(), counted);
    for area in [
        "wire/",
        "handshake/tokenizer/inline/",
        "handshake/json/random/",
        "handshake/hello/",
    ] {
        assert!(
            corpus.cases.iter().any(|c| c.id.starts_with(area)),
            "no {area} cases"
        );
    }
}

#[test]
fn conf_24_inputs_with_lone_surrogates_are_forwarded_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let corpus = Corpus::load(&root).unwrap();
    let case = corpus
        .cases
        .iter()
        .find(|c| c.id == "handshake/tokenizer/inline/escapes")
        .expect("case");
    assert!(
        case.input_raw.contains(r#""\ud800": 6"#),
        "{}",
        case.input_raw
    );
    assert!(case.input_raw.contains(r#""\ud83d\ude00": 5"#));
}
