//! Link flags for the user programs.
//!
//! `x86_64-unknown-none` links static-PIE by default. The objects are still
//! compiled position-independent (RIP-relative), so lld can link them as a
//! plain static ET_EXEC instead: `--no-pie` overrides rustc's `-pie`, and
//! `--image-base` places the first PT_LOAD at 0x400000 like a classic Linux
//! executable. The result needs no relocation processing by the loader.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=--image-base=0x400000");
}
