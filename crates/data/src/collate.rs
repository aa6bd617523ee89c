//! Turning examples into training batches the way TRL's vision collators do: the chat
//! template, the prompt/completion split, labels on completion (or assistant) tokens only,
//! image tokens and padding never labelled, and truncation that never cuts an image span.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::dataset::{Conversation, ImageSource, OnBadExample, SftExample};
use crate::error::{DataError, Result};
use crate::processor::{
    stack_pixels, Message, PaddingSide, PixelValues, ProcessedImage, Processor,
};

/// The label value that is never trained on.
pub const IGNORE_INDEX: i64 = -100;

/// What to do with a sample whose image span does not fit in `max_length`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TooLong {
    /// Fail with an error naming the sample.
    Error,
    /// Drop the sample and count it.
    #[default]
    Skip,
}

fn d_max_length() -> Option<usize> {
    Some(1024)
}
fn d_true() -> bool {
    true
}

/// Collator settings (TRL `SFTConfig` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollatorConfig {
    /// Longest sequence; text is cut from the right, but never inside an image span.
    #[serde(default = "d_max_length")]
    pub max_length: Option<usize>,
    /// Prompt/completion data: train on completion tokens only.
    #[serde(default = "d_true")]
    pub completion_only_loss: bool,
    /// Conversations: train on assistant turns only.
    #[serde(default = "d_true")]
    pub assistant_only_loss: bool,
    /// Samples whose images do not fit `max_length`.
    pub too_long: TooLong,
    /// Where padding goes (right, as TRL trains).
    pub padding_side: PaddingSide,
    /// Override the checkpoint's `do_image_splitting`.
    pub do_image_splitting: Option<bool>,
}

impl Default for CollatorConfig {
    fn default() -> Self {
        Self {
            max_length: d_max_length(),
            completion_only_loss: true,
            assistant_only_loss: true,
            too_long: TooLong::Skip,
            padding_side: PaddingSide::Right,
            do_image_splitting: None,
        }
    }
}

/// One tokenised example.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels (`-100` where not trained).
    pub labels: Vec<i64>,
    /// Processed images in order.
    pub images: Vec<ProcessedImage>,
}

/// A padded batch ready for the model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TrainBatch {
    /// `[batch, seq]` ids.
    pub input_ids: Vec<u32>,
    /// `[batch, seq]`, 1 on real tokens.
    pub attention_mask: Vec<u8>,
    /// `[batch, seq]` labels.
    pub labels: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Columns.
    pub seq_len: usize,
    /// Pixels, when any row has images.
    pub pixels: Option<PixelValues>,
    /// Dataset indices of the rows (for caches and logs).
    pub indices: Vec<usize>,
}

impl TrainBatch {
    /// Labels that count after the causal shift (the loss's `num_items_in_batch`).
    pub fn num_label_tokens(&self) -> usize {
        (0..self.batch_size)
            .map(|b| {
                self.labels[b * self.seq_len..(b + 1) * self.seq_len]
                    .iter()
                    .skip(1)
                    .filter(|l| **l != IGNORE_INDEX)
                    .count()
            })
            .sum()
    }

    /// Real (non-padding) tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|m| **m == 1).count()
    }
}

/// Encodes examples for SFT with a processor.
pub struct SftCollator {
    /// The checkpoint's processor.
    pub processor: Processor,
    /// Settings.
    pub config: CollatorConfig,
    /// What to do with an example that cannot be encoded (set from the job's `[dataset]`).
    pub on_bad_example: OnBadExample,
    image_token_ids: HashSet<u32>,
    skipped: AtomicUsize,
    bad: std::sync::Mutex<HashSet<String>>,
}

impl SftCollator {
    /// A collator; image-layout token ids are looked up in the processor's tokenizer.
    pub fn new(processor: Processor, config: CollatorConfig) -> Self {
        let tok = &processor.tokenizer;
        let mut ids: HashSet<u32> = [
            &processor.image_tokens.image,
            &processor.image_tokens.fake,
            &processor.image_tokens.global,
        ]
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .collect();
        for r in 1..=6 {
            for c in 1..=6 {
                ids.extend(tok.token_to_id(&format!("<row_{r}_col_{c}>")));
            }
        }
        Self {
            processor,
            config,
            on_bad_example: OnBadExample::Error,
            image_token_ids: ids,
            skipped: AtomicUsize::new(0),
            bad: Default::default(),
        }
    }

