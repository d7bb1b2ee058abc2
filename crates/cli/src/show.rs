//! `koala show`: recorded sessions in a readable form.

use std::path::PathBuf;
use std::process::ExitCode;

use koala_protocols::{Protocol, Side};
use koala_replayer::units;
use koala_session::{Exchange, Payload, Session, Tls, read_sessions_file, session_files};

pub fn run(
    paths: &[PathBuf],
    full: bool,
    filters: &crate::replay::nats::ShowFilters,
) -> Result<ExitCode, String> {
    if let [path] = paths
        && crate::replay::nats::is_stream(path)
    {
        return crate::replay::nats::show(path, full, filters, print_session);
    }
    if !filters.is_empty() {
        return Err(
            "--program, --host, --since and --until apply to a stream (nats://HOST:PORT/STREAM)"
                .into(),
        );
    }
    let files = session_files(paths).map_err(|e| e.to_string())?;
    if files.is_empty() {
        return Err("no .jsonl session files found".into());
    }
    let mut bad_lines = 0;
    let mut total = 0;
    let mut encrypted = 0;
    for file in files {
        println!("{}", file.display());
        for entry in read_sessions_file(&file).map_err(|e| e.to_string())? {
            match entry {
                Ok(session) => {
                    total += 1;
                    if holds_ciphertext(&session) {
                        encrypted += 1;
                    }
                    print_session(&session, full);
                }
                Err(error) => {
                    bad_lines += 1;
                    println!("  ! {error}");
                }
            }
        }
    }
    if encrypted > 0 {
        println!(
            "{encrypted} session(s) hold encrypted traffic: TLS done where koala cannot see the \
             plaintext (Java's JSSE, Go, a statically linked TLS library, OpenSSL fed through \
             memory BIOs such as Python's asyncio); its bytes are ciphertext, which replay \
             cannot match (see docs/tls.md)"
        );
    }
    println!(
        "{total} session(s){}",
        if bad_lines > 0 {
            format!(", {bad_lines} bad line(s)")
        } else {
            String::new()
        }
    );
    Ok(if bad_lines == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_session(session: &Session, full: bool) {
    let end = session.end.map_or("-", |e| e.as_str());
    let kind = if session.is_background() {
        "background record"
    } else {
        "session"
    };
    println!(
        "  {kind} {}  {} pid {} tid {}  end {end}",
        session.id, session.program, session.pid, session.tid
    );
    if !session.is_background() {
        let protocol = koala_protocols::detect_request(session.inbound.request.as_bytes());
        print_exchange(
            &with_tls(label("inbound", protocol), session.inbound.tls),
            &session.inbound,
            &format!("{} -> {}", session.inbound.peer, session.inbound.local),
            protocol,
            full,
        );
    }
    // What replay makes of the calls: their connection's protocol, and
    // which of them open a connection.
    let setup: Vec<usize> = units::expand(&session.calls)
        .iter()
        .filter(|unit| unit.setup)
        .map(|unit| unit.call)
        .collect();
    for (index, call) in session.calls.iter().enumerate() {
        let protocol = units::connection_protocol(
            session
                .calls
                .iter()
                .filter(|c| c.local == call.local && c.peer == call.peer),
        );
        let mut notes = Vec::new();
        if call.is_greeting() {
            notes.push("greeting");
        }
        if setup.contains(&index) {
            notes.push("set-up");
        }
        if call.closed {
            notes.push("then closed");
        }
        match call.tls {
            Tls::Plaintext => notes.push("tls"),
            Tls::Ciphertext => notes.push("encrypted"),
            Tls::None => {}
        }
        let mut text = label(&format!("call {}", index + 1), protocol);
        if !notes.is_empty() {
            text.push_str(&format!(" ({})", notes.join(", ")));
        }
        print_exchange(&text, call, &format!("-> {}", call.peer), protocol, full);
    }
}

/// Whether any exchange of `session` holds TLS koala could not see into.
fn holds_ciphertext(session: &Session) -> bool {
    std::iter::once(&session.inbound)
        .chain(&session.calls)
        .any(|e| e.tls == Tls::Ciphertext)
}

/// `inbound [http] (tls)`: plaintext recorded through the TLS hooks.
fn with_tls(label: String, tls: Tls) -> String {
    match tls {
        Tls::Plaintext => format!("{label} (tls)"),
        Tls::Ciphertext => format!("{label} (encrypted)"),
        Tls::None => label,
    }
}

/// `call 3 [postgres]`.
fn label(what: &str, protocol: Option<&dyn Protocol>) -> String {
    match protocol {
        Some(protocol) => format!("{what} [{}]", protocol.name()),
        None => what.to_string(),
    }
}

fn print_exchange(
    label: &str,
    exchange: &Exchange,
    route: &str,
    protocol: Option<&dyn Protocol>,
    full: bool,
) {
    let took = match (exchange.request_ns, exchange.response_ns) {
        (start, end) if start > 0 && end >= start => {
            format!("  {}", duration((end - start) as f64 / 1e6))
        }
        _ => String::new(),
    };
    let cut = if exchange.truncated {
        "  (truncated)"
    } else {
        ""
    };
    println!("    {label:<18} {route}{took}{cut}");
    if exchange.tls == Tls::Ciphertext {
        println!(
            "      (ciphertext: TLS koala could not see into; this session cannot be replayed)"
        );
    }
    for (name, payload, side) in [
        ("request ", &exchange.request, Side::Request),
        ("response", &exchange.response, Side::Response),
    ] {
        let rendered = protocol
            .filter(|_| !payload.is_empty())
            .and_then(|protocol| protocol.render(payload.as_bytes(), side));
        match (rendered, full) {
            // The protocol's reading, every line of it.
            (Some(text), true) => {
                let mut lines = text.lines();
                println!("      {name} {}", lines.next().unwrap_or_default());
                for line in lines {
                    println!("               {line}");
                }
            }
            (Some(text), false) => {
                println!("      {name} {}", first_line(&text, payload.len()));
            }
            // Printable ASCII as is, every other byte escaped: binary stays
            // on one line.
            (None, true) => println!("      {name} {}", payload.as_bytes().escape_ascii()),
            (None, false) => println!("      {name} {}", preview(payload)),
        }
    }
}

/// The first line of a rendering (at most 72 characters) and the size.
fn first_line(text: &str, size: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let cut: String = line.chars().take(72).collect();
    let more = if cut.len() < text.trim_end().len() {
        " …"
    } else {
        ""
    };
    format!("{cut}{more}  ({size} B)")
}

/// Milliseconds, or microseconds below one millisecond.
fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// The first line (at most 72 characters) and the size.
fn preview(payload: &Payload) -> String {
    let bytes = payload.as_bytes();
    if bytes.is_empty() {
        return "(empty)".into();
    }
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..line_end.min(72)];
    let more = if line.len() < bytes.len() { " …" } else { "" };
    format!(
        "{}{more}  ({} B)",
        line.strip_suffix(b"\r").unwrap_or(line).escape_ascii(),
        bytes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_precision() {
        assert_eq!(duration(0.042), "42 µs");
        assert_eq!(duration(3.62), "3.6 ms");
    }

    #[test]
    fn previews_show_the_first_line_and_size() {
        assert_eq!(
            preview(&Payload::from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
            "GET / HTTP/1.1 …  (27 B)"
        );
        assert_eq!(
            preview(&Payload::from(&[0u8, 0xff][..])),
            "\\x00\\xff  (2 B)"
        );
        assert_eq!(preview(&Payload::default()), "(empty)");
    }
}
