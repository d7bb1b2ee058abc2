//! The SQL part of an operation key, for every protocol that carries SQL
//! (PostgreSQL, MySQL): the statement with its literal values taken out, so
//! `... WHERE id = 17` and `... WHERE id = 18` are the same operation (and
//! scored against each other), while different statements are never
//! compared. One normaliser; a [`Dialect`] says how the SQL is spelt.

/// How a dialect of SQL spells what the normaliser has to tell apart.
pub(crate) struct Dialect {
    /// Quotes that open a string literal (`?` in the key); `''` inside is a
    /// quote.
    pub string_quotes: &'static [u8],
    /// The quote of a quoted identifier (kept as it is); doubled inside.
    pub identifier_quote: u8,
    /// Whether `\` escapes the next byte in every string literal (MySQL);
    /// PostgreSQL has escapes only in `E'...'`.
    pub backslash_escapes: bool,
    /// Whether a one-letter prefix is part of a string literal: `E'...'`
    /// (escapes), `B'...'` (bits), `X'...'` (hex), `N'...'` (national).
    pub string_prefixes: bool,
    /// Whether `$$...$$` and `$tag$...$tag$` are strings and `$1` a
    /// parameter; otherwise `$` is a letter.
    pub dollar_quotes: bool,
    /// Whether `#` starts a comment to the end of the line.
    pub hash_comments: bool,
    /// Whether `/* */` comments nest.
    pub nested_comments: bool,
    /// Whether the vertical tab (0x0b) is white space. (This and
    /// [`Numbers::WordRun`] keep MySQL keys what they always were.)
    pub vertical_tab_space: bool,
    /// How far a number literal reaches.
    pub numbers: Numbers,
    /// Words upper-cased in keys besides [`SHARED_KEYWORDS`], so `select`
    /// and `SELECT` are one operation; upper case and sorted. Identifiers
    /// keep their spelling (they are what tells statements apart).
    pub keywords: &'static [&'static str],
}

/// How far a number literal reaches, from its first digit.
pub(crate) enum Numbers {
    /// Letters, digits, `.`, `_` and the sign of an exponent: `1.5e-3`,
    /// `0x1F`, `1_000`; `.5` is a number too (PostgreSQL).
    Full,
    /// Word bytes and dots: `1e-3` is two numbers, `.5` a dot and a number
    /// (MySQL).
    WordRun,
}

/// PostgreSQL: `"..."` identifiers, `E'...'`-style and dollar-quoted
/// strings, nested comments.
pub(crate) const POSTGRES: Dialect = Dialect {
    string_quotes: b"'",
    identifier_quote: b'"',
    backslash_escapes: false,
    string_prefixes: true,
    dollar_quotes: true,
    hash_comments: false,
    nested_comments: true,
    vertical_tab_space: true,
    numbers: Numbers::Full,
    keywords: POSTGRES_KEYWORDS,
};

/// MySQL / MariaDB: `` `...` `` identifiers, `'...'` and `"..."` strings
/// with backslash escapes, `#` comments.
pub(crate) const MYSQL: Dialect = Dialect {
    string_quotes: b"'\"",
    identifier_quote: b'`',
    backslash_escapes: true,
    string_prefixes: false,
    dollar_quotes: false,
    hash_comments: true,
    nested_comments: false,
    vertical_tab_space: false,
    numbers: Numbers::WordRun,
    keywords: MYSQL_KEYWORDS,
};

