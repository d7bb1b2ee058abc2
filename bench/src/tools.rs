//! Load generators (wrk, redis-benchmark) and what their output says, the
//! record directory (session lines, the log's summary line), the machine.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Runs a command to its end; panics with its output if it fails.
pub fn run_ok(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// A closed-loop HTTP/1.1 load: `connections` keep-alive connections, each
/// sending GET `paths[i]` in turn (starting at its own index) and waiting
/// for the answer, until `duration` is over. Sets `TCP_QUICKACK` before
/// every read: a server that writes a response in two small writes (Python's
/// http.server: head, then body) otherwise waits for the client's delayed
/// ACK (40 ms) on every request, and that stall, not the server, sets the
/// pace. p99 is the nearest-rank percentile of every request's round trip.
pub fn http_load(port: u16, connections: u32, duration: Duration, paths: &[&str]) -> Load {
    let start = Arc::new(Barrier::new(connections as usize + 1));
    // Connected one at a time, before the clock starts: a small listen
    // backlog (Python's is 5) overflows on simultaneous connects, and a
    // dropped SYN is retried after 1 s.
    let streams: Vec<TcpStream> = (0..connections)
        .map(|_| koala_tests::connect(port))
        .collect();
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(index, mut stream)| {
            let start = start.clone();
            let requests: Vec<Vec<u8>> = paths
                .iter()
                .map(|p| format!("GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes())
                .collect();
            thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                start.wait();
                let deadline = Instant::now() + duration;
                let mut next = index;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    stream
                        .write_all(&requests[next % requests.len()])
                        .expect("send request");
                    let response = koala_tests::read_http_response(&mut QuickAck(&stream))
                        .expect("read response");
                    latencies.push(sent.elapsed());
                    if !response.starts_with(b"HTTP/1.1 200 ") {
                        errors += 1;
                    }
                    next += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for handle in handles {
        let (mut l, e) = handle.join().expect("load client thread");
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Load {
        rps: latencies.len() as f64 / elapsed,
        p99_ms: p99,
        requests: latencies.len() as u64,
        errors,
    }
}

/// Reads with `TCP_QUICKACK` set before every read.
struct QuickAck<'a>(&'a TcpStream);

impl Read for QuickAck<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option of the right size.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        (&mut &*self.0).read(buf)
    }
}

/// Flushes dirty pages (`sync(2)`) so a run does not pay for the disk
/// writeback of the previous one (a recording run writes hundreds of MB).
pub fn settle_disk() {
    // SAFETY: sync has no arguments and no failure mode.
    unsafe { libc::sync() };
}

/// One load generator run's figures.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Requests per second.
    pub rps: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Socket errors and non-2xx/3xx answers (wrk).
    pub errors: u64,
}

/// `wrk --latency` output: requests/s, the 99% line, the request count and
/// the errors.
pub fn parse_wrk(text: &str) -> Result<Load, String> {
    let mut load = Load::default();
    let (mut rps, mut p99, mut requests) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if words.first() == Some(&"99%") && words.len() == 2 {
            p99 = duration_ms(words[1]);
        } else if words.len() >= 3 && words[1] == "requests" && words[2] == "in" {
            requests = words[0].parse::<u64>().ok();
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            load.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    match (rps, p99, requests) {
        (Some(rps), Some(p99), Some(requests)) => {
            load.rps = rps;
            load.p99_ms = p99;
            load.requests = requests;
            Ok(load)
        }
        _ => Err(format!("unexpected wrk output:\n{text}")),
    }
}

/// `402.00us`, `1.63ms`, `2.01s`, `1.50m` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * factor)
}

/// `redis-benchmark --csv`: `(test, rps, p99 ms)` per test.
pub fn parse_redis_csv(text: &str) -> Result<Vec<(String, f64, f64)>, String> {
    let mut lines = text.lines().filter(|l| l.starts_with('"'));
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| format!("no CSV header in redis-benchmark output:\n{text}"))?
        .split(',')
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("redis-benchmark CSV has no {name} column: {header:?}"))
    };
    let (test, rps, p99) = (column("test")?, column("rps")?, column("p99_latency_ms")?);
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let value = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .ok_or_else(|| format!("bad redis-benchmark line: {line}"))
        };
        rows.push((fields[test].to_string(), value(rps)?, value(p99)?));
    }
    Ok(rows)
}

