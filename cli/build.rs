//! With the `engine` feature the `avp` binary links libtorch: embed its
//! directory as an rpath (so it runs without LD_LIBRARY_PATH) and keep
//! `libtorch.so` NEEDED so CUDA is visible; see ../shared/design/toolchain.md
//! (route B). Without the feature nothing is linked and nothing is emitted.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_ENGINE").is_none() {
        return;
    }
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
