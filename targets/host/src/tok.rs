//! The CLI's view of the core tokenizer: owned scratch, prompts, chat rendering, streaming
//! decode into `String`s.

use crate::chat_template::ChatRenderer;
use anyhow::{Context, Result};
use edgelora::format::gguf::Value;
use edgelora::tokenizer::Decoder;
use edgelora::tokenizer::Tokenizer;
use edgelora::tokenizer::{ChatMessage, ChatTemplate, CHAT_TEMPLATE_KEY};
use edgelora::Gguf;

/// Tokenizer plus chat prompt renderer of one model.
pub struct Tok<'a> {
    t: Tokenizer<'a, Vec<u32>>,
    chat: ChatRenderer<'a>,
}

impl<'a> Tok<'a> {
    /// Build from the model's metadata: the file's chat template if it has one (minijinja),
    /// else the built-in format its metadata points to, else none (chat is then refused; no
    /// model is given ChatML it was not trained on).
    pub fn new(g: &Gguf<'a>) -> Result<Self> {
        let t = Tokenizer::new_owned(g).context("loading the tokenizer from GGUF metadata")?;
        let builtin = ChatTemplate::for_model(g, |s| t.token_id(s).is_some())?;
        let template = match g.get(CHAT_TEMPLATE_KEY) {
            Some(Value::Str(_)) => Some(g.get_str(CHAT_TEMPLATE_KEY)?),
            _ => None,
        };
        let text_of = |id: Option<u32>| id.map(|i| Self::piece_of(&t, i)).unwrap_or_default();
        let chat = ChatRenderer::new(template, builtin, text_of(t.bos_id()), text_of(t.eos_id()));
        Ok(Tok { t, chat })
    }

    /// The core tokenizer.
    pub fn inner(&self) -> &Tokenizer<'a, Vec<u32>> {
        &self.t
    }

    /// Which chat format renders prompts, for messages.
    pub fn chat_format(&self) -> String {
        self.chat.describe()
    }

    /// The built-in format (`chatml`, `gemma`, `llama3`) used because the file has no chat
    /// template, if that is how prompts are rendered.
    pub fn chat_builtin(&self) -> Option<&'static str> {
        self.chat.builtin_name()
    }

    /// True when the model has a chat format (its template or a built-in one).
    pub fn can_chat(&self) -> bool {
        self.chat.available()
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

    /// Token ids of a rendered chat prompt: special tokens parsed, and BOS first when the
    /// model asks for it, unless the template already wrote it (Gemma's and Llama 3's
    /// templates start with `{{ bos_token }}`; the built-in formats leave it to this).
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        let body = self.t.encode_vec(text, true)?;
        let mut ids = vec![];
        if self.t.add_bos() && body.first().copied() != self.t.bos_id() {
            ids.extend(self.t.bos_id());
        }
        ids.extend(body);
        Ok(ids)
    }

    /// Render a whole conversation (`system` first if given) opening with the generation
    /// prompt.
    pub fn chat_prompt(&self, system: Option<&str>, msgs: &[(&str, &str)]) -> Result<String> {
        let mut all: Vec<ChatMessage<'_>> = vec![];
        if let Some(s) = system {
            all.push(ChatMessage::new("system", s));
        }
        all.extend(msgs.iter().map(|(r, c)| ChatMessage::new(r, c)));
        self.chat.render(&all, true)
    }

    /// True for end-of-generation tokens.
    pub fn is_eog(&self, id: u32) -> bool {
        self.t.is_eog(id)
    }

    /// The text of one token (lossy), for display.
    pub fn piece(&self, id: u32) -> String {
        Self::piece_of(&self.t, id)
    }

    /// The bytes of one token (empty for an id out of range); control tokens give their
    /// text.
    pub fn piece_bytes(&self, id: u32) -> Vec<u8> {
        let mut buf = vec![0u8; self.t.max_token_bytes().max(4) * 4];
        match self.t.decode_token_into(id, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => vec![],
        }
    }

    fn piece_of(t: &Tokenizer<'a, Vec<u32>>, id: u32) -> String {
        let mut buf = vec![0u8; t.max_token_bytes().max(4) * 4];
        match t.decode_token_into(id, &mut buf) {
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
