//! Pre-tokenisation for byte-level BPE: the GPT-2, Llama 3 and Qwen2 regexes, written out by
//! hand (the core has no regex engine; each is a few dozen lines over the `\p{L}`/`\p{N}`/`\s`
//! classes of `unicode.rs`).
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
//!
//! # Llama 3 and Qwen2
//!
//! Llama 3's `tokenizer.json` (llama.cpp `llama-bpe`) splits with
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! and Qwen2's (`qwen2`) with the same pattern where `\p{N}` stands alone instead of `\p{N}{1,3}`
//! (both checked against the `tokenizer.json` regexes `transformers` builds and llama.cpp's
//! `unicode_regex_split_custom_llama3`/`_qwen2`). DBRX and Smaug (`dbrx`, `smaug-bpe`) use Llama
//! 3's regex without its other settings.
//!
//! Spelled out, at each position, first match wins:
//!
//! 1. an apostrophe followed by `s t re ve m ll d` in any case is a piece. The case folding is
//!    Oniguruma's, as in Hugging Face `tokenizers`: besides ASCII, `ſ` (U+017F) folds to `s`.
//!    llama.cpp's adaptation (`'[sS]|...`) is ASCII only, so it gives `'ſt` where this gives
//!    `'ſ` + `t`;
//! 2. one character that is not `\r`, `\n`, a letter or a number (a space, a tab, `(`, a
//!    combining mark, ...) followed by a run of letters, or just a run of letters;
//! 3. a run of 1 to 3 numbers (Llama 3: a longer run is cut every 3 from the left), or one
//!    number (Qwen2). No space joins a number;
//! 4. an optional U+0020 space, a run of characters that are neither whitespace, letters nor
//!    numbers, then any `\r`/`\n` that follow;
//! 5. whitespace: a run containing `\r` or `\n` ends after its last `\r`/`\n`; otherwise as
//!    GPT-2's rule 3 (a run followed by something else gives up its last character unless it is
//!    one character long).
//!
//! Llama 3 also sets `ignore_merges` (its `tokenizer.json`; llama.cpp for `llama-bpe`): a piece
//! that is itself a token becomes that token without merging; see
//! [`PreTokenizer::ignores_merges`]. Qwen2's `tokenizer.json` normalises text to NFC first; a
//! GGUF does not record that and llama.cpp does not do it, nor does this tokenizer (decomposed
//! accents give other ids than Hugging Face's there).
//!
//! A value of `tokenizer.ggml.pre` that is not listed in [`PreTokenizer::from_name`] (Qwen3.5's
//! `qwen35`, GPT-4o's, Tekken, ...) makes the tokenizer refuse the file with
//! [`ErrorKind::BadValue`](crate::ErrorKind::BadValue) naming the key, rather than split with
//! a regex the vocabulary was not trained with.

use super::unicode::{class, is_number, Class};

/// How the text is cut into pieces before BPE merges (`tokenizer.ggml.pre`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex (`gpt2`, `default`, or no `tokenizer.ggml.pre` key).
    Gpt2,
    /// Every `\p{N}` character alone, then the GPT-2 regex (`smollm`, `starcoder`, ...).
    Gpt2SplitDigits,
    /// Llama 3's regex, numbers in groups of up to three (`llama-bpe`, `llama3`, `falcon3`, ...).
    Llama3,
    /// Qwen2's regex: Llama 3's with one number at a time (`qwen2`, `deepseek-r1-qwen`, ...).
    Qwen2,
    /// Llama 3's regex without `ignore_merges` or a BOS default (`dbrx`, `smaug-bpe`).
    Llama3Regex,
}

impl PreTokenizer {
    /// The pre-tokeniser llama.cpp uses for a `tokenizer.ggml.pre` value, if this build has it.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => PreTokenizer::Gpt2SplitDigits,
            // llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3 names (llama-vocab.cpp).
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => PreTokenizer::Llama3,
            // LLAMA_VOCAB_PRE_TYPE_QWEN2 and the types that share its regex.
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" => {
                PreTokenizer::Qwen2
            }
            // LLAMA_VOCAB_PRE_TYPE_DBRX / _SMAUG: Llama 3's regex, none of its other settings.
            "dbrx" | "smaug-bpe" => PreTokenizer::Llama3Regex,
            _ => return None,
        })
    }

    /// Whether a piece that is itself a token is taken whole, without running the merges
    /// (Hugging Face `BPE.ignore_merges`; llama.cpp sets it for the Llama 3 names). True for
    /// [`PreTokenizer::Llama3`].
    pub const fn ignores_merges(self) -> bool {
        matches!(self, PreTokenizer::Llama3)
    }

    /// `tokenizer.ggml.add_bos_token` when the file does not say: llama.cpp defaults it to true
    /// for the Llama 3 names, false for every other byte-level vocabulary.
    pub const fn default_add_bos(self) -> bool {
        matches!(self, PreTokenizer::Llama3)
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
            PreTokenizer::Llama3 | PreTokenizer::Llama3Regex => llama3_next(self.text, start, 3),
            PreTokenizer::Qwen2 => llama3_next(self.text, start, 1),
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

/// True for `\r` and `\n`.
const fn is_cr_lf(c: char) -> bool {
    matches!(c, '\r' | '\n')
}

/// The letter a contraction may use in place of `c` under Oniguruma's case folding (the regex
/// is `(?i:...)`): ASCII letters in either case, and `ſ` (U+017F), which folds to `s`.
fn fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',
        _ => c.to_ascii_lowercase(),
    }
}

