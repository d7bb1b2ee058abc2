//! A `tracing` subscriber that formats an event into one line and hands it
//! to a sink, without thread-locals.
//!
//! The library logs from hooks and from exit handlers; glibc destroys the
//! exiting thread's thread-locals before atexit handlers run, so a formatter
//! keeping a buffer in a thread-local (as tracing-subscriber's fmt layer
//! does) panics there. This one keeps nothing per thread. It has no spans:
//! the library does not use them.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

pub struct LineSubscriber<F: Fn(String) + Send + Sync + 'static> {
    max_level: Level,
    sink: F,
}

impl<F: Fn(String) + Send + Sync + 'static> LineSubscriber<F> {
    pub fn new(max_level: Level, sink: F) -> Self {
        LineSubscriber { max_level, sink }
    }
}

impl<F: Fn(String) + Send + Sync + 'static> Subscriber for LineSubscriber<F> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max_level))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        (self.sink)(format_line(
            SystemTime::now(),
            *event.metadata().level(),
            event,
        ));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `2026-11-21T13:03:59.556009Z  INFO message key=value ...\n`
fn format_line(now: SystemTime, level: Level, event: &Event<'_>) -> String {
    let mut line = String::with_capacity(128);
    write_timestamp(&mut line, now);
    let _ = write!(line, " {level:>5} ");
    let mut fields = Fields {
        line: &mut line,
        message_written: false,
        others: String::new(),
    };
    event.record(&mut fields);
    let others = std::mem::take(&mut fields.others);
    line.push_str(&others);
    line.push('\n');
    line
}

/// A line for `text`, with no event behind it: for what the log thread
/// must write itself, before the lines already queued.
pub(crate) fn plain_line(level: Level, text: &str) -> String {
    let mut line = String::with_capacity(40 + text.len());
    write_timestamp(&mut line, SystemTime::now());
    let _ = writeln!(line, " {level:>5} {text}");
    line
}

/// The message first, then the other fields as ` name=value`.
struct Fields<'a> {
    line: &'a mut String,
    message_written: bool,
    others: String,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && !self.message_written {
            self.line.push_str(value);
            self.message_written = true;
        } else {
            let _ = write!(self.others, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" && !self.message_written {
            let _ = write!(self.line, "{value:?}");
            self.message_written = true;
        } else {
            let _ = write!(self.others, " {}={value:?}", field.name());
        }
    }
}

fn write_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() as i64;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_micros()
    );
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut out = String::new();
        write_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(1_795_267_439_556_009_123 / 1000),
        );
        assert_eq!(out, "2026-11-21T13:23:59.556009Z");
    }

    #[test]
    fn events_become_one_line_with_the_message_first() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let subscriber =
            LineSubscriber::new(Level::INFO, move |line| sink.lock().unwrap().push(line));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(sessions = 3, file = "a.jsonl", "recording summary");
            tracing::debug!("filtered out");
            tracing::warn!("ignored: {}", "reason");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("  INFO recording summary sessions=3 file=a.jsonl\n"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with("  WARN ignored: reason\n"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[0].len() - lines[0].trim_start_matches(|c: char| c != 'Z').len(),
            26
        );
    }
}
