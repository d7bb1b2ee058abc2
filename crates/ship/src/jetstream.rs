//! The JetStream API over [`crate::nats`]: request/reply on `$JS.API.*`
//! subjects with JSON bodies (docs.nats.io, "JetStream wire API").
//!
//! - streams: `STREAM.INFO.<name>`, `STREAM.CREATE.<name>`;
//! - publishing: a message with a `Nats-Msg-Id` header to a subject the
//!   stream takes; the stream answers a PubAck (`{"stream","seq",
//!   "duplicate"}`); a message id seen within the stream's duplicate window
//!   is not stored again (`duplicate: true`);
//! - reading without a consumer: `STREAM.MSG.GET.<name>` with
//!   `{"seq": n, "next_by_subj": filter}` (the first message at or after n
//!   whose subject matches);
//! - durable pull consumers: `CONSUMER.CREATE.<stream>.<name>`, one message
//!   at a time with `CONSUMER.MSG.NEXT.<stream>.<name>`; a delivered
//!   message is acknowledged by publishing `+ACK` to its reply subject
//!   (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`), with a
//!   reply of our own so the server confirms it (a "double ack").

use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::nats::{self, Connection, Headers, Message, Options};

#[derive(Debug)]
pub enum Error {
    Nats(nats::Error),
    /// The stream does not exist.
    StreamNotFound(String),
    /// JetStream is not enabled on the server (nobody answers its API).
    NotEnabled,
    /// The API answered an error.
    Api {
        code: u16,
        err_code: u32,
        description: String,
    },
    /// An answer that is not what the API sends.
    Bad(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Nats(e) => write!(f, "{e}"),
            Error::StreamNotFound(name) => write!(f, "the stream {name} does not exist"),
            Error::NotEnabled => write!(
                f,
                "JetStream is not enabled on the NATS server (start nats-server with -js, or jetstream {{}} in its configuration)"
            ),
            Error::Api {
                code,
                err_code,
                description,
            } => write!(f, "JetStream: {description} ({code}, err_code {err_code})"),
            Error::Bad(m) => write!(f, "JetStream: {m}"),
        }
    }
}

impl From<nats::Error> for Error {
    fn from(e: nats::Error) -> Error {
        Error::Nats(e)
    }
}

impl Error {
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Nats(e) => e.is_transient(),
            // 503: no leader yet, or not enough replicas up (a cluster
            // recovering from a lost node). 10005, no suitable peers for
            // placement: the servers a new stream's replicas need are not
            // (yet) all in the JetStream cluster (starting, restarting).
            Error::Api { code, err_code, .. } => {
                *code == 503 || *code == 408 || *err_code == NO_PEERS_FOR_PLACEMENT
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// JetStream's `JSClusterNoPeersErr`: too few servers for the replicas.
const NO_PEERS_FOR_PLACEMENT: u32 = 10005;

/// What `--create` asks of a new stream.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    pub replicas: u32,
    /// `limits`, `interest` or `workqueue`.
    pub retention: String,
    /// Messages older than this are removed; zero: kept.
    pub max_age: Duration,
    /// The stream's size bound in bytes; zero: none.
    pub max_bytes: u64,
    /// How long a message id is remembered for de-duplication.
    pub duplicate_window: Duration,
}

/// The parts of a stream's info used here.
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub subjects: Vec<String>,
    pub replicas: u32,
    /// `limits`, `interest` or `workqueue`.
    pub retention: String,
    /// Zero: no limit.
    pub max_age: Duration,
    /// Zero: no limit.
    pub max_bytes: u64,
    pub duplicate_window: Duration,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl StreamInfo {
    fn from_json(value: &Value) -> StreamInfo {
        let config = &value["config"];
        let state = &value["state"];
        StreamInfo {
            subjects: config["subjects"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            replicas: config["num_replicas"].as_u64().unwrap_or(1) as u32,
            retention: config["retention"].as_str().unwrap_or_default().to_string(),
            max_age: Duration::from_nanos(config["max_age"].as_u64().unwrap_or(0)),
            // -1: no limit.
            max_bytes: config["max_bytes"].as_u64().unwrap_or(0),
            duplicate_window: Duration::from_nanos(
                config["duplicate_window"].as_u64().unwrap_or(0),
            ),
            messages: state["messages"].as_u64().unwrap_or(0),
            bytes: state["bytes"].as_u64().unwrap_or(0),
            first_seq: state["first_seq"].as_u64().unwrap_or(0),
            last_seq: state["last_seq"].as_u64().unwrap_or(0),
        }
    }
}

/// One message to publish.
pub struct Publish<'a> {
    pub subject: &'a str,
    /// The `Nats-Msg-Id`: a re-send within the duplicate window is dropped
    /// by the stream.
    pub id: &'a str,
    pub payload: &'a [u8],
}

/// The stream's answer to a publish.
#[derive(Debug, Deserialize, PartialEq)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    #[serde(default)]
    pub duplicate: bool,
}

