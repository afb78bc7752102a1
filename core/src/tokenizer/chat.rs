//! Built-in chat prompt formats: ChatML, Gemma and Llama 3.
//!
//! There is no Jinja engine here (the host CLI renders `tokenizer.chat_template` with
//! `minijinja` when a file has one). The core recognises a format from the template text, or,
//! for files without a template, from metadata (architecture, special tokens present,
//! `tokenizer.ggml.pre`), and renders it exactly as llama.cpp's built-in format of the same name
//! (`llama_chat_apply_template` with `chatml` / `gemma` / `llama3`; checked against it in
//! `tests/tests/chat_formats.rs`):
//!
//! ```text
//! ChatML   <|im_start|>{role}\n{content}<|im_end|>\n ...              <|im_start|>assistant\n
//! Gemma    <start_of_turn>{user|model}\n{content}<end_of_turn>\n ...  <start_of_turn>model\n
//! Llama 3  <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//!                                              <|start_header_id|>assistant<|end_header_id|>\n\n
//! ```
//!
//! - ChatML copies contents verbatim (no trimming) and may insert a default system turn, read
//!   from the template's literal text as SmolLM2-Instruct's template does:
//!   `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...' }}`.
//! - Gemma has no system role: system contents (trimmed) open the next user turn, followed by a
//!   blank line; `assistant` is spelled `model`; contents are trimmed (Jinja's `trim`).
//! - Llama 3 trims contents and keeps role names.
//!
//! None of them writes the BOS token: the caller adds it as an id when the vocabulary asks for
//! it (`tokenizer.ggml.add_bos_token`), which is what the Gemma and Llama 3 templates'
//! leading `{{ bos_token }}` stands for.

use core::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{Gguf, Value};

/// The GGUF key holding the Jinja chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One chat turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatMessage<'m> {
    /// `system`, `user`, `assistant`, or any other role name.
    pub role: &'m str,
    /// The text of the turn.
    pub content: &'m str,
}

impl<'m> ChatMessage<'m> {
    /// A message.
    pub const fn new(role: &'m str, content: &'m str) -> Self {
        ChatMessage { role, content }
    }
}

/// The prompt formats the core renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role ... <|im_end|>` (SmolLM2, Qwen, Hermes).
    ChatMl,
    /// `<start_of_turn>user ... <end_of_turn>` (Gemma 1-3).
    Gemma,
    /// `<|start_header_id|>role<|end_header_id|> ... <|eot_id|>` (Llama 3.x).
    Llama3,
}

impl ChatFormat {
    /// The format a template's text belongs to, by the markers it writes.
    pub fn detect(template: &str) -> Option<ChatFormat> {
        if template.contains("<|im_start|>") {
            Some(ChatFormat::ChatMl)
        } else if template.contains("<start_of_turn>") {
            Some(ChatFormat::Gemma)
        } else if template.contains("<|start_header_id|>") {
            Some(ChatFormat::Llama3)
        } else {
            None
        }
    }

    /// llama.cpp's name for the built-in format.
    pub const fn name(self) -> &'static str {
        match self {
            ChatFormat::ChatMl => "chatml",
            ChatFormat::Gemma => "gemma",
            ChatFormat::Llama3 => "llama3",
        }
    }
}

/// Architectures whose instruction-tuned models use the Gemma format.
const GEMMA_ARCHS: [&str; 4] = ["gemma", "gemma2", "gemma3", "gemma3n"];
/// `tokenizer.ggml.pre` values of Llama 3 vocabularies.
const LLAMA3_PRES: [&str; 2] = ["llama3", "llama-bpe"];

/// A recognised chat format, with ChatML's optional default system message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatTemplate<'a> {
    format: ChatFormat,
    default_system: Option<&'a str>,
}

impl<'a> ChatTemplate<'a> {
    /// ChatML; `default_system` is inserted as a system turn when the first message of a
    /// non-empty conversation is not a system message.
    pub const fn chatml(default_system: Option<&'a str>) -> Self {
        ChatTemplate {
            format: ChatFormat::ChatMl,
            default_system,
        }
    }

