//! Readable differences between two payloads: a line diff for text, the
//! first differing offset with context for one long line (and JSON paths
//! for JSON), a hex view for binary. Every renderer is bounded.

use serde_json::Value;

/// Context kept around a difference in a single line, in characters.
const CONTEXT_CHARS: usize = 40;
/// Lines of context around a hunk of the line diff.
const CONTEXT_LINES: usize = 2;
/// A line is cut after this many characters when shown.
const MAX_LINE_CHARS: usize = 160;
/// The line diff gives up on larger tables (lines × lines) and falls back
/// to the first difference.
const MAX_LCS_CELLS: usize = 1_000_000;
/// JSON paths listed at most.
const MAX_JSON_PATHS: usize = 10;
/// Hex rows shown around the first difference.
const HEX_ROWS_BEFORE: usize = 1;
const HEX_ROWS_AFTER: usize = 3;

/// The difference between two bodies (or whole payloads), as at most `max`
/// lines (the last one saying how many were cut). Empty when they are equal.
pub fn payload_diff(recorded: &[u8], actual: &[u8], max: usize) -> Vec<String> {
    if recorded == actual {
        return Vec::new();
    }
    let mut lines = Vec::new();
    let texts = match (std::str::from_utf8(recorded), std::str::from_utf8(actual)) {
        (Ok(r), Ok(a)) if !r.contains('\0') && !a.contains('\0') => Some((r, a)),
        _ => None,
    };
    match texts {
        None => {
            lines.push(format!(
                "binary: recorded {} bytes, actual {} bytes",
                recorded.len(),
                actual.len()
            ));
            lines.extend(hex_diff(recorded, actual));
        }
        Some((r, a)) => {
            let json = json_diff(r, a);
            let single_line = line_count(r) <= 1 && line_count(a) <= 1;
            let view = if single_line {
                "first difference"
            } else {
                "line diff: - recorded, + actual"
            };
            lines.push(format!(
                "{}: recorded {} bytes, actual {} bytes ({view})",
                if json.is_some() { "JSON" } else { "text" },
                recorded.len(),
                actual.len()
            ));
            if let Some(json) = json {
                lines.extend(json);
            }
            if single_line {
                lines.extend(offset_diff(r, a));
            } else {
                lines.extend(line_diff(r, a));
            }
        }
    }
    cap(lines, max)
}

/// Keeps the first `max` lines and says how many were cut.
pub fn cap(mut lines: Vec<String>, max: usize) -> Vec<String> {
    if lines.len() > max {
        let cut = lines.len() - max.saturating_sub(1);
        lines.truncate(max.saturating_sub(1));
        lines.push(format!("… {cut} more line(s) cut"));
    }
    lines
}

fn line_count(text: &str) -> usize {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        0
    } else {
        text.split('\n').count()
    }
}

/// Text safe to print on one terminal line: control characters escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Bytes safe to print on one line: text escaped, other bytes as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => escape(text),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// The start of a payload, escaped, at most `max` characters, with its size.
pub fn preview(bytes: &[u8], max: usize) -> String {
    if bytes.is_empty() {
        return "(empty)".into();
    }
    // Only the start is escaped: payloads can be megabytes.
    let (escaped, cut) = match std::str::from_utf8(bytes) {
        Ok(text) => {
            let end = text
                .char_indices()
                .nth(max)
                .map_or(text.len(), |(index, _)| index);
            (escape(&text[..end]), end < text.len())
        }
        Err(_) => {
            let end = bytes.len().min(max);
            (escape_bytes(&bytes[..end]), end < bytes.len())
        }
    };
    let shown: String = escaped.chars().take(max).collect();
    let more = if cut || shown.len() < escaped.len() {
        "…"
    } else {
        ""
    };
    format!("{shown}{more}  ({} B)", bytes.len())
}

/// At most `max` characters of a line, escaped, and how many were left out.
fn display_line(line: &str, max: usize) -> String {
    let end = line
        .char_indices()
        .nth(max)
        .map_or(line.len(), |(index, _)| index);
    let escaped = escape(&line[..end]);
    let shown: String = escaped.chars().take(max).collect();
    let left = line[end..].chars().count() + (escaped.chars().count() - shown.chars().count());
    if left == 0 {
        shown
    } else {
        format!("{shown}… (+{left} chars)")
    }
}

fn shorten(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… (+{} chars)", count - max)
}

