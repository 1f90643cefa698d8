//! Builds the default initramfs and the BIOS and UEFI disk images from the
//! kernel artifact (the `bootloader` crate's documented build-script flow),
//! and exports their paths to the runner as `BIOS_IMAGE` / `UEFI_IMAGE` /
//! `INITRAMFS` (plus `KERNEL_ELF`).
//!
//! The initramfs (cpio `newc`, the bootloader's ramdisk) holds:
//! * `/bin/NAME`: every binary of the `user` crate (built for
//!   x86_64-unknown-none as an artifact dependency);
//! * `/bin/STEM` and `/bin/STEM_pie`: every `user/c/STEM.c`, compiled with
//!   `musl-gcc -O2` as `-static` and as `-static-pie` when `musl-gcc` is
//!   installed (skipped with a warning otherwise);
//! * `/etc/motd`.
//!
//! There is no `/init`: without `init=PATH` the kernel runs its demo of `/bin`.
//!
//! It also builds `user/linux/linux_init.c` (`musl-gcc -static`), the first
//! process of the Linux peer (`boot --linux`), and exports its path as
//! `LINUX_INIT` (empty when `musl-gcc` is missing). The runner adds it to the
//! Linux peer's copy of the initramfs only; it is not in the archive above.
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)] // the runner uses the rest of it
#[path = "src/image.rs"]
mod image;

const MOTD: &str = "Welcome to the mm kernel's initramfs.\n";

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel = PathBuf::from(
        std::env::var_os("CARGO_BIN_FILE_KERNEL_kernel").expect("artifact dependency on kernel"),
    );
    // Read at run time: a build script binary may be reused for a copy of
    // the workspace elsewhere.
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let user_c = manifest_dir.join("../user/c");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/image.rs");
    println!("cargo:rerun-if-changed=../user/c");
    println!("cargo:rerun-if-changed=../user/linux");

    let initramfs = out_dir.join("initramfs.cpio");
    std::fs::write(&initramfs, default_initramfs(&user_c, &out_dir)).expect("write initramfs.cpio");

    let bios = out_dir.join("bios.img");
    image::create_disk_image(&kernel, Some(&initramfs), false, &bios).unwrap_or_else(|e| panic!("{}", e));
    let uefi = out_dir.join("uefi.img");
    image::create_disk_image(&kernel, Some(&initramfs), true, &uefi).unwrap_or_else(|e| panic!("{}", e));

    println!("cargo:rustc-env=BIOS_IMAGE={}", bios.display());
    println!("cargo:rustc-env=UEFI_IMAGE={}", uefi.display());
    println!("cargo:rustc-env=INITRAMFS={}", initramfs.display());
    println!("cargo:rustc-env=KERNEL_ELF={}", kernel.display());
    let linux_init = linux_init(&manifest_dir.join("../user/linux/linux_init.c"), &out_dir.join("linux-init"));
    println!("cargo:rustc-env=LINUX_INIT={}", linux_init.map(|p| p.display().to_string()).unwrap_or_default());
}

/// Compiles the Linux peer's init (static, non-PIE) to `out`; `None` without
/// `musl-gcc`.
fn linux_init(src: &Path, out: &Path) -> Option<PathBuf> {
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        println!("cargo:warning=musl-gcc not found (apt-get install musl-tools): no init for `boot --linux`");
        return None;
    }
    let output = Command::new("musl-gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .expect("run musl-gcc");
    if !output.status.success() {
        panic!("musl-gcc failed on {}:\n{}", src.display(), String::from_utf8_lossy(&output.stderr));
    }
    Some(out.to_path_buf())
}

fn default_initramfs(user_c: &Path, out_dir: &Path) -> Vec<u8> {
    let mut cpio = exec::cpio::Writer::new();
    let mut add = |path: &str, perm: u32, data: &[u8]| {
        cpio.file(path, perm, data).unwrap_or_else(|e| panic!("initramfs: {}: {}", path, e));
    };
    for (name, path) in user_binaries() {
        add(&format!("bin/{}", name), 0o755, &read(&path));
    }
    for (stem, path) in c_programs(user_c, &out_dir.join("c")) {
        add(&format!("bin/{}", stem), 0o755, &read(&path));
    }
    add("etc/motd", 0o644, MOTD.as_bytes());
    cpio.finish()
}

