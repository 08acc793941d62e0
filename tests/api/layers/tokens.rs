//! The layer check's tokenizer: code as identifiers, `::` and single characters, with
//! comments dropped and every literal reduced to one token, so that nothing inside a
//! comment or a string reads as a path.

/// A token of code with its line: an identifier, `::`, or one other character. Every literal
/// becomes one `"` token and every lifetime a `'`, so nothing inside them reads as a path;
/// comments become nothing.
pub(super) struct Token {
    pub(super) text: String,
    pub(super) line: usize,
}

pub(super) fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let start = i;
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let mut text = None;
        if c == '/' && next == Some('/') {
            i = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |n| i + n);
        } else if c == '/' && next == Some('*') {
            i = block_comment_end(&chars, i);
        } else if let Some(end) = string_end(&chars, i) {
            (i, text) = (end, Some("\"".to_string()));
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
            tokens.push(Token { text, line });
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

/// The end of a string literal starting at `i` ("…", b"…", c"…", r#"…"#, br"…"), if one does.
fn string_end(chars: &[char], i: usize) -> Option<usize> {
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
                return Some(j + 1 + hashes);
            }
            _ => j += 1,
        }
    }
    Some(chars.len())
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

pub(super) fn text(tokens: &[Token], i: usize) -> &str {
    tokens.get(i).map_or("", |token| token.text.as_str())
}

pub(super) fn is_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_alphabetic() || c == '_')
}
