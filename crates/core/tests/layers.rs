//! The core crate's layers hold: every `crate::` path in `src/` names a module of the same layer
//! or of one below it, and no two files import each other, directly or around a circle
//! (docs/architecture.md, "Layers of the core crate").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a directory of `src/`, or `""` for the files at its root.
const LAYERS: [&str; 6] = ["", "model", "health", "render", "aws", "functions"];

fn layer_of(module: &[String]) -> usize {
    let top = module.first().map(String::as_str).unwrap_or("");
    LAYERS.iter().position(|layer| *layer == top).unwrap_or(0)
}

/// Every `.rs` file under `dir`, as its module path (`["render", "gate"]`; `lib.rs` and a
/// `mod.rs` are their directory's module).
fn modules(src: &Path, dir: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            modules(src, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut module: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            out.insert(module, path);
        }
    }
}

/// The code of a file without its comments (doc links are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names after `crate::`, `use crate::{a::b, c}` groups spread out.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = after;
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                paths.push(segments(part.trim()));
            }
        } else {
            paths.push(segments(after));
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

fn segments(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for segment in text.split("::") {
        let name: String = segment
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        out.push(name);
    }
    out
}

/// The longest known module that `path` starts with.
fn target(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| known.contains_key(prefix))
        .unwrap_or_default()
}

fn edges() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, &src, &mut known);
    let mut graph = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).expect("reading a source file");
        let targets: BTreeSet<Vec<String>> = crate_paths(&code(&text))
            .iter()
            .map(|path| target(path, &known))
            .filter(|t| t != module)
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

#[test]
fn every_module_imports_only_its_own_layer_or_those_below() {
    let mut upward = Vec::new();
    for (module, targets) in edges() {
        for target in targets {
            if layer_of(&target) > layer_of(&module) {
                upward.push(format!("{} -> {}", module.join("::"), target.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that reach up a layer (order: {LAYERS:?}):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_module_imports_itself_around_a_circle() {
    let graph = edges();
    // Depth-first search for a back edge; the circle is the stack from its target on.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = stack.iter().position(|n| n == node) {
            let circle: Vec<String> = stack[at..].iter().map(|n| n.join("::")).collect();
            circles.push(format!("{} -> {}", circle.join(" -> "), node.join("::")));
            return;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, circles);
        }
        stack.pop();
        done.insert(node.clone());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_check_reads_paths_as_the_compiler_does() {
    assert_eq!(
        crate_paths(
            "use crate::{model::client::ClientRecord, json_kind};\nlet x = crate::render::gate::X;"
        ),
        vec![
            vec!["model".to_owned(), "client".into(), "ClientRecord".into()],
            vec!["json_kind".to_owned()],
            vec!["render".to_owned(), "gate".into(), "X".into()],
        ]
    );
    assert!(crate_paths("my_crate::model::x").is_empty());
    assert_eq!(
        code("let a = 1; // crate::functions::x\n/// [`crate::aws`]"),
        "let a = 1; \n"
    );
}