    /// A built-in format with no default system message.
    pub const fn builtin(format: ChatFormat) -> Self {
        ChatTemplate {
            format,
            default_system: None,
        }
    }

    /// Recognise a Jinja template by the markers it writes (see [`ChatFormat::detect`]); for
    /// ChatML also its default system message: the literal text of an
    /// `<|im_start|>system\n...<|im_end|>` string in a template that tests whether the first
    /// message is a system message. `None` for other formats.
    pub fn detect(template: &'a str) -> Option<Self> {
        let format = ChatFormat::detect(template)?;
        Some(ChatTemplate {
            format,
            default_system: match format {
                ChatFormat::ChatMl => default_system(template),
                _ => None,
            },
        })
    }

    /// Read and recognise `tokenizer.chat_template`: `Ok(None)` when it is absent or in no
    /// built-in format.
    ///
    /// # Errors
    /// [`ErrorKind::WrongType`] if the key is not a string, [`ErrorKind::InvalidUtf8`] if it is
    /// not UTF-8.
    pub fn from_gguf(gguf: &Gguf<'a>) -> Result<Option<Self>> {
        Ok(template_text(gguf)?.and_then(Self::detect))
    }

    /// The format for a model: its template's, if it has one in a built-in format; otherwise
    /// chosen from metadata, in this order: a Gemma architecture (`general.architecture` =
    /// `gemma*`) or a `<start_of_turn>` token gives Gemma; a `<|start_header_id|>` token or
    /// `tokenizer.ggml.pre` = `llama3`/`llama-bpe` gives Llama 3; an `<|im_start|>` token gives
    /// ChatML. `has_token` says whether the vocabulary has a token with that text (for
    /// example [`Tokenizer::token_id`](super::Tokenizer::token_id)`(t).is_some()`). `Ok(None)`
    /// when nothing points to a format: the caller should not guess one.
    ///
    /// # Errors
    /// As [`ChatTemplate::from_gguf`].
    pub fn for_model(gguf: &Gguf<'a>, has_token: impl Fn(&str) -> bool) -> Result<Option<Self>> {
        if let Some(t) = Self::from_gguf(gguf)? {
            return Ok(Some(t));
        }
        let arch = match gguf.get("general.architecture") {
            Some(Value::Str(_)) => gguf.get_str("general.architecture").ok(),
            _ => None,
        };
        let pre = match gguf.get(super::PRE_KEY) {
            Some(Value::Str(_)) => gguf.get_str(super::PRE_KEY).ok(),
            _ => None,
        };
        let format = if arch.is_some_and(|a| GEMMA_ARCHS.contains(&a))
            || has_token("<start_of_turn>")
        {
            ChatFormat::Gemma
        } else if has_token("<|start_header_id|>") || pre.is_some_and(|p| LLAMA3_PRES.contains(&p))
        {
            ChatFormat::Llama3
        } else if has_token("<|im_start|>") {
            ChatFormat::ChatMl
        } else {
            return Ok(None);
        };
        Ok(Some(Self::builtin(format)))
    }

    /// The format.
    pub const fn format(&self) -> ChatFormat {
        self.format
    }

