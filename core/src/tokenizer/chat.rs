//! ChatML prompt rendering (SmolLM2-Instruct, Qwen, and other `<|im_start|>` models).
//!
//! There is no Jinja engine here: the template text in `tokenizer.chat_template` is only
//! inspected to recognise ChatML and to find its default system message. The output is exactly
//! what SmolLM2-Instruct's template produces:
//!
//! ```text
//! {% for message in messages %}
//!   {% if loop.first and messages[0]['role'] != 'system' %}
//!     {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
//!   {% endif %}
//!   {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//! {% endfor %}
//! {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//! ```
//!
//! Contents are copied verbatim (no trimming); an empty conversation renders only the
//! generation prompt. Templates that add tool calls or trim contents (Qwen2.5's) are ChatML too
//! but those extras are not reproduced.

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

/// A recognised chat format: ChatML, with an optional default system message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatTemplate<'a> {
    default_system: Option<&'a str>,
}

impl<'a> ChatTemplate<'a> {
    /// ChatML; `default_system` is inserted as a system turn when the first message of a
    /// non-empty conversation is not a system message.
    pub const fn chatml(default_system: Option<&'a str>) -> Self {
        ChatTemplate { default_system }
    }

    /// Recognise ChatML in a Jinja template (it contains `<|im_start|>`), and its default system
    /// message: the literal text of an `<|im_start|>system\n...<|im_end|>` string in a template
    /// that tests whether the first message is a system message. `None` for other formats.
    pub fn detect(template: &'a str) -> Option<Self> {
        if !template.contains("<|im_start|>") {
            return None;
        }
        Some(ChatTemplate {
            default_system: default_system(template),
        })
    }

    /// Read and recognise `tokenizer.chat_template`: `Ok(None)` when it is absent or not ChatML.
    ///
    /// # Errors
    /// [`ErrorKind::WrongType`] if the key is not a string, [`ErrorKind::InvalidUtf8`] if it is
    /// not UTF-8.
    pub fn from_gguf(gguf: &Gguf<'a>) -> Result<Option<Self>> {
        match gguf.get(CHAT_TEMPLATE_KEY) {
            None => Ok(None),
            Some(Value::Str(_)) => Ok(Self::detect(gguf.get_str(CHAT_TEMPLATE_KEY)?)),
            Some(_) => Err(
                Error::new(ErrorKind::WrongType, "chat template must be a string")
                    .named(CHAT_TEMPLATE_KEY.as_bytes()),
            ),
        }
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
}
