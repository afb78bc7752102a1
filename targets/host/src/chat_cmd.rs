//! `edgelora chat`: an interactive conversation with one model.
//!
//! Input comes from a line editor (rustyline: editing keys, history in memory) when stdin is
//! a terminal, and from plain lines otherwise, so a script can pipe a conversation in. Either
//! way stdout carries only the model's answers (one line break after each); the prompt, the
//! notices and the timing lines go to stderr.
//!
//! Each turn renders the whole conversation in the model's format and re-runs only the tokens
//! that differ from the KV cache (normally the new user turn), as llama.cpp's server does.
//! When a turn would not fit `--ctx` with room for the reply, the oldest whole exchanges are
//! dropped (the system prompt stays) and the rest is re-run: the conversation shifts instead
//! of ending.

use crate::commands::{Adapters, ModelArgs, SampleArgs};
use crate::generation::{report, run, Sink};
use crate::tok::Tok;
use crate::util::{map, resolve_model};
use anyhow::{bail, Result};
use edgelora::format::gguf::Gguf;
use edgelora::model::{Model, State};
use edgelora::sample::Sampler;
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;

const COMMANDS: &str = "/help, /clear, /system TEXT, /adapter FILE[:SCALE] | none, /stats, /quit";

const HELP: &str = "\
Commands (a line that starts with / is a command, never sent to the model; start it with //
to send a line that begins with /):
  /help                   this list
  /clear                  forget the conversation (the system prompt stays)
  /system TEXT            set the system prompt (empty TEXT: the template's own) and clear
  /adapter FILE[:SCALE]   apply this LoRA adapter from the next turn on (replaces the others)
  /adapter none           back to the base model
  /stats                  turns kept, context used, adapters
  /quit, /exit            leave (so does Ctrl-D)
Multi-line input: end a line with \\ to continue it on the next line, or put \"\"\" on a line
of its own before and after a block. An empty line is ignored.";

/// Arguments of `edgelora chat`.
#[derive(clap::Args, Debug)]
#[command(after_help = HELP)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum tokens per reply.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub n: usize,
    /// No chat format: each message is one line of text, as small task models (models/tiny
    /// and its adapters, `intent: ...`) are prompted, and a reply ends at the end of its
    /// line. For models without a chat template or a known built-in format.
    #[arg(long)]
    pub plain: bool,
    #[command(flatten)]
    pub sample: SampleArgs,
}

/// What a typed line asks for.
#[derive(Debug, PartialEq)]
enum Line {
    /// A message for the model.
    Message(String),
    /// Nothing (an empty line).
    Empty,
    Help,
    Clear,
    System(String),
    Adapter(String),
    Stats,
    Quit,
    /// An unknown command (its name).
    Unknown(String),
}

/// Classify one message as typed (after multi-line joining).
fn classify(text: &str, from_block: bool) -> Line {
    let t = text.trim();
    if t.is_empty() {
        return Line::Empty;
    }
    if from_block || !t.starts_with('/') {
        return Line::Message(text.trim_end().to_string());
    }
    if let Some(rest) = t.strip_prefix("//") {
        return Line::Message(format!("/{rest}"));
    }
    let (cmd, arg) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let arg = arg.trim().to_string();
    match cmd {
        "/help" | "/?" => Line::Help,
        "/clear" => Line::Clear,
        "/system" => Line::System(arg),
        "/adapter" => Line::Adapter(arg),
        "/stats" => Line::Stats,
        "/quit" | "/exit" => Line::Quit,
        _ => Line::Unknown(cmd.to_string()),
    }
}

