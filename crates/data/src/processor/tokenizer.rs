//! The checkpoint's tokenizer (`tokenizer.json`) with its special tokens, read from the
//! checkpoint's own files.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Result};

/// Token ids and each token's byte span in the text.
pub type TokensWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Which side padding goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingSide {
    /// Pad after the tokens.
    #[default]
    Right,
    /// Pad before the tokens.
    Left,
}

/// A tokenizer plus the special tokens of `tokenizer_config.json`.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    file: PathBuf,
    /// Beginning-of-sequence token.
    pub bos_token: Option<String>,
    /// End-of-sequence token (`<end_of_utterance>` for SmolVLM).
    pub eos_token: Option<String>,
    /// Padding token.
    pub pad_token: Option<String>,
    /// Padding side from `tokenizer_config.json` (default right).
    pub padding_side: PaddingSide,
    /// The raw `tokenizer_config.json`, for the chat template and other lookups.
    pub config: Value,
}

/// A token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        if !file.is_file() {
            return Err(DataError::Io {
                path: file,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tokenizer.json in the model folder",
                ),
            });
        }
        let tokenizer = Tokenizer::from_file(&file).map_err(|e| DataError::Tokenizer {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|source| DataError::Io {
                path: config_path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| DataError::Config {
                file: config_path.clone(),
                field: String::new(),
                message: e.to_string(),
            })?
        } else {
            Value::Object(Default::default())
        };
        let padding_side = match config.get("padding_side").and_then(Value::as_str) {
            Some("left") => PaddingSide::Left,
            _ => PaddingSide::Right,
        };
        Ok(Self {
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
            pad_token: token_text(config.get("pad_token")),
            padding_side,
            tokenizer,
            file,
            config,
        })
    }

    /// The id of `token`, or an error that names it and `why` it is needed.
    pub fn id_of(&self, token: &str, why: &str) -> Result<u32> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| DataError::UnknownToken {
                token: token.into(),
                why: why.into(),
            })
    }

    /// The id of `token`, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The id of the padding token (`pad_token`, else `eos_token`, else 0).
    pub fn pad_id(&self) -> u32 {
        self.pad_token
            .as_deref()
            .or(self.eos_token.as_deref())
            .and_then(|t| self.token_to_id(t))
            .unwrap_or(0)
    }

    /// The id of the end-of-sequence token, if any.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Tokenises `text` (special-token strings become their ids).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| DataError::Tokenizer {
                file: self.file.clone(),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenises `text` without special tokens, with each token's byte span in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<TokensWithOffsets> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer {
                file: self.file.clone(),
                message: e.to_string(),
            })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Turns ids back into text, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::Tokenizer {
                file: self.file.clone(),
                message: e.to_string(),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Ids of all special (added, `special: true`) tokens.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}