/// Words upper-cased in keys in every dialect, sorted.
const SHARED_KEYWORDS: &[&str] = &[
    "ALL",
    "ALTER",
    "AND",
    "ANY",
    "AS",
    "ASC",
    "BEGIN",
    "BETWEEN",
    "BY",
    "CASE",
    "COMMIT",
    "CREATE",
    "CROSS",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DO",
    "DROP",
    "ELSE",
    "END",
    "EXISTS",
    "EXPLAIN",
    "FALSE",
    "FOR",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IF",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
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
    "LOCKED",
    "NOT",
    "NOWAIT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "PRIMARY",
    "READ",
    "RELEASE",
    "RIGHT",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SESSION",
    "SET",
    "SHARE",
    "SHOW",
    "SKIP",
    "START",
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

/// PostgreSQL's own words upper-cased in keys, sorted.
const POSTGRES_KEYWORDS: &[&str] = &[
    "ANALYZE",
    "CASCADE",
    "CAST",
    "COMMITTED",
    "CONFLICT",
    "CONSTRAINT",
    "COPY",
    "COUNT",
    "CURRENT_DATE",
    "CURRENT_TIMESTAMP",
    "EXCEPT",
    "FETCH",
    "FIRST",
    "FOREIGN",
    "ILIKE",
    "INTERSECT",
    "LOCAL",
    "NEXT",
    "NOTHING",
    "ONLY",
    "OVER",
    "PARTITION",
    "REFERENCES",
    "REPEATABLE",
    "RESET",
    "RETURNING",
    "ROW",
    "ROWS",
    "SERIALIZABLE",
    "STDIN",
    "STDOUT",
];

/// MySQL's / MariaDB's own words upper-cased in keys, sorted.
const MYSQL_KEYWORDS: &[&str] = &[
    "CALL",
    "COLLATE",
    "DATABASE",
    "DESCRIBE",
    "DUPLICATE",
    "FORCE",
    "GLOBAL",
    "IGNORE",
    "LOCK",
    "NAMES",
    "NATURAL",
    "REPLACE",
    "STRAIGHT_JOIN",
    "UNLOCK",
    "USE",
    "XOR",
];

/// Appends the key form of `sql` to `out`: literals (numbers, strings,
/// with the dialect's prefixes and dollar quotes) become `?`, comments and
/// runs of whitespace one space (none at the ends), keywords upper case.
/// Parameters (`$1`, `?`), quoted identifiers and punctuation stay as they
/// are. Stops once `limit` bytes are appended (a key is capped anyway; a
/// statement may be huge), at the end of a token.
pub(crate) fn push_key(out: &mut Vec<u8>, sql: &[u8], dialect: &Dialect, limit: usize) {
    let start = out.len();
    let mut space = false;
    let mut at = 0;
    while at < sql.len() && out.len() - start < limit {
        let byte = sql[at];
        let next = sql.get(at + 1).copied();
        // Skipped text: whitespace and comments.
        let skipped = match (byte, next) {
            (b' ' | b'\t' | b'\n' | b'\r' | 0x0c, _) => Some(at + 1),
            (0x0b, _) if dialect.vertical_tab_space => Some(at + 1),
            (b'-', Some(b'-')) => Some(line_comment_end(sql, at)),
            (b'#', _) if dialect.hash_comments => Some(line_comment_end(sql, at)),
            (b'/', Some(b'*')) => Some(block_comment_end(sql, at, dialect.nested_comments)),
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
            _ if dialect.string_quotes.contains(&byte) => {
                out.push(b'?');
                string_end(sql, at, dialect.backslash_escapes)
            }
            _ if byte == dialect.identifier_quote => {
                let end = quoted_identifier_end(sql, at);
                out.extend_from_slice(&sql[at..end]);
                end
            }
            b'$' if dialect.dollar_quotes => match dollar_quote_end(sql, at, dialect) {
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
                number_end(sql, at, dialect)
            }
            b'.' if matches!(dialect.numbers, Numbers::Full)
                && next.is_some_and(|b| b.is_ascii_digit()) =>
            {
                out.push(b'?');
                number_end(sql, at, dialect)
            }
            _ if is_word_start(byte, dialect) => {
                let end = at + count_while(&sql[at..], is_word_byte);
                let word = &sql[at..end];
                if dialect.string_prefixes && sql.get(end) == Some(&b'\'') && is_string_prefix(word)
                {
                    out.push(b'?');
                    let escapes = dialect.backslash_escapes || word.eq_ignore_ascii_case(b"e");
                    string_end(sql, end, escapes)
                } else {
                    push_word(out, word, dialect);
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
/// word `keyword`, in any case.
pub(crate) fn starts_with_keyword(statement: &[u8], keyword: &str, dialect: &Dialect) -> bool {
    let mut key = Vec::with_capacity(keyword.len() + 1);
    // Only the first word matters.
    push_key(&mut key, statement, dialect, keyword.len() + 1);
    let word_end = count_while(&key, is_word_byte);
    key[..word_end].eq_ignore_ascii_case(keyword.as_bytes())
}

fn push_word(out: &mut Vec<u8>, word: &[u8], dialect: &Dialect) {
    let upper = || word.iter().map(u8::to_ascii_uppercase);
    let listed = |keywords: &[&str]| {
        keywords
            .binary_search_by(|keyword| keyword.bytes().cmp(upper()))
            .is_ok()
    };
    if listed(SHARED_KEYWORDS) || listed(dialect.keywords) {
        out.extend(upper());
    } else {
        out.extend_from_slice(word);
    }
}

fn count_while(bytes: &[u8], keep: impl Fn(u8) -> bool) -> usize {
    bytes.iter().take_while(|&&byte| keep(byte)).count()
}

/// Identifiers and keywords start with an ASCII letter, `_`, or any
/// non-ASCII byte (both servers accept multibyte letters); `$` too where it
/// does not quote.
fn is_word_start(byte: u8, dialect: &Dialect) -> bool {
    byte.is_ascii_alphabetic()
        || byte == b'_'
        || byte >= 0x80
        || (byte == b'$' && !dialect.dollar_quotes)
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

/// `E'...'` (escapes), `B'...'` (bits), `X'...'` (hex), `N'...'`
/// (national), `U&'...'` is left alone (rare).
fn is_string_prefix(word: &[u8]) -> bool {
    matches!(
        word,
        [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N']
    )
}

/// The end of the line comment (`--`, `#`) at `at`: after its newline, or
/// the end.
fn line_comment_end(sql: &[u8], at: usize) -> usize {
    match sql[at..].iter().position(|&byte| byte == b'\n') {
        Some(newline) => at + newline + 1,
        None => sql.len(),
    }
}

/// The end of the `/* */` comment at `at`: after the `*/` that closes it
/// (PostgreSQL nests them, MySQL closes at the first), or the end.
fn block_comment_end(sql: &[u8], at: usize, nested: bool) -> usize {
    let mut depth = 0usize;
    let mut index = at;
    while index < sql.len() {
        match (sql[index], sql.get(index + 1)) {
            (b'/', Some(b'*')) if nested || depth == 0 => {
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

/// The end of the string opening with the quote at `at` (a doubled quote
/// is a quote inside; with `escapes`, `\` escapes the next byte). An
/// unterminated string runs to the end.
fn string_end(sql: &[u8], at: usize, escapes: bool) -> usize {
    let quote = sql[at];
    let mut index = at + 1;
    while index < sql.len() {
        match sql[index] {
            b'\\' if escapes => index += 2,
            byte if byte == quote && sql.get(index + 1) == Some(&quote) => index += 2,
            byte if byte == quote => return index + 1,
            _ => index += 1,
        }
    }
    sql.len()
}

/// The end of the quoted identifier opening at `at` (a doubled quote is a
/// quote inside). An unterminated one runs to the end.
fn quoted_identifier_end(sql: &[u8], at: usize) -> usize {
    string_end(sql, at, false)
}

/// The end of the dollar-quoted string (`$$...$$`, `$tag$...$tag$`)
/// opening at `at`; `None` when there is none (a parameter `$1`).
fn dollar_quote_end(sql: &[u8], at: usize, dialect: &Dialect) -> Option<usize> {
    let rest = &sql[at + 1..];
    let tag_len = match rest.first() {
        Some(&b'$') => 0,
        Some(&first) if is_word_start(first, dialect) => {
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

/// The end of the number literal at `at` (see [`Numbers`]).
fn number_end(sql: &[u8], at: usize, dialect: &Dialect) -> usize {
    if matches!(dialect.numbers, Numbers::WordRun) {
        return at + count_while(&sql[at..], |b| is_word_byte(b) || b == b'.');
    }
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
    use crate::parse::testing::fuzz_inputs;

    fn key(sql: &str) -> String {
        dialect_key(&POSTGRES, sql)
    }

    fn dialect_key(dialect: &Dialect, sql: &str) -> String {
        let mut out = Vec::new();
        push_key(&mut out, sql.as_bytes(), dialect, usize::MAX);
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
        push_key(&mut out, b"SELECT a, b FROM t", &POSTGRES, 8);
        assert_eq!(out, b"pg Q SELECT a");
    }

    #[test]
    fn first_keyword() {
        assert!(starts_with_keyword(
            b" /* x */ set datestyle TO 'ISO'",
            "SET",
            &POSTGRES
        ));
        assert!(starts_with_keyword(
            b"SHOW server_version",
            "SHOW",
            &POSTGRES
        ));
        assert!(!starts_with_keyword(b"SETTINGS", "SET", &POSTGRES));
        assert!(!starts_with_keyword(b"SELECT 1", "SET", &POSTGRES));
        assert!(!starts_with_keyword(b"", "SET", &POSTGRES));
    }

    /// The same text, read by each dialect: what is a string, an
    /// identifier, a comment or a number differs.
    #[test]
    fn dialects_differ_where_the_servers_do() {
        let cases = [
            // `"` quotes an identifier in PostgreSQL, a string in MySQL.
            (
                r#"select "a" from t"#,
                r#"SELECT "a" FROM t"#,
                "SELECT ? FROM t",
            ),
            // Backslash escapes only in MySQL strings.
            (r"select 'a\' z', c", "SELECT ? z?", "SELECT ?, c"),
            // Backticks quote MySQL identifiers.
            ("select `a b`", "SELECT `a b`", "SELECT `a b`"),
            ("select `a``b` x", "SELECT `a``b` x", "SELECT `a``b` x"),
            // `#` comments only in MySQL.
            ("select 1 # c\n, 2", "SELECT ? # c , ?", "SELECT ? , ?"),
            // Comments nest only in PostgreSQL.
            ("select /* a /* b */ c */ 1", "SELECT ?", "SELECT c */ ?"),
            // Prefixed and dollar-quoted strings are PostgreSQL's; `$` is a
            // letter in MySQL.
            ("select x'1F', $$a$$", "SELECT ?, ?", "SELECT x?, $$a$$"),
            ("select $1, $a", "SELECT $1, $a", "SELECT $1, $a"),
            // Number literals.
            ("select .5, 1e-3", "SELECT ?, ?", "SELECT .?, ?-?"),
            // Keywords are the dialect's own.
            (
                "select 1 returning x xor y",
                "SELECT ? RETURNING x xor y",
                "SELECT ? returning x XOR y",
            ),
            // The vertical tab is white space in PostgreSQL only.
            ("select\x0b1", "SELECT ?", "SELECT\x0b?"),
        ];
        for (sql, postgres, mysql) in cases {
            assert_eq!(dialect_key(&POSTGRES, sql), postgres, "{sql:?}");
            assert_eq!(dialect_key(&MYSQL, sql), mysql, "{sql:?}");
        }
    }

    #[test]
    fn first_keyword_in_mysql() {
        for setup in [
            &b"SET NAMES utf8mb4"[..],
            b" /* driver */ set autocommit=1",
            b"# why\n\tSET @a = 1",
            b"-- why\nset@a=1",
        ] {
            assert!(starts_with_keyword(setup, "SET", &MYSQL), "{setup:?}");
        }
        for not_setup in [
            &b"SELECT 1"[..],
            b"SETTINGS",
            b"SET_x = 1",
            b"/* SET */ SELECT 1",
            b"'SET'",
            b"`SET`",
            b"",
        ] {
            assert!(
                !starts_with_keyword(not_setup, "SET", &MYSQL),
                "{not_setup:?}"
            );
        }
        assert!(starts_with_keyword(b"show tables", "SHOW", &MYSQL));
    }

    /// Keywords are found by binary search on their upper-case spelling,
    /// once.
    #[test]
    fn keyword_lists_are_sorted_upper_case() {
        for dialect in [&POSTGRES, &MYSQL] {
            for list in [SHARED_KEYWORDS, dialect.keywords] {
                assert!(list.windows(2).all(|pair| pair[0] < pair[1]));
                for keyword in list {
                    assert_eq!(keyword.to_ascii_uppercase(), *keyword);
                    assert_eq!(
                        dialect_key(dialect, &keyword.to_ascii_lowercase()),
                        *keyword
                    );
                }
            }
            let own = |keyword: &&str| dialect.keywords.contains(keyword);
            assert!(!SHARED_KEYWORDS.iter().any(own));
        }
    }

    #[test]
    fn any_input_is_keyed_without_panicking() {
        let seeds: [&[u8]; 3] = [
            b"SELECT E'a\\'b', $t$x$t$, \"q\"\"\", `b``c` -- c\n/* /* */ */ # h",
            b"select .5e-3, 0x1F, $1, x'00' from t where a = 'it''s'",
            b"SET NAMES utf8mb4",
        ];
        let alphabet = b"'\"`$\\/*-#.eEx01 \n\x0bSELECT_";
        fuzz_inputs(&seeds, alphabet, 20_000, |bytes, _| {
            for dialect in [&POSTGRES, &MYSQL] {
                let mut out = Vec::new();
                push_key(&mut out, bytes, dialect, 16);
                let _ = starts_with_keyword(bytes, "SET", dialect);
            }
        });
    }
}
