//! The runtime's structure: no source file over 600 lines before its tests,
//! and no import cycle between its top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use edgevit_tests::repo;

const MAX_LINES: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text before its `#[cfg(test)] mod tests`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

fn runtime_sources() -> Vec<(String, String)> {
    let root = repo("runtime/src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    files.iter().map(|f| (f.strip_prefix(&root).unwrap().display().to_string(), code(f))).collect()
}

#[test]
fn no_runtime_file_is_over_600_lines_before_its_tests() {
    let long: Vec<String> = runtime_sources()
        .iter()
        .map(|(file, code)| (file, code.lines().count()))
        .filter(|&(_, lines)| lines > MAX_LINES)
        .map(|(file, lines)| format!("{file}: {lines}"))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_import_cycle_between_modules() {
    // Module -> the top-level modules its code names through `crate::`.
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in runtime_sources() {
        let module = file.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let named = uses.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() && name != module {
                named.insert(name);
            }
        }
    }
    assert!(uses.contains_key("engine") && uses["engine"].contains("backend"), "{uses:?}");
    for start in uses.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = uses[start].iter().collect();
        while let Some(m) = stack.pop() {
            assert!(m != start, "{start} reaches itself through crate:: imports: {uses:?}");
            if seen.insert(m) {
                stack.extend(uses.get(m).into_iter().flatten());
            }
        }
    }
}
