//! `koala env`: what the library would make of this environment.

use std::process::ExitCode;

use koala_config::{Config, VARIABLES};

pub fn run() -> Result<ExitCode, String> {
    let (config, errors) = Config::from_env();
    let width = VARIABLES
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, default, meaning) in VARIABLES {
        let value = std::env::var(name).unwrap_or_default();
        let shown = if value.is_empty() {
            "(unset)".to_string()
        } else {
            format!("{value:?}")
        };
        println!("{name:width$}  {shown}");
        println!("{:width$}  default: {default}; {meaning}", "");
    }
    println!();
    println!("mode: {}", config.mode);
    for error in &errors {
        println!("problem: {error}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
