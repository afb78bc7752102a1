//! Character classes for the pre-tokeniser and GPT-2's byte <-> character mapping.
//!
//! `\p{L}` and `\p{N}` come from the generated range tables in `unicode_tables.rs` (Unicode
//! 16.0, the version of the Oniguruma build inside Hugging Face `tokenizers` 0.23, whose regex
//! is the reference; llama.cpp's own tables are older, which shows on letters new in 16.0);
//! `\s` is Unicode `White_Space`, which is what `char::is_whitespace` tests and what Oniguruma's
//! `\s` means for UTF-8 text.

use super::unicode_tables::{LETTER, NUMBER};

/// The classes the GPT-2 regex distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s`
    Space,
    /// `[^\s\p{L}\p{N}]`
    Other,
}

/// ASCII classes, one byte each: 0 letter, 1 number, 2 space, 3 other.
const ASCII_CLASS: [u8; 128] = {
    let mut t = [3u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() {
            0
        } else if c.is_ascii_digit() {
            1
        } else if matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ') {
            2
        } else {
            3
        };
        i += 1;
    }
    t
};

fn in_ranges(table: &[(u32, u32)], cp: u32) -> bool {
    // Index of the first range starting after `cp`; the range before it is the only candidate.
    let i = table.partition_point(|&(lo, _)| lo <= cp);
    i > 0 && table[i - 1].1 >= cp
}

/// The class of `c`.
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    if cp < 0x80 {
        return match ASCII_CLASS[cp as usize] {
            0 => Class::Letter,
            1 => Class::Number,
            2 => Class::Space,
            _ => Class::Other,
        };
    }
    if c.is_whitespace() {
        Class::Space
    } else if in_ranges(&LETTER, cp) {
        Class::Letter
    } else if in_ranges(&NUMBER, cp) {
        Class::Number
    } else {
        Class::Other
    }
}

/// True for `\p{N}`.
pub(crate) fn is_number(c: char) -> bool {
    class(c) == Class::Number
}

/// Bytes that GPT-2's `bytes_to_unicode` keeps as themselves (printable Latin-1).
const fn printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// GPT-2's byte -> code point map: printable bytes map to themselves, the 68 others to
/// U+0100.. in byte order (so space is U+0120 'Ġ' and newline U+010A 'Ċ').
pub(crate) const BYTE_TO_CHAR: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut next = 256u16;
    let mut b = 0usize;
    while b < 256 {
        if printable(b as u8) {
            t[b] = b as u16;
        } else {
            t[b] = next;
            next += 1;
        }
        b += 1;
    }
    t
};

/// The 68 non-printable bytes in order: `NON_PRINTABLE[k]` is the byte that maps to U+0100+k.
const NON_PRINTABLE: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut k = 0;
    let mut b = 0usize;
    while b < 256 {
        if !printable(b as u8) {
            t[k] = b as u8;
            k += 1;
        }
        b += 1;
    }
    t
};

/// The UTF-8 of `bytes` spelled with [`BYTE_TO_CHAR`] (how a byte-level vocabulary stores the
/// piece: `" the"` is `"Ġthe"`).
pub(crate) fn byte_level_spelling(bytes: &[u8]) -> impl Iterator<Item = u8> + Clone + '_ {
    bytes.iter().flat_map(|&b| {
        // Every mapped code point is below U+0800: one or two UTF-8 bytes.
        let cp = BYTE_TO_CHAR[b as usize];
        let (arr, n) = if cp < 0x80 {
            ([cp as u8, 0], 1)
        } else {
            ([0xc0 | (cp >> 6) as u8, 0x80 | (cp & 0x3f) as u8], 2)
        };
        arr.into_iter().take(n)
    })
}

/// Inverse of [`BYTE_TO_CHAR`]; `None` for characters outside GPT-2's byte alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && printable(cp as u8) {
        Some(cp as u8)
    } else if (256..256 + 68).contains(&cp) {
        Some(NON_PRINTABLE[(cp - 256) as usize])
    } else {
        None
    }
}

/// Length of the UTF-8 sequence that starts with `lead` (1 for anything that is not a valid
/// multi-byte lead, which only happens on text that is not UTF-8).
pub(crate) const fn utf8_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_with_gpt2_fixed_points() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 0x120); // 'Ġ'
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 0x10a); // 'Ċ'
        assert_eq!(BYTE_TO_CHAR[b'A' as usize], b'A' as u16);
        assert_eq!(BYTE_TO_CHAR[0xad], 0x143); // soft hyphen is the last non-printable
        for b in 0..=255u8 {
            let c = char::from_u32(BYTE_TO_CHAR[b as usize] as u32).unwrap();
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
        let all: std::vec::Vec<u8> = (0..=255u8).collect();
        let mut expect = std::string::String::new();
        for &b in &all {
            expect.push(char::from_u32(BYTE_TO_CHAR[b as usize] as u32).unwrap());
        }
        assert!(byte_level_spelling(&all).eq(expect.bytes()));
        assert!(byte_level_spelling(b" the").eq("\u{120}the".bytes()));
        assert_eq!(char_to_byte('日'), None);
    }

    #[test]
    fn classes() {
        for (c, k) in [
            ('a', Class::Letter),
            ('Z', Class::Letter),
            ('é', Class::Letter),
            ('日', Class::Letter),
            ('ª', Class::Letter),
            ('7', Class::Number),
            ('½', Class::Number),
            ('²', Class::Number),
            ('٣', Class::Number),
            ('Ⅻ', Class::Number),
            (' ', Class::Space),
            ('\u{a0}', Class::Space),
            ('\u{3000}', Class::Space),
            ('\u{2028}', Class::Space),
            ('\u{1c}', Class::Other), // not White_Space, unlike Python's str.isspace
            ('\u{301}', Class::Other), // combining mark: Mn, not L
            ('\u{93f}', Class::Other), // Devanagari vowel sign: Mc, Alphabetic but not L
            ('!', Class::Other),
            ('🙂', Class::Other),
            ('\'', Class::Other),
            ('\u{1e5d0}', Class::Letter), // Ol Onal, new in Unicode 16.0
            ('\u{11f50}', Class::Number), // Kawi digit, new in 15.0
            ('\u{10940}', Class::Other),  // Sidetic, new in 17.0: not in tokenizers' tables
        ] {
            assert_eq!(class(c), k, "{c:?}");
        }
    }
}
