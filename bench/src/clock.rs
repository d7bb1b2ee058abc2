//! Clock hook cost: what `clock_gettime`, `gettimeofday` and `time` cost a
//! host with the library loaded (deterministic replay hooks them).
//!
//! A C program calls each in a tight loop (CLOCK_REALTIME, through libc and
//! so through the hooks; glibc serves them from the vDSO, tens of
//! nanoseconds) and prints the nanoseconds per call. Run without the
//! library, passive, recording, and in replay mode with the clock shifted
//! (`KOALA_REPLAY_TIME=shifted`, no replay in flight: the cost every thread
//! of a replayed service pays per call), alternating inside every round;
//! ratios are to the run without the library. Reported, never asserted.

use std::path::Path;

use serde_json::{Value, json};

use crate::Settings;
use crate::stats::{Series, paired_ratio};
use crate::tools;

/// `clock_loop CALLS`: 100000 warm-up calls, then CALLS timed calls of each
/// function; prints the nanoseconds per call of each, space-separated.
const SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    long calls = atol(argv[1]);
    volatile long sink = 0;
    struct timespec ts;
    struct timeval tv;
    for (long i = 0; i < 100000; i++) { clock_gettime(CLOCK_REALTIME, &ts); sink += ts.tv_nsec; }
    double start = now_ns();
    for (long i = 0; i < calls; i++) { clock_gettime(CLOCK_REALTIME, &ts); sink += ts.tv_nsec; }
    double a = (now_ns() - start) / calls;
    start = now_ns();
    for (long i = 0; i < calls; i++) { gettimeofday(&tv, NULL); sink += tv.tv_usec; }
    double b = (now_ns() - start) / calls;
    start = now_ns();
    for (long i = 0; i < calls; i++) { sink += time(NULL); }
    double c = (now_ns() - start) / calls;
    printf("%.3f %.3f %.3f\n", a, b, c);
    return sink == 42 ? 1 : 0;
}
"#;

/// The functions timed, in the program's output order.
const FUNCTIONS: [&str; 3] = ["clock_gettime", "gettimeofday", "time"];
/// The modes, in the order each round runs them.
const MODES: [&str; 4] = ["none", "passive", "record", "replay"];
/// Calls per function per run.
const CALLS: usize = 5_000_000;

pub struct Measured {
    /// ns per call: [mode][function].
    pub ns: [[Series; 3]; 4],
}

impl Measured {
    fn ratio(&self, mode: usize, function: usize) -> Series {
        paired_ratio(&self.ns[mode][function], &self.ns[0][function])
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = MODES
            .iter()
            .enumerate()
            .map(|(m, mode)| {
                let functions: Vec<Value> = FUNCTIONS
                    .iter()
                    .enumerate()
                    .map(|(f, name)| {
                        let mut row =
                            json!({"function": name, "ns_per_call": self.ns[m][f].json()});
                        if m != 0 {
                            row["ratio_of_medians"] = crate::stats::number(
                                self.ns[m][f].median() / self.ns[0][f].median(),
                            );
                            row["ratio_per_round"] = self.ratio(m, f).json();
                        }
                        row
                    })
                    .collect();
                json!({"mode": mode, "functions": functions})
            })
            .collect();
        json!({"calls_per_run": CALLS, "modes": rows})
    }
}

/// Builds the program and runs the rounds.
pub fn measure(settings: &Settings) -> Measured {
    let dir = koala_tests::target_dir().join("bench").join("clock");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create target/bench/clock");
    let source = dir.join("clock_loop.c");
    std::fs::write(&source, SOURCE).expect("write clock_loop.c");
    let binary = dir.join("clock_loop");
    koala_tests::compile_c(&source, &["-O2", "-Wall"], &binary);
    let mut measured = Measured {
        ns: Default::default(),
    };
    for round in 0..=settings.rounds {
        for (m, mode) in MODES.iter().enumerate() {
            let values = run(&binary, mode, &dir.join(format!("{mode}-{round}")));
            if round == 0 {
                continue; // warm-up
            }
            for (f, value) in values.into_iter().enumerate() {
                measured.ns[m][f].push(value);
            }
        }
        eprintln!(
            "   clock round {round}{}",
            if round == 0 { " (warm-up)" } else { "" }
        );
    }
    measured
}

/// One run; ns per call of each function.
fn run(binary: &Path, mode: &str, dir: &Path) -> Vec<f64> {
    let mut command = koala_tests::clean_command(binary);
    command.arg(CALLS.to_string());
    if mode != "none" {
        command.env("LD_PRELOAD", koala_tests::koala_lib());
    }
    match mode {
        "record" => {
            command
                .env("KOALA_MODE", "record")
                .env("KOALA_RECORD_TO", dir);
        }
        "replay" => {
            let port = |_| koala_tests::free_port().to_string();
            command
                .env("KOALA_MODE", "replay")
                .env("KOALA_RECORD_TO", dir)
                .env("KOALA_REPLAY_TIME", "shifted")
                .env("KOALA_INBOUND_ADDR", format!("127.0.0.1:{}", port(0)))
                .env("KOALA_OUTBOUND_ADDR", format!("127.0.0.1:{}", port(1)));
        }
        _ => {}
    }
    let output = tools::run_ok(&mut command, "clock_loop");
    let text = String::from_utf8_lossy(&output.stdout);
    let values: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(values.len(), 3, "clock_loop ({mode}) printed {text:?}");
    values
}

/// The table's section.
pub fn render(t: &mut String, m: &Measured, rounds: usize) {
    use std::fmt::Write;
    let _ = writeln!(
        t,
        "\nClock hooks: {CALLS} calls per function per run (CLOCK_REALTIME, vDSO), {rounds} rounds of\n\
         none/passive/record/replay (replay: KOALA_REPLAY_TIME=shifted, no replay in flight), after 1 warm-up each;\n\
         ns per call, median [min–max]; ratio = median / median without the library"
    );
    let _ = writeln!(
        t,
        "{:<8} {:<14} {:>24} {:>8} {:>13}",
        "mode", "function", "ns per call", "ratio", "(rounds)"
    );
    for (mi, mode) in MODES.iter().enumerate() {
        for (f, function) in FUNCTIONS.iter().enumerate() {
            let ns = &m.ns[mi][f];
            let (ratio, per_round) = if mi == 0 {
                Default::default()
            } else {
                let r = m.ratio(mi, f);
                (
                    format!("{:.2}", ns.median() / m.ns[0][f].median()),
                    format!("({:.2}–{:.2})", r.min(), r.max()),
                )
            };
            let _ = writeln!(
                t,
                "{:<8} {:<14} {:>24} {:>8} {:>13}",
                mode,
                function,
                format!("{:.2} [{:.2}–{:.2}]", ns.median(), ns.min(), ns.max()),
                ratio,
                per_round
            );
        }
    }
}
