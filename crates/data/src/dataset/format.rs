//! Turning dataset rows into examples: TRL's conversational `{"images", "messages"}`,
//! prompt/completion (conversational or plain strings), DPO's prompt/chosen/rejected, and
//! field mappings for task schemas such as ChartQA's `image` / `query` / `label`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dataset::cell::Cell;
use crate::dataset::{Conversation, ImageSource, PreferenceExample, SftExample};
use crate::error::{DataError, Result};
use crate::processor::{Content, ContentPart, Message};

/// Which columns hold what. Unset fields take TRL's names (`images` or `image`, `messages`,
/// `prompt`, `completion`, `chosen`, `rejected`); a field that is set must exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatasetFormat {
    /// Image column: one image or a list (`{bytes, path}` structs or paths).
    pub image_field: Option<String>,
    /// Conversation column (language modelling).
    pub messages_field: Option<String>,
    /// Prompt column: a list of messages or a plain question.
    pub prompt_field: Option<String>,
    /// Completion column: a list of messages, a string, or a list of strings (first used).
    pub completion_field: Option<String>,
    /// DPO: the preferred answer column.
    pub chosen_field: Option<String>,
    /// DPO: the dispreferred answer column.
    pub rejected_field: Option<String>,
    /// System message added before prompts built from plain strings.
    pub system_prompt: Option<String>,
}

/// Named field mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// TRL's names (auto-detected shape).
    Trl,
    /// `HuggingFaceM4/ChartQA`: `image`, `query`, `label` (a list; the first is the answer).
    ChartQa,
}

impl FormatKind {
    /// The field mapping.
    pub fn format(self) -> DatasetFormat {
        match self {
            Self::Trl => DatasetFormat::default(),
            Self::ChartQa => DatasetFormat {
                image_field: Some("image".into()),
                prompt_field: Some("query".into()),
                completion_field: Some("label".into()),
                ..DatasetFormat::default()
            },
        }
    }
}

/// A row with its origin and the folder relative image paths resolve against.
pub struct Row<'a> {
    /// Column values.
    pub cells: &'a BTreeMap<String, Cell>,
    /// `file:row` for errors.
    pub origin: String,
    /// Base folder of relative image paths.
    pub base_dir: &'a Path,
}

