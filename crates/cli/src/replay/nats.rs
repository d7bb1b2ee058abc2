//! Replaying from a NATS JetStream stream:
//! `koala replay nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[,HOST:PORT...]/STREAM`.
//!
//! The stream's session lines (as `koala ship` published them, subjects
//! `koala.<STREAM>.<session|background>.<program>.<host>`) are read with
//! `STREAM.MSG.GET` into a private temporary file, and replayed as from
//! a session file: an item's line number is its stream sequence, and the
//! URL stands for the file in locations and reports
//! (`nats://127.0.0.1:4222/KOALA:17`).
//!
//! With `--consumer NAME`, the sessions to replay come from a durable pull
//! consumer of that name instead, shared by every `koala replay` of the run
//! (on any machine): the server delivers each session to one of them, and
//! the worker acknowledges it after its verdict, so each session is
//! replayed once across them. Each worker still reads the whole stream
//! first: the background records and every session's connection set-up
//! answer its own service's start-up traffic.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use koala_ship::jetstream::{self, JetStream};
use koala_ship::nats::Options;
use koala_ship::sink::{self, JetStreamSource, RecordKind, Source as _};
use koala_ship::url::NatsUrl;

use super::ReplayArgs;
use super::load::Loaded;
use super::outcome::{Outcome, Verdict};
use super::runner::WorkQueue;

/// Whether a SESSIONS argument names a stream rather than files.
pub fn is_stream(path: &Path) -> bool {
    path.to_str().is_some_and(|p| {
        ["nats://", "tls://", "nats+tls://"]
            .iter()
            .any(|scheme| p.starts_with(scheme))
    })
}

/// Which records of the stream to replay.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Only this program's records (`koala.<STREAM>.*.<program>.*`).
    pub program: Option<String>,
    /// Only the records shipped from this host (`koala.<STREAM>.*.*.<host>`).
    pub host: Option<String>,
    /// Sessions whose request was read at or after this time (Unix ns).
    pub since: Option<u64>,
    /// ... and before this time.
    pub until: Option<u64>,
}

impl Filters {
    fn takes(&self, request_ns: u64) -> bool {
        self.since.is_none_or(|since| request_ns >= since)
            && self.until.is_none_or(|until| request_ns < until)
    }
}

/// `koala show`'s choice among a stream's records.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ShowFilters {
    /// With a stream: only the records of this program.
    #[arg(long, value_name = "PROGRAM")]
    pub program: Option<String>,
    /// With a stream: only the records shipped from this host (the name
    /// `koala ship --host` gave them).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// With a stream: only sessions whose request came at or after TIME
    /// (Unix seconds, or YYYY-MM-DDTHH:MM:SSZ); background records are
    /// shown whatever their time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// With a stream: only sessions whose request came before TIME.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

impl ShowFilters {
    pub fn is_empty(&self) -> bool {
        self.program.is_none()
            && self.host.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn filters(&self) -> Result<Filters, String> {
        Ok(Filters {
            program: self.program.clone(),
            host: self.host.clone(),
            since: self.since.as_deref().map(parse_time).transpose()?,
            until: self.until.as_deref().map(parse_time).transpose()?,
        })
    }
}

/// A stream to replay from.
pub struct StreamSource {
    pub url: NatsUrl,
    pub stream: String,
    pub filters: Filters,
    pub timeout: Duration,
}

impl StreamSource {
    /// The source named by the arguments, if they name a stream: exactly
    /// one SESSIONS argument, a `nats://` URL with a stream.
    pub fn from_args(args: &ReplayArgs) -> Result<Option<StreamSource>, String> {
        let streams = args.paths.iter().filter(|p| is_stream(p)).count();
        if streams == 0 {
            if args.consumer.is_some()
                || args.program.is_some()
                || args.host.is_some()
                || args.since.is_some()
                || args.until.is_some()
            {
                return Err("--consumer, --program, --host, --since and --until apply to a stream (nats://HOST:PORT/STREAM)".into());
            }
            return Ok(None);
        }
        if args.paths.len() != 1 {
            return Err(
                "a stream (nats://...) is replayed alone: give it as the only SESSIONS".into(),
            );
        }
        let text = args.paths[0].to_str().unwrap_or_default();
        let url = NatsUrl::parse(text)?.with_env_auth();
        let Some(stream) = url.stream.clone() else {
            return Err(format!(
                "{}: which stream? nats://HOST:PORT/STREAM",
                url.display()
            ));
        };
        let filters = Filters {
            program: args.program.clone(),
            host: args.host.clone(),
            since: args.since.as_deref().map(parse_time).transpose()?,
            until: args.until.as_deref().map(parse_time).transpose()?,
        };
        Ok(Some(StreamSource {
            url,
            stream,
            filters,
            timeout: Duration::from_secs(10),
        }))
    }

