//! The source tree's shape, checked: no module uses one that uses it back,
//! and no room (the top-level directories) depends on one that depends on it.
//!
//! The check reads the sources (`toa/src`, the library and the binary's
//! `cli/`): every `crate::`, `super::`, `self::` path and every use of a
//! child module by name is an edge from the file it appears in to the module
//! it names. Test modules at the end of a file (after `#[cfg(test)]`) are left
//! out: a test may reach anywhere. The crate roots (`lib.rs`, `main.rs`) only
//! declare modules and re-export (`crate::Error`), so they are no node.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// A module by its path from its crate's root (`["forwarder", "proxy"]`),
/// with the crate (`lib` or `bin`) first.
type Module = Vec<String>;

/// The module of each source file, and the file's text without its tests.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let file = parts.pop().expect("a file name");
            let stem = file.trim_end_matches(".rs");
            let krate = if parts.first().is_some_and(|p| p == "cli") || (parts.is_empty() && stem == "main") {
                "bin"
            } else {
                "lib"
            };
            if !matches!(stem, "mod" | "lib" | "main") {
                parts.push(stem.to_string());
            }
            parts.insert(0, krate.to_string());
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            out.insert(parts, code);
        }
    }
    out
}

/// The lines of code, without comments.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).filter(|l| !l.trim().is_empty())
}

/// The paths of a use tree starting at `s` (`a::{b::c, d}` → `a::b::c`, `a::d`).
fn use_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut prefix = Vec::new();
    loop {
        while i < bytes.len() && bytes[i].is_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == '{' {
            i += 1;
            let mut paths = Vec::new();
            loop {
                let rest: String = bytes[i..].iter().collect();
                let (sub, used) = use_tree(&rest);
                paths.extend(sub.into_iter().map(|p| [prefix.clone(), p].concat()));
                i += used;
                while i < bytes.len() && (bytes[i].is_whitespace() || bytes[i] == ',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == '}' {
                    return (paths, i + 1);
                }
            }
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        if start == i {
            return (vec![prefix], i);
        }
        prefix.push(bytes[start..i].iter().collect());
        if bytes[i..].starts_with(&[':', ':']) {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// The modules `module`'s code names.
fn edges(module: &Module, code: &str, all: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    // The longest known module a path leads to.
    let resolve = |path: Vec<String>| -> Option<Module> {
        (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| all.contains_key(p))
    };
    let mut out = BTreeSet::new();
    let children: Vec<String> = all
        .keys()
        .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
        .map(|m| m[module.len()].clone())
        .collect();
    let text: String = code_lines(code).collect::<Vec<_>>().join("\n");
    let mut rest = text.as_str();
    while let Some(at) = rest.find(|c: char| c.is_alphanumeric() || c == '_') {
        let word_end = rest[at..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(rest.len(), |e| at + e);
        let word = &rest[at..word_end];
        let follows_path = rest[word_end..].starts_with("::");
        let preceded_by_path = rest[..at].ends_with("::");
        if follows_path && !preceded_by_path {
            let base: Option<Module> = match word {
                "crate" => Some(vec![module[0].clone()]),
                // In a file of a directory module, `super` is the directory's parent.
                "super" => Some(module[..module.len() - 1].to_vec()),
                "self" => Some(module.clone()),
                child if children.iter().any(|c| c == child) => {
                    Some([module.clone(), vec![child.to_string()]].concat())
                }
                _ => None,
            };
            if let Some(base) = base {
                for path in use_tree(&rest[word_end + 2..]).0 {
                    // The crate root only declares modules and re-exports
                    // (`crate::Error`): not an edge.
                    if let Some(target) = resolve([base.clone(), path].concat()).filter(|t| t.len() > 1) {
                        out.insert(target);
                    }
                }
            }
        }
        rest = &rest[word_end..];
    }
    out.remove(module);
    out
}

/// A cycle in `graph`, if there is one.
fn cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        done: &mut BTreeSet<N>,
        path: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            return Some([&path[at..], std::slice::from_ref(n)].concat());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.clone());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn module_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let all = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    all.iter().map(|(m, code)| (m.clone(), edges(m, code, &all))).collect()
}

/// The room of a library module: its top-level directory (or file).
fn room(m: &Module) -> String {
    m.get(1).cloned().unwrap_or_else(|| "(root)".into())
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let graph = module_graph();
    if let Some(c) = cycle(&graph) {
        panic!("modules in a circle: {}", c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" -> "));
    }
}

#[test]
fn the_rooms_depend_on_each_other_one_way() {
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, targets) in module_graph().iter().filter(|(m, _)| m[0] == "lib" && m.len() > 1) {
        let from = room(m);
        let entry = rooms.entry(from.clone()).or_default();
        entry.extend(targets.iter().filter(|t| t.len() > 1).map(room).filter(|t| *t != from));
    }
    if let Some(c) = cycle(&rooms) {
        panic!("rooms in a circle: {}", c.join(" -> "));
    }
    // The bottom room stands on its own.
    assert!(rooms.get("sys").is_none_or(|t| t.iter().all(|r| r == "error")), "sys uses {:?}", rooms.get("sys"));
}

#[test]
fn the_check_sees_the_edges_it_is_meant_to_see() {
    let graph = module_graph();
    let has = |from: &[&str], to: &[&str]| {
        let f: Module = from.iter().map(|s| s.to_string()).collect();
        let t: Module = to.iter().map(|s| s.to_string()).collect();
        graph.get(&f).is_some_and(|e| e.contains(&t))
    };
    // `use crate::{a::{b, c}}` groups, `super::x::Y` and a parent naming its child.
    assert!(has(&["lib", "receiver", "agent"], &["lib", "receiver", "lock"]));
    assert!(has(&["lib", "receiver", "agent"], &["lib", "sys", "paths"]));
    assert!(has(&["lib", "forwarder", "proxy", "engine"], &["lib", "forwarder", "proxy", "shared"]));
    assert!(has(&["lib", "forwarder", "proxy"], &["lib", "forwarder", "proxy", "engine"]));
    assert!(has(&["bin", "cli", "agent"], &["bin", "cli", "args"]));
    let (paths, _) = use_tree("{a::{b, c}, d::e}");
    assert_eq!(paths, [vec!["a", "b"], vec!["a", "c"], vec!["d", "e"]]);
    let mut g = BTreeMap::new();
    g.insert(1, BTreeSet::from([2]));
    g.insert(2, BTreeSet::from([1]));
    assert_eq!(cycle(&g), Some(vec![1, 2, 1]));
}