/// The offset of the first differing byte (the shorter length when one is
/// a prefix of the other).
pub fn first_difference(recorded: &[u8], actual: &[u8]) -> usize {
    recorded
        .iter()
        .zip(actual)
        .position(|(r, a)| r != a)
        .unwrap_or(recorded.len().min(actual.len()))
}

/// The first differing offset of two texts, with context from each side.
pub fn offset_diff(recorded: &str, actual: &str) -> Vec<String> {
    offset_diff_as(["recorded", "actual"], recorded, actual)
}

/// [`offset_diff`] with other names for the two sides; names of up to 8
/// characters keep the columns aligned.
pub fn offset_diff_as(names: [&str; 2], recorded: &str, actual: &str) -> Vec<String> {
    let mut at = first_difference(recorded.as_bytes(), actual.as_bytes());
    // The common prefix is identical on both sides: one boundary fits both.
    while !recorded.is_char_boundary(at) || !actual.is_char_boundary(at) {
        at -= 1;
    }
    let prefix = &recorded[..at];
    let line = prefix.matches('\n').count() + 1;
    let column = prefix
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let before_start = prefix
        .char_indices()
        .rev()
        .nth(CONTEXT_CHARS - 1)
        .map_or(0, |(index, _)| index);
    let before = escape(&prefix[before_start..]);
    let lead = if before_start > 0 { "…" } else { "" };
    let side = |text: &str| {
        let rest = &text[at..];
        let end = rest
            .char_indices()
            .nth(CONTEXT_CHARS)
            .map_or(rest.len(), |(index, _)| index);
        let tail = if end < rest.len() { "…" } else { "" };
        let shown = if rest.is_empty() {
            "⟨end⟩".to_string()
        } else {
            escape(&rest[..end])
        };
        format!("{lead}{before}{shown}{tail}")
    };
    let label = |name: &str| format!("  {:<9} ", format!("{name}:"));
    let caret = " ".repeat(label("").len() + lead.chars().count() + before.chars().count());
    vec![
        format!("first difference at byte {at} (line {line}, column {column})"),
        format!("{}{}", label(names[0]), side(recorded)),
        format!("{}{}", label(names[1]), side(actual)),
        format!("{caret}^"),
    ]
}

/// The JSON paths whose values differ, when both texts are JSON objects or
/// arrays; `None` otherwise.
fn json_diff(recorded: &str, actual: &str) -> Option<Vec<String>> {
    let is_container = |text: &str| text.trim_start().starts_with(['{', '[']);
    if !is_container(recorded) || !is_container(actual) {
        return None;
    }
    let recorded: Value = serde_json::from_str(recorded).ok()?;
    let actual: Value = serde_json::from_str(actual).ok()?;
    let mut paths = Vec::new();
    let mut total = 0;
    json_paths(&recorded, &actual, "$", &mut paths, &mut total);
    if total == 0 {
        return Some(vec![
            "equal as JSON values: only formatting or key order differ".into(),
        ]);
    }
    let mut lines = vec![format!("{total} JSON value(s) differ:")];
    lines.extend(paths.into_iter().map(|path| format!("  {path}")));
    if total > MAX_JSON_PATHS {
        lines.push(format!("  … {} more", total - MAX_JSON_PATHS));
    }
    Some(lines)
}

fn json_paths(
    recorded: &Value,
    actual: &Value,
    path: &str,
    out: &mut Vec<String>,
    total: &mut usize,
) {
    match (recorded, actual) {
        (Value::Object(r), Value::Object(a)) => {
            let mut keys: Vec<&String> = r.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.is_empty()
                {
                    format!("{path}.{key}")
                } else {
                    format!("{path}[{}]", Value::String(key.clone()))
                };
                json_child(r.get(key), a.get(key), &child, out, total);
            }
        }
        (Value::Array(r), Value::Array(a)) => {
            for index in 0..r.len().max(a.len()) {
                let child = format!("{path}[{index}]");
                json_child(r.get(index), a.get(index), &child, out, total);
            }
        }
        (r, a) if r != a => json_paths_report(
            out,
            total,
            format!("{path}: {} -> {}", json_preview(r), json_preview(a)),
        ),
        _ => {}
    }
}

/// One member or element present in the recorded value, the actual one, or both.
fn json_child(
    recorded: Option<&Value>,
    actual: Option<&Value>,
    child: &str,
    out: &mut Vec<String>,
    total: &mut usize,
) {
    match (recorded, actual) {
        (Some(rv), Some(av)) => json_paths(rv, av, child, out, total),
        (Some(rv), None) => json_paths_report(
            out,
            total,
            format!("{child}: recorded {}, missing in actual", json_preview(rv)),
        ),
        (None, Some(av)) => json_paths_report(
            out,
            total,
            format!("{child}: not recorded, actual {}", json_preview(av)),
        ),
        (None, None) => {}
    }
}

