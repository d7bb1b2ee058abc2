//! Noise rules: what may differ between the recorded response and the
//! replayed one without failing the session (`--ignore RULE`, `--noise
//! FILE`), and learning them from two replays (`--learn-noise FILE`).
//!
//! A rule is one line (`docs/replay.md#noise`):
//!
//! ```text
//! [METHOD PATH-PATTERN] TARGET
//! TARGET = json:$.a.b | $.items[*].id | header:NAME | regex:PATTERN
//! ```
//!
//! A JSON rule hides the values at its path in both bodies (when both are
//! JSON), a header rule the header's values, a regex rule (the `regex`
//! crate's syntax, over bytes) every match in both bodies (or in the whole
//! response when it is not HTTP). With a scope, a rule applies only to
//! sessions whose HTTP request has that method (`*`: any) and a path
//! (without the query) matching the pattern, where `*` stands for any run
//! of characters but `/`, and `**` for any run at all. A rule *applied*
//! when it hid a difference; the report lists those per session.

use regex::bytes::Regex;
use serde_json::Value;

use super::compare::{HttpResponse, parse_http_response};

/// What a masked value becomes in both responses, so diffs show where.
pub const MASK: &str = "<noise>";

/// One noise rule, as written.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule's line, as given (trimmed): how the report names it.
    pub text: String,
    scope: Option<Scope>,
    target: Target,
}

#[derive(Clone, Debug)]
struct Scope {
    /// Upper-cased; `None`: any method.
    method: Option<String>,
    path: String,
}

#[derive(Clone, Debug)]
enum Target {
    Json(Vec<Step>),
    Header(String),
    Regex(Regex),
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    /// `[*]` or `.*`: every element or member.
    Any,
}

impl Rule {
    /// Parses one rule (see the module's documentation).
    pub fn parse(line: &str) -> Result<Rule, String> {
        let text = line.trim();
        if text.is_empty() {
            return Err("empty rule".into());
        }
        let (scope, target) = split_scope(text);
        let target = if let Some(path) = target.strip_prefix("json:") {
            Target::Json(parse_path(path.trim())?)
        } else if target.starts_with('$') {
            Target::Json(parse_path(target)?)
        } else if let Some(name) = target.strip_prefix("header:") {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("{text:?}: header:NAME needs one header name"));
            }
            Target::Header(name)
        } else if let Some(pattern) = target.strip_prefix("regex:") {
            if pattern.is_empty() {
                return Err(format!("{text:?}: regex:PATTERN needs a pattern"));
            }
            Target::Regex(Regex::new(pattern).map_err(|e| format!("{text:?}: bad regex: {e}"))?)
        } else {
            return Err(format!(
                "{text:?}: expected json:$.path (or $.path), header:NAME or regex:PATTERN, optionally after METHOD /path"
            ));
        };
        Ok(Rule {
            text: text.to_string(),
            scope,
            target,
        })
    }

    /// Whether the rule applies to a session whose request is `request`.
    pub fn applies_to(&self, request: &[u8]) -> bool {
        let Some(scope) = &self.scope else {
            return true;
        };
        let Some((method, path)) = request_line(request) else {
            return false;
        };
        scope.method.as_ref().is_none_or(|m| *m == method) && glob(&scope.path, &path)
    }
}

/// `METHOD /path TARGET` → the scope and the target; otherwise no scope.
fn split_scope(text: &str) -> (Option<Scope>, &str) {
    let mut words = text.splitn(3, char::is_whitespace);
    if let (Some(method), Some(path), Some(rest)) = (words.next(), words.next(), words.next())
        && path.starts_with('/')
        && (method == "*" || method.chars().all(|c| c.is_ascii_alphabetic()))
    {
        let method = (method != "*").then(|| method.to_ascii_uppercase());
        let scope = Scope {
            method,
            path: path.to_string(),
        };
        return (Some(scope), rest.trim());
    }
    (None, text)
}

