//! The boundary between koala and a streaming engine: what `koala ship`
//! publishes to ([`Sink`]) and what `koala replay`/`koala show` read from
//! ([`Source`]). JetStream implements both ([`JetStreamSink`],
//! [`JetStreamSource`]); another engine (Kafka: a topic per stream, the
//! message id as the idempotent producer's key) would implement the same
//! two traits.

use std::time::Duration;

use crate::jetstream::{self, JetStream, Publish, StoredMessage};
use crate::nats::Options;

/// What a record is, as its subject says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Session,
    Background,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "session",
            RecordKind::Background => "background",
        }
    }
}

/// One session line to ship.
pub struct Record<'a> {
    pub kind: RecordKind,
    pub program: &'a str,
    pub host: &'a str,
    /// De-duplication key: the same record sent again is stored once.
    pub id: &'a str,
    pub line: &'a [u8],
}

/// The answer for one record.
#[derive(Debug, PartialEq)]
pub enum Published {
    /// Stored at this position of the stream.
    Stored(u64),
    /// Already there (a re-send inside the de-duplication window).
    Duplicate(u64),
}

/// Why a record was not published.
#[derive(Debug)]
pub struct SinkError {
    pub message: String,
    /// Worth sending again later (the engine is down or electing a
    /// leader), as opposed to a refusal that will not change.
    pub transient: bool,
}

pub trait Sink {
    /// Publishes the records, in order; one answer per record. A record
    /// may be sent again after any error: the engine de-duplicates it.
    fn publish(&mut self, records: &[Record]) -> Vec<Result<Published, SinkError>>;
    /// The largest record the engine takes, in bytes (0: unknown).
    fn max_record(&self) -> usize;
}

/// One session line read back.
pub struct StoredRecord {
    /// Position in the stream (increasing).
    pub seq: u64,
    pub subject: String,
    pub line: Vec<u8>,
}

pub trait Source {
    /// The next record at or after position `from` that the filter takes,
    /// or `None` at the end.
    fn next_record(&mut self, from: u64) -> Result<Option<StoredRecord>, SinkError>;
}

/// The subject of a record: `koala.<stream>.<kind>.<program>.<host>`,
/// each name reduced to what a subject token may hold.
pub fn subject(stream: &str, kind: RecordKind, program: &str, host: &str) -> String {
    format!(
        "koala.{stream}.{}.{}.{}",
        kind.as_str(),
        token(program),
        token(host)
    )
}

/// The subjects of a stream: `koala.<stream>.>`.
pub fn stream_subjects(stream: &str) -> String {
    format!("koala.{stream}.>")
}

/// The filter for a kind of record, optionally of one program.
pub fn filter(stream: &str, kind: RecordKind, program: Option<&str>) -> String {
    let program = program.map_or_else(|| "*".to_string(), token);
    format!("koala.{stream}.{}.{program}.*", kind.as_str())
}

/// A name as a subject token: letters, digits, `-` and `_` kept, anything
/// else (`.`, `*`, `>`, spaces, control characters) becomes `_`; empty
/// becomes `_`.
pub fn token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() { "_".into() } else { token }
}

/// `koala ship`'s JetStream side.
pub struct JetStreamSink {
    pub js: JetStream,
    pub stream: String,
}

impl JetStreamSink {
    pub fn connect(options: Options, stream: &str) -> Result<JetStreamSink, jetstream::Error> {
        Ok(JetStreamSink {
            js: JetStream::connect(options)?,
            stream: stream.to_string(),
        })
    }
}

impl Sink for JetStreamSink {
    fn publish(&mut self, records: &[Record]) -> Vec<Result<Published, SinkError>> {
        let subjects: Vec<String> = records
            .iter()
            .map(|r| subject(&self.stream, r.kind, r.program, r.host))
            .collect();
        let messages: Vec<Publish> = records
            .iter()
            .zip(&subjects)
            .map(|(r, subject)| Publish {
                subject,
                id: r.id,
                payload: r.line,
            })
            .collect();
        let results = self.js.publish_batch(&messages);
        // A broken connection is re-established by the next batch.
        results
            .into_iter()
            .map(|result| match result {
                Ok(ack) if ack.stream != self.stream => Err(SinkError {
                    message: format!(
                        "stored by stream {} instead of {}: two streams take koala.{}.>",
                        ack.stream, self.stream, self.stream
                    ),
                    transient: false,
                }),
                Ok(ack) if ack.duplicate => Ok(Published::Duplicate(ack.seq)),
                Ok(ack) => Ok(Published::Stored(ack.seq)),
                Err(e) => Err(SinkError {
                    transient: e.is_transient(),
                    message: e.to_string(),
                }),
            })
            .collect()
    }

    fn max_record(&self) -> usize {
        // Headers (the message id) take a little of the server's bound.
        self.js.connection_info_max_payload().saturating_sub(256)
    }
}

/// Reading a stream without a consumer (`STREAM.MSG.GET`), by subject filter.
pub struct JetStreamSource {
    pub js: JetStream,
    pub stream: String,
    pub filter: String,
}

impl Source for JetStreamSource {
    fn next_record(&mut self, from: u64) -> Result<Option<StoredRecord>, SinkError> {
        let mut attempt = 0;
        loop {
            match self.js.get_next(&self.stream, from.max(1), &self.filter) {
                Ok(found) => {
                    return Ok(found.map(
                        |StoredMessage {
                             subject, seq, data, ..
                         }| {
                            StoredRecord {
                                seq,
                                subject,
                                line: data,
                            }
                        },
                    ));
                }
                // A cluster may be electing a leader: a few tries.
                Err(e) if e.is_transient() && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                Err(e) => {
                    return Err(SinkError {
                        transient: e.is_transient(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_made_of_safe_tokens() {
        assert_eq!(
            subject("KOALA", RecordKind::Session, "python3", "web-1"),
            "koala.KOALA.session.python3.web-1"
        );
        assert_eq!(
            subject("S", RecordKind::Background, "php-fpm8.2", "a.b.c"),
            "koala.S.background.php-fpm8_2.a_b_c"
        );
        assert_eq!(token("*> \u{1}"), "____");
        assert_eq!(token(""), "_");
        assert_eq!(
            filter("S", RecordKind::Session, Some("nginx")),
            "koala.S.session.nginx.*"
        );
        assert_eq!(
            filter("S", RecordKind::Session, None),
            "koala.S.session.*.*"
        );
        assert_eq!(stream_subjects("S"), "koala.S.>");
    }
}