/// The `user` crate's binaries, by name. Cargo gives each binary of an
/// artifact dependency its own directory and a hashed file name
/// (`.../user-HASH/bin/hello-HASH`, next to a `.d` file), so
/// `CARGO_BIN_DIR_USER` only names one of them: the per-binary variables
/// `CARGO_BIN_FILE_USER_<name>` give every name and path.
fn user_binaries() -> Vec<(String, PathBuf)> {
    const PREFIX: &str = "CARGO_BIN_FILE_USER_";
    let mut bins: Vec<(String, PathBuf)> = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.to_str()?.strip_prefix(PREFIX)?.to_owned(), PathBuf::from(value))))
        .collect();
    bins.sort();
    assert!(!bins.is_empty(), "no {}* variables: is `user` an artifact build-dependency?", PREFIX);
    bins
}

/// Compiles every `*.c` in `src_dir` with `musl-gcc -O2` into `out_dir`, as
/// `STEM` (`-static`) and `STEM_pie` (`-static-pie`); none if `musl-gcc` is
/// missing.
fn c_programs(src_dir: &Path, out_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut sources: Vec<PathBuf> = match std::fs::read_dir(src_dir) {
        Ok(dir) => dir.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.extension().is_some_and(|x| x == "c")).collect(),
        Err(_) => return Vec::new(),
    };
    sources.sort();
    if sources.is_empty() {
        return Vec::new();
    }
    if Command::new("musl-gcc").arg("--version").output().is_err() {
        println!(
            "cargo:warning=musl-gcc not found (apt-get install musl-tools): the {} C programs in user/c are not in the initramfs",
            sources.len()
        );
        return Vec::new();
    }
    std::fs::create_dir_all(out_dir).expect("create the C output directory");
    let mut programs = Vec::new();
    for src in &sources {
        let stem = src.file_stem().and_then(|s| s.to_str()).expect("UTF-8 file name").to_owned();
        // Each program twice: a static ET_EXEC and a static PIE (ET_DYN,
        // loaded at the kernel's ELF_ET_DYN_BASE, relocating itself).
        for pie in [false, true] {
            let name = if pie { format!("{}_pie", stem) } else { stem.clone() };
            let out = out_dir.join(&name);
            let mut cmd = Command::new("musl-gcc");
            if pie {
                // Debian's musl-gcc specs always link a dynamic PIE; spell the
                // static PIE out: musl's self-relocating rcrt1.o, libc.a, no
                // interpreter.
                let m = Path::new(MUSL_LIB);
                cmd.args(["-fPIE", "-O2", "-nostdlib", "-static-pie", "-Wl,--no-dynamic-linker", "-o"])
                    .arg(&out)
                    .args([m.join("rcrt1.o"), m.join("crti.o"), src.clone(), m.join("libc.a"), libgcc(), m.join("crtn.o")]);
            } else {
                cmd.args(["-static", "-O2", "-o"]).arg(&out).arg(src);
            }
            let output = cmd.output().expect("run musl-gcc");
            if !output.status.success() {
                panic!("musl-gcc failed on {}:\n{}", src.display(), String::from_utf8_lossy(&output.stderr));
            }
            programs.push((name, out));
        }
    }
    programs
}

/// Where Debian's musl-dev puts musl's start files and libc.a.
const MUSL_LIB: &str = "/usr/lib/x86_64-linux-musl";

/// The compiler's libgcc.a (for the static PIE link).
fn libgcc() -> PathBuf {
    let out = Command::new("musl-gcc").arg("-print-libgcc-file-name").output().expect("run musl-gcc");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {}", path.display(), e))
}