/// `$`, then `.key`, `['key']`, `[N]`, `[*]` or `.*`.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("bad JSON path {path:?}: {why}");
    let mut rest = path
        .strip_prefix('$')
        .ok_or_else(|| bad("it starts with $"))?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            if key.is_empty() {
                return Err(bad("an empty key"));
            }
            steps.push(if key == "*" {
                Step::Any
            } else {
                Step::Key(key.to_string())
            });
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(|| bad("a [ without ]"))?;
            let inside = after[..end].trim();
            steps.push(if inside == "*" {
                Step::Any
            } else if let Ok(index) = inside.parse() {
                Step::Index(index)
            } else if let Some(key) = inside
                .strip_prefix('\'')
                .and_then(|k| k.strip_suffix('\''))
                .or_else(|| inside.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            {
                Step::Key(key.to_string())
            } else {
                return Err(bad("[...] holds a number, * or a quoted key"));
            });
            rest = &after[end + 1..];
        } else {
            return Err(bad("expected . or [ after a step"));
        }
    }
    Ok(steps)
}

/// The method and the path (without its query) of an HTTP/1 request.
fn request_line(request: &[u8]) -> Option<(String, String)> {
    let end = request.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&request[..end]).ok()?.trim_end();
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path.to_string()))
}

/// `*`: any run of characters but `/`; `**`: any run at all.
fn glob(pattern: &str, text: &str) -> bool {
    fn matches(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) if rest.first() == Some(&b'*') => {
                (0..=t.len()).any(|i| matches(&rest[1..], &t[i..]))
            }
            Some((b'*', rest)) => {
                let limit = t.iter().position(|&b| b == b'/').unwrap_or(t.len());
                (0..=limit).any(|i| matches(rest, &t[i..]))
            }
            Some((c, rest)) => t.first() == Some(c) && matches(rest, &t[1..]),
        }
    }
    matches(pattern.as_bytes(), text.as_bytes())
}

/// Parses a noise file: one rule per line; blank lines and lines starting
/// with `#` are skipped. Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        rules.push(Rule::parse(line).map_err(|e| format!("line {}: {e}", index + 1))?);
    }
    Ok(rules)
}

/// The two responses with the noise of `rules` hidden, ready for
/// [`super::compare::compare`].
#[derive(Debug, Default, PartialEq)]
pub struct Masked {
    pub recorded: Vec<u8>,
    pub actual: Vec<u8>,
    /// Header names to leave out of the comparison.
    pub ignore_headers: Vec<String>,
    /// The rules that hid a difference, in the order given.
    pub applied: Vec<String>,
}

/// Hides what `rules` name in both responses. `None` when no rule has
/// anything to hide (compare the responses as they are).
pub fn mask(recorded: &[u8], actual: &[u8], rules: &[&Rule]) -> Option<Masked> {
    if rules.is_empty() {
        return None;
    }
    let mut masked = Masked::default();
    let mut applied = vec![false; rules.len()];
    let (Some(expected), Some(got)) = (parse_http_response(recorded), parse_http_response(actual))
    else {
        // Not HTTP: the whole response is the body.
        let (r, a) = mask_body(recorded.to_vec(), actual.to_vec(), rules, &mut applied);
        masked.recorded = r;
        masked.actual = a;
        masked.applied = applied_rules(rules, &applied);
        return (!masked.applied.is_empty()).then_some(masked);
    };
    for (index, rule) in rules.iter().enumerate() {
        if let Target::Header(name) = &rule.target {
            masked.ignore_headers.push(name.clone());
            applied[index] = header_values(&expected, name) != header_values(&got, name);
        }
    }
    let (body_r, body_a) = mask_body(expected.body.clone(), got.body.clone(), rules, &mut applied);
    let body_masked = body_r != expected.body || body_a != got.body;
    if body_masked {
        // The hidden values had their own lengths.
        masked.ignore_headers.push("content-length".into());
    }
    masked.recorded = rebuild(&expected, &body_r);
    masked.actual = rebuild(&got, &body_a);
    masked.applied = applied_rules(rules, &applied);
    Some(masked)
}

fn applied_rules(rules: &[&Rule], applied: &[bool]) -> Vec<String> {
    rules
        .iter()
        .zip(applied)
        .filter(|(_, applied)| **applied)
        .map(|(rule, _)| rule.text.clone())
        .collect()
}

fn header_values(response: &HttpResponse, name: &str) -> Vec<String> {
    let mut values: Vec<String> = response
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect();
    values.sort();
    values
}

