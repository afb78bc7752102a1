//! Chat prompts on the host: the file's own `tokenizer.chat_template` rendered with minijinja
//! when it has one, else the core's built-in format for the model (ChatML, Gemma, Llama 3,
//! chosen from metadata), else no chat at all rather than a guess.
//!
//! The Jinja side is [`crate::chat_jinja`] (minijinja set up as `transformers` sets up jinja2;
//! shared with the Python bindings). The test below renders the same templates and
//! conversations as jinja2 did for `tests/fixtures/tokenizer/chat_refs.json`.

use anyhow::{anyhow, Result};
use edgelora::tokenizer::{ChatFormat, ChatMessage, ChatTemplate};
use minijinja::Environment;

/// How a model's chat prompts are made.
pub enum ChatRenderer<'a> {
    /// The file's Jinja template.
    Jinja {
        env: Box<Environment<'a>>,
        bos: String,
        eos: String,
        /// The built-in format the template looks like, if any (for messages only).
        looks_like: Option<ChatFormat>,
    },
    /// A built-in format.
    Builtin(ChatTemplate<'a>),
    /// Neither: chat is refused with this explanation.
    None,
}

impl<'a> ChatRenderer<'a> {
    /// From the template text (if any), the built-in format the core picked for the model,
    /// and the texts of the BOS/EOS tokens.
    pub fn new(
        template: Option<&'a str>,
        builtin: Option<ChatTemplate<'a>>,
        bos: String,
        eos: String,
    ) -> Self {
        if let Some(t) = template {
            match crate::chat_jinja::environment(t) {
                Ok(env) => {
                    return ChatRenderer::Jinja {
                        env: Box::new(env),
                        bos,
                        eos,
                        looks_like: ChatFormat::detect(t),
                    }
                }
                Err(e) => eprintln!(
                    "warning: the model's chat template does not compile ({e}); using the built-in format"
                ),
            }
        }
        match builtin {
            Some(b) => ChatRenderer::Builtin(b),
            None => ChatRenderer::None,
        }
    }

    /// The built-in format's name when prompts are rendered by one because the file has no
    /// template of its own (a guess from metadata the user should hear about).
    pub fn builtin_name(&self) -> Option<&'static str> {
        match self {
            ChatRenderer::Builtin(t) => Some(t.format().name()),
            _ => None,
        }
    }

    /// True when there is a way to render chat prompts at all.
    pub fn available(&self) -> bool {
        !matches!(self, ChatRenderer::None)
    }

    /// One line for the user: which format renders prompts.
    pub fn describe(&self) -> String {
        match self {
            ChatRenderer::Jinja { looks_like, .. } => format!(
                "the model's own chat template (minijinja){}",
                looks_like
                    .map(|f| format!(", {} style", f.name()))
                    .unwrap_or_default()
            ),
            ChatRenderer::Builtin(t) => format!(
                "built-in {} format (the file has no chat template)",
                t.format().name()
            ),
            ChatRenderer::None => "none".into(),
        }
    }

    /// Render a conversation, with the opening of the assistant's turn when
    /// `add_generation_prompt`.
    pub fn render(&self, msgs: &[ChatMessage<'_>], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatRenderer::Jinja { env, bos, eos, .. } => crate::chat_jinja::render(
                env,
                msgs.iter().map(|m| (m.role, m.content)),
                add_generation_prompt,
                bos,
                eos,
            )
            .map_err(|e| anyhow!("rendering the model's chat template: {e:#}")),
            ChatRenderer::Builtin(t) => {
                let mut s = String::new();
                t.render(msgs, add_generation_prompt, &mut s)?;
                Ok(s)
            }
            ChatRenderer::None => Err(anyhow!(
                "this model has no chat template and nothing in its metadata points to a known \
                 chat format (ChatML, Gemma, Llama 3); use `generate` without --chat for plain \
                 text"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as J;

    fn refs() -> J {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tokenizer/chat_refs.json"
        );
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn msgs(v: &J) -> Vec<ChatMessage<'_>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect()
    }

    /// minijinja renders each template as jinja2 with transformers' settings did, and raises
    /// where it raised.
    #[test]
    fn jinja_matches_jinja2() {
        let refs = refs();
        let mut n = 0;
        for r in refs["jinja"].as_array().unwrap() {
            let name = r["template"].as_str().unwrap();
            let text = refs["templates"][name].as_str().unwrap();
            let c = ChatRenderer::new(
                Some(text),
                None,
                r["bos_token"].as_str().unwrap().into(),
                r["eos_token"].as_str().unwrap().into(),
            );
            assert!(matches!(c, ChatRenderer::Jinja { .. }), "{name} compiles");
            let got = c.render(
                &msgs(&r["messages"]),
                r["add_generation_prompt"].as_bool().unwrap(),
            );
            match (&got, r.get("text"), r.get("error")) {
                (Ok(g), Some(want), _) => assert_eq!(g, want.as_str().unwrap(), "{name}"),
                (Err(e), _, Some(want)) => {
                    assert!(format!("{e:#}").contains(want.as_str().unwrap()), "{e:#}")
                }
                _ => panic!("{name}: got {got:?}, jinja2 {r}"),
            }
            n += 1;
        }
        assert_eq!(n, 60);
    }

    /// SmolLM2's and Qwen2 Instruct's templates (ChatML with a default system message) and Llama
    /// 3 Instruct's render the same through minijinja and through the core's built-in format
    /// (which leaves BOS to the caller: Llama 3's template writes `bos_token` first).
    #[test]
    fn real_templates_equal_builtin_formats() {
        let refs = refs();
        let mut n = 0;
        for (name, format, bos) in [
            ("smollm2", ChatFormat::ChatMl, ""),
            ("qwen2_instruct", ChatFormat::ChatMl, ""),
            ("llama3_instruct", ChatFormat::Llama3, "<s>"),
        ] {
            let text = refs["templates"][name].as_str().unwrap();
            let jinja = ChatRenderer::new(Some(text), None, "<s>".into(), "</s>".into());
            let t = ChatTemplate::detect(text).unwrap();
            assert_eq!(t.format(), format, "{name}");
            let builtin = ChatRenderer::Builtin(t);
            for r in refs["builtin"].as_array().unwrap() {
                let m = msgs(&r["messages"]);
                let gen = r["add_generation_prompt"].as_bool().unwrap();
                assert_eq!(
                    jinja.render(&m, gen).unwrap(),
                    format!("{bos}{}", builtin.render(&m, gen).unwrap()),
                    "{name}"
                );
                n += 1;
            }
        }
        assert_eq!(n, 90);
    }

    #[test]
    fn no_format_is_refused_not_guessed() {
        let c = ChatRenderer::new(None, None, String::new(), String::new());
        let e = c
            .render(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err();
        assert!(format!("{e}").contains("no chat template"));
        // A template that does not compile falls back to the built-in format.
        let b = ChatTemplate::builtin(ChatFormat::Gemma);
        let c = ChatRenderer::new(Some("{% for %}"), Some(b), String::new(), String::new());
        assert!(matches!(c, ChatRenderer::Builtin(_)));
    }
}