/// A message read from a stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub subject: String,
    pub seq: u64,
    pub data: Vec<u8>,
    /// RFC 3339, as the server stored it.
    pub time: String,
}

/// A message delivered by a pull consumer, to acknowledge.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: String,
    pub stream_seq: u64,
    /// How many times it has been delivered (1 the first time).
    pub deliveries: u64,
    /// Messages left for the consumer after this one, as the server counts.
    pub pending: u64,
    pub data: Vec<u8>,
    /// The `$JS.ACK...` subject.
    pub reply: String,
}

pub struct JetStream {
    connection: Connection,
    timeout: Duration,
}

impl JetStream {
    pub fn connect(options: Options) -> Result<JetStream> {
        let timeout = options.timeout;
        Ok(JetStream {
            connection: Connection::connect(options)?,
            timeout,
        })
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// An API request; the answer's `error` becomes [`Error::Api`].
    fn api(&mut self, subject: &str, body: &Value) -> Result<Value> {
        let message =
            match self
                .connection
                .request(subject, None, body.to_string().as_bytes(), self.timeout)
            {
                Ok(message) => message,
                Err(nats::Error::NoResponders(_)) => return Err(Error::NotEnabled),
                Err(e) => return Err(e.into()),
            };
        let value: Value = serde_json::from_slice(&message.payload).map_err(|e| {
            Error::Bad(format!(
                "{subject} answered something that is not JSON: {e}"
            ))
        })?;
        api_error(&value)?;
        Ok(value)
    }

    pub fn stream_info(&mut self, name: &str) -> Result<StreamInfo> {
        match self.api(&format!("$JS.API.STREAM.INFO.{name}"), &json!({})) {
            Ok(value) => Ok(StreamInfo::from_json(&value)),
            Err(Error::Api { code: 404, .. }) => Err(Error::StreamNotFound(name.into())),
            Err(e) => Err(e),
        }
    }

    /// Creates the stream (an existing stream with the same configuration
    /// is fine; one with another is an error saying so).
    pub fn create_stream(&mut self, config: &StreamConfig) -> Result<StreamInfo> {
        let mut body = json!({
            "name": config.name,
            "subjects": config.subjects,
            "retention": config.retention,
            "storage": "file",
            "num_replicas": config.replicas,
            "discard": "old",
            "duplicate_window": config.duplicate_window.as_nanos() as u64,
            "max_age": config.max_age.as_nanos() as u64,
        });
        if config.max_bytes > 0 {
            body["max_bytes"] = config.max_bytes.into();
        }
        let value = self.api(&format!("$JS.API.STREAM.CREATE.{}", config.name), &body)?;
        Ok(StreamInfo::from_json(&value))
    }

    /// Deletes the stream and its messages.
    pub fn delete_stream(&mut self, name: &str) -> Result<()> {
        match self.api(&format!("$JS.API.STREAM.DELETE.{name}"), &json!({})) {
            Ok(_) => Ok(()),
            Err(Error::Api { code: 404, .. }) => Err(Error::StreamNotFound(name.into())),
            Err(e) => Err(e),
        }
    }

    /// Publishes `messages` pipelined (all sent, then the PubAcks read), one
    /// result per message in order. A message without an answer by the
    /// deadline is [`nats::Error::Timeout`]: re-sending it is safe (same id).
    pub fn publish_batch(&mut self, messages: &[Publish]) -> Vec<Result<PubAck>> {
        let mut replies = Vec::with_capacity(messages.len());
        let mut results: Vec<Option<Result<PubAck>>> = Vec::with_capacity(messages.len());
        if let Err(e) = self.connection.ensure() {
            return messages
                .iter()
                .map(|_| Err(Error::Nats(copy_error(&e))))
                .collect();
        }
        for message in messages {
            let reply = self.connection.new_reply();
            let headers = Headers {
                fields: vec![("Nats-Msg-Id".into(), message.id.into())],
                ..Headers::default()
            };
            match self.connection.publish(
                message.subject,
                Some(&reply),
                Some(&headers),
                message.payload,
            ) {
                Ok(()) => results.push(None),
                Err(e) => results.push(Some(Err(e.into()))),
            }
            replies.push(reply);
        }
        let sent: Vec<String> = replies
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(reply, _)| reply.clone())
            .collect();
        let deadline = Instant::now() + self.timeout;
        let (mut answers, failure) = self.connection.collect(&sent, deadline);
        if matches!(failure, Some(nats::Error::Timeout)) {
            // A server that stopped answering: try another next time.
            self.connection.mark_broken();
        }
        replies
            .iter()
            .zip(results)
            .map(|(reply, result)| {
                if let Some(result) = result {
                    return result;
                }
                match answers.remove(reply) {
                    Some(message) => pub_ack(message),
                    None => Err(Error::Nats(
                        failure.as_ref().map_or(nats::Error::Timeout, copy_error),
                    )),
                }
            })
            .collect()
    }

