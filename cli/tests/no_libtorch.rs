//! AVP-CLI-8: `avp` never loads libtorch, however it was built; only the
//! `avp-engine` executable (think, generate, project) links it. Checked on
//! the running processes (their memory maps), not on build settings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;

mod common;
use common::{avp, start, workspace};

/// Resident and peak resident KiB of a live process, from /proc.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn cli_8_a_running_router_maps_no_libtorch_and_stays_small() {
    let mut cmd = avp();
    cmd.args([
        "route",
        "--listen",
        "127.0.0.1:0",
        "--route",
        "agent-b=http://127.0.0.1:9",
    ]);
    let running = start(cmd);
    let pid = running.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("libtorch"), "avp route mapped libtorch");
    assert!(!maps.contains("libc10"), "avp route mapped libc10");
    let (rss, _) = rss_kib(pid);
    // Release builds idle near 5 MiB (BENCHMARKS.md); a debug build a little more.
    assert!(rss < 16 * 1024, "avp route idles at {rss} KiB");
}

#[test]
fn cli_8_decode_starts_without_libtorch() {
    let small = workspace().join("conformance/vectors/wire/bin/kv-f32.avp");
    // Peak RSS of the whole process, as the kernel accounts the child.
    let probe = "import resource, subprocess, sys\n\
        p = subprocess.run(sys.argv[1:], capture_output=True)\n\
        print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = Command::new("python3")
        .args(["-c", probe, env!("CARGO_BIN_EXE_avp"), "decode", "--json"])
        .arg(&small)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace();
    assert_eq!(it.next(), Some("0"), "{text}");
    let peak: u64 = it.next().unwrap().parse().unwrap();
    // With libtorch mapped this was ~490 MB (issue 14); release builds take ~3 MiB.
    assert!(peak < 24 * 1024, "avp decode peaked at {peak} KiB");
}

/// The engine binary is the one that links libtorch, and `avp think` runs it.
#[cfg(feature = "engine")]
#[test]
fn cli_8_only_the_engine_binary_links_libtorch() {
    let ldd = |exe: &str| {
        let out = Command::new("ldd").arg(exe).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!ldd(env!("CARGO_BIN_EXE_avp")).contains("libtorch"));
    assert!(ldd(env!("CARGO_BIN_EXE_avp-engine")).contains("libtorch"));
    // Dispatch: usage errors come from the engine binary, named as `avp`.
    let out = avp().args(["think", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.starts_with("Think in latent space"), "{help}");
    assert!(help.contains("Usage: avp think"), "{help}");
}
