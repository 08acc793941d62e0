//! The scanner behind the layer check: tells code from comments and literals, and reads
//! the paths into the crate that a file writes — `use` trees, `crate::`/`super::`/`self::`
//! paths, and bare names that a `use` or a child module brought into scope.

use super::module_path;
use crate::rust_source::{Token, is_name, text, tokenize};

/// A path into the crate, made absolute (`["db", "tasks", "Task"]`), with its line.
/// `anchored` says it is written from `crate`, `super` or `self`; otherwise it starts with a
/// name that a `use`, a child module or a glob import brought into scope. `public_face`
/// marks a `pub use` of the file's own child modules: a re-export, not a dependency.
pub(super) struct Reference {
    pub(super) line: usize,
    pub(super) path: Vec<String>,
    pub(super) anchored: bool,
    pub(super) public_face: bool,
}

/// A path as written, and the module it is written in (inline `mod tests {}` included).
struct Written {
    module: Vec<String>,
    segments: Vec<(String, usize)>,
    kind: Kind,
    public: bool,
}

#[derive(PartialEq)]
enum Kind {
    Code,
    /// A `use` leaf and the name it binds (none for `as _`).
    Use(Option<String>),
    /// A `use …::*`.
    Glob,
}

/// Every path into the crate in `source`, a file of `module`.
pub(super) fn references(
    source: &str,
    module: &[String],
    is_module: &dyn Fn(&[String]) -> bool,
) -> Vec<Reference> {
    let written = written_paths(&tokenize(source), module);
    let scope = Scope {
        written: &written,
        file_depth: module.len(),
        is_module,
    };
    let reference = |from: &Written, line: usize, path: Vec<String>, anchored: bool| Reference {
        public_face: from.public && path.len() > module.len() && path.starts_with(module),
        line,
        path,
        anchored,
    };
    written
        .iter()
        .filter_map(|path| match anchored(&path.segments, &path.module) {
            Some((absolute, line)) => Some(reference(path, line, absolute, true)),
            None => scope
                .resolve(&path.segments, &path.module, 0)
                .map(|absolute| reference(path, path.segments[0].1, absolute, false)),
        })
        .collect()
}

/// A path from `crate`, `$crate`, `super` or `self`, made absolute, with the line of its first
/// segment after those; `None` for any other start, or a `super` above the crate root.
fn anchored(segments: &[(String, usize)], module: &[String]) -> Option<(Vec<String>, usize)> {
    let (first, _) = segments.first()?;
    let (mut absolute, mut rest) = match first.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (module.to_vec(), &segments[1..]),
        "super" => (module.to_vec(), segments),
        _ => return None,
    };
    while rest.first().is_some_and(|(segment, _)| segment == "super") {
        absolute.pop()?;
        rest = &rest[1..];
    }
    let line = rest.first().or(segments.last())?.1;
    absolute.extend(rest.iter().map(|(segment, _)| segment.clone()));
    Some((absolute, line))
}

/// What a file's `use` declarations and child modules bring into scope, for the paths that
/// start with a bare name (`db::tasks::create` after `use crate::db;`).
struct Scope<'a> {
    written: &'a [Written],
    file_depth: usize,
    is_module: &'a dyn Fn(&[String]) -> bool,
}

