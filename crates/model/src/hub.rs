//! Finding a checkpoint: a local folder, or a Hugging Face Hub repo id fetched (and cached)
//! with `hf-hub`.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};

/// Files besides the config and weights that a checkpoint may carry (tokenizer, processor,
/// generation settings); missing ones are skipped.
pub const SIDE_FILES: [&str; 8] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
];

/// Resolves `spec` to a local checkpoint folder.
///
/// An existing path is used as is (it must hold `config.json`). Anything else of the form
/// `owner/name` is a Hub model id: `config.json`, the safetensors weights (single or
/// sharded) and the tokenizer/processor files are fetched into the Hugging Face cache
/// (`HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` are honoured), and the snapshot folder returned.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        let config = path.join("config.json");
        if !config.is_file() {
            return Err(ModelError::Io {
                path: config,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a model folder must contain config.json",
                ),
            });
        }
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(spec) {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such folder, and not a Hub id of the form owner/name",
            ),
        });
    }
    download_model(spec)
}

fn looks_like_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
}

fn hub_repo(repo_id: &str, kind: RepoType) -> Result<ApiRepo> {
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::Hub {
            repo: repo_id.into(),
            file: String::new(),
            message: e.to_string(),
        })?;
    Ok(api.repo(Repo::new(repo_id.to_string(), kind)))
}

/// Fetches one file of a Hub repo (model or dataset) into the cache.
pub fn fetch_file(repo_id: &str, kind: RepoType, file: &str) -> Result<PathBuf> {
    hub_repo(repo_id, kind)?
        .get(file)
        .map_err(|e| ModelError::Hub {
            repo: repo_id.into(),
            file: file.into(),
            message: e.to_string(),
        })
}

fn download_model(repo_id: &str) -> Result<PathBuf> {
    let repo = hub_repo(repo_id, RepoType::Model)?;
    let get = |file: &str| {
        repo.get(file).map_err(|e| ModelError::Hub {
            repo: repo_id.into(),
            file: file.into(),
            message: e.to_string(),
        })
    };
    let config = get("config.json")?;
    if get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json")?;
        for shard in vlmtune_quant::store::read_shard_index(&index)? {
            if let Some(name) = shard.file_name().and_then(|n| n.to_str()) {
                get(name)?;
            }
        }
    }
    for file in SIDE_FILES {
        let _ = get(file);
    }
    Ok(config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolVLM-256M-Instruct"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("plain"));
        let err = resolve_model("/definitely/not/here/x/y")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/definitely/not/here"), "{err}");
    }
}