    /// The first message at or after `seq` whose subject matches `filter`;
    /// `None` past the end.
    pub fn get_next(
        &mut self,
        stream: &str,
        seq: u64,
        filter: &str,
    ) -> Result<Option<StoredMessage>> {
        let body = json!({"seq": seq, "next_by_subj": filter});
        let value = match self.api(&format!("$JS.API.STREAM.MSG.GET.{stream}"), &body) {
            Ok(value) => value,
            Err(Error::Api {
                code: 404,
                err_code,
                ..
            }) if err_code != 10059 => return Ok(None),
            Err(Error::Api { code: 404, .. }) => {
                return Err(Error::StreamNotFound(stream.into()));
            }
            Err(e) => return Err(e),
        };
        let message = &value["message"];
        let data = match message["data"].as_str() {
            Some(data) => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| Error::Bad(format!("message data is not base64: {e}")))?,
            None => Vec::new(),
        };
        Ok(Some(StoredMessage {
            subject: message["subject"].as_str().unwrap_or_default().into(),
            seq: message["seq"]
                .as_u64()
                .ok_or_else(|| Error::Bad("a message without seq".into()))?,
            data,
            time: message["time"].as_str().unwrap_or_default().into(),
        }))
    }

    /// Creates (or finds, with the same configuration) a durable pull
    /// consumer: explicit acks, every message of `filter` from the start,
    /// redelivered after `ack_wait` without an ack.
    pub fn create_consumer(
        &mut self,
        stream: &str,
        name: &str,
        filter: &str,
        ack_wait: Duration,
    ) -> Result<()> {
        let body = json!({
            "stream_name": stream,
            "config": {
                "durable_name": name,
                "name": name,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": ack_wait.as_nanos() as u64,
                "max_deliver": -1,
                "filter_subject": filter,
                "replay_policy": "instant",
            }
        });
        match self.api(&format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"), &body) {
            Ok(_) => Ok(()),
            Err(Error::Api {
                err_code: 10059, ..
            }) => Err(Error::StreamNotFound(stream.into())),
            Err(e) => Err(e),
        }
    }

    /// The next message for the consumer, waiting up to `wait` for one;
    /// `None` when there is none.
    pub fn fetch_one(
        &mut self,
        stream: &str,
        consumer: &str,
        wait: Duration,
    ) -> Result<Option<Delivered>> {
        self.connection.ensure()?;
        let reply = self.connection.new_reply();
        let body = if wait.is_zero() {
            json!({"batch": 1, "no_wait": true})
        } else {
            json!({"batch": 1, "expires": wait.as_nanos() as u64})
        };
        self.connection.publish(
            &format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            Some(&reply),
            None,
            body.to_string().as_bytes(),
        )?;
        let ack_prefix = format!("$JS.ACK.{stream}.{consumer}.");
        let deadline = Instant::now() + wait + self.timeout;
        loop {
            let message = self.connection.next_message(deadline)?;
            let is_delivery = message
                .reply
                .as_deref()
                .is_some_and(|r| r.starts_with("$JS.ACK."));
            if is_delivery
                && message
                    .reply
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&ack_prefix) || r.split('.').count() >= 11)
            {
                return delivered(message).map(Some);
            }
            if message.subject != reply {
                continue;
            }
            return match message.status() {
                Some(404 | 408 | 409) => Ok(None),
                Some(503) => Err(Error::NotEnabled),
                Some(code) => Err(Error::Api {
                    code,
                    err_code: 0,
                    description: message.headers.map(|h| h.description).unwrap_or_default(),
                }),
                None => {
                    let value: Value = serde_json::from_slice(&message.payload)
                        .map_err(|_| Error::Bad("unexpected answer to MSG.NEXT".into()))?;
                    api_error(&value)?;
                    Err(Error::Bad("unexpected answer to MSG.NEXT".into()))
                }
            };
        }
    }

    /// Acknowledges a delivered message and waits for the server to
    /// confirm it: once this returns, the message will not be delivered
    /// again.
    pub fn ack(&mut self, reply: &str) -> Result<()> {
        self.connection
            .request(reply, None, b"+ACK", self.timeout)
            .map(|_| ())
            .map_err(Error::from)
    }

    /// Gives a delivered message back, to be delivered again at once.
    pub fn nak(&mut self, reply: &str) -> Result<()> {
        self.connection
            .publish(reply, None, None, b"-NAK")
            .map_err(Error::from)
    }

    /// Tells the server a delivered message is still being worked on: its
    /// ack wait starts again.
    pub fn in_progress(&mut self, reply: &str) -> Result<()> {
        self.connection
            .publish(reply, None, None, b"+WPI")
            .map_err(Error::from)
    }

    /// The consumer's count of messages not delivered yet, and delivered
    /// but not acknowledged.
    pub fn consumer_pending(&mut self, stream: &str, consumer: &str) -> Result<(u64, u64)> {
        let value = self.api(
            &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            &json!({}),
        )?;
        Ok((
            value["num_pending"].as_u64().unwrap_or(0),
            value["num_ack_pending"].as_u64().unwrap_or(0),
        ))
    }
}

