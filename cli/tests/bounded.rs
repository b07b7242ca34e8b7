//! AVP-CLI-4: `decode` and `inspect` stream the tensor through one window,
//! so peak memory does not grow with the input, and an input that is not a
//! message is refused after its first 12 bytes, however long it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use avp_codec::kv::{KvDtype, KvHeader, write_kv_cache};
use avp_codec::{Compression, decode, encode};
use serde_json::Value;

mod common;
use common::{Scratch, avp, workspace};

const MIB: u64 = 1 << 20;

/// Runs `avp ARGS` (stdin from `stdin_file` when given) and returns its
/// status, stdout and peak RSS in KiB, as the kernel accounts the child.
fn peak_rss(args: &[&str], stdin_file: Option<&Path>) -> (i32, String, u64) {
    const PROBE: &str = "import json, resource, subprocess, sys\n\
        f = open(sys.argv[1], 'rb') if sys.argv[1] else None\n\
        p = subprocess.run(sys.argv[2:], stdin=f, capture_output=True)\n\
        print(json.dumps({'rc': p.returncode, 'out': p.stdout.decode(),\n\
              'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))";
    let out = Command::new("python3")
        .args(["-c", PROBE])
        .arg(stdin_file.map(|p| p.to_str().unwrap()).unwrap_or(""))
        .arg(env!("CARGO_BIN_EXE_avp"))
        .args(args)
        .output()
        .expect("python3 (for the kernel's peak RSS of the child)");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["rc"].as_i64().unwrap() as i32,
        v["out"].as_str().unwrap().to_owned(),
        v["maxrss_kib"].as_u64().unwrap(),
    )
}

/// A 256 MiB float16 KV-cache message (32 layers, 8 heads, 2048 positions,
/// head_dim 128) whose elements vary, written to `path`.
fn big_kv_message(path: &Path) -> Vec<u8> {
    let h = KvHeader {
        num_layers: 32,
        num_kv_heads: 8,
        head_dim: 128,
        seq_len: 2048,
        dtype: KvDtype::Float16,
    };
    let per = h.tensor_bytes().unwrap() as usize;
    let tensors: Vec<Vec<u8>> = (0..64u32)
        .map(|t| {
            (0..per / 2)
                .flat_map(|i| {
                    (0x3c00u16 ^ ((i as u16).wrapping_mul(31) ^ t as u16) & 0x3ff).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let payload = write_kv_cache(
        &h,
        tensors
            .chunks(2)
            .map(|kv| (kv[0].as_slice(), kv[1].as_slice())),
    )
    .unwrap();
    let template =
        std::fs::read(workspace().join("conformance/vectors/wire/bin/kv-f16.avp")).unwrap();
    let mut meta = decode(&template).unwrap().metadata.into_owned();
    meta.num_layers = 32;
    // The template's checksum covers its own tensor; the encoder computes this one (AVP-API-2).
    meta.payload_checksum = None;
    let bytes = encode(&meta, &payload, Compression::None).unwrap();
    std::fs::write(path, &bytes).unwrap();
    assert!(bytes.len() as u64 > 256 * MIB);
    bytes
}

#[test]
fn cli_4_decode_and_inspect_of_256_mib_stay_under_64_mib() {
    let s = Scratch::new("bounded", "big");
    let path = s.path("big.avp");
    let bytes = big_kv_message(&path);
    let msg = decode(&bytes).unwrap();
    let p = path.to_str().unwrap();

    for stdin in [None, Some(path.as_path())] {
        let file_arg = if stdin.is_some() { "-" } else { p };
        let (rc, out, kib) = peak_rss(&["decode", "--json", file_arg], stdin);
        assert_eq!(rc, 0, "{out}");
        assert!(kib < 64 * 1024, "decode {file_arg}: peak RSS {kib} KiB");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["payload"]["length"], msg.payload.len());
        assert_eq!(v["payload"]["crc32"], avp_codec::crc32(&msg.payload));
        assert_eq!(
            v["payload"]["blake3"],
            blake3::hash(&msg.payload).to_hex().as_str()
        );
        assert_eq!(v["kv"]["num_layers"], 32);
        assert_eq!(v["kv"]["seq_len"], 2048);
    }

    // AVP-MAC-8 in bounded memory: the tag is checked in the same streamed
    // pass, and a flipped tensor byte or another key is still `bad_mac`.
    let key_file = s.path("key.bin");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let key = avp_codec::mac::MacKey::from_key_file_bytes(&[7u8; 32]).unwrap();
    let mut signed =
        avp_codec::mac::encode_signed(&msg.metadata, &msg.payload, Compression::None, &key)
            .unwrap();
    let signed_path = s.path("signed.avp");
    std::fs::write(&signed_path, &signed).unwrap();
    let (k, sp) = (key_file.to_str().unwrap(), signed_path.to_str().unwrap());
    let (rc, out, kib) = peak_rss(&["decode", "--json", "--mac-key", k, sp], None);
    assert_eq!(rc, 0, "{out}");
    assert!(kib < 64 * 1024, "decode --mac-key: peak RSS {kib} KiB");
    let middle = signed.len() / 2;
    signed[middle] ^= 1;
    std::fs::write(&signed_path, &signed).unwrap();
    let (rc, out, kib) = peak_rss(
        &["decode", "--json", "--mac-key", k, "-"],
        Some(&signed_path),
    );
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("\"bad_mac\""), "{out}");
    assert!(
        kib < 64 * 1024,
        "decode --mac-key, tampered: peak RSS {kib} KiB"
    );

    let (rc, out, kib) = peak_rss(&["inspect", p], None);
    assert_eq!(rc, 0, "{out}");
    assert!(kib < 64 * 1024, "inspect: peak RSS {kib} KiB");
    // The streamed statistics equal the ones over the whole tensor.
    let kv = avp_codec::kv::KvCache::parse(&msg.payload).unwrap();
    let last = kv.layer(31).unwrap().value.stats();
    let row = out.lines().find(|l| l.starts_with("   31 V")).unwrap();
    assert!(
        row.contains(&format!("{:.4}", last.l2_norm)),
        "{row} vs {last:?}"
    );
}

#[test]
fn cli_4_not_a_message_is_refused_after_12_bytes() {
    // An endless input: the header alone decides.
    let start = Instant::now();
    let (rc, out, kib) = peak_rss(&["decode", "--json", "/dev/zero"], None);
    assert_eq!(rc, 1, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"]["kind"], "bad_magic", "{v}");
    assert!(kib < 64 * 1024, "{kib} KiB");
    assert!(start.elapsed() < Duration::from_secs(10));

    // The same through a pipe that has gigabytes more to give: the writer is
    // cut off (EPIPE) rather than drained.
    let mut child = avp()
        .args(["inspect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < 3 * 1024 * MIB {
        if stdin.write_all(&zeros).is_err() {
            break;
        }
        sent += MIB;
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "bad_magic", "{v}");
    assert!(sent < 64 * MIB, "{sent} bytes were read before the refusal");
}
