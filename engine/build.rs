//! Embeds libtorch's directory as an rpath so tests and binaries run without
//! `LD_LIBRARY_PATH`, and keeps `libtorch.so` NEEDED so CUDA is visible
//! (measured in ../shared/design/toolchain.md, route B). tch's own link args do
//! not propagate to dependents, hence this copy.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.to_string_lossy());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
