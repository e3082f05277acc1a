//! Maps between dotted config keys (`http.max_connections`) and lines of a YAML file, so that
//! every config error can name both. Block-style YAML only, which is what config.yaml uses;
//! for anything fancier the error still names the key without a line.

/// The key defined on line `line` (1-based), as a dotted path, if that line is a `key:` line.
pub fn key_at_line(text: &str, line: usize) -> Option<String> {
    keyed_lines(text)
        .take_while(|&(n, _)| n <= line)
        .find(|&(n, _)| n == line)
        .map(|(_, path)| path.join("."))
}

/// The 1-based line where dotted `key` is defined, if it is written in the file.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    keyed_lines(text)
        // Keys hold no dots (see `key_of`), so the dotted key splits back into the path.
        .find(|(_, path)| key.split('.').eq(path.iter().copied()))
        .map(|(n, _)| n)
}

/// Every `key:` line with its 1-based number and the path of keys down to it, in one pass: a
/// stack of the enclosing keys, each less indented than the one after it. (Walking back from
/// each line instead made a large file quadratic.)
fn keyed_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    text.lines().enumerate().filter_map(move |(i, line)| {
        let (indent, key) = key_of(line)?;
        while stack.last().is_some_and(|&(above, _)| above >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        Some((i + 1, stack.iter().map(|&(_, k)| k).collect()))
    })
}

/// `(indent, key)` of a `key: value`, `key:` or `- key: value` line (the key of a list item's
/// first field); None for comments, blanks and plain list items.
fn key_of(line: &str) -> Option<(usize, &str)> {
    let mut trimmed = line.trim_start();
    if let Some(item) = trimmed.strip_prefix("- ") {
        trimmed = item.trim_start();
    }
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
        return None;
    }
    let colon = trimmed.find(':')?;
    let key = trimmed[..colon]
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ok.then_some((line.len() - trimmed.len(), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a: 1\nb:\n  # comment\n  c: 2\n  d:\n    e: [1]\nf: 3\ng:\n  - name: x\n    options:\n      h: 1\n";

    #[test]
    fn keys_are_found_by_line_and_lines_by_key() {
        assert_eq!(key_at_line(DOC, 1).as_deref(), Some("a"));
        assert_eq!(key_at_line(DOC, 4).as_deref(), Some("b.c"));
        assert_eq!(key_at_line(DOC, 6).as_deref(), Some("b.d.e"));
        assert_eq!(key_at_line(DOC, 7).as_deref(), Some("f"));
        assert_eq!(key_at_line(DOC, 3), None);
        assert_eq!(line_of_key(DOC, "b.d.e"), Some(6));
        assert_eq!(line_of_key(DOC, "b.x"), None);
        assert_eq!(key_at_line(DOC, 9).as_deref(), Some("g.name"));
        assert_eq!(key_at_line(DOC, 11).as_deref(), Some("g.options.h"));
    }
}
