//! GPU agreement (feature `cuda-tests`; skips without a CUDA device unless
//! `AVP_REQUIRE_CUDA=1`): think on CUDA
//! agrees with CPU; the KV message made on one device imports on the other.
#![cfg(feature = "cuda-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use avp_engine::{Device, Engine, GenerateOptions, Kind, LoadOptions, WeightSource};

fn load(name: &str, device: Device, kind: Kind) -> Engine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/models")
        .join(name);
    let opts = LoadOptions {
        device,
        kind: Some(kind),
        weights: WeightSource::Checkpoint,
        cache_dir: None,
        model_hash: None,
    };
    Engine::load(&dir, &opts).unwrap()
}

#[test]
fn cuda_think_agrees_with_cpu() {
    // scripts/test.sh builds with --all-features on machines without a GPU;
    // there the feature has nothing to check (set AVP_REQUIRE_CUDA=1 to make
    // a missing GPU fail instead, as a GPU CI job should).
    if !tch::Cuda::is_available() {
        assert!(
            std::env::var_os("AVP_REQUIRE_CUDA").is_none(),
            "AVP_REQUIRE_CUDA set but no GPU"
        );
        eprintln!("cuda-tests: no CUDA device visible, skipping");
        return;
    }
    for name in ["llama_tied", "llama_untied", "qwen2", "qwen3", "mistral"] {
        let cpu = load(name, Device::Cpu, Kind::Float);
        let gpu = load(name, Device::Cuda(0), Kind::Float);
        let a = cpu.think("What is 2+3?", 4, None).unwrap();
        let b = gpu.think("What is 2+3?", 4, None).unwrap();
        let (ha, hb) = (
            a.last_hidden.unwrap().to_device(Device::Cpu),
            b.last_hidden.unwrap().to_device(Device::Cpu),
        );
        let err =
            (&ha - &hb).abs().max().double_value(&[]) / ha.abs().max().double_value(&[]).max(1e-6);
        assert!(err < 1e-3, "{name}: CUDA vs CPU relative error {err}");
        // A context made on the GPU continues on the CPU (and back).
        let bytes = gpu.think("hi", 2, None).unwrap().to_bytes().unwrap();
        let ctx = cpu.import_context(&bytes, 16).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 4,
            ..GenerateOptions::default()
        };
        cpu.generate("go", Some(&ctx), &opts).unwrap();
        let bf = load(name, Device::Cuda(0), Kind::BFloat16);
        bf.think("What is 2+3?", 4, None).unwrap();
    }
}
