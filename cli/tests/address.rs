//! AVP-CLI-12: `avp address` rewrites the routing fields of an existing
//! message and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use serde_json::Value;

mod common;
use common::{Scratch, avp, workspace};

fn wire(name: &str) -> PathBuf {
    workspace().join("conformance/vectors/wire/bin").join(name)
}

fn decoded(path: &std::path::Path) -> Value {
    let out = avp().args(["decode", "--json"]).arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_12_address_sets_the_three_ids_and_keeps_the_rest() {
    let s = Scratch::new("address", "ids");
    for name in ["kv-f32.avp", "kv-f16-zstd.avp", "hidden-bf16.avp"] {
        let out_path = s.path(name);
        let out = avp()
            .arg("address")
            .arg(wire(name))
            .arg("-o")
            .arg(&out_path)
            .args([
                "--session",
                "s-9",
                "--source",
                "agent-a",
                "--target",
                "agent-b",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["length"], std::fs::read(&out_path).unwrap().len());
        let (mut before, mut after) = (decoded(&wire(name)), decoded(&out_path));
        assert_eq!(after["metadata"]["session_id"], "s-9");
        assert_eq!(after["metadata"]["source_agent_id"], "agent-a");
        assert_eq!(after["metadata"]["target_agent_id"], "agent-b");
        // Everything but the ids and the lengths they change is as it was.
        for v in [&mut before, &mut after] {
            for k in ["session_id", "source_agent_id", "target_agent_id"] {
                v["metadata"][k] = Value::Null;
            }
            v["header"]["payload_length"] = Value::Null;
            v["header"]["metadata_length"] = Value::Null;
        }
        assert_eq!(before, after, "{name}");
    }
}

#[test]
fn cli_12_address_refuses_a_signed_message() {
    let s = Scratch::new("address", "signed");
    let dir = workspace().join("conformance/vectors/mac/bin");
    let signed = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "avp")
                && std::fs::read(p)
                    .ok()
                    .and_then(|b| {
                        avp_codec::decode(&b)
                            .ok()
                            .map(|m| m.metadata.extra.get("avp.mac").is_some())
                    })
                    .unwrap_or(false)
        })
        .expect("a signed vector in conformance/vectors/mac");
    let out_path = s.path("out.avp");
    let out = avp()
        .arg("address")
        .arg(&signed)
        .arg("-o")
        .arg(&out_path)
        .args(["--target", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_argument");
    assert!(!out_path.exists());
}