    /// The default system message, if the template has one.
    pub const fn default_system(&self) -> Option<&'a str> {
        self.default_system
    }

    /// Render `messages` (and, with `add_generation_prompt`, the opening of an assistant turn)
    /// into `w`.
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] if the sink refuses the text.
    pub fn render<W: fmt::Write + ?Sized>(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        w: &mut W,
    ) -> Result<()> {
        self.parts(messages, add_generation_prompt, &mut |s| w.write_str(s))
            .map_err(|_| {
                Error::new(
                    ErrorKind::BufferTooSmall,
                    "fmt::Write sink refused the chat prompt",
                )
            })
    }

    /// Length in bytes of the rendered prompt.
    pub fn rendered_len(&self, messages: &[ChatMessage<'_>], add_generation_prompt: bool) -> usize {
        let mut n = 0;
        let _ = self.parts(messages, add_generation_prompt, &mut |s| {
            n += s.len();
            Ok(())
        });
        n
    }

    /// Render into a byte buffer, returning the length written.
    ///
    /// # Errors
    /// [`ErrorKind::BufferTooSmall`] (with the length needed) if `out` is too short; nothing is
    /// written then.
    pub fn render_into(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        out: &mut [u8],
    ) -> Result<usize> {
        let need = self.rendered_len(messages, add_generation_prompt);
        if need > out.len() {
            return Err(Error::new(ErrorKind::BufferTooSmall, "chat prompt buffer")
                .detail(need as u64, out.len() as u64));
        }
        let mut n = 0;
        let _ = self.parts(messages, add_generation_prompt, &mut |s| {
            out[n..n + s.len()].copy_from_slice(s.as_bytes());
            n += s.len();
            Ok(())
        });
        Ok(n)
    }

    fn parts(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        put: &mut dyn FnMut(&str) -> fmt::Result,
    ) -> fmt::Result {
        match self.format {
            ChatFormat::ChatMl => self.chatml_parts(messages, add_generation_prompt, put),
            ChatFormat::Gemma => gemma_parts(messages, add_generation_prompt, put),
            ChatFormat::Llama3 => llama3_parts(messages, add_generation_prompt, put),
        }
    }

    fn chatml_parts(
        &self,
        messages: &[ChatMessage<'_>],
        add_generation_prompt: bool,
        put: &mut dyn FnMut(&str) -> fmt::Result,
    ) -> fmt::Result {
        for (i, m) in messages.iter().enumerate() {
            if i == 0 && m.role != "system" {
                if let Some(sys) = self.default_system {
                    put("<|im_start|>system\n")?;
                    put(sys)?;
                    put("<|im_end|>\n")?;
                }
            }
            put("<|im_start|>")?;
            put(m.role)?;
            put("\n")?;
            put(m.content)?;
            put("<|im_end|>\n")?;
        }
        if add_generation_prompt {
            put("<|im_start|>assistant\n")?;
        }
        Ok(())
    }
}

/// The template text, if the file has one.
fn template_text<'a>(gguf: &Gguf<'a>) -> Result<Option<&'a str>> {
    match gguf.get(CHAT_TEMPLATE_KEY) {
        None => Ok(None),
        Some(Value::Str(_)) => Ok(Some(gguf.get_str(CHAT_TEMPLATE_KEY)?)),
        Some(_) => Err(
            Error::new(ErrorKind::WrongType, "chat template must be a string")
                .named(CHAT_TEMPLATE_KEY.as_bytes()),
        ),
    }
}