/// A response again, its body replaced (de-chunked: the framing headers go).
fn rebuild(response: &HttpResponse, body: &[u8]) -> Vec<u8> {
    let mut out = response.status_line.clone().into_bytes();
    out.extend_from_slice(b"\r\n");
    for (name, value) in &response.headers {
        if name == "transfer-encoding" && response.chunked {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Masks two bodies: regex rules first (over the bytes), then JSON rules
/// when both bodies are JSON (re-serialized compactly, both the same way).
fn mask_body(
    mut recorded: Vec<u8>,
    mut actual: Vec<u8>,
    rules: &[&Rule],
    applied: &mut [bool],
) -> (Vec<u8>, Vec<u8>) {
    for (index, rule) in rules.iter().enumerate() {
        if let Target::Regex(regex) = &rule.target {
            let found = |bytes: &[u8]| -> Vec<Vec<u8>> {
                regex
                    .find_iter(bytes)
                    .map(|m| m.as_bytes().to_vec())
                    .collect()
            };
            if found(&recorded) != found(&actual) {
                applied[index] = true;
            }
            recorded = regex.replace_all(&recorded, MASK.as_bytes()).into_owned();
            actual = regex.replace_all(&actual, MASK.as_bytes()).into_owned();
        }
    }
    let json_rules: Vec<(usize, &Vec<Step>)> = rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| match &rule.target {
            Target::Json(steps) => Some((index, steps)),
            _ => None,
        })
        .collect();
    if json_rules.is_empty() {
        return (recorded, actual);
    }
    let (Ok(mut r), Ok(mut a)) = (
        serde_json::from_slice::<Value>(&recorded),
        serde_json::from_slice::<Value>(&actual),
    ) else {
        return (recorded, actual);
    };
    let mut any = false;
    for (index, steps) in json_rules {
        let mut hidden_r = Vec::new();
        let mut hidden_a = Vec::new();
        hide(&mut r, steps, &mut hidden_r);
        hide(&mut a, steps, &mut hidden_a);
        if hidden_r != hidden_a {
            applied[index] = true;
        }
        any |= !hidden_r.is_empty() || !hidden_a.is_empty();
    }
    if !any {
        return (recorded, actual);
    }
    let serialize = |value: &Value| serde_json::to_vec(value).unwrap_or_default();
    (serialize(&r), serialize(&a))
}

/// Replaces the values at `steps` under `value` with [`MASK`], keeping
/// what they were in `hidden`.
fn hide(value: &mut Value, steps: &[Step], hidden: &mut Vec<Value>) {
    let Some((step, rest)) = steps.split_first() else {
        hidden.push(std::mem::replace(value, Value::String(MASK.into())));
        return;
    };
    match (step, value) {
        (Step::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get_mut(key) {
                hide(child, rest, hidden);
            }
        }
        (Step::Index(index), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*index) {
                hide(child, rest, hidden);
            }
        }
        (Step::Any, Value::Array(items)) => {
            for child in items {
                hide(child, rest, hidden);
            }
        }
        (Step::Any, Value::Object(map)) => {
            for child in map.values_mut() {
                hide(child, rest, hidden);
            }
        }
        _ => {}
    }
}

// ---- learning ---------------------------------------------------------------

/// The rules that hide what differs between two answers of the service to
/// the same replayed request (`first`, `second`), scoped to its endpoint.
pub fn learn(request: &[u8], first: &[u8], second: &[u8]) -> Vec<String> {
    let scope = request_line(request)
        .map(|(method, path)| format!("{method} {} ", generalize_path(&path)))
        .unwrap_or_default();
    let mut targets = Vec::new();
    let (body_1, body_2) = match (parse_http_response(first), parse_http_response(second)) {
        (Some(one), Some(two)) => {
            let mut names: Vec<&String> = one.headers.iter().map(|(n, _)| n).collect();
            names.extend(two.headers.iter().map(|(n, _)| n));
            names.sort();
            names.dedup();
            for name in names {
                if matches!(name.as_str(), "date" | "content-length")
                    || header_values(&one, name) == header_values(&two, name)
                {
                    continue;
                }
                targets.push(format!("header:{name}"));
            }
            (one.body, two.body)
        }
        _ => (first.to_vec(), second.to_vec()),
    };
    if body_1 != body_2 {
        match (
            serde_json::from_slice::<Value>(&body_1),
            serde_json::from_slice::<Value>(&body_2),
        ) {
            (Ok(one), Ok(two)) => {
                let mut paths = Vec::new();
                differing_paths(&one, &two, "$".into(), &mut paths);
                paths.dedup();
                targets.extend(paths.into_iter().map(|path| format!("json:{path}")));
            }
            _ => targets.extend(differing_token(&body_1, &body_2)),
        }
    }
    let mut rules: Vec<String> = targets.into_iter().map(|t| format!("{scope}{t}")).collect();
    rules.dedup();
    rules
}

/// Path segments that look like ids (numbers, hex, uuids) become `*`.
fn generalize_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            let id_like = !segment.is_empty()
                && segment.chars().any(|c| c.is_ascii_digit())
                && segment.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if id_like { "*" } else { segment }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The paths of the leaves that differ; array indices become `[*]`.
fn differing_paths(one: &Value, two: &Value, path: String, out: &mut Vec<String>) {
    match (one, two) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("{path}.{key}")
                } else {
                    format!("{path}['{key}']")
                };
                match b.get(key) {
                    Some(other) => differing_paths(value, other, child, out),
                    None => out.push(child),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (x, y) in a.iter().zip(b) {
                differing_paths(x, y, format!("{path}[*]"), out);
            }
        }
        _ if one != two && !out.contains(&path) => out.push(path),
        _ => {}
    }
}

