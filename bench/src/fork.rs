//! Fork cost: what a fork-heavy host pays per child in record mode.
//!
//! A C program records one loopback exchange (so the recorder has its
//! writer and a session open at every fork, as a service mid-request
//! has), then forks children that `_exit(0)` at once and waits for each,
//! timing the loop. Run without the library, passive and recording,
//! alternating inside every round: the figure is the time per fork, the
//! ratio is to the run without the library. Reported, never asserted.

use std::path::Path;

use serde_json::{Value, json};

use crate::Settings;
use crate::recording::{MODES, Mode};
use crate::stats::{Series, paired_ratio};
use crate::tools;

/// `fork_loop FORKS`: one exchange over loopback (kept open), 20 warm-up
/// forks, then FORKS timed fork + `_exit(0)` + waitpid; prints the
/// microseconds per fork.
const SOURCE: &str = r#"
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fork_and_wait(void) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid < 0) return -1;
    int status;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int forks = atoi(argv[1]);
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&addr, &len))
        return 3;
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&addr, sizeof addr)) return 4;
    int server = accept(listener, NULL, NULL);
    char buf[16];
    if (server < 0 || write(client, "ping\n", 5) != 5 || read(server, buf, 5) != 5 ||
        write(server, "pong\n", 5) != 5 || read(client, buf, 5) != 5)
        return 5;
    for (int i = 0; i < 20; i++)
        if (fork_and_wait()) return 6;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < forks; i++)
        if (fork_and_wait()) return 6;
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.3f\n", ns / forks / 1000.0);
    return 0;
}
"#;

/// The figures of every mode, one value per round.
pub struct Measured {
    pub forks: usize,
    /// Microseconds per fork, by mode (in [`MODES`] order).
    pub per_fork_us: [Series; 3],
    /// Summary lines in the log of each record run (the parent's only: 1).
    pub summaries_per_record_run: Series,
}

impl Measured {
    /// The per-round ratios of `mode` to the run without the library.
    pub fn ratios(&self, mode: Mode) -> Series {
        paired_ratio(&self.per_fork_us[index(mode)], &self.per_fork_us[0])
    }

    pub fn json(&self) -> Value {
        let modes: Vec<Value> = MODES
            .into_iter()
            .map(|mode| {
                let us = &self.per_fork_us[index(mode)];
                let mut row = json!({"mode": mode.name(), "us_per_fork": us.json()});
                if mode != Mode::None {
                    row["ratio_of_medians"] =
                        crate::stats::number(us.median() / self.per_fork_us[0].median());
                    row["ratio_per_round"] = self.ratios(mode).json();
                }
                row
            })
            .collect();
        json!({
            "forks_per_run": self.forks,
            "modes": modes,
            "summary_lines_per_record_run": self.summaries_per_record_run.json(),
        })
    }
}

fn index(mode: Mode) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// Builds the program and runs the rounds.
pub fn measure(settings: &Settings) -> Measured {
    let dir = koala_tests::target_dir().join("bench").join("fork");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create target/bench/fork");
    let source = dir.join("fork_loop.c");
    std::fs::write(&source, SOURCE).expect("write fork_loop.c");
    let binary = dir.join("fork_loop");
    koala_tests::compile_c(&source, &["-O2", "-Wall"], &binary);
    let mut measured = Measured {
        forks: settings.forks,
        per_fork_us: Default::default(),
        summaries_per_record_run: Series::default(),
    };
    // One warm-up run per mode, then the rounds, modes alternating.
    for round in 0..=settings.rounds {
        for mode in MODES {
            let record_to = dir.join(format!("record-{round}-{}", mode.name()));
            let us = run(&binary, settings.forks, mode, &record_to);
            if round == 0 {
                continue;
            }
            measured.per_fork_us[index(mode)].push(us);
            if mode == Mode::Record {
                measured
                    .summaries_per_record_run
                    .push(summary_lines(&record_to) as f64);
            }
        }
        eprintln!(
            "   fork round {round}{}",
            if round == 0 { " (warm-up)" } else { "" }
        );
    }
    measured
}

/// One run of the loop; microseconds per fork.
fn run(binary: &Path, forks: usize, mode: Mode, record_to: &Path) -> f64 {
    let mut command = koala_tests::clean_command(binary);
    command.arg(forks.to_string());
    match mode {
        Mode::None => {}
        Mode::Passive => {
            command.env("LD_PRELOAD", koala_tests::koala_lib());
        }
        Mode::Record => {
            command
                .env("LD_PRELOAD", koala_tests::koala_lib())
                .env("KOALA_MODE", "record")
                .env("KOALA_RECORD_TO", record_to);
        }
    }
    let output = tools::run_ok(&mut command, "fork_loop");
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fork_loop ({}) printed {text:?}", mode.name()))
}

/// `koala recording summary` lines of the default log in `record_to`.
fn summary_lines(record_to: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(record_to) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("koala.log"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("koala recording summary"))
                .count()
        })
        .sum()
}

/// The table's section.
pub fn render(t: &mut String, m: &Measured, rounds: usize) {
    use std::fmt::Write;
    let _ = writeln!(
        t,
        "\nFork cost: fork + _exit(0) + waitpid of a child that touches no socket, the parent holding a\n\
         recorded loopback session; {} forks per run, {rounds} rounds of none/passive/record (after 1 warm-up each);\n\
         µs per fork, median [min–max]; ratio = median / median without the library, (rounds) = per-round ratios",
        m.forks
    );
    let _ = writeln!(
        t,
        "{:<8} {:>28} {:>8} {:>13}",
        "mode", "µs per fork", "ratio", "(rounds)"
    );
    for mode in MODES {
        let us = &m.per_fork_us[index(mode)];
        let (ratio, rounds) = if mode == Mode::None {
            Default::default()
        } else {
            let per_round = m.ratios(mode);
            (
                format!("{:.2}", us.median() / m.per_fork_us[0].median()),
                format!("({:.2}–{:.2})", per_round.min(), per_round.max()),
            )
        };
        let _ = writeln!(
            t,
            "{:<8} {:>28} {:>8} {:>13}",
            mode.name(),
            format!("{:.1} [{:.1}–{:.1}]", us.median(), us.min(), us.max()),
            ratio,
            rounds
        );
    }
    let _ = writeln!(
        t,
        "  summary lines per record run: {} [{}–{}] (the parent's: 1; children that record nothing log none)",
        m.summaries_per_record_run.median(),
        m.summaries_per_record_run.min(),
        m.summaries_per_record_run.max()
    );
}
