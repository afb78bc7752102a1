//! Pre-tokenisation for byte-level BPE: the GPT-2 regex, written out by hand.
//!
//! GPT-2 (and Hugging Face's `ByteLevel` pre-tokeniser) split text with
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! where the first alternative that matches at the current position wins and each alternative
//! is greedy. Spelled out, at each position:
//!
//! 1. an apostrophe followed by `s t re ve m ll d` (case-sensitive) is a piece;
//! 2. an optional single U+0020 space followed by a run of letters, a run of numbers, or a run
//!    of characters that are neither letters, numbers nor whitespace, is a piece (the space only
//!    joins when such a run follows it);
//! 3. a whitespace run that reaches the end of the text is a piece; one followed by something
//!    else gives up its last character (so that `" word"` keeps its space) unless it is only one
//!    character long (`\s+` then takes that one character).
//!
//! SmolLM2, StarCoder and a few others (llama.cpp's pre-tokeniser types `smollm`, `starcoder`,
//! `refact`, `command-r`, `codeshell`, `exaone`, `minerva`; Hugging Face
//! `Sequence[Digits(individual_digits=true), ByteLevel]`) first cut out every `\p{N}` character
//! as its own piece and apply the regex to the text between them; the lookahead of rule 3 then
//! stops at those cuts.

use super::unicode::{class, is_number, Class};

/// How the text is cut into pieces before BPE merges (`tokenizer.ggml.pre`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex (`gpt2`, `default`, or no `tokenizer.ggml.pre` key).
    Gpt2,
    /// Every `\p{N}` character alone, then the GPT-2 regex (`smollm`, `starcoder`, ...).
    Gpt2SplitDigits,
}

impl PreTokenizer {
    /// The pre-tokeniser llama.cpp uses for a `tokenizer.ggml.pre` value, if this build has it.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => PreTokenizer::Gpt2SplitDigits,
            _ => return None,
        })
    }
}

/// Iterator over the pieces of a text, as sub-slices (never empty, covering the text in order).
#[derive(Clone, Debug)]
pub(crate) struct Pieces<'t> {
    text: &'t str,
    pos: usize,
    /// End of the current regex segment (the next isolated digit, or the end of the text).
    seg_end: usize,
    kind: PreTokenizer,
}

impl<'t> Pieces<'t> {
    pub(crate) fn new(text: &'t str, kind: PreTokenizer) -> Self {
        Pieces {
            text,
            pos: 0,
            seg_end: 0,
            kind,
        }
    }
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let start = self.pos;
        let rest = self.text.get(start..)?;
        let first = rest.chars().next()?;
        let end = match self.kind {
            PreTokenizer::Gpt2 => gpt2_next(self.text, start),
            PreTokenizer::Gpt2SplitDigits => {
                if is_number(first) {
                    start + first.len_utf8()
                } else {
                    if self.seg_end <= start {
                        self.seg_end = rest
                            .char_indices()
                            .find(|&(_, c)| is_number(c))
                            .map_or(self.text.len(), |(i, _)| start + i);
                    }
                    // The segment is non-empty: it starts at a non-digit.
                    gpt2_next(&self.text[..self.seg_end], start)
                }
            }
        };
        self.pos = end;
        self.text.get(start..end)
    }
}

/// End of the GPT-2 regex match that starts at `pos` (a char boundary before the end of `s`).
fn gpt2_next(s: &str, pos: usize) -> usize {
    let rest = &s[pos..];
    let mut chars = rest.chars();
    let Some(c) = chars.next() else {
        return s.len();
    };
    if c == '\'' {
        let after = &rest[1..];
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            if after.starts_with(suffix) {
                return pos + 1 + suffix.len();
            }
        }
    }
    // ` ?X+` where X is one of the three non-space classes.
    let (run_class, run_start) = match (c, chars.next()) {
        (' ', Some(n)) if class(n) != Class::Space => (class(n), pos + 1),
        _ => (class(c), pos),
    };
    if run_class != Class::Space {
        let run = &s[run_start..];
        return run
            .char_indices()
            .find(|&(_, ch)| class(ch) != run_class)
            .map_or(s.len(), |(i, _)| run_start + i);
    }
    // Whitespace: `\s+(?!\S)`, else `\s+`.
    let mut last = pos; // start of the last whitespace char seen
    for (i, ch) in rest.char_indices() {
        if class(ch) != Class::Space {
            let end = pos + i;
            return if last > pos { last } else { end };
        }
        last = pos + i;
    }
    s.len()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn split(s: &str, k: PreTokenizer) -> Vec<&str> {
        let v: Vec<&str> = Pieces::new(s, k).collect();
        assert_eq!(v.concat(), s, "pieces must cover the text");
        assert!(v.iter().all(|p| !p.is_empty()));
        v
    }

    #[test]
    fn gpt2_regex_cases() {
        let g = PreTokenizer::Gpt2;
        assert_eq!(split("Hello world", g), ["Hello", " world"]);
        assert_eq!(split("", g), Vec::<&str>::new());
        assert_eq!(
            split("don't I'll WE'RE 'sup", g),
            ["don", "'t", " I", "'ll", " WE", "'", "RE", " '", "sup"]
        );
        assert_eq!(split("a  b", g), ["a", " ", " b"]);
        assert_eq!(split("a   b  ", g), ["a", "  ", " b", "  "]);
        assert_eq!(split("  a\n\n b", g), [" ", " a", "\n\n", " b"]);
        assert_eq!(split("x\ny", g), ["x", "\n", "y"]);
        assert_eq!(split("x \ty", g), ["x", " ", "\t", "y"]);
        assert_eq!(
            split(" 12345 678 3.14", g),
            [" 12345", " 678", " 3", ".", "14"]
        );
        assert_eq!(split("?!'s ...", g), ["?!'", "s", " ..."]);
        assert_eq!(
            split("café naïve 日本語 🙂", g),
            ["café", " naïve", " 日本語", " 🙂"]
        );
        assert_eq!(split("\u{a0}x", g), ["\u{a0}", "x"]);
        assert_eq!(split(" ", g), [" "]);
        assert_eq!(split("fn main() {}", g), ["fn", " main", "()", " {}"]);
        assert_eq!(split("x²½", g), ["x", "²½"]);
    }

    #[test]
    fn digits_are_isolated_and_bound_the_lookahead() {
        let d = PreTokenizer::Gpt2SplitDigits;
        assert_eq!(
            split(" 12345 678 3.14", d),
            [" ", "1", "2", "3", "4", "5", " ", "6", "7", "8", " ", "3", ".", "1", "4"]
        );
        // Without the split, "  1" would give "  " + " 1"; the segment ends before the digit.
        assert_eq!(split("a  1", d), ["a", "  ", "1"]);
        assert_eq!(split("a  1", PreTokenizer::Gpt2), ["a", " ", " 1"]);
        assert_eq!(split("x²½y", d), ["x", "²", "½", "y"]);
        assert_eq!(split("abc", d), ["abc"]);
        assert_eq!(split("7", d), ["7"]);
    }

    #[test]
    fn names() {
        assert_eq!(
            PreTokenizer::from_name("smollm"),
            Some(PreTokenizer::Gpt2SplitDigits)
        );
        assert_eq!(PreTokenizer::from_name("gpt2"), Some(PreTokenizer::Gpt2));
        assert_eq!(PreTokenizer::from_name("llama-bpe"), None);
    }
}