    fn connect(&self) -> Result<JetStream, String> {
        JetStream::connect(Options {
            url: self.url.clone(),
            name: "koala replay".into(),
            timeout: self.timeout,
        })
        .map_err(|e| format!("{}: {e}", self.url.display()))
    }

    fn info(&self, js: &mut JetStream) -> Result<jetstream::StreamInfo, String> {
        js.stream_info(&self.stream).map_err(|e| match e {
            jetstream::Error::StreamNotFound(_) => format!(
                "{}: the stream {} does not exist (koala ship --create makes it)",
                self.url.display(),
                self.stream
            ),
            e => format!("{}: {e}", self.url.display()),
        })
    }

    fn subject_filter(&self, kind: Option<RecordKind>) -> String {
        let token = |value: &Option<String>| value.as_deref().map_or("*".into(), sink::token);
        let (program, host) = (token(&self.filters.program), token(&self.filters.host));
        let kind = kind.map_or("*", RecordKind::as_str);
        format!("koala.{}.{kind}.{program}.{host}", self.stream)
    }

    /// Reads the stream's records (as filtered) into a [`Loaded`]; also
    /// returns the sequences of the sessions the time range leaves out,
    /// and the last sequence read.
    pub fn load(&self) -> Result<(Loaded, BTreeSet<u64>, u64), String> {
        let mut js = self.connect()?;
        let info = self.info(&mut js)?;
        let mut source = JetStreamSource {
            js,
            stream: self.stream.clone(),
            filter: self.subject_filter(None),
        };
        let (file, path) = private_temp_file()?;
        // Unlinked at once: the open handle keeps it, nobody else sees it.
        let _ = fs::remove_file(&path);
        let mut out = BufWriter::new(file.try_clone().map_err(|e| e.to_string())?);
        let mut lines = Vec::new();
        let mut left_out = BTreeSet::new();
        let mut offset = 0u64;
        let mut seq = info.first_seq.max(1);
        let mut last = 0;
        while let Some(record) = source
            .next_record(seq)
            .map_err(|e| format!("{}: {}", self.url.display(), e.message))?
        {
            seq = record.seq + 1;
            last = record.seq;
            let timed = self.filters.since.is_some() || self.filters.until.is_some();
            if timed
                && let Ok(session) = super::load::parse_line(&record.line)
                && !session.is_background()
                && !self.filters.takes(session.inbound.request_ns)
            {
                left_out.insert(record.seq);
                continue;
            }
            out.write_all(&record.line)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| format!("cannot write a temporary file: {e}"))?;
            lines.push((record.seq, offset, record.line.len()));
            offset += record.line.len() as u64 + 1;
        }
        out.flush()
            .map_err(|e| format!("cannot write a temporary file: {e}"))?;
        drop(out);
        let name = PathBuf::from(self.url.display());
        Ok((Loaded::from_lines(name, file, &lines), left_out, last))
    }

    /// Joins (or creates) the durable consumer `name`, for the sessions of
    /// `loaded`.
    pub fn consumer(
        &self,
        name: &str,
        loaded: &Loaded,
        left_out: BTreeSet<u64>,
        last_seq: u64,
        ack_wait: Duration,
    ) -> Result<Consumer, String> {
        koala_ship::url::check_stream_name(name)
            .map_err(|e| format!("--consumer: {}", e.replace("stream name", "consumer name")))?;
        let mut js = self.connect()?;
        js.create_consumer(
            &self.stream,
            name,
            &self.subject_filter(Some(RecordKind::Session)),
            ack_wait,
        )
        .map_err(|e| format!("{}: consumer {name}: {e}", self.url.display()))?;
        let by_seq = loaded
            .items
            .iter()
            .enumerate()
            .map(|(index, item)| (item.line as u64, index))
            .collect();
        Ok(Consumer {
            js: Mutex::new(js),
            stream: self.stream.clone(),
            name: name.to_string(),
            by_seq,
            left_out,
            last_seq,
            unacked: Mutex::new(HashMap::new()),
            redelivered: AtomicUsize::new(0),
            acked: AtomicUsize::new(0),
            ack_failures: AtomicUsize::new(0),
            newer: AtomicBool::new(false),
        })
    }
}