/// Gemma: system turns become a prefix of the next non-model turn (each trimmed, concatenated,
/// then a blank line), as llama.cpp's `gemma` format does.
fn gemma_parts(
    messages: &[ChatMessage<'_>],
    add_generation_prompt: bool,
    put: &mut dyn FnMut(&str) -> fmt::Result,
) -> fmt::Result {
    // System messages waiting to be written: indexes `sys_from..i` that are system turns.
    let mut sys_from: Option<usize> = None;
    for (i, m) in messages.iter().enumerate() {
        if m.role == "system" {
            sys_from.get_or_insert(i);
            continue;
        }
        let role = if m.role == "assistant" {
            "model"
        } else {
            m.role
        };
        put("<start_of_turn>")?;
        put(role)?;
        put("\n")?;
        if role != "model" {
            if let Some(from) = sys_from.take() {
                let mut any = false;
                for s in messages[from..i].iter().filter(|s| s.role == "system") {
                    let t = s.content.trim();
                    any |= !t.is_empty();
                    put(t)?;
                }
                if any {
                    put("\n\n")?;
                }
            }
        }
        put(m.content.trim())?;
        put("<end_of_turn>\n")?;
    }
    if add_generation_prompt {
        put("<start_of_turn>model\n")?;
    }
    Ok(())
}

/// Llama 3: every turn under a header, contents trimmed.
fn llama3_parts(
    messages: &[ChatMessage<'_>],
    add_generation_prompt: bool,
    put: &mut dyn FnMut(&str) -> fmt::Result,
) -> fmt::Result {
    for m in messages {
        put("<|start_header_id|>")?;
        put(m.role)?;
        put("<|end_header_id|>\n\n")?;
        put(m.content.trim())?;
        put("<|eot_id|>")?;
    }
    if add_generation_prompt {
        put("<|start_header_id|>assistant<|end_header_id|>\n\n")?;
    }
    Ok(())
}

/// The literal default system message of a ChatML template, if it has one we can read as-is.
fn default_system(template: &str) -> Option<&str> {
    let tests_first_role = ["!= 'system'", "!= \"system\""]
        .iter()
        .any(|p| template.contains(p));
    if !tests_first_role {
        return None;
    }
    const OPEN: &str = "<|im_start|>system";
    let mut from = 0;
    while let Some(i) = template[from..].find(OPEN) {
        let after = &template[from + i + OPEN.len()..];
        from += i + OPEN.len();
        // The newline after the role: a real one inside the string literal, or a `\n` escape.
        let body = after
            .strip_prefix('\n')
            .or_else(|| after.strip_prefix("\\n"));
        let Some(body) = body else { continue };
        let Some(end) = body.find("<|im_end|>") else {
            continue;
        };
        let text = &body[..end];
        // Only a plain literal: no escapes, quotes or template code inside.
        if !text.is_empty() && !text.contains(['\\', '\'', '"', '{', '}']) {
            return Some(text);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn detects_smollm2_default_system() {
        let t = ChatTemplate::detect(SMOLLM2).unwrap();
        assert_eq!(t.format(), ChatFormat::ChatMl);
        assert_eq!(
            t.default_system(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(ChatTemplate::detect("{{ bos_token }}[INST]"), None);
        let plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::detect(plain).unwrap().default_system(), None);
    }

    #[test]
    fn renders() {
        let t = ChatTemplate::detect(SMOLLM2).unwrap();
        let mut s = String::new();
        t.render(&[ChatMessage::new("user", "hi")], true, &mut s)
            .unwrap();
        assert_eq!(s, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "hi"),
        ];
        let mut buf = [0u8; 200];
        let n = t.render_into(&msgs, false, &mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        );
        assert_eq!(t.rendered_len(&msgs, false), n);
        assert_eq!(
            t.render_into(&msgs, false, &mut buf[..10])
                .unwrap_err()
                .kind(),
            ErrorKind::BufferTooSmall
        );
        s.clear();
        t.render(&[], true, &mut s).unwrap();
        assert_eq!(s, "<|im_start|>assistant\n");
    }

    fn render(t: ChatTemplate<'_>, msgs: &[ChatMessage<'_>], gen: bool) -> String {
        let mut s = String::new();
        t.render(msgs, gen, &mut s).unwrap();
        assert_eq!(t.rendered_len(msgs, gen), s.len());
        s
    }

    #[test]
    fn gemma_format() {
        let t = ChatTemplate::builtin(ChatFormat::Gemma);
        let msgs = [
            ChatMessage::new("system", " Be brief. "),
            ChatMessage::new("user", " hi\n"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "2+2?"),
        ];
        assert_eq!(
            render(t, &msgs, true),
            "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render(t, &msgs[1..2], false),
            "<start_of_turn>user\nhi<end_of_turn>\n"
        );
        assert_eq!(render(t, &[], true), "<start_of_turn>model\n");
        assert_eq!(
            ChatTemplate::detect("{{ bos_token }}{{ '<start_of_turn>' + role }}"),
            Some(t)
        );
    }

    #[test]
    fn llama3_format() {
        let t = ChatTemplate::builtin(ChatFormat::Llama3);
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " hi "),
        ];
        assert_eq!(
            render(t, &msgs, true),
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            ChatTemplate::detect("{{ '<|start_header_id|>' + m.role }}").map(|t| t.format()),
            Some(ChatFormat::Llama3)
        );
    }
}
