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
        let shown = shown(name, &value);
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

/// Variables whose value is a secret: shown as set or not, never printed.
const SECRETS: &[&str] = &["KOALA_REPLAY_TOKEN"];

fn shown(name: &str, value: &str) -> String {
    match (value.is_empty(), SECRETS.contains(&name)) {
        (true, _) => "(unset)".to_string(),
        (false, true) => format!("(set, {} characters)", value.chars().count()),
        (false, false) => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        assert_eq!(
            shown("KOALA_REPLAY_TOKEN", "0123abcd"),
            "(set, 8 characters)"
        );
        assert_eq!(shown("KOALA_REPLAY_TOKEN", ""), "(unset)");
        assert_eq!(shown("KOALA_MODE", "record"), "\"record\"");
    }
}
