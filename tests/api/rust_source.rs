//! Rust source as the source checks read it (the layer check, the configuration-table
//! check): the `.rs` files under a directory, and a tokenizer that tells code from comments
//! and literals. A check that greps the text would take a doc comment that mentions
//! `crate::api`, or a string that names a variable, for code; this one does not.
//!
//! Why hand-written and not `syn`: the checks need only to tell code from comments and
//! literals and to read paths and string literals, which fits here without a new crate.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The path of `file` below `root`, with `/` separators: `src/db/tasks.rs`.
pub fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The contents of the string literals of `source`, outside comments.
pub fn string_literals(source: &str) -> Vec<String> {
    tokenize(source)
        .into_iter()
        .filter_map(|token| token.literal)
        .collect()
}

/// A token of code with its line: an identifier, `::`, or one other character. Every string
/// literal becomes one `"` token (its content kept apart, in `literal`) and every char
/// literal and lifetime a `'`, so nothing inside them reads as a path; comments become
/// nothing.
pub struct Token {
    pub text: String,
    pub line: usize,
    /// A string literal's content, as written (escapes not resolved).
    pub literal: Option<String>,
}

pub fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let start = i;
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let mut text = None;
        let mut literal = None;
        if c == '/' && next == Some('/') {
            i = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |n| i + n);
        } else if c == '/' && next == Some('*') {
            i = block_comment_end(&chars, i);
        } else if let Some((end, content)) = string_end(&chars, i) {
            (i, text) = (end, Some("\"".to_string()));
            literal = Some(chars[content].iter().collect());
        } else if c == '\'' || (c == 'b' && next == Some('\'')) {
            (i, text) = (
                quote_end(&chars, if c == 'b' { i + 1 } else { i }),
                Some("'".to_string()),
            );
        } else if c.is_alphanumeric() || c == '_' {
            i += if c == 'r' && next == Some('#') { 2 } else { 0 };
            let from = i;
            while chars
                .get(i)
                .is_some_and(|&c| c.is_alphanumeric() || c == '_')
            {
                i += 1;
            }
            text = Some(chars[from..i].iter().collect());
        } else if c == ':' && next == Some(':') {
            (i, text) = (i + 2, Some("::".to_string()));
        } else {
            i += 1;
            text = (!c.is_whitespace()).then(|| c.to_string());
        }
        if let Some(text) = text {
            tokens.push(Token {
                text,
                line,
                literal,
            });
        }
        line += chars[start..i].iter().filter(|&&c| c == '\n').count();
    }
    tokens
}

/// The end of a (nested) block comment starting at `i`.
fn block_comment_end(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) if depth == 1 => return i + 2,
            ('*', Some('/')) => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    i
}

/// The end of a string literal starting at `i` ("…", b"…", c"…", r#"…"#, br"…"), if one does,
/// and where its content lies.
fn string_end(chars: &[char], i: usize) -> Option<(usize, std::ops::Range<usize>)> {
    let mut j = i + usize::from(matches!(chars[i], 'b' | 'c'));
    let raw = chars.get(j) == Some(&'r');
    j += usize::from(raw);
    let hashes = chars[j.min(chars.len())..]
        .iter()
        .take_while(|&&c| c == '#')
        .count();
    j += hashes;
    if chars.get(j) != Some(&'"') || (hashes > 0 && !raw) {
        return None;
    }
    j += 1;
    let content = j;
    while j < chars.len() {
        match chars[j] {
            '\\' if !raw => j += 2,
            '"' if chars[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes =>
            {
                return Some((j + 1 + hashes, content..j));
            }
            _ => j += 1,
        }
    }
    Some((chars.len(), content..chars.len()))
}

/// The end of a character literal starting at the quote `q`, or just past the quote of a
/// lifetime or label (`'a`), whose name is then read as an identifier that harms nothing.
fn quote_end(chars: &[char], q: usize) -> usize {
    if chars.get(q + 1) == Some(&'\\') {
        let from = (q + 3).min(chars.len());
        chars[from..]
            .iter()
            .position(|&c| c == '\'')
            .map_or(chars.len(), |n| from + n + 1)
    } else if chars.get(q + 2) == Some(&'\'') {
        q + 3
    } else {
        q + 1
    }
}

pub fn text(tokens: &[Token], i: usize) -> &str {
    tokens.get(i).map_or("", |token| token.text.as_str())
}

pub fn is_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_alphabetic() || c == '_')
}
