//! Reading session files: JSON Lines, one session per line.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::{FORMAT_VERSION, Session};

/// A line of a session file that is not a valid session.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A session file that could not be read at all.
#[derive(Debug)]
pub struct SessionFileError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for SessionFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SessionFileError {}

/// Parses one session line and checks its format version.
pub fn read_session_line(line: &str) -> Result<Session, String> {
    let session: Session = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if session.koala != FORMAT_VERSION {
        return Err(format!(
            "unsupported session format version {} (this koala reads version {FORMAT_VERSION})",
            session.koala
        ));
    }
    Ok(session)
}

/// Parses one line as read from a file: UTF-8 first (a torn write leaves
/// invalid bytes), then a session.
fn read_session_bytes(line: &[u8]) -> Result<Session, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8: {e}"))?;
    read_session_line(text)
}

/// Reads every session of a JSON Lines file. Blank lines are skipped; a bad
/// line (not JSON, not a session, not even UTF-8) is reported with its
/// number and does not stop the others.
pub fn read_sessions_file(
    path: &Path,
) -> Result<Vec<Result<Session, LineError>>, SessionFileError> {
    let file_error = |source| SessionFileError {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(fs::File::open(path).map_err(file_error)?);
    let mut sessions = Vec::new();
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        // Bytes, not `lines()`: one non-UTF-8 line must not fail the file.
        if reader.read_until(b'\n', &mut buffer).map_err(file_error)? == 0 {
            return Ok(sessions);
        }
        number += 1;
        let line = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        sessions.push(read_session_bytes(line).map_err(|message| LineError {
            line: number,
            message,
        }));
    }
}

