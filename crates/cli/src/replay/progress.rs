//! koala's stderr while replaying: a one-line progress bar (only on a
//! terminal) that the service's own output and koala's messages are
//! written above.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bar is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);

pub struct Term {
    bar: bool,
    state: Mutex<State>,
}

struct State {
    /// The bar is on screen (on the current line).
    shown: bool,
    last_draw: Option<Instant>,
    text: String,
    /// The last bytes written through did not end a line: do not draw the
    /// bar over them.
    partial_line: bool,
}

impl Term {
    /// `bar`: draw a progress bar (stderr is a terminal and it was not
    /// turned off).
    pub fn new(bar: bool) -> Term {
        Term {
            bar,
            state: Mutex::new(State {
                shown: false,
                last_draw: None,
                text: String::new(),
                partial_line: false,
            }),
        }
    }

    /// Whether stderr is a terminal.
    pub fn stderr_is_terminal() -> bool {
        // SAFETY: isatty only inspects the descriptor.
        unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the progress text; redrawn when due (or `force`).
    pub fn progress(&self, text: String, force: bool) {
        if !self.bar {
            return;
        }
        let mut state = self.lock();
        state.text = text;
        let due = state.last_draw.is_none_or(|at| at.elapsed() >= REDRAW);
        if (due || force) && !state.partial_line {
            draw(&mut state);
        }
    }

    /// Writes bytes (the service's output) to stderr above the bar.
    pub fn write_through(&self, bytes: &[u8]) {
        let mut state = self.lock();
        let mut err = io::stderr().lock();
        if state.shown {
            let _ = err.write_all(b"\r\x1b[K");
            state.shown = false;
        }
        let _ = err.write_all(bytes);
        state.partial_line = !bytes.ends_with(b"\n");
        let _ = err.flush();
        drop(err);
        if self.bar && !state.partial_line && !state.text.is_empty() {
            draw(&mut state);
        }
    }

    /// A line of koala's own, on stderr above the bar.
    pub fn message(&self, line: &str) {
        let mut text = String::new();
        if self.lock().partial_line {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        self.write_through(text.as_bytes());
    }

    /// Removes the bar for good.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.text.clear();
        if state.shown {
            let _ = io::stderr().write_all(b"\r\x1b[K");
            state.shown = false;
        }
    }
}

fn draw(state: &mut State) {
    let width = terminal_width().saturating_sub(1).max(20);
    let text: String = state.text.chars().take(width).collect();
    let mut err = io::stderr().lock();
    let _ = write!(err, "\r\x1b[K{text}");
    let _ = err.flush();
    state.shown = true;
    state.last_draw = Some(Instant::now());
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize struct we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    80
}

/// `[#######.......]  120/1000  3 failed  1 error  45.2/s  ETA 19 s`
pub fn bar_text(
    done: usize,
    total: usize,
    failed: usize,
    errors: usize,
    elapsed: Duration,
) -> String {
    const WIDTH: usize = 24;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    let rate = if elapsed.as_secs_f64() > 0.0 {
        done as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let mut text = format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    );
    if failed > 0 {
        text.push_str(&format!("  {failed} failed"));
    }
    if errors > 0 {
        text.push_str(&format!("  {errors} error(s)"));
    }
    text.push_str(&format!("  {rate:.1}/s"));
    if rate > 0.0 && done < total {
        text.push_str(&format!("  ETA {:.0} s", (total - done) as f64 / rate));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_tells_progress_rate_and_eta() {
        assert_eq!(
            bar_text(50, 100, 2, 1, Duration::from_secs(10)),
            "[############............] 50/100  2 failed  1 error(s)  5.0/s  ETA 10 s"
        );
        assert_eq!(
            bar_text(0, 0, 0, 0, Duration::ZERO),
            "[########################] 0/0  0.0/s"
        );
    }
}
