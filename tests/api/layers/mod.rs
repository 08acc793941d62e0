//! The layer check: each module imports only from the layers below its own, and no files
//! import each other in a circle.
//!
//! The README and the house style say Keel is layered: `domain` and `config` at the bottom,
//! `cli` at the top, each layer built only on the ones below it. That is what lets a reader
//! learn the code bottom up and a team delete or swap a module without touching the layers
//! under it. A claim like that rots the first time someone writes `use crate::api::…` in `db`
//! to save a minute, so this test holds it to the code: it reads every `.rs` file under `src/`,
//! takes each `use` and every other `crate::`, `super::` and `self::` path outside comments and
//! string literals (doc links in comments may name upper modules), and fails naming the file,
//! line and import of each one that points up or sideways in [`LAYERS`].
//!
//! Layers say nothing about files of one module, nor about circles that go up and come back
//! down through a mistake elsewhere; the second check does. It builds the file-level import
//! graph (each path resolved to the deepest file that exists: `crate::db::tasks::Task` is
//! `src/db/tasks.rs`, `crate::db::Db` is `src/db/mod.rs`) and fails on every strongly
//! connected component of more than one file: in a circle no file can be read, tested or
//! deleted without all the others. A `mod x;` declaration is structure, not an import, and
//! so is a module's re-export of its own children (`pub use tasks::TaskDetails;` in
//! `loaders/mod.rs`): that is the module's public face, and counting it would make a circle of
//! every child that uses a type its parent defines (`use super::Loaders;`).
//!
//! Why a scanner and not `syn`: a check of imports needs only to tell code from comments and
//! literals and to read paths, which fits in this file without a new crate. What it does not
//! see, on purpose: paths built by macros (other than `$crate::`), `#[path]` attributes, and
//! `src/bin/` (each binary there is a crate of its own).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

mod scan;

use scan::references;

use crate::rust_source::{relative, rust_files};

/// The layers, bottom to top. A file may import from its own top-level module and from the
/// modules of strictly lower layers; modules of one layer may not import each other.
///
/// A new top-level module under `src/` must be added here, in the layer it belongs to: the
/// check fails on a module it does not know, rather than guess where it goes.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["domain", "config", "shutdown"]),
    ("telemetry", &["telemetry"]),
    ("resilience", &["resilience"]),
    ("db", &["db"]),
    (
        "core",
        &["auth", "cache", "flags", "readiness", "background"],
    ),
    ("loading and jobs", &["loaders", "jobs", "limits"]),
    ("tools", &["demo", "seed", "http"]),
    ("state", &["state"]),
    ("middleware", &["middleware"]),
    ("edge", &["api", "admin"]),
    ("assembly", &["server"]),
    ("entry", &["cli"]),
];

#[test]
fn every_module_imports_only_from_the_layers_below_its_own() {
    let violations = violations(Path::new(env!("CARGO_MANIFEST_DIR")));

    assert!(
        violations.is_empty(),
        "imports against the layers (the table is in tests/api/layers/mod.rs):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_files_under_src_import_each_other_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let circles = circles(root);

    let graph = import_graph(root);
    let report: Vec<String> = circles
        .iter()
        .map(|circle| describe(&graph, circle))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between files:\n{}",
        report.join("\n")
    );
}

/// One line per import that points up or sideways in [`LAYERS`], or names a module the
/// table does not know.
fn violations(root: &Path) -> Vec<String> {
    let src = root.join("src");
    let is_module = |path: &[String]| module_file(&src, path).is_some();
    let mut violations = Vec::new();
    for (file, module) in source_files(root) {
        let top = &module[0];
        let Some(own) = layer_of(top) else {
            violations.push(format!("{file}: module {top} is not in LAYERS; {ADD_IT}"));
            continue;
        };
        let mut seen = BTreeSet::new();
        for import in references(&read(&src, &file), &module, &is_module) {
            // An anchored path is where the import is written; a name it binds adds nothing.
            let Some(target) = import.path.first().filter(|_| import.anchored) else {
                continue;
            };
            if target == top || !seen.insert((import.line, target.clone())) {
                continue;
            }
            let line = import.line;
            match layer_of(target) {
                None => violations.push(format!(
                    "{file}:{line}: imports crate::{target}, which is not in LAYERS; {ADD_IT}"
                )),
                Some(layer) if layer >= own => violations.push(format!(
                    "{file}:{line}: {top} (layer {own}) imports crate::{target} (layer {layer}); \
                     {top} may import only: {}",
                    allowed_below(own)
                )),
                Some(_) => {}
            }
        }
    }
    violations
}