/// Where lines come from: a line editor on a terminal, plain lines otherwise.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    fn new() -> Self {
        if std::io::stdin().is_terminal() {
            match rustyline::DefaultEditor::new() {
                Ok(e) => return Input::Editor(Box::new(e)),
                Err(e) => eprintln!("note: no line editing ({e}); reading plain lines"),
            }
        }
        Input::Plain(std::io::stdin().lock())
    }

    /// One line without its line break; `None` at the end of input (Ctrl-D).
    fn line(&mut self, prompt: &str) -> Result<Option<String>> {
        match self {
            Input::Editor(e) => loop {
                match e.readline(prompt) {
                    Ok(l) => {
                        if !l.trim().is_empty() {
                            let _ = e.add_history_entry(l.as_str());
                        }
                        return Ok(Some(l));
                    }
                    // Ctrl-C drops the line being typed, as in a shell.
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(rustyline::error::ReadlineError::Eof) => return Ok(None),
                    Err(e) => bail!("reading the terminal: {e}"),
                }
            },
            Input::Plain(s) => {
                eprint!("{prompt}");
                let mut l = String::new();
                if s.read_line(&mut l)? == 0 {
                    return Ok(None);
                }
                let l = l.strip_suffix('\n').unwrap_or(&l);
                Ok(Some(l.strip_suffix('\r').unwrap_or(l).to_string()))
            }
        }
    }

    /// One message: a line, a run of lines ending in `\`, or a `"""` block. `None` at the end
    /// of input (what a block or a continuation had so far is still returned first).
    fn message(&mut self) -> Result<Option<Line>> {
        let Some(first) = self.line("> ")? else {
            return Ok(None);
        };
        if first.trim() == "\"\"\"" {
            let mut lines = vec![];
            while let Some(l) = self.line("... ")? {
                if l.trim() == "\"\"\"" {
                    break;
                }
                lines.push(l);
            }
            return Ok(Some(classify(&lines.join("\n"), true)));
        }
        let mut text = first;
        let mut joined = false;
        while let Some(head) = text.strip_suffix('\\') {
            text = head.to_string();
            joined = true;
            match self.line("... ")? {
                Some(l) => {
                    text.push('\n');
                    text.push_str(&l);
                }
                None => break,
            }
        }
        Ok(Some(classify(
            &text,
            joined && !text.trim_start().starts_with('/'),
        )))
    }
}

/// Prints the reply as it comes; with `one_line`, ends it at its first line break.
struct ReplySink {
    one_line: bool,
    text: String,
}

impl ReplySink {
    fn write(&mut self, s: &str) {
        let mut out = std::io::stdout();
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
        self.text.push_str(s);
    }
}

impl Sink for ReplySink {
    fn token(&mut self, _id: u32, text: &str) -> ControlFlow<()> {
        if self.one_line {
            if let Some(i) = text.find('\n') {
                self.write(&text[..i]);
                return ControlFlow::Break(());
            }
        }
        self.write(text);
        ControlFlow::Continue(())
    }

    fn tail(&mut self, text: &str) {
        self.write(text);
    }
}

/// The conversation and what the KV cache holds of it.
struct Conversation {
    system: Option<String>,
    /// (role, content) of the turns kept, oldest first.
    msgs: Vec<(String, String)>,
    /// The token ids whose keys and values are in the cache.
    cached: Vec<u32>,
    /// What the sampler's penalties look at.
    history: Vec<u32>,
    plain: bool,
}

impl Conversation {
    /// Token ids of the whole conversation, opening the assistant's turn.
    fn render(&self, tok: &Tok<'_>) -> Result<Vec<u32>> {
        if self.plain {
            let mut s = String::new();
            if let Some(sys) = &self.system {
                s.push_str(sys);
                s.push('\n');
            }
            for (_, c) in &self.msgs {
                s.push_str(c);
                s.push('\n');
            }
            return tok.encode_prompt(&s, false);
        }
        let pairs: Vec<(&str, &str)> = self
            .msgs
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        tok.encode_chat(&tok.chat_prompt(self.system.as_deref(), &pairs)?)
    }

    /// Forget every turn and the cache (the system prompt stays).
    fn clear(&mut self, st: &mut State<'_>) {
        self.msgs.clear();
        self.cached.clear();
        self.history.clear();
        st.clear();
    }
}

/// Everything one turn needs besides the conversation.
struct Engine<'m, 't, 's, 'b> {
    model: &'m Model<'m>,
    tok: &'t Tok<'t>,
    st: &'s mut State<'b>,
    sampler: Sampler,
    n: usize,
    ctx: usize,
}

/// How a stretch of conversation under one set of adapters ended.
enum Outcome {
    Quit,
    /// Switch to these adapters (already checked against the model).
    Adapters(Adapters),
}

