//! Parquet files of a Hugging Face Hub dataset, fetched (and cached) with `hf-hub`.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use crate::error::{DataError, Result};

/// Whether `name` (a repo file path) is a parquet shard of `split`: `data/train-…`,
/// `train/…`, `…/train-0000…` and the like.
pub fn is_split_shard(name: &str, split: &str) -> bool {
    if !name.ends_with(".parquet") {
        return false;
    }
    let file = name.rsplit('/').next().unwrap_or(name);
    file.starts_with(&format!("{split}-"))
        || file.starts_with(&format!("{split}."))
        || name.split('/').any(|part| part == split)
}

/// Downloads the parquet shards of `split` of dataset `repo_id` into the Hugging Face cache.
pub fn fetch_parquet_split(repo_id: &str, split: &str) -> Result<Vec<PathBuf>> {
    let err = |message: String| DataError::Dataset {
        source_name: format!("hub:{repo_id}"),
        message,
    };
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| err(e.to_string()))?;
    let repo = api.repo(Repo::new(repo_id.to_string(), RepoType::Dataset));
    let info = repo
        .info()
        .map_err(|e| err(format!("cannot list files on the Hugging Face Hub: {e}")))?;
    let mut shards: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|n| is_split_shard(n, split))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(err(format!("no parquet files for split `{split}`")));
    }
    shards
        .iter()
        .map(|name| {
            repo.get(name)
                .map_err(|e| err(format!("cannot fetch {name}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_shards() {
        assert!(is_split_shard(
            "data/train-00000-of-00003-abc.parquet",
            "train"
        ));
        assert!(is_split_shard("train/0000.parquet", "train"));
        assert!(!is_split_shard("data/test-00000-of-00001.parquet", "train"));
        assert!(!is_split_shard("README.md", "train"));
    }
}