/// For bodies that are not JSON: a regex for the first differing token,
/// anchored on the literal text before it.
fn differing_token(one: &[u8], two: &[u8]) -> Option<String> {
    let at = one.iter().zip(two).position(|(a, b)| a != b)?;
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:+".contains(b);
    let start = one[..at]
        .iter()
        .rposition(|b| !token(b))
        .map_or(0, |i| i + 1);
    let context_start = start.saturating_sub(16);
    let context = std::str::from_utf8(&one[context_start..start]).ok()?;
    let context = context.rsplit('\n').next().unwrap_or(context);
    if context.is_empty() {
        return None;
    }
    Some(format!("regex:{}[A-Za-z0-9_.:+-]+", regex::escape(context)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> Vec<Rule> {
        lines.iter().map(|l| Rule::parse(l).unwrap()).collect()
    }

    fn refs(rules: &[Rule]) -> Vec<&Rule> {
        rules.iter().collect()
    }

    fn http(body: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn rules_parse_with_and_without_a_scope() {
        let rule = Rule::parse(" json:$.data.created_at ").unwrap();
        assert_eq!(rule.text, "json:$.data.created_at");
        assert!(rule.applies_to(b"anything"));
        let rule = Rule::parse("$.items[*].id").unwrap();
        assert!(
            matches!(&rule.target, Target::Json(s) if s == &[Step::Key("items".into()), Step::Any, Step::Key("id".into())])
        );
        let rule = Rule::parse("POST /orders/* header:X-Request-Id").unwrap();
        assert!(matches!(&rule.target, Target::Header(n) if n == "x-request-id"));
        assert!(rule.applies_to(b"POST /orders/17?x=1 HTTP/1.1\r\n\r\n"));
        assert!(!rule.applies_to(b"GET /orders/17 HTTP/1.1\r\n\r\n"));
        assert!(!rule.applies_to(b"POST /orders/17/items HTTP/1.1\r\n\r\n"));
        assert!(!rule.applies_to(b"\x00binary"));
        let rule = Rule::parse("* /api/** regex:id=[0-9]+").unwrap();
        assert!(rule.applies_to(b"DELETE /api/a/b/c HTTP/1.1\r\n"));
        assert!(
            matches!(&Rule::parse("$['odd key'][2]").unwrap().target, Target::Json(s) if s == &[Step::Key("odd key".into()), Step::Index(2)])
        );
        // A regex with spaces is not mistaken for a scope.
        assert!(Rule::parse("regex:a b c").unwrap().scope.is_none());
    }

    #[test]
    fn bad_rules_say_why() {
        for (rule, expected) in [
            ("", "empty rule"),
            ("created_at", "expected json:$.path"),
            ("json:a.b", "it starts with $"),
            ("$.a[", "a [ without ]"),
            ("$.a[x]", "holds a number"),
            ("$..a", "an empty key"),
            ("header:", "needs one header name"),
            ("regex:(", "bad regex"),
            ("regex:", "needs a pattern"),
        ] {
            let error = Rule::parse(rule).unwrap_err();
            assert!(error.contains(expected), "{rule:?}: {error}");
        }
        let error = parse_file("# noise\n\n$.a\nnope\n").unwrap_err();
        assert!(error.starts_with("line 4: "), "{error}");
        assert_eq!(parse_file("# only\n$.a\n  header:x  \n").unwrap().len(), 2);
    }

    #[test]
    fn json_rules_hide_values_and_say_when_they_applied() {
        let recorded = http(r#"{"id":1,"at":"10:00","items":[{"u":"a"},{"u":"b"}]}"#, "");
        let actual = http(r#"{"id":1,"at":"10:07","items":[{"u":"x"},{"u":"b"}]}"#, "");
        let given = rules(&["$.at", "$.items[*].u", "$.id", "$.missing"]);
        let masked = mask(&recorded, &actual, &refs(&given)).unwrap();
        assert_eq!(masked.applied, ["$.at", "$.items[*].u"]);
        assert_eq!(masked.recorded, masked.actual);
        assert!(String::from_utf8_lossy(&masked.actual).contains(r#""at":"<noise>""#));
        let comparison = super::super::compare::compare(
            &masked.recorded,
            &masked.actual,
            false,
            &masked.ignore_headers,
        );
        assert!(comparison.equal());
        // A rule that hides nothing different leaves the difference seen.
        let only_id = rules(&["$.id"]);
        let masked = mask(&recorded, &actual, &refs(&only_id)).unwrap();
        assert!(masked.applied.is_empty());
        assert_ne!(masked.recorded, masked.actual);
    }

    #[test]
    fn header_and_regex_rules() {
        let recorded = http("token=abc123 ok", "X-Trace: 1\r\n");
        let actual = http("token=zz9 ok", "X-Trace: 2\r\n");
        let given = rules(&["header:x-trace", "regex:token=[a-z0-9]+"]);
        let masked = mask(&recorded, &actual, &refs(&given)).unwrap();
        assert_eq!(masked.applied, ["header:x-trace", "regex:token=[a-z0-9]+"]);
        assert!(masked.ignore_headers.contains(&"x-trace".to_string()));
        assert!(
            masked
                .ignore_headers
                .contains(&"content-length".to_string())
        );
        let comparison = super::super::compare::compare(
            &masked.recorded,
            &masked.actual,
            false,
            &masked.ignore_headers,
        );
        assert!(comparison.equal(), "{comparison:?}");
        // Not HTTP: the whole response is the body.
        let masked = mask(
            b"+1700000000\r\n",
            b"+1700000042\r\n",
            &refs(&rules(&["regex:[0-9]{10}"])),
        )
        .unwrap();
        assert_eq!(masked.recorded, masked.actual);
        assert!(mask(b"x", b"y", &[]).is_none());
    }

    #[test]
    fn learning_names_what_differs_between_two_runs() {
        let request = b"POST /orders/42 HTTP/1.1\r\nHost: x\r\n\r\n";
        let one = http(
            r#"{"id":7,"at":1.5,"rows":[{"t":"a"}],"same":true}"#,
            "X-Req: a\r\nServer: s\r\n",
        );
        let two = http(
            r#"{"id":7,"at":2.25,"rows":[{"t":"b"}],"same":true}"#,
            "X-Req: b\r\nServer: s\r\n",
        );
        assert_eq!(
            learn(request, &one, &two),
            [
                "POST /orders/* header:x-req",
                "POST /orders/* json:$.at",
                "POST /orders/* json:$.rows[*].t",
            ]
        );
        let learned = parse_file(&learn(request, &one, &two).join("\n")).unwrap();
        let masked = mask(&one, &two, &refs(&learned)).unwrap();
        assert_eq!(masked.applied.len(), 3);
        assert!(learn(request, &one, &one).is_empty());
        let text = learn(
            b"GET /now HTTP/1.1\r\n\r\n",
            &http("<p>time: 10:00:01</p>", ""),
            &http("<p>time: 10:00:02</p>", ""),
        );
        assert_eq!(text, ["GET /now regex:<p>time: [A-Za-z0-9_.:+-]+"]);
        let learned = parse_file(&text.join("\n")).unwrap();
        let masked = mask(
            &http("<p>time: 09:59:59</p>", ""),
            &http("<p>time: 10:00:02</p>", ""),
            &refs(&learned),
        )
        .unwrap();
        assert_eq!(masked.recorded, masked.actual);
    }

    #[test]
    fn globs() {
        assert!(glob("/a/*", "/a/b"));
        assert!(!glob("/a/*", "/a/b/c"));
        assert!(glob("/a/**", "/a/b/c"));
        assert!(glob("/a/*/c", "/a/xyz/c"));
        assert!(!glob("/a", "/a/"));
    }
}
