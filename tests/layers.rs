//! The architecture test: `kernel/src` is built in layers, and this test
//! fails when an import breaks them (see `docs/architecture.md`).
//!
//! It reads every `.rs` file of `kernel/src` (comments removed) and resolves
//! each `crate::…` and `super::…` path, `use` groups included, to the file it
//! names. Rules:
//!
//! 1. a folder imports only itself and the folders below it, in the order of
//!    [`LAYERS`] (`main.rs` is the top and may use everything);
//! 2. import circles stay inside one folder and have at most three files.
//!
//! Macros exported at the crate root (`println!`, `kassert!` …) are `lib/`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A file in layer `i` may import layers `0..=i`.
const LAYERS: &[&str] = &["lib", "arch", "memory", "fs", "task", "entry", "init", "console", "ktests"];
/// The crate-root macros and the folder that defines them.
const ROOT_MACROS: &[&str] = &["print", "println", "kassert", "kassert_eq", "ktest"];
const MAX_CIRCLE_FILES: usize = 3;

fn kernel_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("kernel/src is readable") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file: `memory/page_alloc.rs` -> `["memory", "page_alloc"]`,
/// `console/mod.rs` -> `["console"]`, `main.rs` -> `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// The layer index of a module path (`main.rs` is above every layer).
fn layer_of(module: &[String]) -> usize {
    match module.first() {
        None => LAYERS.len(),
        Some(top) => LAYERS.iter().position(|l| l == top).unwrap_or_else(|| panic!("folder `{top}` is in no layer: add it to LAYERS")),
    }
}

/// Code without `//` comments and string literals (so doc links and messages
/// are not imports).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path the code names with `crate::` or `super::`, groups expanded:
/// `crate::arch::x86_64::{cpu, pit}` gives `crate::arch::x86_64::cpu` and
/// `crate::arch::x86_64::pit`.
fn paths_in(code: &str) -> Vec<String> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            // `$crate::` is a macro body: the same crate.
            let before = if at > 0 { bytes[at - 1] as char } else { ' ' };
            if before.is_alphanumeric() || before == '_' || (before == ':' && start == "super::") {
                continue;
            }
            found.extend(expand(&code[at..]));
        }
    }
    found
}

/// Expands the path at the start of `rest` (with at most one level of braces
/// per segment, recursively).
fn expand(rest: &str) -> Vec<String> {
    let mut path = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else if c == '{' && path.ends_with("::") {
            let inner = &rest[i + 1..];
            let close = matching_brace(inner);
            return split_top_level(&inner[..close])
                .into_iter()
                .flat_map(|item| expand(&format!("{path}{}", item.trim())))
                .collect();
        } else {
            break;
        }
    }
    vec![path.trim_end_matches(':').to_string()]
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The longest prefix of `path` (already absolute, without `crate::`) that is
/// a module of `modules`.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| modules.contains_key(m))
}

struct Import {
    from: Vec<String>,
    to: Vec<String>,
    path: String,
}

fn imports() -> (BTreeMap<Vec<String>, PathBuf>, Vec<Import>) {
    let root = kernel_src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|f| (module_of(f.strip_prefix(&root).unwrap()), f.clone())).collect();
    let mut out = Vec::new();
    for (module, file) in &modules {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for path in paths_in(&code) {
            let mut segs: Vec<String> = path.split("::").map(String::from).collect();
            let absolute: Vec<String> = if segs[0] == "crate" {
                segs.remove(0);
                segs
            } else {
                // `super` is the parent module (of `a/b.rs` and of `a/b/mod.rs`: `a`).
                let mut base = module.clone();
                while segs.first().is_some_and(|s| s == "super") {
                    segs.remove(0);
                    base.pop();
                }
                base.extend(segs);
                base
            };
            if absolute.len() == 1 && ROOT_MACROS.contains(&absolute[0].as_str()) {
                out.push(Import { from: module.clone(), to: vec!["lib".into()], path: path.clone() });
                continue;
            }
            if let Some(to) = resolve(&absolute, &modules) {
                if &to != module {
                    out.push(Import { from: module.clone(), to, path: path.clone() });
                }
            }
        }
    }
    (modules, out)
}

#[test]
fn parser_resolves_groups_and_skips_comments() {
    let code = code_only("use crate::arch::x86_64::{cpu, pit::{HZ, tick}}; // crate::console\nlet s = \"crate::ktests\";");
    let mut paths = paths_in(&code);
    paths.sort();
    assert_eq!(paths, ["crate::arch::x86_64::cpu", "crate::arch::x86_64::pit::HZ", "crate::arch::x86_64::pit::tick"]);
}

#[test]
fn every_folder_imports_only_itself_and_the_folders_below() {
    let (modules, imports) = imports();
    assert!(modules.len() > 40, "found only {} kernel modules: wrong directory?", modules.len());
    let upward: Vec<String> = imports
        .iter()
        .filter(|i| layer_of(&i.to) > layer_of(&i.from))
        .map(|i| format!("{} -> {} (`{}`)", i.from.join("::"), i.to.join("::"), i.path))
        .collect();
    assert!(upward.is_empty(), "imports that run up the layers {LAYERS:?}:\n{}", upward.join("\n"));
}

#[test]
fn import_circles_stay_inside_one_folder_and_small() {
    let (modules, imports) = imports();
    let names: Vec<&Vec<String>> = modules.keys().collect();
    let index = |m: &Vec<String>| names.iter().position(|n| *n == m).unwrap();
    let mut edges = vec![BTreeSet::new(); names.len()];
    for i in &imports {
        edges[index(&i.from)].insert(index(&i.to));
    }
    // Reachability closure (a few dozen files: cubic is fine).
    let n = names.len();
    let mut reach: Vec<Vec<bool>> = (0..n).map(|a| (0..n).map(|b| edges[a].contains(&b)).collect()).collect();
    for k in 0..n {
        for a in 0..n {
            if reach[a][k] {
                for b in 0..n {
                    if reach[k][b] {
                        reach[a][b] = true;
                    }
                }
            }
        }
    }
    let mut seen = vec![false; n];
    let mut bad = Vec::new();
    for a in 0..n {
        if seen[a] {
            continue;
        }
        let circle: Vec<usize> = (0..n).filter(|&b| b == a || (reach[a][b] && reach[b][a])).collect();
        for &b in &circle {
            seen[b] = true;
        }
        if circle.len() < 2 {
            continue;
        }
        let folders: BTreeSet<&str> = circle.iter().map(|&b| names[b].first().map_or("main", |s| s.as_str())).collect();
        if folders.len() > 1 || circle.len() > MAX_CIRCLE_FILES {
            bad.push(circle.iter().map(|&b| names[b].join("::")).collect::<Vec<_>>().join(", "));
        }
    }
    assert!(bad.is_empty(), "import circles across folders or of more than {MAX_CIRCLE_FILES} files:\n{}", bad.join("\n"));
}
