//! Progress of the long file-writing commands (`quantize`, `merge`, `adapter convert`,
//! `adapter combine`, `fetch`) on stderr.
//!
//! On a terminal an `indicatif` bar is drawn at the bottom and report lines are printed above
//! it. When stderr is not a terminal (a log file, a pipe, `2>&1 | head -1`) no bar exists at all:
//! report lines go out as plain lines through [`crate::note!`], which ignores a closed stderr,
//! so the work always reaches its output file. Nothing here touches stdout, so what a command
//! prints there and the files it writes are the same with and without a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// A bar on a terminal's stderr, or nothing but plain report lines elsewhere.
pub struct Progress {
    /// `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `len` steps counted in `unit` (e.g. "tensors"), headed by `what`.
    pub fn steps(what: &str, len: u64, unit: &str) -> Self {
        Self::with_template(
            len,
            &format!(
                "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {unit} {{wide_msg}} \
                 ({{elapsed}}, eta {{eta}})"
            ),
        )
    }

    /// A bar of `len` bytes, headed by `what`, with the byte rate.
    pub fn bytes(what: &str, len: u64) -> Self {
        Self::with_template(
            len,
            &format!(
                "{{spinner}} {what} [{{bar:30}}] {{bytes}}/{{total_bytes}} \
                 ({{bytes_per_sec}}, eta {{eta}}) {{wide_msg}}"
            ),
        )
    }

    fn with_template(len: u64, template: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new(len);
        // A bad template is a bug in the literals above; draw the default style then.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar: Some(bar) }
    }

    /// True when a bar is drawn (stderr is a terminal): plain per-step lines are then left out
    /// where the bar says the same.
    pub fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// A report line that stays: above the bar on a terminal, else a plain stderr line.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => crate::note!("{text}"),
        }
    }

    /// Move the bar to `pos` steps done, showing `msg` beside it.
    pub fn set(&self, pos: u64, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            b.set_position(pos);
        }
    }

    /// Move the bar to `pos` (and the length to `len`, which may grow as work is found).
    pub fn set_pos(&self, pos: u64, len: u64) {
        if let Some(b) = &self.bar {
            b.set_length(len);
            b.set_position(pos);
        }
    }

    /// Remove the bar (the final report follows as plain lines).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// An error return clears the bar too, so the error message starts on a clean line.
    fn drop(&mut self) {
        self.finish();
    }
}