fn json_paths_report(out: &mut Vec<String>, total: &mut usize, line: String) {
    *total += 1;
    if out.len() < MAX_JSON_PATHS {
        out.push(line);
    }
}

fn json_preview(value: &Value) -> String {
    shorten(&escape(&value.to_string()), 60)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Edit {
    Keep,
    Delete,
    Insert,
}

/// A unified line diff (`-` recorded, `+` actual) with a little context.
pub fn line_diff(recorded: &str, actual: &str) -> Vec<String> {
    let r: Vec<&str> = recorded.split_inclusive('\n').collect();
    let a: Vec<&str> = actual.split_inclusive('\n').collect();
    // Show `\r` only when the two sides disagree about line ends.
    let show_cr = recorded.contains("\r\n") != actual.contains("\r\n");
    let display = |line: &str| {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = if show_cr {
            line
        } else {
            line.strip_suffix('\r').unwrap_or(line)
        };
        display_line(line, MAX_LINE_CHARS)
    };
    let prefix = r.iter().zip(&a).take_while(|(x, y)| x == y).count();
    let suffix = r[prefix..]
        .iter()
        .rev()
        .zip(a[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let r_mid = &r[prefix..r.len() - suffix];
    let a_mid = &a[prefix..a.len() - suffix];
    if r_mid.len().saturating_mul(a_mid.len()) > MAX_LCS_CELLS {
        let mut lines = vec![format!(
            "too many differing lines for a line diff ({} recorded, {} actual); first difference at line {}:",
            r_mid.len(),
            a_mid.len(),
            prefix + 1
        )];
        lines.push(format!(
            "- {}",
            display(r_mid.first().copied().unwrap_or_default())
        ));
        lines.push(format!(
            "+ {}",
            display(a_mid.first().copied().unwrap_or_default())
        ));
        return lines;
    }
    let mut edits = vec![Edit::Keep; prefix];
    edits.extend(lcs_edits(r_mid, a_mid));
    edits.extend(std::iter::repeat_n(Edit::Keep, suffix));
    render_hunks(&edits, &r, &a, display)
}

/// The edit script turning `r` into `a`, from a longest common subsequence.
fn lcs_edits(r: &[&str], a: &[&str]) -> Vec<Edit> {
    let (n, m) = (r.len(), a.len());
    // lengths[i][j]: LCS of r[i..] and a[j..].
    let width = m + 1;
    let mut lengths = vec![0u32; (n + 1) * width];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lengths[i * width + j] = if r[i] == a[j] {
                lengths[(i + 1) * width + j + 1] + 1
            } else {
                lengths[(i + 1) * width + j].max(lengths[i * width + j + 1])
            };
        }
    }
    let mut edits = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && r[i] == a[j] {
            edits.push(Edit::Keep);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lengths[i * width + j + 1] >= lengths[(i + 1) * width + j]) {
            edits.push(Edit::Insert);
            j += 1;
        } else {
            edits.push(Edit::Delete);
            i += 1;
        }
    }
    // Deletions before insertions within a change reads better.
    let mut start = 0;
    while start < edits.len() {
        if edits[start] == Edit::Keep {
            start += 1;
            continue;
        }
        let end = edits[start..]
            .iter()
            .position(|e| *e == Edit::Keep)
            .map_or(edits.len(), |p| start + p);
        edits[start..end].sort_by_key(|e| *e == Edit::Insert);
        start = end;
    }
    edits
}

