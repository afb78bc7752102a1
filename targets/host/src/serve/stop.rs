//! Stop strings over streamed text: the text a client sees never contains a stop string, nor
//! any part of one, even when the string arrives split over several tokens (and so over
//! several streamed chunks).
//!
//! The matcher holds back the longest tail of the text that could still begin a stop string
//! and releases it once it cannot; when a stop string completes, everything from its start on
//! is dropped. That is what OpenAI's API and llama-server do (the stop sequence is not
//! returned).

/// Incremental stop-string search.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (a possible start of a stop string).
    held: String,
    /// Bytes released so far.
    released: usize,
}

/// What one push gives back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Text safe to show now.
    pub text: String,
    /// A stop string completed: generation ends, the rest is dropped.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Bytes released so far (the offset of the next released byte in the whole output).
    pub fn released(&self) -> usize {
        self.released
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.released + self.held.len()
    }

    /// Add generated text.
    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        // The earliest complete stop string wins (what a search over the whole text finds).
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let out = self.held[..at].to_string();
            self.released += out.len();
            self.held.clear();
            return Released {
                text: out,
                stopped: true,
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out: String = self.held.drain(..cut).collect();
        self.released += out.len();
        Released {
            text: out,
            stopped: false,
        }
    }

    /// The end of the generation without a stop string: release what is held.
    pub fn finish(&mut self) -> String {
        self.released += self.held.len();
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, cut at a
/// character boundary of `text`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let at = text.len() - n;
            text.is_char_boundary(at) && stop.as_bytes().starts_with(&text.as_bytes()[at..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = vec![];
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_over_pieces_never_leaks() {
        let (out, stopped) = run(&["\n\n"], &["ab", "c\n", "\nd"]);
        assert!(stopped);
        assert_eq!(out, ["ab", "c", ""]);
        let (out, stopped) = run(&["END"], &["xE", "N", "D", "more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x");
        assert!(out.iter().all(|p| !p.contains('E')), "{out:?}");
    }

    #[test]
    fn false_starts_are_released() {
        let (out, stopped) = run(&["END"], &["xE", "Nd", "y"]);
        assert!(!stopped);
        assert_eq!(out, ["x", "ENd", "y", ""]);
        // A held tail comes out at the end.
        let (out, _) = run(&["END"], &["abEN"]);
        assert_eq!(out, ["ab", "EN"]);
    }

    #[test]
    fn earliest_of_several_and_unicode() {
        let (out, stopped) = run(&["b", "ab"], &["xxab"]);
        assert!(stopped);
        assert_eq!(out, ["xx"]);
        let (out, stopped) = run(&["é!"], &["café", "?é", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "café?");
        let (out, stopped) = run(&[], &["a", "b"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "ab");
    }
}
