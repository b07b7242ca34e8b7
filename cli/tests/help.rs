//! `insta` snapshots of every subcommand's `--help`, found by walking the
//! "Commands:" lists from `avp --help` down, so that a changed option,
//! default or description shows up in review as a snapshot diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
use common::avp;

const ENGINE: [&str; 3] = ["think", "generate", "project"];

fn help(path: &[String]) -> (Option<i32>, String, String) {
    let out = avp().args(path).arg("--help").output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The subcommand names listed under "Commands:" (clap's own `help` left out).
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_help_is_snapshotted() {
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        if path.first().is_some_and(|c| ENGINE.contains(&c.as_str())) {
            continue; // engine_help_is_snapshotted, which needs avp-engine
        }
        let (code, text, stderr) = help(&path);
        assert_eq!(code, Some(0), "avp {path:?} --help: {stderr}");
        let name = if path.is_empty() {
            "help_avp".to_owned()
        } else {
            format!("help_avp_{}", path.join("_"))
        };
        insta::assert_snapshot!(name, text);
        seen += 1;
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    assert!(seen >= 20, "{seen} help texts");
}

#[cfg(feature = "engine")]
#[test]
fn engine_help_is_snapshotted() {
    for cmd in ENGINE {
        let (code, text, stderr) = help(&[cmd.to_owned()]);
        assert_eq!(code, Some(0), "avp {cmd} --help: {stderr}");
        insta::assert_snapshot!(format!("help_avp_{cmd}"), text);
    }
}

/// Without avp-engine beside avp, the engine commands say how to get it.
#[cfg(not(feature = "engine"))]
#[test]
fn engine_commands_without_the_engine_say_how_to_build_it() {
    for cmd in ENGINE {
        // A stale avp-engine from an earlier engine build may sit in target/;
        // point the lookup at a path that cannot exist.
        let out = avp()
            .args([cmd, "--help"])
            .env("AVP_ENGINE", "/nonexistent/avp-engine")
            .output()
            .unwrap();
        let (code, text, stderr) = (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert_eq!(code, Some(2), "avp {cmd}: {text}");
        assert!(stderr.contains("--features engine"), "{stderr}");
    }
}