const ADD_IT: &str = "add it to the table at the top of tests/api/layers/mod.rs";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn allowed_below(layer: usize) -> String {
    let below: Vec<&str> = LAYERS[..layer]
        .iter()
        .flat_map(|(_, modules)| modules.iter().copied())
        .collect();
    if below.is_empty() {
        "nothing outside itself".to_string()
    } else {
        below.join(", ")
    }
}

/// The files of every circle, each circle sorted, the smallest file name first.
fn circles(root: &Path) -> Vec<Vec<String>> {
    let mut circles: Vec<Vec<String>> = strongly_connected(&import_graph(root))
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    circles.sort();
    circles
}

/// For each file under `src/`, the files it imports and the first line that does.
type Graph = BTreeMap<String, BTreeMap<String, usize>>;

fn import_graph(root: &Path) -> Graph {
    let src = root.join("src");
    let is_module = |path: &[String]| module_file(&src, path).is_some();
    let mut graph = Graph::new();
    for (file, module) in source_files(root) {
        let mut edges = BTreeMap::new();
        for import in references(&read(&src, &file), &module, &is_module) {
            if let Some(target) = deepest_file(&src, &import.path)
                && target != file
                && !import.public_face
            {
                edges.entry(target).or_insert(import.line);
            }
        }
        graph.insert(file, edges);
    }
    graph
}

/// A circle's files, then each import inside it: the lines to look at to break it.
fn describe(graph: &Graph, circle: &[String]) -> String {
    let imports: String = circle
        .iter()
        .flat_map(|file| {
            graph[file]
                .iter()
                .map(move |(target, line)| (file, line, target))
        })
        .filter(|(_, _, target)| circle.contains(target))
        .map(|(file, line, target)| format!("\n    {file}:{line} imports {target}"))
        .collect();
    format!(
        "a circle of {} files: {}{imports}",
        circle.len(),
        circle.join(", ")
    )
}

/// Tarjan's algorithm; recursive, since the graph is one node per source file.
fn strongly_connected(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        components: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, file: &'g str) {
            let index = self.index.len();
            self.index.insert(file, index);
            self.low.insert(file, index);
            self.stack.push(file);
            let graph = self.graph;
            for target in graph.get(file).into_iter().flat_map(BTreeMap::keys) {
                let target = target.as_str();
                if !self.index.contains_key(target) {
                    self.visit(target);
                    self.low.insert(file, self.low[file].min(self.low[target]));
                } else if self.stack.contains(&target) {
                    self.low
                        .insert(file, self.low[file].min(self.index[target]));
                }
            }
            if self.low[file] == index {
                let at = self
                    .stack
                    .iter()
                    .rposition(|&f| f == file)
                    .unwrap_or_default();
                let mut component: Vec<String> = self.stack.drain(at..).map(String::from).collect();
                component.sort();
                self.components.push(component);
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        components: Vec::new(),
    };
    for file in graph.keys() {
        if !tarjan.index.contains_key(file.as_str()) {
            tarjan.visit(file);
        }
    }
    tarjan.components
}

/// Every `.rs` file under `src/` as (`src/db/tasks.rs`, `["db", "tasks"]`), sorted; without
/// the crate roots `lib.rs` and `main.rs`, and without `src/bin/`.
fn source_files(root: &Path) -> Vec<(String, Vec<String>)> {
    let src = root.join("src");
    rust_files(&src)
        .iter()
        .map(|path| relative(&src, path))
        .filter(|file| !file.starts_with("bin/") && !matches!(file.as_str(), "lib.rs" | "main.rs"))
        .map(|file| (format!("src/{file}"), module_path(&file)))
        .collect()
}