fn render_hunks(
    edits: &[Edit],
    r: &[&str],
    a: &[&str],
    display: impl Fn(&str) -> String,
) -> Vec<String> {
    // Positions (in recorded and actual lines) before each edit.
    let mut positions = Vec::with_capacity(edits.len() + 1);
    let (mut i, mut j) = (0, 0);
    for edit in edits {
        positions.push((i, j));
        match edit {
            Edit::Keep => {
                i += 1;
                j += 1;
            }
            Edit::Delete => i += 1,
            Edit::Insert => j += 1,
        }
    }
    positions.push((i, j));
    let changed: Vec<usize> = (0..edits.len())
        .filter(|&k| edits[k] != Edit::Keep)
        .collect();
    let mut lines = Vec::new();
    let mut k = 0;
    while k < changed.len() {
        // A hunk: changes closer than twice the context are merged.
        let first = changed[k];
        let mut last = first;
        while k + 1 < changed.len() && changed[k + 1] <= last + 2 * CONTEXT_LINES + 1 {
            k += 1;
            last = changed[k];
        }
        k += 1;
        let start = first.saturating_sub(CONTEXT_LINES);
        let end = (last + CONTEXT_LINES + 1).min(edits.len());
        let (r0, a0) = positions[start];
        let (r1, a1) = positions[end];
        lines.push(format!(
            "@@ -{},{} +{},{} @@",
            r0 + 1,
            r1 - r0,
            a0 + 1,
            a1 - a0
        ));
        for (edit, &(ri, ai)) in edits[start..end].iter().zip(&positions[start..end]) {
            lines.push(match edit {
                Edit::Keep => format!("  {}", display(r[ri])),
                Edit::Delete => format!("- {}", display(r[ri])),
                Edit::Insert => format!("+ {}", display(a[ai])),
            });
        }
    }
    lines
}

/// Hex rows around the first differing byte: `-` recorded, `+` actual, a
/// single row where both sides agree.
pub fn hex_diff(recorded: &[u8], actual: &[u8]) -> Vec<String> {
    let at = first_difference(recorded, actual);
    let row = at / 16;
    let first = row.saturating_sub(HEX_ROWS_BEFORE);
    let last_row = recorded.len().max(actual.len()).saturating_sub(1) / 16;
    let last = (row + HEX_ROWS_AFTER).min(last_row);
    let mut lines = vec![format!("first difference at byte {at} (0x{at:x})")];
    for index in first..=last {
        let start = index * 16;
        // The row of one side, if it reaches this far.
        let row = |bytes: &[u8]| {
            (start < bytes.len())
                .then(|| hex_row(start, &bytes[start..(start + 16).min(bytes.len())]))
        };
        let (r, a) = (row(recorded), row(actual));
        if r == a {
            lines.extend(r.map(|row| format!("  {row}")));
            continue;
        }
        let end = || format!("{start:08x}  (end)");
        lines.push(format!("- {}", r.unwrap_or_else(end)));
        lines.push(format!("+ {}", a.unwrap_or_else(end)));
    }
    lines
}

