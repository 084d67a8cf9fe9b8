//! Links the TA binaries with firmware/ta.ld, on 4 KiB pages (ld.lld's AArch64 default of 64 KiB
//! would pad the files between segments).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let script = std::path::Path::new(&dir).join("..").join("ta.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    println!("cargo:rustc-link-arg-bins=-zcommon-page-size=4096");
}
