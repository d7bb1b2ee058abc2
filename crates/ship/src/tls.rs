//! TLS to the NATS server, with rustls (no system OpenSSL).
//!
//! NATS upgrades after the server's `INFO`: a server that requires TLS
//! says `tls_required`, and the client starts the handshake on the same
//! TCP connection before its `CONNECT` (docs.nats.io, "TLS"). The server's
//! certificate is checked against the certificate authorities of
//! `NATS_CA` (a PEM file), else the system's bundle, for the host name or
//! IP address of the URL; a client certificate (`NATS_CERT`, `NATS_KEY`)
//! is offered to a server that verifies its clients.
//!
//! Every failure here is one that trying again will not mend (an untrusted
//! or misnamed certificate, a client certificate refused or missing): the
//! messages say which file to give.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::url::Tls;

/// Where the system keeps its certificate authorities, when
/// `SSL_CERT_FILE` does not say.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The connection to a server: plain TCP or TLS over it.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// The TCP connection underneath (timeouts, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(stream) => stream.get_ref(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// The client's configuration: trusted authorities, and the client
/// certificate if one is given.
pub fn client_config(tls: &Tls) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            let certificates = read_certificates(ca, "NATS_CA")?;
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(format!(
                    "NATS_CA {}: no usable certificate in it",
                    ca.display()
                ));
            }
        }
        None => {
            let bundle = std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    SYSTEM_BUNDLES
                        .iter()
                        .map(std::path::PathBuf::from)
                        .find(|p| p.is_file())
                });
            // No bundle: nothing is trusted, and the handshake's error says
            // to give NATS_CA.
            if let Some(bundle) = bundle
                && let Ok(certificates) = read_certificates(&bundle, "SSL_CERT_FILE")
            {
                roots.add_parsable_certificates(certificates);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(cert, "NATS_CERT")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("NATS_KEY {}: no private key read: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("NATS_CERT and NATS_KEY: {e}"))?
        }
        (Some(_), None) => return Err("NATS_CERT is set but NATS_KEY (its key) is not".into()),
        (None, Some(_)) => return Err("NATS_KEY is set but NATS_CERT is not".into()),
    };
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    // Read first: a missing file is its own message.
    fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The host of `host:port` (`[v6]:port` too), as the certificate must
/// name it.
pub fn server_name(server: &str) -> Result<ServerName<'static>, String> {
    let host = match server.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => server.rsplit_once(':').map_or(server, |(host, _)| host),
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// The TLS handshake on `tcp` (its timeouts already set), to the end.
pub fn handshake(
    config: Arc<ClientConfig>,
    server: &str,
    tcp: TcpStream,
) -> Result<Transport, String> {
    let name = server_name(server)?;
    let connection = ClientConnection::new(config, name)
        .map_err(|e| format!("TLS with the NATS server {server}: {e}"))?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            return Err(explain(server, &e));
        }
    }
    Ok(Transport::Tls(Box::new(stream)))
}

/// The TLS error inside an I/O error, if it is one.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A TLS failure, said with what to do about it.
pub fn explain(server: &str, e: &io::Error) -> String {
    let Some(tls) = tls_error(e) else {
        return format!("TLS with the NATS server {server}: {e}");
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. },
        ) => format!(
            ": its certificate does not name {}; connect by a name or address it names",
            server_name(server).map_or_else(|_| server.to_string(), |n| n.to_str().into_owned())
        ),
        rustls::Error::InvalidCertificate(_) => {
            ": the server's certificate is not trusted; give the certificate authority that signed it in NATS_CA (a PEM file)".to_string()
        }
        rustls::Error::AlertReceived(_) | rustls::Error::NoCertificatesPresented => {
            ": the server refused the handshake; if it verifies its clients, give a client certificate and its key in NATS_CERT and NATS_KEY (PEM files)".to_string()
        }
        _ => String::new(),
    };
    format!("TLS with the NATS server {server} failed: {tls}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:4222").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:4222").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            server_name("nats1.example:4222").unwrap().to_str(),
            "nats1.example"
        );
    }

    #[test]
    fn files_that_cannot_be_used_are_named() {
        let tls = Tls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Tls::default()
        };
        let e = client_config(&tls).unwrap_err();
        assert!(e.starts_with("NATS_CA /nonexistent/ca.pem:"), "{e}");
        let tls = Tls {
            cert: Some("/nonexistent/cert.pem".into()),
            ..Tls::default()
        };
        let e = client_config(&tls).unwrap_err();
        assert!(e.contains("NATS_KEY"), "{e}");
        // Without NATS_CA the system's bundle (if any) is used.
        assert!(client_config(&Tls::default()).is_ok());
    }

    #[test]
    fn refusals_say_what_to_give() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let untrusted = explain(
            "127.0.0.1:4222",
            &wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        );
        assert!(untrusted.contains("NATS_CA"), "{untrusted}");
        let refused = explain(
            "127.0.0.1:4222",
            &wrap(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            )),
        );
        assert!(refused.contains("NATS_CERT"), "{refused}");
        let misnamed = explain(
            "127.0.0.1:4222",
            &wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            )),
        );
        assert!(misnamed.contains("does not name 127.0.0.1"), "{misnamed}");
    }
}
