//! Conversations and the checkpoint's own Jinja chat template, rendered with minijinja the
//! way transformers renders it (`trim_blocks`, `lstrip_blocks`, loop controls, Python string
//! methods, `raise_exception`).

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};

/// One part of a message: text or an image placeholder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image (the pixels travel separately, in order).
    Image,
}

/// A message's content: a plain string or a list of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<ContentPart>),
}

/// A chat message in TRL's conversational format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The content.
    pub content: Content,
}

impl Message {
    /// A message with text only, as a one-part list (as TRL's vision datasets write it).
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.into(),
            content: Content::Parts(vec![ContentPart::Text { text: text.into() }]),
        }
    }

    /// A user turn with `images` image parts followed by `text`.
    pub fn user_with_images(images: usize, text: &str) -> Self {
        let mut parts = vec![ContentPart::Image; images];
        parts.push(ContentPart::Text { text: text.into() });
        Self {
            role: "user".into(),
            content: Content::Parts(parts),
        }
    }

    /// Number of image parts.
    pub fn image_count(&self) -> usize {
        match &self.content {
            Content::Text(_) => 0,
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| matches!(p, ContentPart::Image))
                .count(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Template source, kept for debugging and round trips.
    pub source: String,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(&self.source).expect("a template that compiled once compiles again")
    }
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| DataError::Template(format!("cannot compile: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    /// Finds the template of a checkpoint folder: `chat_template.jinja`, `chat_template.json`,
    /// then `tokenizer_config.json`'s `chat_template` (a string, or the entry named `default`).
    pub fn from_dir(dir: &Path, tokenizer_config: &Value) -> Result<Option<Self>> {
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|source| DataError::Io {
                path: jinja,
                source,
            })?;
            return Self::new(&text).map(Some);
        }
        let json = dir.join("chat_template.json");
        if json.is_file() {
            let text = std::fs::read_to_string(&json).map_err(|source| DataError::Io {
                path: json.clone(),
                source,
            })?;
            let value: Value = serde_json::from_str(&text).map_err(|e| DataError::Config {
                file: json.clone(),
                field: String::new(),
                message: e.to_string(),
            })?;
            let template = value
                .get("chat_template")
                .and_then(Value::as_str)
                .ok_or_else(|| DataError::Config {
                    file: json.clone(),
                    field: "chat_template".into(),
                    message: "missing or not a string".into(),
                })?;
            return Self::new(template).map(Some);
        }
        match tokenizer_config.get("chat_template") {
            Some(Value::String(s)) => Self::new(s).map(Some),
            Some(Value::Array(list)) => {
                let default = list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str);
                default.map(Self::new).transpose()
            }
            _ => Ok(None),
        }
    }

    /// Renders `messages`; extra variables (`bos_token`, ...) come from `extra`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &Value,
    ) -> Result<String> {
        let mut ctx = serde_json::Map::new();
        if let Value::Object(map) = extra {
            ctx.extend(map.clone());
        }
        ctx.insert(
            "messages".into(),
            serde_json::to_value(messages).map_err(|e| DataError::Template(e.to_string()))?,
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| DataError::Template(e.to_string()))?;
        template
            .render(Value::Object(ctx))
            .map_err(|e| DataError::Template(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLVLM: &str = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

    #[test]
    fn renders_the_spec_example() {
        let t = ChatTemplate::new(SMOLVLM).unwrap();
        let messages = vec![
            Message::user_with_images(1, "What is in this image?"),
            Message::text("assistant", "A red square on a blue background."),
        ];
        let text = t.render(&messages, false, &Value::Null).unwrap();
        assert_eq!(
            text,
            "<|im_start|>User:<image>What is in this image?<end_of_utterance>\nAssistant: A red square on a blue background.<end_of_utterance>\n"
        );
        let prompt = t.render(&messages[..1], true, &Value::Null).unwrap();
        assert!(prompt.ends_with("<end_of_utterance>\nAssistant:"));
    }

    #[test]
    fn messages_parse_from_trl_json() {
        let m: Vec<Message> = serde_json::from_str(
            r#"[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "plain"}]"#,
        )
        .unwrap();
        assert_eq!(m[0].image_count(), 1);
        assert_eq!(m[1].content, Content::Text("plain".into()));
    }

    #[test]
    fn raise_exception_surfaces_as_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").unwrap();
        let err = t.render(&[], false, &Value::Null).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }
}
