//! `nats://` URLs: `nats://[USER[:PASSWORD]@|TOKEN@]HOST[:PORT][,HOST[:PORT]...][/STREAM]`,
//! or `tls://...` to insist on TLS.
//!
//! Several comma-separated servers are the members of one cluster, tried in
//! turn (failover). The port defaults to 4222. Credentials may also come
//! from `NATS_USER`/`NATS_PASSWORD` or `NATS_TOKEN` (a command line is
//! visible to every user of the machine; the environment is not), and the
//! TLS files from `NATS_CA`, `NATS_CERT` and `NATS_KEY` (the variables of
//! the `nats` command-line tool).

use std::fmt;
use std::path::PathBuf;

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    None,
    User {
        user: String,
        password: String,
    },
    Token(String),
}

impl fmt::Debug for Auth {
    // Never print a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => write!(f, "no credentials"),
            Auth::User { user, .. } => write!(f, "user {user:?}"),
            Auth::Token(_) => write!(f, "a token"),
        }
    }
}

/// TLS to the server. The connection is upgraded to TLS when the server
/// requires it (its `INFO` says `tls_required`), or always with a `tls://`
/// URL.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// `tls://`: TLS even where the server would take plain TCP (and an
    /// error where it offers no TLS).
    pub required: bool,
    /// PEM file of the certificate authorities to trust (`NATS_CA`);
    /// default: the system's bundle.
    pub ca: Option<PathBuf>,
    /// PEM files of a client certificate and its key (`NATS_CERT`,
    /// `NATS_KEY`), for a server that verifies its clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A parsed `nats://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsUrl {
    /// `host:port` of each server, in the order given.
    pub servers: Vec<String>,
    pub auth: Auth,
    /// The path: a stream name, when the URL names one.
    pub stream: Option<String>,
    pub tls: Tls,
}

impl NatsUrl {
    /// Parses `text`: `nats://` (TLS if the server requires it) or
    /// `tls://` (TLS always).
    pub fn parse(text: &str) -> Result<NatsUrl, String> {
        let mut tls = Tls::default();
        let rest = if let Some(rest) = text.strip_prefix("nats://") {
            rest
        } else if let Some(rest) = text.strip_prefix("tls://") {
            tls.required = true;
            rest
        } else {
            return Err(format!(
                "{}: not a NATS URL (nats://HOST:PORT[/STREAM], or tls://... for TLS)",
                redacted(text)
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let auth = match userinfo {
            None => Auth::None,
            Some(info) => match info.split_once(':') {
                Some((user, password)) => Auth::User {
                    user: percent_decode(user)?,
                    password: percent_decode(password)?,
                },
                None => Auth::Token(percent_decode(info)?),
            },
        };
        let mut servers = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            if host.is_empty() {
                return Err(format!("{}: a server address is empty", redacted(text)));
            }
            servers.push(with_port(host).map_err(|e| format!("{}: {e}", redacted(text)))?);
        }
        let stream = path.trim_end_matches('/');
        let stream = if stream.is_empty() {
            None
        } else {
            check_stream_name(stream)?;
            Some(stream.to_string())
        };
        Ok(NatsUrl {
            servers,
            auth,
            stream,
            tls,
        })
    }

    /// The credentials of the URL, else of `NATS_USER`/`NATS_PASSWORD` or
    /// `NATS_TOKEN`; the TLS files of `NATS_CA`, `NATS_CERT`, `NATS_KEY`.
    pub fn with_env_auth(mut self) -> NatsUrl {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        self.tls.ca = self.tls.ca.take().or_else(|| path("NATS_CA"));
        self.tls.cert = self.tls.cert.take().or_else(|| path("NATS_CERT"));
        self.tls.key = self.tls.key.take().or_else(|| path("NATS_KEY"));
        if self.auth == Auth::None {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            if let Some(user) = var("NATS_USER") {
                self.auth = Auth::User {
                    user,
                    password: var("NATS_PASSWORD").unwrap_or_default(),
                };
            } else if let Some(token) = var("NATS_TOKEN") {
                self.auth = Auth::Token(token);
            }
        }
        self
    }

    /// The URL without credentials, for messages and reports.
    pub fn display(&self) -> String {
        let scheme = if self.tls.required { "tls" } else { "nats" };
        let mut text = format!("{scheme}://{}", self.servers.join(","));
        if let Some(stream) = &self.stream {
            text.push('/');
            text.push_str(stream);
        }
        text
    }
}

/// `text` with any credentials replaced, for error messages.
fn redacted(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &text[..scheme], &text[at + 1..])
        }
        _ => text.to_string(),
    }
}