/// Run `edgelora chat`.
///
/// # Errors
/// A model or adapter given on the command line that cannot be loaded, a model with no chat
/// format (without `--plain`), and failures to read input. A turn that cannot be answered
/// (too long for the context, a template error) is reported and the chat goes on.
pub fn chat(a: ChatArgs) -> Result<()> {
    let path = resolve_model(&a.model.model)?;
    let m = map(&path)?;
    let g = Gguf::parse(&m)?;
    let model: Box<Model> = Box::new(Model::from_gguf(&g)?);
    let tok = Tok::new(&g)?;
    if !a.plain && !tok.can_chat() {
        bail!(
            "{} has no chat template and nothing in its metadata points to a known chat format \
             (ChatML, Gemma, Llama 3): use `chat --plain` for one line of text per turn, or \
             `generate` for plain text",
            path.display()
        );
    }
    let mut ads = Adapters::open(&a.model.adapters)?;
    let cfg = *model.config();
    let ctx = a.model.ctx.min(cfg.ctx_len);
    let mut buf = a.model.cache.buffer(&cfg, ctx);
    let mut st = a.model.cache.state(&cfg, ctx, &mut buf)?;
    st.set_kernel_mode(a.model.mode());
    let format = if a.plain {
        "plain text, one line per turn (--plain)".to_string()
    } else {
        tok.chat_format()
    };
    if let (false, Some(name)) = (a.plain, tok.chat_builtin()) {
        eprintln!(
            "warning: {} has no chat template; assuming the built-in {name} format its \
             metadata points to (answers may be off if the model was trained on another)",
            path.display()
        );
    }
    eprintln!(
        "chatting with {} in {format}, context {ctx} tokens (/help for commands, Ctrl-D to quit)",
        path.display()
    );
    let mut conv = Conversation {
        system: a.system.clone(),
        msgs: vec![],
        cached: vec![],
        history: vec![],
        plain: a.plain,
    };
    let mut eng = Engine {
        model: &model,
        tok: &tok,
        st: &mut st,
        sampler: a.sample.sampler()?,
        n: a.n,
        ctx,
    };
    let mut input = Input::new();
    loop {
        let outcome = {
            let parsed = ads.parse()?;
            let mut slots = ads.slots(&model);
            let bound = ads.bind(&parsed, &g, &model, &mut slots)?;
            let set = ads.set(&bound)?;
            converse(&mut conv, &mut eng, &mut input, &set, &g, ads.names())?
        };
        match outcome {
            Outcome::Quit => return Ok(()),
            Outcome::Adapters(new) => {
                ads = new;
                // Keys and values depend on the adapters: re-run the conversation.
                conv.cached.clear();
                eng.st.clear();
            }
        }
    }
}

/// Open, parse and bind the adapter of `/adapter ARG` to check it fits the model.
fn load_adapter(arg: &str, g: &Gguf<'_>, model: &Model<'_>) -> Result<Adapters> {
    if arg.is_empty() {
        bail!("/adapter needs FILE[:SCALE] or `none`");
    }
    if arg == "none" {
        return Adapters::open(&[]);
    }
    let ads = Adapters::open(&[arg.to_string()])?;
    {
        let parsed = ads.parse()?;
        let mut slots = ads.slots(model);
        let bound = ads.bind(&parsed, g, model, &mut slots)?;
        ads.set(&bound)?;
    }
    Ok(ads.quiet())
}

/// Read and answer messages under one set of adapters until the user quits or changes them.
fn converse(
    conv: &mut Conversation,
    eng: &mut Engine<'_, '_, '_, '_>,
    input: &mut Input,
    set: &edgelora::lora::AdapterSet<'_, '_, '_>,
    g: &Gguf<'_>,
    adapters: &[String],
) -> Result<Outcome> {
    loop {
        let Some(line) = input.message()? else {
            return Ok(Outcome::Quit);
        };
        match line {
            Line::Empty => {}
            Line::Quit => return Ok(Outcome::Quit),
            Line::Help => eprintln!("{HELP}"),
            Line::Unknown(c) => eprintln!("error: unknown command {c}; the commands: {COMMANDS}"),
            Line::Clear => {
                conv.clear(eng.st);
                eprintln!("(conversation cleared)");
            }
            Line::System(s) => {
                conv.system = (!s.is_empty()).then_some(s);
                conv.clear(eng.st);
                match &conv.system {
                    Some(_) => eprintln!("(system prompt set; conversation cleared)"),
                    None => eprintln!("(system prompt reset to the default; conversation cleared)"),
                }
            }
            Line::Stats => eprintln!(
                "{} turns kept, {} of {} context positions used, adapters: {}",
                conv.msgs.len() / 2,
                eng.st.len(),
                eng.ctx,
                if adapters.is_empty() {
                    "none".to_string()
                } else {
                    adapters.join(", ")
                }
            ),
            Line::Adapter(arg) => match load_adapter(&arg, g, eng.model) {
                Ok(new) => {
                    match new.names().first() {
                        Some(n) => eprintln!("(adapter {n} applies from the next turn)"),
                        None => eprintln!("(no adapter from the next turn)"),
                    }
                    return Ok(Outcome::Adapters(new));
                }
                Err(e) => {
                    let kept = if adapters.is_empty() {
                        "none".to_string()
                    } else {
                        adapters.join(", ")
                    };
                    eprintln!("error: /adapter {arg}: {e:#}; keeping the adapters in use ({kept})");
                }
            },
            Line::Message(text) => turn(conv, eng, set, text)?,
        }
    }
}

