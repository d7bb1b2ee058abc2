//! `koala`: the command-line side of koala.

mod env;
mod helpers;
mod library;
mod record;
mod replay;
mod ship;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Record a service's real TCP traffic from inside its process, and replay
/// it later with every dependency mocked.
///
/// koala works through libkoala.so, loaded into the service with
/// LD_PRELOAD. `koala record` does that for you; `koala show` prints what
/// was recorded; `koala replay` replays it against the service and compares
/// its answers; `koala env` checks the KOALA_* variables.
#[derive(Parser)]
#[command(name = "koala", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command with libkoala.so loaded in record mode.
    ///
    /// Sets LD_PRELOAD, KOALA_MODE=record and KOALA_RECORD_TO, runs the
    /// command and waits for it, passing on the signals it gets (SIGTERM,
    /// SIGINT, SIGHUP, ...). Each process of the command writes its sessions
    /// to DIR/<program>-<pid>.jsonl. At the end koala prints a summary on
    /// stderr: sessions written, dropped and lost, in which files, or why
    /// none (an unusable directory, nothing connected, a static or Go
    /// program, which LD_PRELOAD cannot see: that is also said before it
    /// starts). The exit code is the command's.
    #[command(
        after_help = "Example:\n  koala record --to ./sessions -- python3 service.py --port 8080"
    )]
    Record {
        /// Directory for session files (KOALA_RECORD_TO).
        #[arg(long, value_name = "DIR", default_value = "./koala-sessions")]
        to: PathBuf,
        /// libkoala.so to load (default: $KOALA_LIB, else libkoala.so next to
        /// this koala binary).
        #[arg(long, value_name = "PATH")]
        lib: Option<PathBuf>,
        /// The command to run, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Print recorded sessions in a readable form.
    #[command(
        after_help = "Example:\n  koala show ./koala-sessions\n  koala show --full ./koala-sessions/python3-1234.jsonl\n  koala show nats://nats1:4222/KOALA --program nginx --since 2026-01-01T00:00:00Z"
    )]
    Show {
        /// Session files (.jsonl) or directories of them, or a stream
        /// (nats://HOST:PORT/STREAM, see docs/distributed.md).
        #[arg(required = true, value_name = "SESSIONS")]
        paths: Vec<PathBuf>,
        /// Print whole payloads instead of their first line.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        filters: replay::nats::ShowFilters,
    },
    /// Replay recorded sessions against the service and compare its answers.
    ///
    /// Posts each session to the inbound server that libkoala.so runs inside
    /// the service in replay mode (KOALA_MODE=replay), which sends the
    /// recorded request to the service and answers its outbound calls from
    /// the recording. koala compares each answer with the recorded response,
    /// shows a progress bar (on a terminal), a diff for every failure and a
    /// summary, and can write a JSON report and a JUnit file. With `-- CMD`,
    /// it starts the service itself, waits for it, and stops it at the end.
    #[command(after_help = replay::AFTER_HELP)]
    Replay(Box<replay::ReplayArgs>),
    /// Show every KOALA_* variable: its value here, its default, and any problem.
    Env,
    /// Follow record directories and publish their sessions to NATS JetStream.
    ///
    /// Publishes every complete line of the session files as they grow and
    /// as new processes create new files, with the session id and host as the
    /// message id (de-duplicated by the stream), and saves its progress so
    /// that a restart goes on where it stopped. See docs/distributed.md.
    #[command(after_help = ship::AFTER_HELP)]
    Ship(Box<ship::ShipArgs>),
    /// Work with replay reports.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Join the JSON reports of several `koala replay --consumer` workers
    /// into one (sessions in stream order, counts summed), and optionally
    /// a JUnit file. Exit status 0 when every session passed, 1 otherwise.
    #[command(
        after_help = "Example:\n  koala report merge worker1.json worker2.json --to replay.json --junit replay.xml"
    )]
    Merge(replay::merge::MergeArgs),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`koala show ... | head`), like other
    // command-line tools, instead of panicking on the write error.
    // SAFETY: restoring the default disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record { to, lib, command } => record::run(&to, lib.as_deref(), &command),
        Command::Show {
            paths,
            full,
            filters,
        } => show::run(&paths, full, &filters),
        Command::Replay(args) => replay::run(&args),
        Command::Env => env::run(),
        Command::Ship(args) => ship::run(&args),
        Command::Report(ReportCommand::Merge(args)) => replay::merge::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("koala: {message}");
            ExitCode::from(2)
        }
    }
}