/// A private temporary file (0600, created new).
fn private_temp_file() -> Result<(File, PathBuf), String> {
    let dir = std::env::temp_dir();
    for _ in 0..16 {
        let path = dir.join(format!(
            "koala-stream-{}-{}.jsonl",
            std::process::id(),
            koala_ship::nats::random_token()
        ));
        match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
    }
    Err("cannot create a temporary file".into())
}

/// Sessions handed out by a durable pull consumer, acknowledged after
/// their verdict.
pub struct Consumer {
    js: Mutex<JetStream>,
    stream: String,
    name: String,
    by_seq: HashMap<u64, usize>,
    /// Sessions the time range leaves out: acknowledged without a replay
    /// (the consumer is this run's).
    left_out: BTreeSet<u64>,
    last_seq: u64,
    /// Item index → the delivery's ack subject.
    unacked: Mutex<HashMap<usize, String>>,
    redelivered: AtomicUsize,
    acked: AtomicUsize,
    ack_failures: AtomicUsize,
    /// A session newer than what this worker read was delivered (given
    /// back): run again to replay it.
    newer: AtomicBool,
}

impl Consumer {
    /// What the console says at the end.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "consumer {} of {}: {} session(s) replayed and acknowledged here",
            self.name,
            self.stream,
            self.acked.load(Ordering::SeqCst)
        )];
        let redelivered = self.redelivered.load(Ordering::SeqCst);
        if redelivered > 0 {
            notes.push(format!(
                "{redelivered} session(s) were delivered again (a worker did not acknowledge them within the ack wait): they may have been replayed twice"
            ));
        }
        let failures = self.ack_failures.load(Ordering::SeqCst);
        if failures > 0 {
            notes.push(format!(
                "{failures} acknowledgement(s) failed: those sessions will be delivered again to a worker of this consumer"
            ));
        }
        if self.newer.load(Ordering::SeqCst) {
            notes.push(
                "sessions published after this worker read the stream were left for a later run of the same consumer"
                    .into(),
            );
        }
        notes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JetStream> {
        self.js.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WorkQueue for Consumer {
    fn next(&self) -> Option<usize> {
        if self.newer.load(Ordering::SeqCst) {
            return None;
        }
        let mut js = self.lock();
        let mut failures = 0;
        loop {
            let delivered = match js.fetch_one(&self.stream, &self.name, Duration::ZERO) {
                Ok(Some(delivered)) => delivered,
                Ok(None) => return None,
                Err(e) if e.is_transient() && failures < 5 => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(200 << failures));
                    continue;
                }
                Err(e) => {
                    eprintln!("koala: consumer {}: {e}; stopping here", self.name);
                    return None;
                }
            };
            if let Some(&index) = self.by_seq.get(&delivered.stream_seq) {
                if delivered.deliveries > 1 {
                    self.redelivered.fetch_add(1, Ordering::SeqCst);
                }
                self.unacked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(index, delivered.reply);
                return Some(index);
            }
            if self.left_out.contains(&delivered.stream_seq)
                || delivered.stream_seq <= self.last_seq
            {
                // Outside this run's time range: done with.
                let _ = js.ack(&delivered.reply);
                continue;
            }
            // Newer than what was read: give it back for a later run.
            let _ = js.nak(&delivered.reply);
            self.newer.store(true, Ordering::SeqCst);
            return None;
        }
    }

    fn done(&self, index: usize, outcome: &Outcome, interrupted: bool) {
        let Some(reply) = self
            .unacked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&index)
        else {
            return;
        };
        let mut js = self.lock();
        if interrupted && outcome.verdict == Verdict::Error {
            // Cut short by koala: another worker replays it.
            let _ = js.nak(&reply);
            return;
        }
        match js.ack(&reply) {
            Ok(()) => {
                self.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.ack_failures.fetch_add(1, Ordering::SeqCst);
                eprintln!(
                    "koala: consumer {}: cannot acknowledge a session: {e}",
                    self.name
                );
            }
        }
    }
}

