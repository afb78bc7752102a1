//! The CLI's view of the core tokenizer: owned scratch, prompts, chat rendering, streaming
//! decode into `String`s.

use anyhow::{Context, Result};
use edgelora::tokenizer::Decoder;
use edgelora::tokenizer::Tokenizer;
use edgelora::tokenizer::{ChatMessage, ChatTemplate};
use edgelora::Gguf;

/// Tokenizer plus chat template of one model.
pub struct Tok<'a> {
    t: Tokenizer<'a, Vec<u32>>,
    chat: ChatTemplate<'a>,
}

impl<'a> Tok<'a> {
    /// Build from the model's metadata.
    pub fn new(g: &Gguf<'a>) -> Result<Self> {
        let t = Tokenizer::new_owned(g).context("loading the tokenizer from GGUF metadata")?;
        // Models without a recognised template get plain ChatML with no default system text.
        let chat = ChatTemplate::from_gguf(g)?.unwrap_or(ChatTemplate::chatml(None));
        Ok(Tok { t, chat })
    }

    /// Token ids for `text`, with BOS first when the model asks for it.
    pub fn encode_prompt(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = vec![];
        if self.t.add_bos() {
            ids.extend(self.t.bos_id());
        }
        ids.extend(self.t.encode_vec(text, parse_special)?);
        Ok(ids)
    }

    /// Render a whole conversation opening with the generation prompt.
    pub fn chat_prompt(&self, system: Option<&str>, msgs: &[(&str, &str)]) -> Result<String> {
        let mut all: Vec<ChatMessage<'_>> = vec![];
        if let Some(s) = system {
            all.push(ChatMessage::new("system", s));
        }
        all.extend(msgs.iter().map(|(r, c)| ChatMessage::new(r, c)));
        let mut out = String::new();
        self.chat.render(&all, true, &mut out)?;
        Ok(out)
    }

    /// The text to run for a new user turn: the full opening for the first one, else the
    /// continuation after the assistant's `<|im_end|>` (already in the KV cache).
    pub fn chat_turn(&self, system: Option<&str>, user: &str, first: bool) -> Result<String> {
        if first {
            return self.chat_prompt(system, &[("user", user)]);
        }
        Ok(format!(
            "\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ))
    }

    /// True for end-of-generation tokens.
    pub fn is_eog(&self, id: u32) -> bool {
        self.t.is_eog(id)
    }

    /// The text of one token (lossy), for display.
    pub fn piece(&self, id: u32) -> String {
        let mut buf = vec![0u8; self.t.max_token_bytes().max(4) * 4];
        match self.t.decode_token_into(id, &mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => format!("<{e}>"),
        }
    }

    /// A streaming decoder that skips control tokens.
    pub fn decoder(&self) -> Dec<'_, 'a> {
        Dec {
            d: Decoder::new(&self.t).skip_special(true),
        }
    }
}

/// Streaming decode: complete UTF-8 characters only.
pub struct Dec<'t, 'a> {
    d: Decoder<'t, 'a, Vec<u32>>,
}

impl Dec<'_, '_> {
    /// Text made complete by `id`.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let mut s = String::new();
        self.d.push_to(id, &mut s)?;
        Ok(s)
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut s = String::new();
        let _ = self.d.finish_to(&mut s);
        s
    }
}
