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

/// AVP-CONF-6, AVP-CONF-7: the committed corpus, the live HTTP mode's cases
/// and the verified rules-elsewhere map leave no spec rule uncovered, in
/// spec/protocol/ and spec/impl/ alike. A new rule anywhere below spec/
/// without a case or a mapped in-tree test fails here.
#[test]
fn conf_7_every_spec_rule_has_a_case_or_a_verified_in_tree_test() {
    use avp_conformance::coverage::{ElsewhereMap, compute_with};
    use avp_conformance::http::{DEFAULT_OVERSIZE, HttpOptions, cases as http_cases};

    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir.parent().expect("repository root");
    let corpus = Corpus::load(&crate_dir.join("vectors")).unwrap();
    let options = HttpOptions {
        token: Some(String::new()),
        timeout: std::time::Duration::from_secs(1),
        oversize: DEFAULT_OVERSIZE,
        name: None,
    };
    let mut all = corpus.cases.clone();
    all.extend(http_cases(&corpus, &options));
    let map = ElsewhereMap::load(&crate_dir.join("rules-elsewhere.json"), repo).unwrap();
    let cov = compute_with(&repo.join("spec"), &all, Some(&map)).unwrap();
    assert!(
        cov.elsewhere_errors.is_empty(),
        "{:#?}",
        cov.elsewhere_errors
    );
    assert!(cov.rules_uncovered.is_empty(), "{:#?}", cov.rules_uncovered);
    assert!(cov.unknown_rules.is_empty(), "{:#?}", cov.unknown_rules);
    assert!(
        cov.rules_defined_twice.is_empty(),
        "each rule is stated once: {:#?}",
        cov.rules_defined_twice
    );
    assert!(cov.rules_total >= 128, "{}", cov.rules_total);
    // Every rule is defined in one of the two trees, none only in the
    // README (its alias table cites IDs, it defines none).
    let trees: Vec<&str> = cov.by_tree.keys().map(String::as_str).collect();
    assert_eq!(trees, ["impl", "protocol"], "{:#?}", cov.by_tree);
    for (tree, c) in &cov.by_tree {
        assert_eq!(
            c.with_cases + c.covered_elsewhere,
            c.rules_total,
            "{tree}: {c:?}"
        );
        eprintln!(
            "spec/{tree}: {} rules, {} with cases, {} covered by in-tree tests",
            c.rules_total, c.with_cases, c.covered_elsewhere
        );
    }
    // AVP-CONF-6: the terminal report says the same per tree.
    let report = avp_conformance::runner::RunReport {
        suite: None,
        suite_version: None,
        manifest_blake3: String::new(),
        runner_version: String::new(),
        strict: false,
        started_unix: 0,
        subjects: vec![],
        coverage: Some(cov.clone()),
    };
    let text = avp_conformance::report::terminal::render(&report, false);
    let (impl_tree, protocol_tree) = (&cov.by_tree["impl"], &cov.by_tree["protocol"]);
    let line = format!(
        "  by spec tree: impl {} ({} with cases, {} by in-tree tests); protocol {} ({} with cases, {} by in-tree tests)",
        impl_tree.rules_total,
        impl_tree.with_cases,
        impl_tree.covered_elsewhere,
        protocol_tree.rules_total,
        protocol_tree.with_cases,
        protocol_tree.covered_elsewhere
    );
    assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    // The map only fills gaps the corpus cannot: a rule that gains a case
    // should leave the map.
    let redundant: Vec<&String> = map
        .rules
        .keys()
        .filter(|r| all.iter().any(|c| c.rules.contains(r)))
        .collect();
    assert!(
        redundant.is_empty(),
        "rules with cases still in the map: {redundant:?}"
    );
}