    /// Samples dropped so far because their images did not fit `max_length`.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Distinct examples left out so far because they could not be encoded
    /// (`on_bad_example = skip`; an example met again in a later epoch counts once).
    pub fn bad_examples(&self) -> usize {
        self.bad.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// An example's encoding, its failure named by the example's origin; under
    /// [`OnBadExample::Skip`] a failure is counted and logged and gives `None`. Limits
    /// (`too_long`) have their own setting and are not bad examples.
    pub fn encode_or_skip<T>(&self, origin: &str, encoded: Result<Option<T>>) -> Result<Option<T>> {
        match encoded {
            Ok(e) => Ok(e),
            Err(e @ DataError::Sample { .. }) => Err(e),
            Err(e) => {
                let e = DataError::BadExample {
                    origin: origin.to_string(),
                    source: Box::new(e),
                };
                match self.on_bad_example {
                    OnBadExample::Error => Err(e),
                    OnBadExample::Skip => {
                        let first_time = self
                            .bad
                            .lock()
                            .map(|mut b| b.insert(origin.to_string()))
                            .unwrap_or(true);
                        if first_time {
                            tracing::warn!(error = %e, "bad example skipped");
                        }
                        Ok(None)
                    }
                }
            }
        }
    }

    /// Ids of the image-layout tokens (never labelled).
    pub fn image_token_ids(&self) -> &HashSet<u32> {
        &self.image_token_ids
    }

    /// Decodes and processes the images of an example.
    pub fn process_images(&self, images: &[ImageSource]) -> Result<Vec<ProcessedImage>> {
        let split = self
            .config
            .do_image_splitting
            .unwrap_or(self.processor.image_processor.config.do_image_splitting);
        let decoded = images
            .iter()
            .map(ImageSource::load)
            .collect::<Result<Vec<_>>>()?;
        let origins: Vec<String> = images.iter().map(ImageSource::describe).collect();
        self.processor.process_images(&decoded, &origins, split)
    }

    /// Renders a prompt and its completion: `(prompt text, completion text)` with the
    /// completion being `render(prompt + completion)[len(render(prompt, generation prompt)):]`.
    pub fn split_prompt_completion(
        &self,
        prompt: &[Message],
        completion: &[Message],
        origin: &str,
    ) -> Result<(String, String)> {
        let prompt_text = self.processor.apply_chat_template(prompt, true)?;
        let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
        let full = self.processor.apply_chat_template(&all, false)?;
        // Not a `Sample` error (those are limits): the example itself is unusable.
        let completion_text = full.strip_prefix(prompt_text.as_str()).ok_or_else(|| {
            DataError::Template(format!(
                "{origin}: the chat template renders the prompt differently inside the full conversation"
            ))
        })?;
        Ok((prompt_text, completion_text.to_string()))
    }

    /// Tokenises a prompt (with image expansion) and a completion separately, as TRL does.
    pub fn encode_prompt_completion(
        &self,
        prompt: &[Message],
        completion: &[Message],
        images: Vec<ProcessedImage>,
        origin: &str,
    ) -> Result<(Vec<u32>, Vec<u32>, Vec<ProcessedImage>)> {
        let (prompt_text, completion_text) =
            self.split_prompt_completion(prompt, completion, origin)?;
        let options = crate::ProcessOptions {
            add_special_tokens: false,
            ..Default::default()
        };
        let enc = self
            .processor
            .encode_processed(&prompt_text, images, options)?;
        let completion_ids = self.processor.tokenizer.encode(&completion_text, false)?;
        Ok((enc.input_ids, completion_ids, enc.images))
    }

    /// Encodes one example; `Ok(None)` when it is skipped for length.
    pub fn encode(&self, example: &SftExample) -> Result<Option<EncodedExample>> {
        let images = self.process_images(&example.images)?;
        let (input_ids, mut labels, images) = match &example.conversation {
            Conversation::PromptCompletion { prompt, completion } => {
                let (p, c, images) =
                    self.encode_prompt_completion(prompt, completion, images, &example.origin)?;
                let mut labels: Vec<i64> = if self.config.completion_only_loss {
                    vec![IGNORE_INDEX; p.len()]
                } else {
                    p.iter().map(|t| i64::from(*t)).collect()
                };
                labels.extend(c.iter().map(|t| i64::from(*t)));
                ([p, c].concat(), labels, images)
            }
            Conversation::Messages(messages) => {
                self.encode_messages(messages, images, &example.origin)?
            }
        };
        for (id, label) in input_ids.iter().zip(labels.iter_mut()) {
            if self.image_token_ids.contains(id) {
                *label = IGNORE_INDEX;
            }
        }
        self.truncate(
            EncodedExample {
                input_ids,
                labels,
                images,
            },
            &example.origin,
        )
    }

    fn encode_messages(
        &self,
        messages: &[Message],
        images: Vec<ProcessedImage>,
        origin: &str,
    ) -> Result<(Vec<u32>, Vec<i64>, Vec<ProcessedImage>)> {
        let full = self.processor.apply_chat_template(messages, false)?;
        // Assistant turns: what rendering message i adds after the generation prompt.
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.processor.apply_chat_template(&messages[..i], true)?;
            let upto = self.processor.apply_chat_template(&messages[..=i], false)?;
            if full.starts_with(&upto) && upto.starts_with(&before) {
                spans.push((before.len(), upto.len()));
            } else {
                return Err(DataError::Sample {
                    origin: origin.into(),
                    message: format!(
                        "cannot locate assistant turn {i} in the rendered conversation"
                    ),
                });
            }
        }
        // Expand <image> markers segment by segment so the spans can be shifted.
        let grids: Vec<(usize, usize)> = images.iter().map(|i| (i.rows, i.cols)).collect();
        let mut bounds: Vec<usize> = spans.iter().flat_map(|(a, b)| [*a, *b]).collect();
        bounds.push(full.len());
        let mut expanded = String::new();
        let mut shifted = Vec::new();
        let (mut start, mut used) = (0usize, 0usize);
        let marker = &self.processor.image_tokens.image;
        for end in bounds {
            let segment = &full[start..end];
            let n = segment.matches(marker.as_str()).count();
            let take = grids.get(used..used + n).ok_or_else(|| {
                DataError::Mismatch(format!(
                    "sample {origin}: more `{marker}` markers than images"
                ))
            })?;
            expanded.push_str(&self.processor.image_tokens.expand_text(
                segment,
                take,
                self.processor.image_seq_len,
            )?);
            used += n;
            shifted.push(expanded.len());
            start = end;
        }
        if used != grids.len() {
            return Err(DataError::Mismatch(format!(
                "sample {origin}: {} image(s) but {used} `{marker}` marker(s)",
                grids.len()
            )));
        }
        let (ids, offsets) = self.processor.tokenizer.encode_with_offsets(&expanded)?;
        let expanded_spans: Vec<(usize, usize)> = shifted
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0], c[1]))
            .collect();
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(id, (s, _))| {
                let in_assistant = expanded_spans.iter().any(|(a, b)| s >= a && s < b);
                if in_assistant || !self.config.assistant_only_loss {
                    i64::from(*id)
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Ok((ids, labels, images))
    }

    /// Cuts at `max_length`, unless that would cut an image span.
    fn truncate(&self, mut ex: EncodedExample, origin: &str) -> Result<Option<EncodedExample>> {
        let Some(max) = self.config.max_length else {
            return Ok(Some(ex));
        };
        if ex.input_ids.len() <= max {
            return Ok(Some(ex));
        }
        let last_image = ex
            .input_ids
            .iter()
            .rposition(|id| self.image_token_ids.contains(id))
            .map(|p| p + 1)
            .unwrap_or(0);
        if last_image > max {
            return match self.config.too_long {
                TooLong::Error => Err(DataError::Sample {
                    origin: origin.into(),
                    message: format!(
                        "{} tokens, and its images end at token {last_image}: max_length {max} would cut inside an image",
                        ex.input_ids.len()
                    ),
                }),
                TooLong::Skip => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sample = origin, max_length = max, "sample skipped: its images do not fit max_length");
                    Ok(None)
                }
            };
        }
        ex.input_ids.truncate(max);
        ex.labels.truncate(max);
        Ok(Some(ex))
    }

    /// Pads encoded examples into a batch.
    pub fn collate(&self, encoded: Vec<(usize, EncodedExample)>) -> TrainBatch {
        collate(
            encoded,
            self.processor.tokenizer.pad_id(),
            self.config.padding_side,
        )
    }
}

