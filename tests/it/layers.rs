//! The modules of src/ layer: no import cycle between them, and the OS layer knows no config.
//!
//! Read from the source as text (`use crate::…`, `crate::…` paths, `super::…`), which is
//! how a reader meets the dependencies too; tests (`mod tests`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of src/ (`a::b`) with its source, tests cut off.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read");
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// The longest module named by `path` (`a::b::item` -> `a::b` if that is a module).
fn resolve<'a>(mods: &'a BTreeMap<String, String>, path: &str) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|c| mods.get_key_value(&c).map(|(k, _)| k.as_str()))
}

/// Paths after `prefix` in `text`: `prefix::a::b`, and each item of `prefix::{a, b::c}`.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(0)];
            out.extend(group.split(',').map(|s| s.trim().to_string()));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push(rest[..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// Which modules each module uses.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        let mut uses = BTreeSet::new();
        let mut add = |path: String| {
            if let Some(t) = resolve(mods, &path) {
                // A module's own items and its ancestors (a child sees its parent) are no edge.
                if t != m && !m.starts_with(&format!("{t}::")) {
                    uses.insert(t.to_string());
                }
            }
        };
        for p in paths_after(text, "crate::") {
            add(p);
        }
        for p in paths_after(text, "super::") {
            add(if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            });
        }
        out.insert(m.clone(), uses);
    }
    out
}

/// A cycle through `from`, if there is one.
fn cycle_from(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == from {
                let mut c = path.clone();
                c.push(next.clone());
                return Some(c);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mods = modules();
    assert!(mods.contains_key("supervisor::state"), "found the modules");
    let edges = edges(&mods);
    // Module by module, and subsystem by subsystem (config::reader -> environ -> config is one too).
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, uses) in &edges {
        let head = |s: &str| s.split("::").next().unwrap_or(s).to_string();
        let entry = top.entry(head(m)).or_default();
        entry.extend(uses.iter().map(|u| head(u)).filter(|u| *u != head(m)));
    }
    let cycles: Vec<Vec<String>> = [&edges, &top]
        .iter()
        .flat_map(|g| g.keys().filter_map(|m| cycle_from(g, m)))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_os_layer_knows_no_config() {
    let mods = modules();
    let edges = edges(&mods);
    let sys = edges.get("sys").expect("src/sys.rs");
    assert!(
        !sys.iter()
            .any(|u| u == "config" || u.starts_with("config::")),
        "sys uses {sys:?}"
    );
}