impl Scope<'_> {
    fn resolve(
        &self,
        segments: &[(String, usize)],
        module: &[String],
        depth: usize,
    ) -> Option<Vec<String>> {
        if let Some((absolute, _)) = anchored(segments, module) {
            return Some(absolute);
        }
        let ((name, _), rest) = segments.split_first()?;
        let then = |mut base: Vec<String>| {
            base.extend(rest.iter().map(|(segment, _)| segment.clone()));
            base
        };
        // A `use` binding, in this module or one it is nested in (a test module's `use super::*`).
        let enclosing = (self.file_depth..=module.len())
            .rev()
            .map(|len| &module[..len]);
        for scope in enclosing.clone() {
            let bound = self
                .written
                .iter()
                .find(|w| w.module == scope && w.kind == Kind::Use(Some(name.clone())));
            if let Some(binding) = bound {
                // An alias of an alias, at most a few deep: a cycle of names is no path.
                return (depth < 4)
                    .then(|| self.resolve(&binding.segments, &binding.module, depth + 1))
                    .flatten()
                    .map(then);
            }
        }
        let child = [module, std::slice::from_ref(name)].concat();
        if (self.is_module)(&child) {
            return Some(then(child));
        }
        // A child module of a module glob-imported here.
        self.written
            .iter()
            .filter(|w| w.kind == Kind::Glob && enclosing.clone().any(|scope| w.module == scope))
            .filter_map(|glob| anchored(&glob.segments, &glob.module))
            .map(|(base, _)| [base, vec![name.clone()]].concat())
            .find(|child| (self.is_module)(child))
            .map(then)
    }
}

