//! A model's own `tokenizer.chat_template`, rendered with minijinja as `transformers`'
//! `apply_chat_template` renders it with jinja2: `trim_blocks`, `lstrip_blocks`, a
//! `raise_exception(msg)` function, `bos_token` / `eos_token` as text, and Python's string
//! methods (`.strip()`, `.startswith()`, ...) through minijinja-contrib's `pycompat`.
//!
//! One file for two crates: the CLI's `chat_template.rs` uses it as a module, and the Python
//! bindings (`targets/python/src/chat.rs`) include it with `#[path]`, so `edgelora generate
//! --chat` and `generate(..., chat=True)` build the same prompt. It therefore depends on
//! minijinja and minijinja-contrib only (both crates have them), not on the core or `anyhow`.
//! The CLI's `chat_template` tests render through it against jinja2's output.

use minijinja::{context, Environment, Value};

/// The template's name inside its environment.
const NAME: &str = "chat_template";

/// `template` compiled in an environment configured as above.
///
/// # Errors
/// A template minijinja cannot parse.
pub fn environment(template: &str) -> Result<Environment<'_>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template(NAME, template)?;
    Ok(env)
}

/// Render the conversation `messages` (`(role, content)` in order) with the template of `env`
/// (from [`environment`]), opening the assistant's turn when `add_generation_prompt`.
///
/// # Errors
/// The template's own `raise_exception`, or a failure to evaluate it.
pub fn render<'m>(
    env: &Environment<'_>,
    messages: impl IntoIterator<Item = (&'m str, &'m str)>,
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String, minijinja::Error> {
    let messages: Value = messages
        .into_iter()
        .map(|(role, content)| context! { role => role, content => content })
        .collect();
    env.get_template(NAME)?.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos,
        eos_token => eos,
    })
}
