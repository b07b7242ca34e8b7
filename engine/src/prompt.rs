//! Tokenizer, chat template and the SDK's prompt rendering (AVP-ENG-4).
//!
//! A prompt becomes `[{"role": "user", "content": prompt}]`, is rendered with
//! the model's chat template (`tokenizer_config.json` `chat_template`, or
//! `chat_template.jinja`) with `add_generation_prompt=True`, and is tokenized
//! **without** special tokens, exactly as the SDK does. Without a template the
//! SDK's fallback format is used:
//! `<|user|>\n{content}\n</|user|>\n<|assistant|>`.
//!
//! Templates run in minijinja configured like transformers' jinja2
//! environment: `trim_blocks`, `lstrip_blocks`, loop controls, Python string
//! methods (pycompat), `raise_exception`, `strftime_now`, `tojson`.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result, io_err};

/// The split pattern of transformers' `Qwen2Tokenizer` pre-tokenizer (digits
/// one by one), followed there by a byte-level step without its own regex.
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn qwen2_pre_tokenizer() -> serde_json::Value {
    serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]
    })
}

/// A model's tokenizer plus its chat template and special tokens.
pub struct PromptFormat {
    tokenizer: Tokenizer,
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    clean_up_spaces: bool,
}

impl std::fmt::Debug for PromptFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptFormat")
            .field("has_template", &self.template.is_some())
            .finish()
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl PromptFormat {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and an optional
    /// `chat_template.jinja` from a model directory. `model_type` selects
    /// the tokenizer class transformers would use (see [`QWEN2_SPLIT_REGEX`]).
    pub fn from_dir(dir: &Path, model_type: &str) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&tok_path).map_err(io_err(&tok_path))?;
        let tok_err = |e: &dyn std::fmt::Display| {
            EngineError::Tokenizer(format!("{}: {e}", tok_path.display()))
        };
        let tokenizer: Tokenizer = if model_type == "qwen2" {
            // transformers 5 loads model_type qwen2 with Qwen2Tokenizer, which
            // replaces the file's normalizer and pre-tokenizer with its own
            // (a no-op for real Qwen2 checkpoints, whose files already say so).
            let mut json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| tok_err(&e))?;
            if let Some(obj) = json.as_object_mut() {
                obj.insert("normalizer".into(), serde_json::json!({"type": "NFC"}));
                obj.insert("pre_tokenizer".into(), qwen2_pre_tokenizer());
            }
            json.to_string().parse().map_err(|e| tok_err(&e))?
        } else {
            text.parse().map_err(|e| tok_err(&e))?
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
            serde_json::from_str(&text).map_err(|e| EngineError::Config {
                path: cfg_path.clone(),
                message: e.to_string(),
            })?
        } else {
            serde_json::Value::Null
        };
        // transformers prefers a separate chat_template.jinja over the
        // tokenizer_config.json entry when both exist.
        let jinja = dir.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?)
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default", as transformers does.
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned),
                _ => None,
            }
        };
        Ok(Self {
            tokenizer,
            template: template.filter(|t| !t.is_empty()),
            bos_token: token_string(cfg.get("bos_token")),
            eos_token: token_string(cfg.get("eos_token")),
            clean_up_spaces: cfg
                .get("clean_up_tokenization_spaces")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        })
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether the model has a chat template (else the SDK fallback is used).
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders a single user message the way the SDK's `_render_prompt` does.
    pub fn render(&self, prompt: &str) -> Result<String> {
        let Some(template) = &self.template else {
            return Ok(format!("<|user|>\n{prompt}\n</|user|>\n<|assistant|>"));
        };
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_template("chat", template)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let tpl = env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let messages = vec![HashMap::from([
            ("role", "user".to_owned()),
            ("content", prompt.to_owned()),
        ])];
        tpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| EngineError::Template(e.to_string()))
    }

    /// Token ids of `text`, without special tokens (`add_special_tokens=False`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Renders and tokenizes a prompt.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = self.render(prompt)?;
        let ids = self.encode(&text)?;
        if ids.is_empty() {
            return Err(EngineError::InvalidArgument(
                "the prompt renders to zero tokens".into(),
            ));
        }
        Ok(ids)
    }

    /// Text of generated ids, skipping special tokens (as the SDK decodes).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The vocabulary `{token string: id}` including added tokens.
    pub fn vocab(&self) -> HashMap<String, u32> {
        self.tokenizer.get_vocab(true)
    }
}

/// `strftime_now(fmt)` for templates that print today's date (Llama 3.x),
/// supporting `%d %m %Y %y %b %B %H %M %S %%` in UTC.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS
        .get(usize::try_from(month - 1).unwrap_or(0))
        .copied()
        .unwrap_or("January");
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(name.get(..3).unwrap_or(name)),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// transformers' `clean_up_tokenization`, applied when tokenizer_config.json
/// sets `clean_up_tokenization_spaces`.
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