impl Row<'_> {
    fn columns(&self) -> String {
        self.cells.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    fn err(&self, message: String) -> DataError {
        DataError::Dataset {
            source_name: self.origin.clone(),
            message,
        }
    }

    /// The column `configured` (must exist) or the first present of `defaults`.
    fn field(
        &self,
        configured: &Option<String>,
        defaults: &[&str],
    ) -> Result<Option<(&str, &Cell)>> {
        match configured {
            Some(name) => self
                .cells
                .get_key_value(name.as_str())
                .map(|(k, v)| Some((k.as_str(), v)))
                .ok_or_else(|| {
                    self.err(format!(
                        "unknown column `{name}` (columns: {})",
                        self.columns()
                    ))
                }),
            None => Ok(defaults
                .iter()
                .find_map(|d| self.cells.get_key_value(*d))
                .map(|(k, v)| (k.as_str(), v))),
        }
    }

    fn images(&self, format: &DatasetFormat) -> Result<Vec<ImageSource>> {
        let Some((name, cell)) = self.field(&format.image_field, &["images", "image"])? else {
            return Ok(Vec::new());
        };
        let one = |c: &Cell, i: usize| -> Result<Option<ImageSource>> {
            match c {
                Cell::Null => Ok(None),
                Cell::Str(path) => Ok(Some(self.path_image(path)?)),
                Cell::Bytes(bytes) => Ok(Some(ImageSource::Bytes {
                    bytes: Arc::new(bytes.clone()),
                    origin: format!("column `{name}` #{i}"),
                })),
                Cell::Map(_) => match (c.get("bytes"), c.get("path")) {
                    (Some(Cell::Bytes(b)), _) if !b.is_empty() => Ok(Some(ImageSource::Bytes {
                        bytes: Arc::new(b.clone()),
                        origin: format!("column `{name}` #{i}"),
                    })),
                    (_, Some(Cell::Str(p))) => Ok(Some(self.path_image(p)?)),
                    _ => Err(self.err(format!(
                        "column `{name}` holds an image with neither bytes nor path"
                    ))),
                },
                other => Err(self.err(format!("column `{name}` is not an image: {other:?}"))),
            }
        };
        let list: Vec<&Cell> = match cell {
            Cell::List(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut out = Vec::new();
        for (i, c) in list.into_iter().enumerate() {
            if let Some(img) = one(c, i)? {
                img.check_header().map_err(|e| self.err(e.to_string()))?;
                out.push(img);
            }
        }
        Ok(out)
    }

    fn path_image(&self, path: &str) -> Result<ImageSource> {
        let p = PathBuf::from(path);
        let full = if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        };
        if !full.is_file() {
            return Err(self.err(format!("image file {} does not exist", full.display())));
        }
        Ok(ImageSource::Path(full))
    }

    fn messages(&self, name: &str, cell: &Cell) -> Result<Vec<Message>> {
        serde_json::from_value(cell.to_json()).map_err(|e| {
            self.err(format!(
                "column `{name}` is not a list of chat messages: {e}"
            ))
        })
    }

    /// A prompt: messages, or a plain question made into a user turn with `n_images` images.
    fn prompt(
        &self,
        name: &str,
        cell: &Cell,
        n_images: usize,
        format: &DatasetFormat,
    ) -> Result<Vec<Message>> {
        match cell {
            Cell::Str(text) => {
                let mut out = Vec::new();
                if let Some(system) = &format.system_prompt {
                    out.push(Message::text("system", system));
                }
                out.push(Message::user_with_images(n_images, text));
                Ok(out)
            }
            _ => self.messages(name, cell),
        }
    }

    /// An answer: messages, a string, or a list of strings (the first is the answer).
    fn answer(&self, name: &str, cell: &Cell) -> Result<Vec<Message>> {
        match cell {
            Cell::Str(text) => Ok(vec![Message::text("assistant", text)]),
            Cell::List(items) if items.first().and_then(Cell::as_str).is_some() => {
                Ok(vec![Message::text(
                    "assistant",
                    items[0].as_str().unwrap_or_default(),
                )])
            }
            _ => self.messages(name, cell),
        }
    }

    fn required(&self, configured: &Option<String>, default: &str) -> Result<(&str, &Cell)> {
        self.field(configured, &[default])?.ok_or_else(|| {
            self.err(format!(
                "no `{}` column (columns: {})",
                configured.as_deref().unwrap_or(default),
                self.columns()
            ))
        })
    }

    /// Reads the row as a supervised example.
    pub fn to_sft(&self, format: &DatasetFormat) -> Result<SftExample> {
        let images = self.images(format)?;
        let messages_col = if format.prompt_field.is_some() {
            None
        } else {
            self.field(&format.messages_field, &["messages"])?
        };
        let conversation = match messages_col {
            Some((name, cell)) => {
                let mut messages = self.messages(name, cell)?;
                place_images(&mut messages, images.len());
                Conversation::Messages(messages)
            }
            None => {
                let (pname, pcell) =
                    self.field(&format.prompt_field, &["prompt"])?
                        .ok_or_else(|| {
                            self.err(format!(
                        "a row needs `messages` or `prompt` + `completion` columns (columns: {})",
                        self.columns()
                    ))
                        })?;
                let (cname, ccell) = self.required(&format.completion_field, "completion")?;
                let mut prompt = self.prompt(pname, pcell, images.len(), format)?;
                place_images(&mut prompt, images.len());
                Conversation::PromptCompletion {
                    prompt,
                    completion: self.answer(cname, ccell)?,
                }
            }
        };
        let example = SftExample {
            images,
            conversation,
            origin: self.origin.clone(),
        };
        check_image_count(
            &example.images,
            image_parts(&example.conversation),
            &self.origin,
        )?;
        Ok(example)
    }

    /// Reads the row as a preference example.
    pub fn to_preference(&self, format: &DatasetFormat) -> Result<PreferenceExample> {
        let images = self.images(format)?;
        let (pname, pcell) = self.required(&format.prompt_field, "prompt")?;
        let (cname, ccell) = self.required(&format.chosen_field, "chosen")?;
        let (rname, rcell) = self.required(&format.rejected_field, "rejected")?;
        let mut prompt = self.prompt(pname, pcell, images.len(), format)?;
        place_images(&mut prompt, images.len());
        let parts = prompt.iter().map(Message::image_count).sum();
        check_image_count(&images, parts, &self.origin)?;
        Ok(PreferenceExample {
            images,
            prompt,
            chosen: self.answer(cname, ccell)?,
            rejected: self.answer(rname, rcell)?,
            origin: self.origin.clone(),
        })
    }
}

/// Number of image parts in a conversation.
pub fn image_parts(c: &Conversation) -> usize {
    match c {
        Conversation::Messages(m) => m.iter().map(Message::image_count).sum(),
        Conversation::PromptCompletion { prompt, completion } => prompt
            .iter()
            .chain(completion)
            .map(Message::image_count)
            .sum(),
    }
}

/// TRL's `prepare_multimodal_messages`: when the text has no image parts but the row has
/// images, they go at the start of the first user turn.
fn place_images(messages: &mut [Message], n_images: usize) {
    if n_images == 0 || messages.iter().any(|m| m.image_count() > 0) {
        return;
    }
    if let Some(user) = messages.iter_mut().find(|m| m.role == "user") {
        let mut parts = vec![ContentPart::Image; n_images];
        match &user.content {
            Content::Text(t) => parts.push(ContentPart::Text { text: t.clone() }),
            Content::Parts(p) => parts.extend(p.iter().cloned()),
        }
        user.content = Content::Parts(parts);
    }
}

fn check_image_count(images: &[ImageSource], parts: usize, origin: &str) -> Result<()> {
    if images.len() != parts {
        return Err(DataError::Dataset {
            source_name: origin.into(),
            message: format!(
                "{} image(s) but {parts} image part(s) in the messages",
                images.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> BTreeMap<String, Cell> {
        match Cell::from(&serde_json::from_str::<serde_json::Value>(json).unwrap()) {
            Cell::Map(m) => m,
            _ => panic!("object"),
        }
    }

    #[test]
    fn chartqa_mapping_uses_the_first_label() {
        let cells = row(
            r#"{"image": {"bytes": null, "path": null}, "query": "Which is highest?", "label": ["Red", "red"]}"#,
        );
        let r = Row {
            cells: &cells,
            origin: "t:0".into(),
            base_dir: Path::new("."),
        };
        let err = r
            .to_sft(&FormatKind::ChartQa.format())
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither bytes nor path"), "{err}");
        let cells = row(r#"{"query": "Which is highest?", "label": ["Red", "red"]}"#);
        let r = Row {
            cells: &cells,
            origin: "t:1".into(),
            base_dir: Path::new("."),
        };
        let err = r
            .to_sft(&FormatKind::ChartQa.format())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown column `image`") && err.contains("label, query"),
            "{err}"
        );
    }

    #[test]
    fn conversational_rows_and_placeholders() {
        let cells = row(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "image": null}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]}"#,
        );
        let r = Row {
            cells: &cells,
            origin: "t:0".into(),
            base_dir: Path::new("."),
        };
        let ex = r.to_sft(&DatasetFormat::default()).unwrap();
        assert!(matches!(ex.conversation, Conversation::Messages(ref m) if m.len() == 2));
        let cells = row(r#"{"prompt": "q", "completion": "a", "extra": 1}"#);
        let r = Row {
            cells: &cells,
            origin: "t:0".into(),
            base_dir: Path::new("."),
        };
        let ex = r.to_sft(&DatasetFormat::default()).unwrap();
        let Conversation::PromptCompletion { prompt, completion } = ex.conversation else {
            panic!()
        };
        assert_eq!(prompt, vec![Message::user_with_images(0, "q")]);
        assert_eq!(completion, vec![Message::text("assistant", "a")]);
        let cells = row(r#"{"question": "q"}"#);
        let r = Row {
            cells: &cells,
            origin: "f.jsonl:3".into(),
            base_dir: Path::new("."),
        };
        let err = r.to_sft(&DatasetFormat::default()).unwrap_err().to_string();
        assert!(
            err.contains("f.jsonl:3") && err.contains("question"),
            "{err}"
        );
    }

    #[test]
    fn missing_image_file_is_named() {
        let cells = row(r#"{"images": ["nope.png"], "prompt": "q", "completion": "a"}"#);
        let r = Row {
            cells: &cells,
            origin: "d.jsonl:1".into(),
            base_dir: Path::new("/tmp/none"),
        };
        let err = r.to_sft(&DatasetFormat::default()).unwrap_err().to_string();
        assert!(
            err.contains("/tmp/none/nope.png") && err.contains("d.jsonl:1"),
            "{err}"
        );
    }
}