/// A time: Unix seconds (`1767225600`, `1767225600.5`) or UTC
/// `YYYY-MM-DDTHH:MM:SS[Z]`; in Unix nanoseconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a time: Unix seconds, or YYYY-MM-DDTHH:MM:SSZ (UTC)");
    if let Ok(seconds) = text.parse::<f64>() {
        if !(0.0..1e11).contains(&seconds) {
            return Err(bad());
        }
        return Ok((seconds * 1e9) as u64);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let numbers =
        |s: &str, sep: char| -> Option<Vec<i64>> { s.split(sep).map(|p| p.parse().ok()).collect() };
    let (Some(d), Some(t)) = (numbers(date, '-'), numbers(time, ':')) else {
        return Err(bad());
    };
    let ([y, m, day], [h, min, s]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *h > 23 || *min > 59 || *s > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + h * 3600 + min * 60 + s;
    u64::try_from(seconds)
        .map(|s| s * 1_000_000_000)
        .map_err(|_| bad())
}

/// `koala show nats://HOST:PORT/STREAM`: every record of the stream (of
/// the program, sessions in the time range), with its sequence and
/// subject, printed by `print`.
pub fn show(
    path: &Path,
    full: bool,
    filters: &ShowFilters,
    print: fn(&koala_session::Session, bool),
) -> Result<std::process::ExitCode, String> {
    let url = NatsUrl::parse(path.to_str().unwrap_or_default())?.with_env_auth();
    let Some(stream) = url.stream.clone() else {
        return Err(format!(
            "{}: which stream? nats://HOST:PORT/STREAM",
            url.display()
        ));
    };
    let source = StreamSource {
        url,
        stream,
        filters: filters.filters()?,
        timeout: Duration::from_secs(10),
    };
    let mut js = JetStreamSource {
        js: source.connect()?,
        stream: source.stream.clone(),
        filter: source.subject_filter(None),
    };
    source.info(&mut js.js)?;
    println!("{}", source.url.display());
    let (mut total, mut bad, mut left_out) = (0, 0, 0);
    let timed = source.filters.since.is_some() || source.filters.until.is_some();
    let mut seq = 1;
    while let Some(record) = js
        .next_record(seq)
        .map_err(|e| format!("{}: {}", source.url.display(), e.message))?
    {
        seq = record.seq + 1;
        let parsed = super::load::parse_line(&record.line);
        if timed
            && let Ok(session) = &parsed
            && !session.is_background()
            && !source.filters.takes(session.inbound.request_ns)
        {
            left_out += 1;
            continue;
        }
        println!("  [{}] {}", record.seq, record.subject);
        match parsed {
            Ok(session) => {
                total += 1;
                print(&session, full);
            }
            Err(error) => {
                bad += 1;
                println!("  ! {error}");
            }
        }
    }
    let mut summary = format!("{total} session(s)");
    if bad > 0 {
        summary.push_str(&format!(", {bad} bad record(s)"));
    }
    if left_out > 0 {
        summary.push_str(&format!(", {left_out} outside the time range not shown"));
    }
    println!("{summary}");
    Ok(std::process::ExitCode::from(if bad == 0 { 0 } else { 1 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_seconds_or_utc() {
        assert_eq!(parse_time("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z").unwrap(),
            1_767_225_600_000_000_000
        );
        assert_eq!(
            parse_time("2024-02-29T12:30:01").unwrap(),
            1_709_209_801_000_000_000
        );
        for bad in ["yesterday", "-1", "2026-13-01T00:00:00Z", "2026-01-01"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_make_the_subject_filter() {
        let source = |program: Option<&str>, host: Option<&str>| StreamSource {
            url: NatsUrl::parse("nats://h:1/S").unwrap(),
            stream: "S".into(),
            filters: Filters {
                program: program.map(str::to_string),
                host: host.map(str::to_string),
                ..Filters::default()
            },
            timeout: Duration::from_secs(1),
        };
        assert_eq!(source(None, None).subject_filter(None), "koala.S.*.*.*");
        assert_eq!(
            source(Some("php-fpm8.2"), Some("web.1")).subject_filter(Some(RecordKind::Session)),
            "koala.S.session.php-fpm8_2.web_1",
            "the names as koala ship made them tokens"
        );
        assert_eq!(
            source(None, Some("h2")).subject_filter(Some(RecordKind::Session)),
            "koala.S.session.*.h2"
        );
    }

    #[test]
    fn streams_are_told_from_files() {
        assert!(is_stream(Path::new("nats://h:1/S")));
        assert!(is_stream(Path::new("tls://h:1/S")));
        assert!(!is_stream(Path::new("./nats/sessions")));
    }
}
