//! The agent's modules form no import cycle, and no child module reaches back into the
//! module that declares it.
//!
//! Nodes are the modules under `src/` (`ops`, `ops::state`, `storage::s3`…). Edges are a
//! parent declaring a child, and every `crate::…` and `super::…` path in a module's code
//! (comments and `#[cfg(test)]` sections excluded), resolved to the longest module it
//! names. A cycle in that graph — `cli ↔ restore_cli`, an op importing its parent, a pure
//! module importing one that imports it — fails with the cycle spelled out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `ops/state.rs` → `ops::state`, `ops/mod.rs` → `ops`; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => None,
        _ => Some(parts.join("::")),
    }
}

/// The code of a file without comments and without its test section.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every path that starts with `root::` (`crate` or `super`), as its segments; a group
/// (`use super::{a, b}`) gives one path per member.
fn paths(code: &str, root: &str) -> Vec<Vec<String>> {
    let needle = format!("{root}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(&needle) {
        let at = from + i;
        from = at + needle.len();
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let mut segs = Vec::new();
        let mut rest = &code[from..];
        loop {
            let word = ident(rest);
            if word.is_empty() {
                break;
            }
            segs.push(word.to_owned());
            rest = &rest[word.len()..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() && name != "self" {
                    let mut p = segs.clone();
                    p.push(name.to_owned());
                    out.push(p);
                }
            }
        }
        out.push(segs);
    }
    out
}

/// The longest known module that `segments` (from the crate root) names.
fn resolve(modules: &BTreeSet<String>, segments: &[String]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains(m))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .filter_map(|f| Some((module_of(&src, f)?, std::fs::read_to_string(f).unwrap())))
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &sources {
        let parent: Vec<String> = module.split("::").map(str::to_owned).collect();
        if parent.len() > 1 {
            let p = parent[..parent.len() - 1].join("::");
            edges.entry(p).or_default().insert(module.clone());
        }
        let code = code(text);
        let mut targets = BTreeSet::new();
        for p in paths(&code, "crate") {
            targets.extend(resolve(&modules, &p));
        }
        let here = &parent[..parent.len() - 1];
        for p in paths(&code, "super") {
            let mut full = here.to_vec();
            full.extend(p);
            targets.extend(resolve(&modules, &full));
        }
        targets.remove(module);
        // A module may name its own descendants (they are below it).
        targets.retain(|t| !t.starts_with(&format!("{module}::")));
        edges.entry(module.clone()).or_default().extend(targets);
    }
    // Depth-first search for a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(m, &edges, &mut state, &mut stack) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
    // The graph is not trivially empty: the parser found the imports.
    assert!(edges["ops::create_backup"].contains("pipeline"));
    assert!(edges["retention"]
        .iter()
        .all(|t| !t.starts_with("storage") && !t.starts_with("ops")));
}