/// `db/tasks.rs` → `["db", "tasks"]`, `api/mod.rs` → `["api"]`.
fn module_path(relative: &str) -> Vec<String> {
    let mut module: Vec<String> = relative
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if module.len() > 1 && module.last().is_some_and(|last| last == "mod") {
        module.pop();
    }
    module
}

fn read(src: &Path, file: &str) -> String {
    let path = src.join(file.trim_start_matches("src/"));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The file of a module path (`["db", "tasks"]` → `src/db/tasks.rs` or `src/db/tasks/mod.rs`).
fn module_file(src: &Path, module: &[String]) -> Option<String> {
    let joined = module.join("/");
    [format!("{joined}.rs"), format!("{joined}/mod.rs")]
        .into_iter()
        .find(|file| !module.is_empty() && src.join(file).is_file())
        .map(|file| format!("src/{file}"))
}

/// The deepest file a path reaches: `crate::db::Db` stops at `src/db/mod.rs`.
fn deepest_file(src: &Path, path: &[String]) -> Option<String> {
    (1..=path.len())
        .map_while(|depth| module_file(src, &path[..depth]))
        .last()
}

/// A throwaway source tree under the system temp dir, removed when dropped, so also when the
/// test that made it fails.
struct TempTree(PathBuf);

impl TempTree {
    fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let root = std::env::temp_dir().join(format!("keel-layers-{name}-{}", std::process::id()));
        fs::remove_dir_all(&root).ok();
        for (file, source) in files {
            let path = root.join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, source).unwrap();
        }
        Self(root)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn a_lower_layer_importing_an_upper_one_is_reported() {
    let tree = TempTree::new(
        "upward",
        &[
            ("src/lib.rs", "pub mod api;\npub mod db;\n"),
            ("src/api/mod.rs", "use crate::db::Db;\n"),
            (
                "src/db/mod.rs",
                "//! Called by [`crate::api`].\npub mod executor;\npub struct Db;\n",
            ),
            (
                "src/db/executor.rs",
                "use crate::domain::Role;\nuse super::super::api::router;\n",
            ),
        ],
    );

    let violations = violations(&tree.0);

    assert_eq!(
        violations,
        [
            "src/db/executor.rs:2: db (layer 3) imports crate::api (layer 9); db may import only: domain, config, shutdown, telemetry, resilience"
        ]
    );
}

#[test]
fn a_module_missing_from_the_table_is_reported() {
    let tree = TempTree::new(
        "unknown",
        &[
            ("src/guardrails.rs", "pub struct Limit;\n"),
            ("src/cli.rs", "use crate::guardrails::Limit;\n"),
        ],
    );

    let violations = violations(&tree.0);

    assert_eq!(
        violations,
        [
            format!("src/cli.rs:1: imports crate::guardrails, which is not in LAYERS; {ADD_IT}"),
            format!("src/guardrails.rs: module guardrails is not in LAYERS; {ADD_IT}"),
        ]
    );
}

#[test]
fn two_files_importing_each_other_are_a_circle() {
    let tree = TempTree::new(
        "circle",
        &[
            ("src/db/mod.rs", "pub mod a;\npub mod b;\npub use a::A;\n"),
            ("src/db/a.rs", "use crate::db::b::B;\npub struct A;\n"),
            // Through a name: `db` is `crate::db`, so `db::a::A` is in src/db/a.rs.
            ("src/db/b.rs", "use crate::db;\npub struct B(db::a::A);\n"),
            ("src/db/c.rs", "use super::A;\n"),
        ],
    );

    let circles = circles(&tree.0);

    assert_eq!(circles, [["src/db/a.rs", "src/db/b.rs"]]);
}

#[test]
fn a_module_re_exporting_its_children_is_not_a_circle_with_them() {
    let tree = TempTree::new(
        "face",
        &[
            (
                "src/loaders/mod.rs",
                "pub mod tasks;\npub use tasks::TaskDetails;\npub struct Loaders;\n",
            ),
            (
                "src/loaders/tasks.rs",
                "use super::Loaders;\npub struct TaskDetails;\n",
            ),
        ],
    );

    let circles = circles(&tree.0);

    assert!(circles.is_empty(), "{circles:?}");
}