/// Answer one message, shifting the conversation first if it would not fit.
fn turn(
    conv: &mut Conversation,
    eng: &mut Engine<'_, '_, '_, '_>,
    set: &edgelora::lora::AdapterSet<'_, '_, '_>,
    text: String,
) -> Result<()> {
    conv.msgs.push(("user".into(), text));
    // Room for the reply: -n tokens, but at most half the context, so a long -n on a small
    // context still keeps some conversation.
    let room = eng.n.min(eng.ctx / 2);
    let mut ids = match conv.render(eng.tok) {
        Ok(ids) => ids,
        Err(e) => {
            conv.msgs.pop();
            eprintln!("error: {e:#}; this message was not sent");
            return Ok(());
        }
    };
    let mut dropped = 0;
    while ids.len() + room > eng.ctx && conv.msgs.len() > 1 {
        // The oldest whole exchange: a user turn and the reply to it.
        let k = if conv.msgs.len() >= 3 { 2 } else { 1 };
        conv.msgs.drain(..k);
        dropped += 1;
        ids = conv.render(eng.tok)?;
    }
    if dropped > 0 {
        eprintln!(
            "context full: dropped the {dropped} oldest turn{} ({} kept; the prompt is now {} of \
             {} tokens, re-running it)",
            if dropped == 1 { "" } else { "s" },
            conv.msgs.len() / 2,
            ids.len(),
            eng.ctx
        );
    }
    if ids.is_empty() {
        conv.msgs.pop();
        eprintln!("error: this message encodes to no tokens; not sent");
        return Ok(());
    }
    if ids.len() >= eng.ctx {
        conv.msgs.pop();
        eprintln!(
            "error: this message does not fit: the system prompt and this message come to {} \
             tokens, the context is {} (raise --ctx, shorten the message or the system prompt); \
             not sent",
            ids.len(),
            eng.ctx
        );
        return Ok(());
    }
    let mut keep = conv
        .cached
        .iter()
        .zip(&ids)
        .take_while(|(x, y)| x == y)
        .count()
        .min(ids.len().saturating_sub(1));
    if keep < eng.st.earliest_restart() {
        // The sliding layers' rings no longer hold that far back (--swa-full keeps it).
        keep = 0;
    }
    eng.st.truncate(keep);
    conv.cached.truncate(keep);
    conv.history.truncate(keep.min(conv.history.len()));
    let mut sink = ReplySink {
        one_line: conv.plain,
        text: String::new(),
    };
    let gen = run(
        eng.model,
        eng.tok,
        eng.st,
        keep,
        &ids[keep..],
        eng.n,
        &mut eng.sampler,
        &mut conv.history,
        set,
        &mut sink,
    );
    println!();
    let gen = match gen {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e:#}; this message was not answered, the conversation is cleared");
            conv.clear(eng.st);
            return Ok(());
        }
    };
    conv.cached.extend_from_slice(&ids[keep..]);
    conv.cached.extend_from_slice(&gen.tokens);
    conv.cached.extend(gen.eog);
    // A reply cut by the context or at its line break leaves its last token unrun.
    conv.cached.truncate(eng.st.len());
    conv.msgs.push(("assistant".into(), sink.text));
    report(&gen);
    eprintln!(
        "[context: {} of {} positions used, {} turns kept]",
        eng.st.len(),
        eng.ctx,
        conv.msgs.len() / 2
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified() {
        assert_eq!(classify("  ", false), Line::Empty);
        assert_eq!(classify("hi", false), Line::Message("hi".into()));
        assert_eq!(classify("/help", false), Line::Help);
        assert_eq!(classify("/quit", false), Line::Quit);
        assert_eq!(classify("/exit", false), Line::Quit);
        assert_eq!(
            classify("/system be brief", false),
            Line::System("be brief".into())
        );
        assert_eq!(
            classify("/adapter a.gguf:0.5", false),
            Line::Adapter("a.gguf:0.5".into())
        );
        assert_eq!(classify("/frob x", false), Line::Unknown("/frob".into()));
        assert_eq!(classify("//frob", false), Line::Message("/frob".into()));
        assert_eq!(classify("/help", true), Line::Message("/help".into()));
    }
}
