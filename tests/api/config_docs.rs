//! The README's configuration table and the code name the same variables.
//!
//! `keel <role> --help` does not list the environment variables (the reader is hand-written,
//! not clap's: `src/config/mod.rs` says why), so the README's table is the one list an
//! operator has. This test keeps it honest in both directions: a variable the code reads
//! must have a row, and a row must name a variable that something reads.
//!
//! "Read" means: a string literal under `src/` that is a whole variable name — `"KEEL_…"`,
//! `"OTEL_…"`, or one of [`EXACT_NAMES`]. Comments are skipped (a doc may mention a variable
//! that is not read). `#[cfg(test)]` code is scanned like the rest: the tests there set real
//! variables to prove the code reads them, so they add no name the code does not read, and
//! finding where a test module ends by hand (`mod tests;` in a file of its own) is where a
//! hand parser would go wrong. A test that needs a made-up variable names it outside these
//! prefixes (as `src/config/vars.rs` does).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::rust_source::{relative, rust_files, string_literals};

/// Variables read under their own (non-`KEEL_`, non-`OTEL_`) names.
const EXACT_NAMES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "REDIS_URL",
    "AMQP_URL",
    "SMTP_URL",
    "RUST_LOG",
];

/// Prefixes under which every name is a variable.
const PREFIXES: &[&str] = &["KEEL_", "OTEL_"];

const README: &str = "README.md";

/// Whether a string literal's whole content is a variable name the service reads.
fn is_variable_name(literal: &str) -> bool {
    let shaped = !literal.is_empty()
        && literal
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    shaped
        && (EXACT_NAMES.contains(&literal)
            || PREFIXES
                .iter()
                .any(|p| literal.len() > p.len() && literal.starts_with(p)))
}

/// The variables that `source` reads.
fn variables_in_source(source: &str) -> BTreeSet<String> {
    string_literals(source)
        .into_iter()
        .filter(|literal| is_variable_name(literal))
        .collect()
}

/// The variables named in backticks in the first cell of each row of the table under the
/// README's `## Configuration` heading. A cell may name several (`A`, `B`; `A` (or `B`)).
fn variables_in_table(readme: &str) -> Result<BTreeSet<String>, String> {
    let mut lines = readme
        .lines()
        .skip_while(|l| l.trim_end() != "## Configuration");
    if lines.next().is_none() {
        return Err(format!("{README} has no `## Configuration` heading"));
    }
    let rows: Vec<&str> = lines
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(1) // the header
        .filter(|l| !l.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')))
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "{README} has no table under its `## Configuration` heading"
        ));
    }
    let mut names = BTreeSet::new();
    for row in rows {
        let first_cell = row.split('|').nth(1).unwrap_or_default();
        let in_backticks = first_cell.split('`').skip(1).step_by(2);
        let before = names.len();
        names.extend(in_backticks.map(str::to_owned));
        if names.len() == before {
            return Err(format!(
                "this row of {README}'s configuration table names no variable in backticks: {row}"
            ));
        }
    }
    Ok(names)
}

/// One line per variable that one side lacks. `read` maps each variable to the files that
/// read it.
fn disagreements(
    read: &BTreeMap<String, BTreeSet<String>>,
    documented: &BTreeSet<String>,
) -> Vec<String> {
    let undocumented = read
        .iter()
        .filter(|(name, _)| !documented.contains(*name))
        .map(|(name, files)| {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            format!(
                "{name} is read by {} but not in {README}'s configuration table",
                files.join(", ")
            )
        });
    let unread = documented
        .iter()
        .filter(|name| !read.contains_key(*name))
        .map(|name| {
            format!("{name} is in {README}'s configuration table but nothing under src/ reads it")
        });
    undocumented.chain(unread).collect()
}

