//! `exec::elf` against real executables from the host toolchain: the
//! dynamically linked `/bin/true` is refused; static and static-PIE programs
//! built with the host C compiler (when it can link them) are accepted.

use std::path::{Path, PathBuf};
use std::process::Command;

use exec::elf::{self, ElfError, ElfKind};

#[test]
fn dynamic_bin_true_is_refused_with_the_interpreter_error() {
    let Ok(image) = std::fs::read("/bin/true") else {
        eprintln!("no /bin/true on this host; skipped");
        return;
    };
    let err = elf::parse(&image, elf::ET_DYN_BASE).unwrap_err();
    assert_eq!(err, ElfError::DynamicallyLinked);
    assert!(err.to_string().contains("PT_INTERP"));
}

/// Compiles a tiny C program with `cc FLAGS`; `None` if the host cannot.
fn compile(flags: &[&str], name: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("exec-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("t.c");
    std::fs::write(&src, "int counter = 3; int main(void) { return counter; }\n").ok()?;
    let out = dir.join(name);
    let ok = Command::new("cc").args(flags).arg("-O2").arg(&src).arg("-o").arg(&out).status().ok()?.success();
    ok.then_some(out)
}

fn check_static(path: &Path, kind: ElfKind) {
    let image = std::fs::read(path).unwrap();
    let plan = elf::parse(&image, elf::ET_DYN_BASE).unwrap_or_else(|e| panic!("{}: {}", path.display(), e));
    assert_eq!(plan.kind, kind);
    assert!(plan.segments.iter().any(|s| s.prot.exec && (s.vaddr..s.vaddr + s.memsz).contains(&plan.entry)));
    assert!(plan.segments.iter().any(|s| s.prot.write && s.memsz >= s.filesz));
    assert_ne!(plan.phdr_vaddr, 0, "glibc's static startup needs AT_PHDR");
    assert_eq!(plan.phent, 56);
    assert!(!plan.exec_stack);
    assert_eq!(plan.brk_start % exec::PAGE_SIZE, 0);
    // The program headers are really at phdr_vaddr in the loaded image.
    let seg = plan
        .segments
        .iter()
        .find(|s| (s.vaddr..s.vaddr + s.filesz).contains(&plan.phdr_vaddr))
        .expect("phdrs inside a segment");
    let at = (seg.offset + plan.phdr_vaddr - seg.vaddr) as usize;
    let phoff = u64::from_le_bytes(image[32..40].try_into().unwrap()) as usize;
    let len = elf::PHDR_SIZE * usize::from(plan.phnum);
    assert_eq!(image[at..at + len], image[phoff..phoff + len]);
}

#[test]
fn host_static_executables_are_accepted() {
    match compile(&["-static"], "t-static") {
        Some(path) => check_static(&path, ElfKind::Exec),
        None => eprintln!("cc -static unavailable; skipped"),
    }
    match compile(&["-static-pie"], "t-static-pie") {
        Some(path) => check_static(&path, ElfKind::StaticPie),
        None => eprintln!("cc -static-pie unavailable; skipped"),
    }
    if let Some(path) = compile(&[], "t-dynamic") {
        let image = std::fs::read(path).unwrap();
        assert_eq!(elf::parse(&image, elf::ET_DYN_BASE), Err(ElfError::DynamicallyLinked));
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("exec-host-{}", std::process::id())));
}
