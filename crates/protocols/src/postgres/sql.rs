//! The SQL part of an operation key: the statement with its literal values
//! taken out, so `... WHERE id = 17` and `... WHERE id = 18` are the same
//! operation (and scored against each other), while different statements
//! are never compared.

/// Words upper-cased in keys, so `select` and `SELECT` are one operation.
/// Identifiers keep their spelling (they are what tells statements apart).
const KEYWORDS: &[&str] = &[
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "ANY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "COMMIT",
    "COMMITTED",
    "CONFLICT",
    "CONSTRAINT",
    "COPY",
    "COUNT",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIMESTAMP",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DO",
    "DROP",
    "ELSE",
    "END",
    "EXCEPT",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FETCH",
    "FIRST",
    "FOR",
    "FOREIGN",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IF",
    "ILIKE",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ISOLATION",
    "JOIN",
    "KEY",
    "LEFT",
    "LEVEL",
    "LIKE",
    "LIMIT",
    "LOCAL",
    "LOCKED",
    "NEXT",
    "NOT",
    "NOTHING",
    "NOWAIT",
    "NULL",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "ORDER",
    "OUTER",
    "OVER",
    "PARTITION",
    "PRIMARY",
    "READ",
    "REFERENCES",
    "RELEASE",
    "REPEATABLE",
    "RESET",
    "RETURNING",
    "RIGHT",
    "ROLLBACK",
    "ROW",
    "ROWS",
    "SAVEPOINT",
    "SELECT",
    "SERIALIZABLE",
    "SESSION",
    "SET",
    "SHARE",
    "SHOW",
    "SKIP",
    "START",
    "STDIN",
    "STDOUT",
    "TABLE",
    "THEN",
    "TO",
    "TRANSACTION",
    "TRUE",
    "TRUNCATE",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITH",
    "WORK",
    "WRITE",
];

/// Appends the key form of `sql` to `out`: literals (numbers, `'...'`
/// strings with their `E`/`B`/`X`/`N` prefixes, dollar-quoted strings)
/// become `?`, comments and runs of whitespace one space (none at the
/// ends), keywords upper case. Parameters (`$1`) and quoted identifiers
/// stay as they are. Stops once `limit` bytes are appended (a key is
/// capped anyway; a statement may be huge).
pub(super) fn push_sql_key(out: &mut Vec<u8>, sql: &[u8], limit: usize) {
    let start = out.len();
    let mut space = false;
    let mut at = 0;
    while at < sql.len() && out.len() - start < limit {
        let byte = sql[at];
        let next = sql.get(at + 1).copied();
        // Skipped text: whitespace and comments.
        let skipped = match (byte, next) {
            (b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, _) => Some(at + 1),
            (b'-', Some(b'-')) => Some(line_comment_end(sql, at)),
            (b'/', Some(b'*')) => Some(block_comment_end(sql, at)),
            _ => None,
        };
        if let Some(end) = skipped {
            space = true;
            at = end;
            continue;
        }
        if space && out.len() > start {
            out.push(b' ');
        }
        space = false;
        at = match byte {
            b'\'' => {
                out.push(b'?');
                string_end(sql, at, false)
            }
            b'"' => {
                let end = quoted_identifier_end(sql, at);
                out.extend_from_slice(&sql[at..end]);
                end
            }
            b'$' => match dollar_quote_end(sql, at) {
                Some(end) => {
                    out.push(b'?');
                    end
                }
                None => {
                    // A parameter ($1) or a lone dollar: kept.
                    let end = at + 1 + count_while(&sql[at + 1..], |b| b.is_ascii_digit());
                    out.extend_from_slice(&sql[at..end]);
                    end
                }
            },
            b'0'..=b'9' => {
                out.push(b'?');
                number_end(sql, at)
            }
            b'.' if next.is_some_and(|b| b.is_ascii_digit()) => {
                out.push(b'?');
                number_end(sql, at)
            }
            _ if is_word_start(byte) => {
                let end = at + count_while(&sql[at..], is_word_byte);
                let word = &sql[at..end];
                if sql.get(end) == Some(&b'\'') && is_string_prefix(word) {
                    out.push(b'?');
                    string_end(sql, end, word.eq_ignore_ascii_case(b"e"))
                } else {
                    push_word(out, word);
                    end
                }
            }
            _ => {
                out.push(byte);
                at + 1
            }
        };
    }
}

/// Whether `statement` starts (after whitespace and comments) with the
/// keyword `keyword` (upper case).
pub(super) fn starts_with_keyword(statement: &[u8], keyword: &str) -> bool {
    let mut key = Vec::with_capacity(keyword.len() + 1);
    // Only the first word matters.
    push_sql_key(&mut key, statement, keyword.len() + 1);
    let word_end = count_while(&key, is_word_byte);
    key[..word_end] == *keyword.as_bytes()
}

fn push_word(out: &mut Vec<u8>, word: &[u8]) {
    let keyword = KEYWORDS
        .iter()
        .any(|keyword| keyword.as_bytes().eq_ignore_ascii_case(word));
    if keyword {
        out.extend(word.iter().map(u8::to_ascii_uppercase));
    } else {
        out.extend_from_slice(word);
    }
}

fn count_while(bytes: &[u8], keep: impl Fn(u8) -> bool) -> usize {
    bytes.iter().take_while(|&&byte| keep(byte)).count()
}

/// Identifiers: ASCII letters, `_`, and any non-ASCII byte (PostgreSQL
/// accepts multibyte letters).
fn is_word_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80
}

fn is_word_byte(byte: u8) -> bool {
    is_word_start(byte) || byte.is_ascii_digit() || byte == b'$'
}