/// Length in bytes of the contraction (`'s 't 're 've 'm 'll 'd`, any case) at the start of
/// `rest`, which starts with `'`.
fn contraction_len(rest: &str) -> Option<usize> {
    let mut it = rest[1..].chars();
    let a = it.next()?;
    let fa = fold(a);
    if matches!(fa, 's' | 't' | 'm' | 'd') {
        return Some(1 + a.len_utf8());
    }
    let b = it.next()?;
    let ok = matches!((fa, fold(b)), ('r', 'e') | ('v', 'e') | ('l', 'l'));
    ok.then(|| 1 + a.len_utf8() + b.len_utf8())
}

/// End of the run of characters satisfying `f` that starts at `from` (a char boundary).
fn run_end(s: &str, from: usize, f: impl Fn(char) -> bool) -> usize {
    s[from..]
        .char_indices()
        .find(|&(_, c)| !f(c))
        .map_or(s.len(), |(i, _)| from + i)
}

/// End of the Llama 3 / Qwen2 regex match that starts at `pos` (a char boundary before the end
/// of `s`), with numbers in runs of at most `max_digits` (3 for Llama 3, 1 for Qwen2).
fn llama3_next(s: &str, pos: usize, max_digits: usize) -> usize {
    let rest = &s[pos..];
    let mut chars = rest.chars();
    let Some(c) = chars.next() else {
        return s.len();
    };
    let next = chars.next();
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == '\'' {
        if let Some(n) = contraction_len(rest) {
            return pos + n;
        }
    }
    let k = class(c);
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if k == Class::Letter {
        return run_end(s, pos, |ch| class(ch) == Class::Letter);
    }
    if k != Class::Number && !is_cr_lf(c) && next.is_some_and(|n| class(n) == Class::Letter) {
        return run_end(s, pos + c.len_utf8(), |ch| class(ch) == Class::Letter);
    }
    // 3. \p{N}{1,max_digits}
    if k == Class::Number {
        let mut end = pos;
        for ch in rest.chars().take(max_digits) {
            if class(ch) != Class::Number {
                break;
            }
            end += ch.len_utf8();
        }
        return end;
    }
    // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let run_start = match (c, next) {
        (' ', Some(n)) if class(n) == Class::Other => pos + 1,
        _ if k == Class::Other => pos,
        _ => usize::MAX,
    };
    if run_start != usize::MAX {
        let end = run_end(s, run_start, |ch| class(ch) == Class::Other);
        return run_end(s, end, is_cr_lf);
    }
    // 5. Whitespace (c is whitespace here): \s*[\r\n]+, then \s+(?!\S), then \s+.
    let end = run_end(s, pos, |ch| class(ch) == Class::Space);
    let ws = &s[pos..end];
    if let Some(i) = ws.rfind(['\r', '\n']) {
        return pos + i + 1;
    }
    match ws.char_indices().next_back() {
        Some((last, _)) if last > 0 && end < s.len() => pos + last,
        _ => end,
    }
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
        assert_eq!(
            PreTokenizer::from_name("llama-bpe"),
            Some(PreTokenizer::Llama3)
        );
        assert_eq!(
            PreTokenizer::from_name("llama3"),
            Some(PreTokenizer::Llama3)
        );
        assert_eq!(PreTokenizer::from_name("qwen2"), Some(PreTokenizer::Qwen2));
        assert_eq!(
            PreTokenizer::from_name("deepseek-r1-qwen"),
            Some(PreTokenizer::Qwen2)
        );
        // Other regexes (Qwen3.5 adds \p{M}, GPT-4o has its own): not this build.
        assert_eq!(PreTokenizer::from_name("qwen35"), None);
        assert_eq!(PreTokenizer::from_name("gpt-4o"), None);
        assert_eq!(PreTokenizer::from_name("Llama-BPE"), None);
        assert!(PreTokenizer::Llama3.ignores_merges() && PreTokenizer::Llama3.default_add_bos());
        assert_eq!(
            PreTokenizer::from_name("smaug-bpe"),
            Some(PreTokenizer::Llama3Regex)
        );
        for k in [
            PreTokenizer::Gpt2,
            PreTokenizer::Gpt2SplitDigits,
            PreTokenizer::Qwen2,
            PreTokenizer::Llama3Regex,
        ] {
            assert!(!k.ignores_merges() && !k.default_add_bos());
        }
    }

    #[test]
    fn llama3_regex_cases() {
        let l = PreTokenizer::Llama3;
        assert_eq!(split("Hello world", l), ["Hello", " world"]);
        assert_eq!(split("", l), Vec::<&str>::new());
        // Numbers: groups of three from the left, never with a space.
        assert_eq!(split(" 1234567 89", l), [" ", "123", "456", "7", " ", "89"]);
        assert_eq!(split("a1234b", l), ["a", "123", "4", "b"]);
        assert_eq!(split("x²½٣٤٥٦", l), ["x", "²½٣", "٤٥٦"]);
        // Contractions in any case, only where a piece starts; an apostrophe that starts no
        // contraction joins letters like any other punctuation.
        assert_eq!(
            split("DON'T I'M WE'Re 'LL 'vE 'x ''s", l),
            [
                "DON", "'T", " I", "'M", " WE", "'Re", " '", "LL", " '", "vE", " '", "x", " ''",
                "s"
            ]
        );
        // Oniguruma folds ſ to s; the Kelvin sign folds to k, which no contraction has.
        assert_eq!(split("'ſt", l), ["'ſ", "t"]);
        assert_eq!(split("'\u{212a}", l), ["'\u{212a}"]);
        // One non-letter, non-number, non-newline character joins a letter run.
        assert_eq!(
            split("(hello) #tag\tx", l),
            ["(hello", ")", " #", "tag", "\tx"]
        );
        assert_eq!(split("e\u{301}x", l), ["e", "\u{301}x"]);
        assert_eq!(split("\u{a0}word", l), ["\u{a0}word"]);
        assert_eq!(split("\nword", l), ["\n", "word"]);
        // Punctuation takes the newlines after it.
        assert_eq!(split("end.\r\n\nnext", l), ["end", ".\r\n\n", "next"]);
        assert_eq!(split("a ?!\n", l), ["a", " ?!\n"]);
        // Whitespace: up to the last newline of a run; else GPT-2's rule.
        assert_eq!(split("a \r\n  b", l), ["a", " \r\n", " ", " b"]);
        assert_eq!(split("\n\n  hello", l), ["\n\n", " ", " hello"]);
        assert_eq!(split("x \n \n y", l), ["x", " \n \n", " y"]);
        assert_eq!(split("a  1", l), ["a", " ", " ", "1"]);
        assert_eq!(split("a   b  ", l), ["a", "  ", " b", "  "]);
        assert_eq!(split("x \ty", l), ["x", " ", "\ty"]);
        assert_eq!(split("end\u{3000}", l), ["end", "\u{3000}"]);
        assert_eq!(split(" ", l), [" "]);
        assert_eq!(split("café 日本語 🙂🙂", l), ["café", " 日本語", " 🙂🙂"]);
    }

    #[test]
    fn qwen2_numbers_one_at_a_time() {
        let q = PreTokenizer::Qwen2;
        assert_eq!(
            split(" 1234567 89", q),
            [" ", "1", "2", "3", "4", "5", "6", "7", " ", "8", "9"]
        );
        assert_eq!(split("a12b", q), ["a", "1", "2", "b"]);
        assert_eq!(split("x²½", q), ["x", "²", "½"]);
        // Everything else as Llama 3.
        let l = PreTokenizer::Llama3;
        for s in [
            "DON'T stop\r\n\n  now!!\n",
            "(a) 'ſ e\u{301} \u{a0}\u{a0}x",
            "fn f() {\n\treturn;\n}\n",
        ] {
            assert_eq!(split(s, q), split(s, l), "{s:?}");
        }
        for s in ["DON'T 1234567\r\n  x", " 'ſ ² e\u{301}"] {
            assert_eq!(split(s, PreTokenizer::Llama3Regex), split(s, l), "{s:?}");
        }
    }

    /// Random text (random bytes, made UTF-8, and random picks from awkward characters) never
    /// panics, and the pieces always cover it.
    #[test]
    fn random_text_never_panics() {
        const ODD: [&str; 20] = [
            "'", "s", "S", "ſ", "LL", "1", "٣", "²", " ", "  ", "\t", "\r", "\n", "\u{a0}",
            "\u{3000}", "\u{301}", "🙂", "日", "!", "(",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let len = (next() % 48) as usize;
            let text = if round % 2 == 0 {
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                std::string::String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..len).map(|_| ODD[(next() % 20) as usize]).collect()
            };
            for k in [
                PreTokenizer::Gpt2,
                PreTokenizer::Gpt2SplitDigits,
                PreTokenizer::Llama3,
                PreTokenizer::Qwen2,
                PreTokenizer::Llama3Regex,
            ] {
                split(&text, k);
            }
        }
    }
}