impl JetStream {
    /// The server's bound on a message, in bytes.
    pub fn connection_info_max_payload(&self) -> usize {
        self.connection.info().max_payload
    }
}

fn api_error(value: &Value) -> Result<()> {
    if let Some(error) = value.get("error") {
        return Err(Error::Api {
            code: error["code"].as_u64().unwrap_or(0) as u16,
            err_code: error["err_code"].as_u64().unwrap_or(0) as u32,
            description: error["description"].as_str().unwrap_or("").to_string(),
        });
    }
    Ok(())
}

fn pub_ack(message: Message) -> Result<PubAck> {
    if message.status() == Some(503) {
        return Err(Error::Nats(nats::Error::NoResponders(
            "the subject (no stream takes it)".into(),
        )));
    }
    let value: Value = serde_json::from_slice(&message.payload)
        .map_err(|e| Error::Bad(format!("a PubAck that is not JSON: {e}")))?;
    api_error(&value)?;
    serde_json::from_value(value).map_err(|e| Error::Bad(format!("a bad PubAck: {e}")))
}

/// Reads the stream sequence, delivery count and pending count from the
/// ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
/// (9 tokens) or, newer, `$JS.ACK.<domain>.<account>.<stream>.<consumer>.
/// <delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]`.
pub fn parse_ack_subject(reply: &str) -> Option<(u64, u64, u64)> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let base = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    let number = |i: usize| tokens.get(i).and_then(|t| t.parse::<u64>().ok());
    Some((number(base + 1)?, number(base)?, number(base + 4)?))
}

fn delivered(message: Message) -> Result<Delivered> {
    let reply = message.reply.unwrap_or_default();
    let (stream_seq, deliveries, pending) = parse_ack_subject(&reply)
        .ok_or_else(|| Error::Bad(format!("an ack subject koala cannot read: {reply:?}")))?;
    Ok(Delivered {
        subject: message.subject,
        stream_seq,
        deliveries,
        pending,
        data: message.payload,
        reply,
    })
}

fn copy_error(e: &nats::Error) -> nats::Error {
    match e {
        nats::Error::Unreachable(m) => nats::Error::Unreachable(m.clone()),
        nats::Error::Auth(m) => nats::Error::Auth(m.clone()),
        nats::Error::Tls(m) => nats::Error::Tls(m.clone()),
        nats::Error::Connection(m) => nats::Error::Connection(m.clone()),
        nats::Error::Timeout => nats::Error::Timeout,
        nats::Error::NoResponders(m) => nats::Error::NoResponders(m.clone()),
        nats::Error::Server(m) => nats::Error::Server(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_old_and_new() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.KOALA.replay.1.42.7.1700000000.5"),
            Some((42, 1, 5))
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK._.ACCHASH.KOALA.replay.2.42.7.1700000000.0.tok"),
            Some((42, 2, 0))
        );
        assert_eq!(parse_ack_subject("$JS.ACK.x"), None);
    }

    #[test]
    fn api_errors_are_read() {
        let value: Value = serde_json::from_str(
            r#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .unwrap();
        assert!(matches!(
            api_error(&value),
            Err(Error::Api {
                code: 404,
                err_code: 10059,
                ..
            })
        ));
        let no_peers = Error::Api {
            code: 400,
            err_code: 10005,
            description: "no suitable peers for placement".into(),
        };
        assert!(no_peers.is_transient(), "peers may join: retried");
        let not_clustered = Error::Api {
            code: 500,
            err_code: 10074,
            description: "replicas > 1 not supported in non-clustered mode".into(),
        };
        assert!(!not_clustered.is_transient());
    }
}