/// Pads `(dataset index, example)` pairs into one batch.
pub fn collate(
    encoded: Vec<(usize, EncodedExample)>,
    pad_id: u32,
    side: PaddingSide,
) -> TrainBatch {
    let seq_len = encoded
        .iter()
        .map(|(_, e)| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut batch = TrainBatch {
        batch_size: encoded.len(),
        seq_len,
        ..TrainBatch::default()
    };
    for (index, e) in &encoded {
        let pad = seq_len - e.input_ids.len();
        let (ids, mask, labels): (Vec<u32>, Vec<u8>, Vec<i64>) = match side {
            PaddingSide::Right => (
                e.input_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, pad))
                    .collect(),
                std::iter::repeat_n(1, e.input_ids.len())
                    .chain(std::iter::repeat_n(0, pad))
                    .collect(),
                e.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(IGNORE_INDEX, pad))
                    .collect(),
            ),
            PaddingSide::Left => (
                std::iter::repeat_n(pad_id, pad)
                    .chain(e.input_ids.iter().copied())
                    .collect(),
                std::iter::repeat_n(0, pad)
                    .chain(std::iter::repeat_n(1, e.input_ids.len()))
                    .collect(),
                std::iter::repeat_n(IGNORE_INDEX, pad)
                    .chain(e.labels.iter().copied())
                    .collect(),
            ),
        };
        batch.input_ids.extend(ids);
        batch.attention_mask.extend(mask);
        batch.labels.extend(labels);
        batch.indices.push(*index);
    }
    batch.pixels = stack_pixels(encoded.iter().map(|(_, e)| e.images.as_slice()));
    batch
}

impl crate::loader::BatchEncoder<SftExample> for SftCollator {
    type Batch = TrainBatch;

    fn encode_batch(&self, examples: &[(usize, &SftExample)]) -> Result<TrainBatch> {
        let mut encoded = Vec::with_capacity(examples.len());
        for (index, example) in examples {
            if let Some(e) = self.encode_or_skip(&example.origin, self.encode(example))? {
                encoded.push((*index, e));
            }
        }
        Ok(self.collate(encoded))
    }
}