/// Every path of two or more segments and every `use` leaf, with the module it is written in.
fn written_paths(tokens: &[Token], file_module: &[String]) -> Vec<Written> {
    let mut module = file_module.to_vec();
    let mut inline_at = Vec::new(); // the brace depth of each open inline `mod x {`
    let (mut depth, mut i) = (0_usize, 0);
    let mut paths = Vec::new();
    while i < tokens.len() {
        match text(tokens, i) {
            "{" => depth += 1,
            "}" => {
                if inline_at.last() == Some(&depth) {
                    inline_at.pop();
                    module.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if is_name(text(tokens, i + 1)) && text(tokens, i + 2) == "{" => {
                module.push(text(tokens, i + 1).to_string());
                inline_at.push(depth + 1);
                i += 2;
                continue;
            }
            // `use<'a>` is a precise capture in `impl Trait`, not an import.
            "use" if text(tokens, i + 1) != "<" => {
                let first = paths.len();
                let public = is_public(tokens, i);
                i += 1;
                use_tree(tokens, &mut i, &module, Vec::new(), &mut paths);
                paths[first..]
                    .iter_mut()
                    .for_each(|path| path.public = public);
                continue;
            }
            name if is_name(name)
                && text(tokens, i + 1) == "::"
                && (i == 0 || text(tokens, i - 1) != "::") =>
            {
                let mut segments = vec![(name.to_string(), tokens[i].line)];
                while text(tokens, i + 1) == "::" && is_name(text(tokens, i + 2)) {
                    i += 2;
                    segments.push((text(tokens, i).to_string(), tokens[i].line));
                }
                paths.push(Written {
                    module: module.clone(),
                    segments,
                    kind: Kind::Code,
                    public: false,
                });
            }
            _ => {}
        }
        i += 1;
    }
    paths
}

/// Whether the `use` at `i` is `pub`, `pub(crate)`, `pub(super)` or `pub(in …)`.
fn is_public(tokens: &[Token], i: usize) -> bool {
    let at = if text(tokens, i.wrapping_sub(1)) == ")" {
        tokens[..i]
            .iter()
            .rposition(|token| token.text == "(")
            .unwrap_or_default()
    } else {
        i
    };
    text(tokens, at.wrapping_sub(1)) == "pub"
}

/// Reads one use tree (`a::b`, `a::{b, c::d as e}`, `a::*`) from `*i` on, below `prefix`.
fn use_tree(
    tokens: &[Token],
    i: &mut usize,
    module: &[String],
    mut prefix: Vec<(String, usize)>,
    paths: &mut Vec<Written>,
) {
    if text(tokens, *i) == "::" {
        // A leading `::` names an external crate; the marker keeps the path unresolved.
        prefix.push(("::".to_string(), tokens[*i].line));
        *i += 1;
    }
    loop {
        let segment = text(tokens, *i);
        match segment {
            "{" => {
                *i += 1;
                while !matches!(text(tokens, *i), "}" | "") {
                    let before = *i;
                    use_tree(tokens, i, module, prefix.clone(), paths);
                    *i += usize::from(text(tokens, *i) == "," || *i == before);
                }
                *i += 1;
                return;
            }
            "*" => {
                *i += 1;
                paths.push(Written {
                    module: module.to_vec(),
                    segments: prefix,
                    kind: Kind::Glob,
                    public: false,
                });
                return;
            }
            name if is_name(name) => {
                prefix.push((name.to_string(), tokens[*i].line));
                *i += 1;
                if text(tokens, *i) == "::" {
                    *i += 1;
                    continue;
                }
                if name == "self" {
                    prefix.pop();
                }
                let mut binding = prefix.last().map(|(last, _)| last.clone());
                if text(tokens, *i) == "as" {
                    binding = Some(text(tokens, *i + 1).to_string()).filter(|alias| alias != "_");
                    *i += 2;
                }
                paths.push(Written {
                    module: module.to_vec(),
                    segments: prefix,
                    kind: Kind::Use(binding),
                    public: false,
                });
                return;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The anchored imports of `source` as `line:crate::path`, for a file at `src/{file}`.
    fn imports(source: &str, file: &str) -> Vec<String> {
        references(source, &module_path(file), &|_| false)
            .into_iter()
            .filter(|import| import.anchored)
            .map(|import| format!("{}:crate::{}", import.line, import.path.join("::")))
            .collect()
    }

    #[test]
    fn a_use_group_across_several_lines_names_every_module_on_its_own_line() {
        let source = [
            "pub(crate) use crate::{",
            "    db,",
            "    flags::Flag,",
            "    telemetry::{self, metrics as m},",
            "};",
        ]
        .join("\n");

        let imports = imports(&source, "cli.rs");

        assert_eq!(
            imports,
            [
                "2:crate::db",
                "3:crate::flags::Flag",
                "4:crate::telemetry",
                "4:crate::telemetry::metrics"
            ]
        );
    }

    #[test]
    fn a_path_in_code_counts_as_an_import() {
        let source = [
            "impl From<crate::db::DbError> for E {}",
            "fn f<'a>(x: &'a str) { crate::telemetry::spawn_blocking(x); }",
        ]
        .join("\n");

        let imports = imports(&source, "api/error.rs");

        assert_eq!(
            imports,
            ["1:crate::db::DbError", "2:crate::telemetry::spawn_blocking"]
        );
    }

    #[test]
    fn a_comment_mentioning_an_upper_module_is_ignored() {
        let source = [
            "//! Used by [`crate::api`].",
            "/// See crate::api::tasks.",
            "use crate::domain::Role; // crate::api",
            "/* crate::api /* nested: crate::api */ still a comment: crate::api */",
        ]
        .join("\n");

        let imports = imports(&source, "db/tasks.rs");

        assert_eq!(imports, ["3:crate::domain::Role"]);
    }

    #[test]
    fn a_string_literal_naming_an_upper_module_is_ignored() {
        let source = r##"const A: &str = "crate::api::x \" crate::api"; const B: &str = r#"crate::api "x" "#;
    const C: char = '"'; const D: u8 = b'\''; use crate::domain::Role;"##;

        let imports = imports(source, "db/tasks.rs");

        assert_eq!(imports, ["2:crate::domain::Role"]);
    }

    #[test]
    fn super_super_climbs_out_of_the_module_to_the_crate_root() {
        let source = "use super::error::ApiError;\nuse super::super::db::Db;\n";

        let imports = imports(source, "api/tasks.rs");

        assert_eq!(
            imports,
            ["1:crate::api::error::ApiError", "2:crate::db::Db"]
        );
    }

    #[test]
    fn super_in_an_inline_test_module_starts_from_the_file() {
        let source = [
            "fn f() { super::pagination::page(); }",
            "#[cfg(test)]",
            "mod tests {",
            "    use super::*;",
            "    use super::super::super::db;",
            "}",
            "use self::inner::x;",
        ]
        .join("\n");

        let imports = imports(&source, "api/tasks.rs");

        assert_eq!(
            imports,
            [
                "1:crate::api::pagination::page",
                "4:crate::api::tasks",
                "5:crate::db",
                "7:crate::api::tasks::inner::x"
            ]
        );
    }
}
