//! Preference pairs for DPO, tokenised as TRL's `DataCollatorForVisionPreference` does: the
//! prompt (with its images) rendered with the generation prompt, each answer as the rest of
//! the rendered conversation, tokenised separately; image tokens are never part of a
//! completion, and truncation never cuts the prompt's images.

use crate::collate::{SftCollator, TooLong};
use crate::dataset::PreferenceExample;
use crate::error::{DataError, Result};
use crate::loader::BatchEncoder;
use crate::processor::ProcessedImage;

/// One tokenised preference pair.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedPair {
    /// The prompt, `<image>` markers expanded.
    pub prompt_ids: Vec<u32>,
    /// The preferred completion.
    pub chosen_ids: Vec<u32>,
    /// The dispreferred completion.
    pub rejected_ids: Vec<u32>,
    /// The prompt's processed images.
    pub images: Vec<ProcessedImage>,
    /// Dataset index.
    pub index: usize,
}

/// The pairs of one batch.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PreferenceBatch {
    /// Pairs in dataset order of the batch.
    pub pairs: Vec<EncodedPair>,
}

impl PreferenceBatch {
    /// Tokens the plain (TRL) layout processes: each prompt twice plus both answers.
    pub fn num_tokens(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| 2 * p.prompt_ids.len() + p.chosen_ids.len() + p.rejected_ids.len())
            .sum()
    }
}

/// Encodes preference pairs with the SFT collator's processor, templates and limits.
pub struct PreferenceCollator {
    /// The SFT collator whose processor, `max_length` and `too_long` are used.
    pub sft: SftCollator,
}

impl PreferenceCollator {
    /// Encodes a pair; `Ok(None)` when it is skipped for length.
    pub fn encode(&self, example: &PreferenceExample, index: usize) -> Result<Option<EncodedPair>> {
        let images = self.sft.process_images(&example.images)?;
        let (prompt_ids, mut chosen_ids, images) = self.sft.encode_prompt_completion(
            &example.prompt,
            &example.chosen,
            images,
            &example.origin,
        )?;
        let (_, rejected_text) = self.sft.split_prompt_completion(
            &example.prompt,
            &example.rejected,
            &example.origin,
        )?;
        let mut rejected_ids = self.sft.processor.tokenizer.encode(&rejected_text, false)?;
        if let Some(max) = self.sft.config.max_length {
            if prompt_ids.len() >= max {
                return match self.sft.config.too_long {
                    TooLong::Error => Err(DataError::Sample {
                        origin: example.origin.clone(),
                        message: format!(
                            "the prompt has {} tokens: max_length {max} leaves no room for the answers without cutting it",
                            prompt_ids.len()
                        ),
                    }),
                    TooLong::Skip => Ok(None),
                };
            }
            chosen_ids.truncate(max - prompt_ids.len());
            rejected_ids.truncate(max - prompt_ids.len());
        }
        Ok(Some(EncodedPair {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            images,
            index,
        }))
    }
}

impl BatchEncoder<PreferenceExample> for PreferenceCollator {
    type Batch = PreferenceBatch;

    fn encode_batch(&self, examples: &[(usize, &PreferenceExample)]) -> Result<PreferenceBatch> {
        let mut pairs = Vec::with_capacity(examples.len());
        for (index, example) in examples {
            let encoded = self.encode(example, *index);
            if let Some(p) = self.sft.encode_or_skip(&example.origin, encoded)? {
                pairs.push(p);
            }
        }
        Ok(PreferenceBatch { pairs })
    }
}
