//! With the `engine` feature the `avp-engine` binary links libtorch: embed
//! its directory as an rpath (so it runs without LD_LIBRARY_PATH) and keep
//! `libtorch.so` NEEDED so CUDA is visible; see ../shared/design/toolchain.md
//! (route B). Only that binary: `avp` must never load libtorch (AVP-CLI-8),
//! so nothing here applies to it. Without the feature nothing is emitted.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ENGINE").is_none() {
        return;
    }
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!(
            "cargo:rustc-link-arg-bin=avp-engine=-Wl,-rpath={}",
            lib.to_string_lossy()
        );
    }
    println!("cargo:rustc-link-arg-bin=avp-engine=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg-bin=avp-engine=-ltorch");
}