/// Expands files and directories into the `.jsonl` files they name, in a
/// stable (sorted) order. A file given explicitly is taken whatever its name.
pub fn session_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SessionFileError> {
    let mut files = Vec::new();
    for path in paths {
        let file_error = |source| SessionFileError {
            path: path.clone(),
            source,
        };
        if fs::metadata(path).map_err(file_error)?.is_dir() {
            let entries = fs::read_dir(path).map_err(file_error)?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "jsonl") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndReason, Exchange, Payload};

    fn sample() -> Session {
        Session {
            koala: FORMAT_VERSION,
            kind: crate::Kind::Session,
            id: "1-2-3".into(),
            pid: 2,
            tid: 2,
            program: "svc".into(),
            end: Some(crate::EndReason::Close),
            inbound: Exchange {
                local: "127.0.0.1:80".into(),
                peer: "127.0.0.1:5000".into(),
                request: Payload::from("GET /"),
                response: Payload::from(&[0xffu8, 1][..]),
                request_ns: 10,
                response_ns: 20,
                ..Exchange::default()
            },
            calls: vec![
                Exchange::default(),
                Exchange {
                    request: Payload::from("GET /x HTTP/1.0\r\n\r\n"),
                    response: Payload::from("HTTP/1.0 200 OK\r\n\r\nx"),
                    conn: Some(9),
                    seq: Some(0),
                    closed: true,
                    ..Exchange::default()
                },
            ],
            ..Session::default()
        }
    }

    #[test]
    fn tls_reads_from_its_three_forms_and_rejects_others() {
        let with = |tls: &str| {
            let mut value: serde_json::Value =
                serde_json::from_str(&sample().to_json_line()).unwrap();
            value["calls"][1]["tls"] = serde_json::from_str(tls).unwrap();
            read_session_line(&value.to_string())
        };
        assert_eq!(with("true").unwrap().calls[1].tls, crate::Tls::Plaintext);
        assert_eq!(with("false").unwrap().calls[1].tls, crate::Tls::None);
        assert_eq!(
            with("\"ciphertext\"").unwrap().calls[1].tls,
            crate::Tls::Ciphertext
        );
        assert!(with("\"maybe\"").is_err());
        assert!(!sample().to_json_line().contains("tls"));
    }

    #[test]
    fn a_session_round_trips_through_its_line() {
        let line = sample().to_json_line();
        assert!(!line.contains('\n'));
        assert_eq!(read_session_line(&line).unwrap(), sample());
    }

    #[test]
    fn the_line_has_the_documented_field_names() {
        let value: serde_json::Value = serde_json::from_str(&sample().to_json_line()).unwrap();
        for field in [
            "koala", "id", "pid", "tid", "program", "end", "inbound", "calls",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for field in [
            "local",
            "peer",
            "request",
            "response",
            "request_ns",
            "response_ns",
        ] {
            assert!(
                value["inbound"].get(field).is_some(),
                "missing inbound.{field}"
            );
        }
        assert_eq!(value["end"], "close");
        for reason in [
            EndReason::NextRequest,
            EndReason::Close,
            EndReason::Idle,
            EndReason::Hint,
            EndReason::Exit,
            EndReason::Full,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert_eq!(
            value["inbound"]["response"],
            serde_json::json!({"base64": "/wE="})
        );
        assert!(value["inbound"].get("truncated").is_none());
        assert!(
            value.get("kind").is_none(),
            "the default kind is not written"
        );
        let mut background = sample();
        background.kind = crate::Kind::Background;
        let line = background.to_json_line();
        assert!(line.contains(r#""kind":"background""#), "{line}");
        assert!(read_session_line(&line).unwrap().is_background());
    }

    #[test]
    fn connection_positions_and_closes_are_written_only_when_known() {
        let line = sample().to_json_line();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let call = &value["calls"][1];
        assert_eq!(
            (&call["conn"], &call["seq"], &call["closed"]),
            (
                &serde_json::json!(9),
                &serde_json::json!(0),
                &serde_json::json!(true)
            )
        );
        for absent in ["conn", "seq", "closed"] {
            assert!(value["inbound"].get(absent).is_none(), "inbound.{absent}");
            assert!(value["calls"][0].get(absent).is_none(), "calls[0].{absent}");
        }
        let read = read_session_line(&line).unwrap();
        assert!(read.calls[1].opens_connection());
        assert!(!read.calls[0].opens_connection());
    }

    #[test]
    fn a_line_without_positions_still_reads() {
        let old = r#"{"koala":1,"id":"1-2-3","pid":2,"tid":2,"program":"svc","inbound":{"local":"a","peer":"b","request":"q","response":"r"},"calls":[{"local":"c","peer":"d","request":"x","response":"y","request_ns":1,"response_ns":2}]}"#;
        let session = read_session_line(old).unwrap();
        let call = &session.calls[0];
        assert_eq!((call.conn, call.seq, call.closed), (None, None, false));
        // Written back, nothing is added but the inbound times' defaults.
        let inbound_times = r#""response":"r","request_ns":0,"response_ns":0"#;
        assert_eq!(
            session.to_json_line(),
            old.replace(r#""response":"r""#, inbound_times)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = read_session_line(r#"{"koala":1,"id":"x"}"#).unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let mut other = sample();
        other.koala = 7;
        let err = read_session_line(&other.to_json_line()).unwrap_err();
        assert!(
            err.contains("unsupported session format version 7"),
            "{err}"
        );
        assert!(read_session_line("not json").is_err());
    }

    #[test]
    fn files_report_bad_lines_by_number() {
        let dir = std::env::temp_dir().join(format!("koala-session-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.jsonl");
        let good = sample().to_json_line();
        fs::write(&file, format!("{good}\n\n{{broken\n{good}\n")).unwrap();
        fs::write(dir.join("ignored.txt"), "x").unwrap();
        let sessions = read_sessions_file(&file).unwrap();
        assert_eq!(sessions.len(), 3);
        assert!(sessions[0].is_ok() && sessions[2].is_ok());
        assert_eq!(sessions[1].as_ref().unwrap_err().line, 3);

        // A torn line (cut inside a multi-byte character, then the next
        // session appended) is one bad line, not a bad file.
        let mut torn = format!("{good}\r\n").into_bytes();
        torn.extend_from_slice(&good.as_bytes()[..good.len() / 2]);
        torn.extend_from_slice(&[0xe2, 0x82]);
        torn.extend_from_slice(format!("{good}\n\n{good}").as_bytes());
        fs::write(&file, &torn).unwrap();
        let sessions = read_sessions_file(&file).unwrap();
        assert_eq!(sessions.len(), 3);
        assert_eq!(sessions[0].as_ref().unwrap(), &sample());
        let bad = sessions[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(
            bad.message
                .starts_with("not valid UTF-8: invalid utf-8 sequence"),
            "{bad}"
        );
        assert_eq!(
            sessions[2].as_ref().unwrap(),
            &sample(),
            "last line without a newline"
        );
        assert_eq!(
            session_files(std::slice::from_ref(&dir)).unwrap(),
            vec![file]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
