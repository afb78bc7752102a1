//! `generate(..., chat=True)`: the prompt as one user turn in the model's chat format, made
//! as `edgelora generate --chat` makes it, so both give the same tokens.
//!
//! The file's own `tokenizer.chat_template` is rendered by the CLI's own code
//! (`targets/host/src/chat_jinja.rs`: minijinja configured as `transformers` configures
//! jinja2). A file without one uses the core's built-in format its metadata points to (ChatML,
//! Gemma, Llama 3); a file with neither refuses chat rather than guess a format.

use edgelora_core::format::gguf::{Gguf, Value};
use edgelora_core::tokenizer::{ChatMessage, ChatTemplate, Tokenizer, CHAT_TEMPLATE_KEY};
use minijinja::Environment;

/// The CLI's Jinja renderer, compiled into this crate too (it needs only minijinja), so
/// `generate(..., chat=True)` and `edgelora generate --chat` cannot drift apart.
#[path = "../../host/src/chat_jinja.rs"]
mod jinja;

/// How a model's chat prompts are made.
pub enum Chat {
    /// The file's Jinja template, and the texts of its BOS and EOS tokens.
    Jinja(Box<Environment<'static>>, String, String),
    /// A built-in format.
    Builtin(ChatTemplate<'static>),
    /// No format known.
    None,
}

/// The text of token `id` (control tokens give their text), or nothing.
fn piece(tok: &Tokenizer<'_, Vec<u32>>, id: Option<u32>) -> String {
    let Some(id) = id else {
        return String::new();
    };
    let mut buf = vec![0u8; tok.max_token_bytes().max(4) * 4];
    match tok.decode_token_into(id, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    }
}

impl Chat {
    /// The chat format of the model in `g`.
    ///
    /// # Errors
    /// Metadata that points to a chat format but cannot be read.
    pub fn new(g: &Gguf<'static>, tok: &Tokenizer<'static, Vec<u32>>) -> Result<Chat, String> {
        if let Some(Value::Str(_)) = g.get(CHAT_TEMPLATE_KEY) {
            let text = g.get_str(CHAT_TEMPLATE_KEY).map_err(|e| e.to_string())?;
            // A template minijinja cannot compile falls back to the built-in format, as in
            // the CLI (which prints a warning; a library stays quiet).
            if let Ok(env) = jinja::environment(text) {
                return Ok(Chat::Jinja(
                    Box::new(env),
                    piece(tok, tok.bos_id()),
                    piece(tok, tok.eos_id()),
                ));
            }
        }
        let builtin = ChatTemplate::for_model(g, |s| tok.token_id(s).is_some())
            .map_err(|e| format!("reading the chat format from the metadata: {e}"))?;
        Ok(builtin.map_or(Chat::None, Chat::Builtin))
    }

    /// `user` as the conversation's one user turn (after `system`, if given), ending with the
    /// opening of the assistant's turn.
    ///
    /// # Errors
    /// A model without a chat format, or a template that fails (its `raise_exception`).
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, String> {
        let mut msgs = vec![];
        if let Some(s) = system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", user));
        match self {
            Chat::Jinja(env, bos, eos) => jinja::render(
                env,
                msgs.iter().map(|m| (m.role, m.content)),
                true,
                bos,
                eos,
            )
            .map_err(|e| format!("rendering the model's chat template: {e:#}")),
            Chat::Builtin(t) => {
                let mut s = String::new();
                t.render(&msgs, true, &mut s)
                    .map_err(|e| format!("rendering the chat prompt: {e}"))?;
                Ok(s)
            }
            Chat::None => Err(
                "this model has no chat template and nothing in its metadata \
                               points to a known chat format (ChatML, Gemma, Llama 3); call \
                               generate with chat=False for plain text"
                    .into(),
            ),
        }
    }
}