/// What a recording run left in its record directory.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Complete session lines (not background records) of the `.jsonl` files.
    pub sessions: u64,
    pub background: u64,
    /// `koala recording summary` lines found in the log (one per recording
    /// process that saw a connection).
    pub summaries: u64,
    pub log_written: u64,
    pub log_dropped_queue_full: u64,
    pub log_lost_write_error: u64,
}

/// Counts the session lines of `dir` (newline-terminated lines only) and
/// sums the summary lines of its `koala.log*` files.
pub fn recorded(dir: &Path) -> Recorded {
    let mut out = Recorded::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".jsonl") {
            let bytes = fs::read(&path).unwrap_or_default();
            let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
            lines.pop(); // after the last newline: empty or incomplete
            for line in lines.into_iter().filter(|l| !l.is_empty()) {
                // serde_json writes the fields in order, compact:
                // {"koala":1,"kind":"background",...
                let head = &line[..line.len().min(64)];
                if koala_tests::find(head, b"\"kind\":\"background\"").is_some() {
                    out.background += 1;
                } else {
                    out.sessions += 1;
                }
            }
        } else if name.starts_with("koala.log") {
            let text = fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("recording summary")) {
                out.summaries += 1;
                for word in line.split_whitespace() {
                    let Some((key, value)) = word.split_once('=') else {
                        continue;
                    };
                    let value: u64 = value.parse().unwrap_or(0);
                    match key {
                        "sessions_written" => out.log_written += value,
                        "sessions_dropped_queue_full" => out.log_dropped_queue_full += value,
                        "sessions_lost_write_error" => out.log_lost_write_error += value,
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

/// nproc, kernel, CPU model, memory, load average.
pub fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    json!({
        "nproc": nproc,
        "kernel": kernel,
        "cpu_model": cpu_model,
        "mem_total_mib": mem_kib.map(|k| k / 1024),
        "loadavg_at_start": loadavg(),
    })
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `git rev-parse HEAD` and whether the tree has changes (read-only).
pub fn git_revision(root: &Path) -> Value {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "commit": run(&["rev-parse", "HEAD"]),
        "dirty": run(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:20001/static/page.html
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms    2.00ms  30.00ms   90.00%
    Req/Sec    20.00k     1.00k   22.00k    70.00%
  Latency Distribution
     50%  402.00us
     75%  800.00us
     90%    1.20ms
     99%    1.63ms
  123456 requests in 3.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  41152.00
Transfer/sec:      6.67MB
";

    #[test]
    fn wrk_output() {
        let load = parse_wrk(WRK).unwrap();
        assert_eq!(load.rps, 41152.0);
        assert_eq!(load.p99_ms, 1.63);
        assert_eq!(load.requests, 123456);
        assert_eq!(load.errors, 7);
        assert_eq!(duration_ms("402.00us"), Some(0.402));
        assert_eq!(duration_ms("2.5s"), Some(2500.0));
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn redis_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"
\"SET\",\"100502.52\",\"0.273\",\"0.080\",\"0.255\",\"0.375\",\"0.719\",\"2.263\"
\"GET\",\"94786.73\",\"0.275\",\"0.072\",\"0.271\",\"0.319\",\"0.527\",\"1.623\"
";
        let rows = parse_redis_csv(text).unwrap();
        assert_eq!(
            rows,
            vec![
                ("SET".to_string(), 100502.52, 0.719),
                ("GET".to_string(), 94786.73, 0.527)
            ]
        );
    }

    #[test]
    fn dates() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}