#[test]
fn the_readme_configuration_table_lists_exactly_the_variables_the_code_reads() {
    // Arrange
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");

    // Act
    let mut read: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in rust_files(&root.join("src")) {
        let source = std::fs::read_to_string(&path).unwrap();
        for name in variables_in_source(&source) {
            read.entry(name).or_default().insert(relative(root, &path));
        }
    }
    let documented = variables_in_table(&readme).unwrap();

    // Assert
    assert!(
        read.contains_key("DATABASE_URL") && read.contains_key("KEEL_HTTP_ADDR"),
        "the scan of src/ found too little to be trusted: {read:?}"
    );
    let problems = disagreements(&read, &documented);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

mod the_check_itself {
    use super::*;

    const README_TEXT: &str = "\
# Service

`KEEL_MENTIONED_ELSEWHERE` is not in the table.

## Configuration

Some prose about `KEEL_IN_PROSE`.

| variable | default | meaning |
|---|---|---|
| `KEEL_HTTP_ADDR` | `0.0.0.0:8080` | public listener |
| `KEEL_JWT_PREVIOUS_SECRET`, `KEEL_JWT_PREVIOUS_KID` | unset | a retired key |
| `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) | unset | traces |

## Next

| `KEEL_IN_ANOTHER_SECTION` | x | y |
";

    const SOURCE: &str = r##"
//! Reads `KEEL_IN_A_DOC` (a comment, not a read): "KEEL_QUOTED_IN_A_DOC".
/* a block /* nested */ "KEEL_IN_A_BLOCK_COMMENT" */
const QUOTE: char = '"';
const ESCAPED: char = '\'';
fn read<'a>(vars: &Vars<'a>) {
    vars.get("KEEL_HTTP_ADDR");
    vars.get(r#"KEEL_JWT_PREVIOUS_SECRET"#);
    vars.get("OTEL_EXPORTER_OTLP_ENDPOINT");
    let _ = "not \" KEEL_INSIDE_A_SENTENCE";
    let _ = format!("bind KEEL_HTTP_ADDR {}", 1);
    let _ = ("KEEL_", "DATABASE_URL_SUFFIX", "keel_lowercase", "<KEEL_ADMIN_TOKEN>");
    vars.get("DATABASE_URL");
}
"##;

    fn read_by(file: &str, names: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        names
            .iter()
            .map(|n| (n.to_string(), BTreeSet::from([file.to_owned()])))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_table_yields_every_backticked_name_of_its_first_column_and_nothing_else() {
        let names = variables_in_table(README_TEXT).unwrap();
        assert_eq!(
            names,
            set(&[
                "KEEL_HTTP_ADDR",
                "KEEL_JWT_PREVIOUS_KID",
                "KEEL_JWT_PREVIOUS_SECRET",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ])
        );
    }

    #[test]
    fn a_readme_without_the_table_is_an_error_not_an_empty_list() {
        assert!(variables_in_table("# Service\n\n## Usage\n").is_err());
        assert!(variables_in_table("## Configuration\n\nprose only\n\n## Next\n").is_err());
    }

    #[test]
    fn the_source_yields_whole_literals_outside_comments() {
        let names = variables_in_source(SOURCE);
        assert_eq!(
            names,
            set(&[
                "DATABASE_URL",
                "KEEL_HTTP_ADDR",
                "KEEL_JWT_PREVIOUS_SECRET",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ])
        );
    }

    #[test]
    fn a_variable_read_but_not_in_the_table_is_reported_with_its_file() {
        let read = read_by("src/config/http.rs", &["KEEL_HTTP_ADDR", "KEEL_X"]);
        let documented = set(&["KEEL_HTTP_ADDR"]);
        assert_eq!(
            disagreements(&read, &documented),
            ["KEEL_X is read by src/config/http.rs but not in README.md's configuration table"]
        );
    }

    #[test]
    fn a_row_that_nothing_reads_is_reported() {
        let read = read_by("src/config/http.rs", &["KEEL_HTTP_ADDR"]);
        let documented = set(&["KEEL_HTTP_ADDR", "KEEL_GONE"]);
        assert_eq!(
            disagreements(&read, &documented),
            ["KEEL_GONE is in README.md's configuration table but nothing under src/ reads it"]
        );
    }

    #[test]
    fn the_fake_readme_and_source_disagree_where_expected() {
        // The whole pipeline on the fakes: the source reads DATABASE_URL, which the fake
        // table lacks; the table names three variables that the source does not read.
        let read: BTreeMap<_, _> = variables_in_source(SOURCE)
            .into_iter()
            .map(|n| (n, BTreeSet::from(["src/fake.rs".to_owned()])))
            .collect();
        let problems = disagreements(&read, &variables_in_table(README_TEXT).unwrap());
        assert_eq!(
            problems,
            [
                "DATABASE_URL is read by src/fake.rs but not in README.md's configuration table",
                "KEEL_JWT_PREVIOUS_KID is in README.md's configuration table but nothing under src/ reads it",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is in README.md's configuration table but nothing under src/ reads it",
            ]
        );
    }
}