fn with_port(host: &str) -> Result<String, String> {
    // [v6]:port, [v6], host:port, host
    if let Some(rest) = host.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(format!("{host:?} is not a host[:port]"));
        };
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => check_port(port).map(|()| host.to_string()),
            None if after.is_empty() => Ok(format!("{host}:4222")),
            None => Err(format!("{host:?} is not a host[:port]")),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && !name.contains(':') => {
            check_port(port).map(|()| host.to_string())
        }
        None => Ok(format!("{host}:4222")),
        _ => Err(format!("{host:?} is not a host[:port]")),
    }
}

fn check_port(port: &str) -> Result<(), String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port")),
    }
}

/// A stream name JetStream accepts: no whitespace, `.`, `*`, `>`, path
/// separators or control characters.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    let bad = |c: char| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c);
    if name.is_empty() || name.len() > 255 || name.chars().any(bad) {
        return Err(format!(
            "{name:?} is not a stream name (letters, digits, - and _; no '.', '*', '>', '/' or spaces)"
        ));
    }
    Ok(())
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a credential in the URL has a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a credential in the URL is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_credentials_and_stream() {
        let url = NatsUrl::parse("nats://127.0.0.1:4222/KOALA").unwrap();
        assert_eq!(url.servers, ["127.0.0.1:4222"]);
        assert_eq!(url.auth, Auth::None);
        assert_eq!(url.stream.as_deref(), Some("KOALA"));

        let url = NatsUrl::parse("nats://al%40ice:p%3Ass@a:1,b,[::1]:3,[::1]").unwrap();
        assert_eq!(url.servers, ["a:1", "b:4222", "[::1]:3", "[::1]:4222"]);
        assert_eq!(
            url.auth,
            Auth::User {
                user: "al@ice".into(),
                password: "p:ss".into()
            }
        );
        assert_eq!(url.stream, None);
        assert_eq!(url.display(), "nats://a:1,b:4222,[::1]:3,[::1]:4222");
        assert!(!format!("{url:?}").contains("p:ss"), "no secret in Debug");

        let url = NatsUrl::parse("nats://s3cret@h:5/S/").unwrap();
        assert_eq!(url.auth, Auth::Token("s3cret".into()));
        assert_eq!(url.stream.as_deref(), Some("S"));
        assert!(!url.tls.required);

        let url = NatsUrl::parse("tls://u:p@h:5,g/S").unwrap();
        assert!(url.tls.required, "tls:// insists on TLS");
        assert_eq!(url.servers, ["h:5", "g:4222"]);
        assert_eq!(url.display(), "tls://h:5,g:4222/S");
    }

    #[test]
    fn bad_urls_are_explained_without_secrets() {
        let e = NatsUrl::parse("http://u:secret@h:4222").unwrap_err();
        assert!(e.contains("tls://") && !e.contains("secret"), "{e}");
        let e = NatsUrl::parse("http://h:4222").unwrap_err();
        assert!(e.contains("not a NATS URL"), "{e}");
        for bad in ["nats://h:0", "nats://h:x", "nats://,h", "nats://h:1/a.b"] {
            assert!(NatsUrl::parse(bad).is_err(), "{bad}");
        }
        let e = NatsUrl::parse("nats://u:secret@h:99999").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