/// `E'...'` (escapes), `B'...'` (bits), `X'...'` (hex), `N'...'`
/// (national), `U&'...'` is left alone (rare).
fn is_string_prefix(word: &[u8]) -> bool {
    matches!(
        word,
        [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N']
    )
}

/// The end of the `--` comment at `at`: after its newline, or the end.
fn line_comment_end(sql: &[u8], at: usize) -> usize {
    match sql[at..].iter().position(|&byte| byte == b'\n') {
        Some(newline) => at + newline + 1,
        None => sql.len(),
    }
}

/// The end of the `/* */` comment at `at`; PostgreSQL nests them.
fn block_comment_end(sql: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut index = at;
    while index < sql.len() {
        match (sql[index], sql.get(index + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                index += 2;
            }
            (b'*', Some(b'/')) => {
                depth = depth.saturating_sub(1);
                index += 2;
                if depth == 0 {
                    return index;
                }
            }
            _ => index += 1,
        }
    }
    sql.len()
}

/// The end of the `'...'` string opening at `at` (`''` is a quote inside;
/// with `escapes`, so is `\'`). An unterminated string runs to the end.
fn string_end(sql: &[u8], at: usize, escapes: bool) -> usize {
    let mut index = at + 1;
    while index < sql.len() {
        match sql[index] {
            b'\\' if escapes => index += 2,
            b'\'' if sql.get(index + 1) == Some(&b'\'') => index += 2,
            b'\'' => return index + 1,
            _ => index += 1,
        }
    }
    sql.len()
}

/// The end of the `"..."` identifier opening at `at` (`""` is a quote).
fn quoted_identifier_end(sql: &[u8], at: usize) -> usize {
    let mut index = at + 1;
    while index < sql.len() {
        match sql[index] {
            b'"' if sql.get(index + 1) == Some(&b'"') => index += 2,
            b'"' => return index + 1,
            _ => index += 1,
        }
    }
    sql.len()
}

/// The end of the dollar-quoted string (`$$...$$`, `$tag$...$tag$`)
/// opening at `at`; `None` when there is none (a parameter `$1`).
fn dollar_quote_end(sql: &[u8], at: usize) -> Option<usize> {
    let rest = &sql[at + 1..];
    let tag_len = match rest.first() {
        Some(&b'$') => 0,
        Some(&first) if is_word_start(first) => {
            let len = count_while(rest, |b| is_word_byte(b) && b != b'$');
            if rest.get(len) != Some(&b'$') {
                return None;
            }
            len
        }
        _ => return None,
    };
    let delimiter = &sql[at..at + tag_len + 2];
    let body = at + delimiter.len();
    let close = sql[body..]
        .windows(delimiter.len())
        .position(|window| window == delimiter);
    Some(match close {
        Some(offset) => body + offset + delimiter.len(),
        None => sql.len(),
    })
}

/// The end of the numeric literal at `at`: digits, a fraction, an exponent
/// (`1.5e-3`), hexadecimal/octal/binary forms and `_` separators.
fn number_end(sql: &[u8], at: usize) -> usize {
    let mut index = at;
    while index < sql.len() {
        let byte = sql[index];
        let exponent_sign = matches!(byte, b'+' | b'-')
            && index > at
            && matches!(sql[index - 1], b'e' | b'E')
            && !sql[at..index].starts_with(b"0x")
            && !sql[at..index].starts_with(b"0X");
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'_' || exponent_sign {
            index += 1;
        } else {
            break;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> String {
        let mut out = Vec::new();
        push_sql_key(&mut out, sql.as_bytes(), usize::MAX);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            key("select *  from items\n where id = 17 and name = 'it''s' and x=1.5e-3"),
            "SELECT * FROM items WHERE id = ? AND name = ? AND x=?"
        );
        assert_eq!(
            key("SELECT E'a\\'b', X'1F', .5, 0x1F, 1_000"),
            "SELECT ?, ?, ?, ?, ?"
        );
        assert_eq!(
            key("SELECT $$a'b$$, $fn$ x $fn$ || $1"),
            "SELECT ?, ? || $1"
        );
    }

    #[test]
    fn identifiers_parameters_and_comments() {
        assert_eq!(
            key("  /* a /* nested */ c */ INSERT INTO t1 (a, b) VALUES ($1, $2) -- done\n;"),
            "INSERT INTO t1 (a, b) VALUES ($1, $2) ;"
        );
        assert_eq!(
            key(r#"SELECT "Id 7" FROM "My""T" "#),
            r#"SELECT "Id 7" FROM "My""T""#
        );
        assert_eq!(key("SELECT col2, t.x3 FROM t"), "SELECT col2, t.x3 FROM t");
    }

    #[test]
    fn unterminated_literals_run_to_the_end() {
        assert_eq!(key("SELECT 'abc"), "SELECT ?");
        assert_eq!(key("SELECT $$abc"), "SELECT ?");
        assert_eq!(key("SELECT \"abc"), "SELECT \"abc");
        assert_eq!(key("SELECT 1 /* abc"), "SELECT ?");
        assert_eq!(key("$"), "$");
        assert_eq!(key("e"), "e");
    }

    #[test]
    fn stops_at_the_limit() {
        let mut out = b"pg Q ".to_vec();
        push_sql_key(&mut out, b"SELECT a, b FROM t", 8);
        assert_eq!(out, b"pg Q SELECT a");
    }

    #[test]
    fn first_keyword() {
        assert!(starts_with_keyword(
            b" /* x */ set datestyle TO 'ISO'",
            "SET"
        ));
        assert!(starts_with_keyword(b"SHOW server_version", "SHOW"));
        assert!(!starts_with_keyword(b"SETTINGS", "SET"));
        assert!(!starts_with_keyword(b"SELECT 1", "SET"));
        assert!(!starts_with_keyword(b"", "SET"));
    }
}