fn hex_row(offset: usize, bytes: &[u8]) -> String {
    let mut hex = String::new();
    for (index, byte) in bytes.iter().enumerate() {
        if index == 8 {
            hex.push(' ');
        }
        hex.push_str(&format!("{byte:02x} "));
    }
    let ascii: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{offset:08x}  {hex:<49} |{ascii}|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_payloads_have_no_diff() {
        assert!(payload_diff(b"same", b"same", 10).is_empty());
    }

    #[test]
    fn text_gets_a_line_diff_with_context() {
        let recorded = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n";
        let actual = "one\ntwo\nthree\nFOUR\nfive\nsix\nseven\neight\nnine\nten\neleven\n";
        let lines = payload_diff(recorded.as_bytes(), actual.as_bytes(), 100);
        assert_eq!(
            lines,
            vec![
                "text: recorded 49 bytes, actual 56 bytes (line diff: - recorded, + actual)",
                "@@ -2,5 +2,5 @@",
                "  two",
                "  three",
                "- four",
                "+ FOUR",
                "  five",
                "  six",
                "@@ -9,2 +9,3 @@",
                "  nine",
                "  ten",
                "+ eleven",
            ]
        );
    }

    #[test]
    fn crlf_is_shown_only_when_line_ends_disagree() {
        let lines = line_diff("a\r\nb\r\n", "a\r\nc\r\n");
        assert!(lines.contains(&"- b".to_string()), "{lines:?}");
        let lines = line_diff("a\r\nb\r\n", "a\nb\n");
        assert!(
            lines.contains(&"- a\\r".to_string()) && lines.contains(&"+ a".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn one_long_line_shows_the_first_differing_offset() {
        let recorded = format!("{}needle{}", "x".repeat(100), "y".repeat(100));
        let actual = format!("{}noodle{}", "x".repeat(100), "y".repeat(100));
        let lines = payload_diff(recorded.as_bytes(), actual.as_bytes(), 100);
        assert_eq!(
            lines[0],
            "text: recorded 206 bytes, actual 206 bytes (first difference)"
        );
        assert_eq!(
            lines[1],
            "first difference at byte 101 (line 1, column 102)"
        );
        let context = format!("…{}n", "x".repeat(39));
        assert_eq!(
            lines[2],
            format!("  recorded: {context}eedleyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy…")
        );
        assert_eq!(
            lines[3],
            format!("  actual:   {context}oodleyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy…")
        );
        assert_eq!(lines[4].find('^'), Some(12 + 41));
        // A difference at the end of the shorter side.
        let lines = offset_diff("abc", "abcdef");
        assert_eq!(lines[1], "  recorded: abc⟨end⟩");
        assert_eq!(lines[2], "  actual:   abcdef");
        // Multi-byte characters are never split.
        let lines = offset_diff("héllo", "hèllo");
        assert_eq!(lines[0], "first difference at byte 1 (line 1, column 2)");
        // Other names keep the columns, and the text is left as it is.
        let lines = offset_diff_as(["closest", "request"], "recorded: a", "recorded: b");
        assert_eq!(
            lines[1..],
            [
                "  closest:  recorded: a",
                "  request:  recorded: b",
                "                      ^"
            ]
        );
    }

    #[test]
    fn json_lists_the_differing_paths_then_the_offset() {
        let recorded = r#"{"user":{"name":"ann","tags":["a","b"]},"total":3,"x-y":1}"#;
        let actual = r#"{"user":{"name":"bob","tags":["a"]},"total":3,"new":true,"x-y":1}"#;
        let lines = payload_diff(recorded.as_bytes(), actual.as_bytes(), 100);
        assert_eq!(
            lines[0],
            "JSON: recorded 58 bytes, actual 65 bytes (first difference)"
        );
        assert_eq!(lines[1], "3 JSON value(s) differ:");
        assert_eq!(lines[2], "  $.new: not recorded, actual true");
        assert_eq!(lines[3], r#"  $.user.name: "ann" -> "bob""#);
        assert_eq!(
            lines[4],
            r#"  $.user.tags[1]: recorded "b", missing in actual"#
        );
        assert!(
            lines[5].starts_with("first difference at byte 17 "),
            "{}",
            lines[5]
        );
        let lines = payload_diff(br#"{"a":1,"b":2}"#, br#"{"b":2, "a":1}"#, 100);
        assert_eq!(
            lines[1],
            "equal as JSON values: only formatting or key order differ"
        );
        let lines = payload_diff(br#"{"a-b":1}"#, br#"{"a-b":2}"#, 100);
        assert_eq!(lines[2], r#"  $["a-b"]: 1 -> 2"#);
    }

    #[test]
    fn binary_gets_a_hex_view_around_the_first_difference() {
        let recorded: Vec<u8> = (0..64).collect();
        let mut actual = recorded.clone();
        actual[40] = 0xff;
        actual.truncate(50);
        let lines = payload_diff(&recorded, &actual, 100);
        assert_eq!(lines[0], "binary: recorded 64 bytes, actual 50 bytes");
        assert_eq!(lines[1], "first difference at byte 40 (0x28)");
        assert!(lines[2].starts_with("  00000010  10 11 12"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("- 00000020  20 21 22 23 24 25 26 27  28 29"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("+ 00000020  20 21 22 23 24 25 26 27  ff 29"),
            "{}",
            lines[4]
        );
        assert!(lines[3].ends_with("| !\"#$%&'()*+,-./|"), "{}", lines[3]);
        assert!(lines[6].starts_with("+ 00000030  30 31  "), "{}", lines[6]);
        assert_eq!(lines.len(), 7);
        // Non-UTF-8 on one side is enough to be binary; NUL too.
        assert!(payload_diff(b"a\0b", b"a\0c", 10)[0].starts_with("binary"));
    }

    #[test]
    fn output_is_capped() {
        let recorded: String = (0..500).map(|i| format!("line {i}\n")).collect();
        let actual: String = (0..500).map(|i| format!("LINE {i}\n")).collect();
        let lines = payload_diff(recorded.as_bytes(), actual.as_bytes(), 20);
        assert_eq!(lines.len(), 20);
        assert_eq!(lines[19], "… 983 more line(s) cut");
        // Huge lines are shortened.
        let long = "z".repeat(1000);
        let lines = line_diff(&format!("a\n{long}\n"), "a\nb\n");
        assert!(
            lines.iter().any(|l| l.ends_with("… (+840 chars)")),
            "{lines:?}"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\u{1b}[31mred\r\n"), "a\\u{1b}[31mred\\r\\n");
        assert_eq!(preview(b"\xff\x00GET", 5), "\\xff\\…  (5 B)");
        assert_eq!(preview(b"", 5), "(empty)");
    }
}
