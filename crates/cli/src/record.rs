//! `koala record -- CMD`: run a command under libkoala.so in record mode.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

pub fn run(dir: &Path, lib: Option<&Path>, command: &[String]) -> Result<ExitCode, String> {
    let lib = crate::library::locate(lib)?;
    let (program, args) = command.split_first().ok_or("no command given after --")?;
    let error = Command::new(program)
        .args(args)
        .env("LD_PRELOAD", crate::library::preload(&lib))
        .env("KOALA_MODE", "record")
        .env("KOALA_RECORD_TO", dir)
        .exec();
    Err(format!("cannot run {program}: {error}"))
}
