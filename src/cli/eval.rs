//! `vlmtune eval`: mean loss and generation accuracy (ChartQA's relaxed accuracy) of a model,
//! optionally with an adapter, on a dataset.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use vlmtune::backend::BackendJob;
use vlmtune::data::collate::{CollatorConfig, SftCollator};
use vlmtune::data::Processor;
use vlmtune::jobs::sft::{load_examples, DatasetSection};
use vlmtune::model::{load_dir_with, resolve_model, LoadOptions};
use vlmtune::train::{evaluate, Answer};

/// Arguments of `vlmtune eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint folder or Hub id.
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter folder.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// `synthetic`, a .jsonl / .parquet file or folder, or a Hub dataset.
    #[arg(long)]
    pub dataset: String,
    /// Split of parquet folders and Hub datasets.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// ChartQA's column names (image / query / label).
    #[arg(long)]
    pub chartqa: bool,
    /// Evaluate at most this many examples.
    #[arg(long, default_value_t = 200)]
    pub max_examples: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Also print this many answers (question, reference, prediction).
    #[arg(long, default_value_t = 0)]
    pub show_answers: usize,
    /// Quantised frozen weights.
    #[command(flatten)]
    pub quant: crate::cli::quant::QuantArgs,
}

impl BackendJob for EvalArgs {
    type Output = anyhow::Result<String>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let dir = resolve_model(&self.model)?;
        let options = LoadOptions {
            quant: self.quant.config(),
        };
        let mut model = load_dir_with::<B::InnerBackend>(&dir, &options, &device)?;
        if let Some(adapter) = &self.adapter {
            vlmtune::peft::load_adapter(&mut model, adapter, "default")?;
        }
        let collator = SftCollator::new(Processor::from_dir(&dir)?, CollatorConfig::default());
        let section = DatasetSection {
            source: self.dataset.clone(),
            format: if self.chartqa {
                vlmtune::data::FormatKind::ChartQa
            } else {
                vlmtune::data::FormatKind::Trl
            },
            split: self.split.clone(),
            eval_split: "none".into(),
            max_train: Some(self.max_examples),
            num_train: 0,
            num_eval: self.max_examples,
            ..DatasetSection::default()
        };
        let splits = load_examples(&section)?;
        let examples = if splits.eval.is_empty() {
            splits.train
        } else {
            splits.eval
        };
        let result = evaluate(
            &model,
            &collator,
            &examples,
            self.batch_size,
            self.max_new_tokens,
        )?;
        let mut out = format!(
            "examples: {}\nloss: {:.4}\naccuracy: {}\n",
            examples.len(),
            result.loss,
            result
                .accuracy
                .map(|a| format!("{:.1}%", 100.0 * a))
                .unwrap_or_else(|| "n/a".into())
        );
        out.push_str(&by_question(&result.answers));
        for a in result.answers.iter().take(self.show_answers) {
            out.push_str(&format!(
                "{} | {} | {}\n",
                a.question, a.reference, a.prediction
            ));
        }
        Ok(out)
    }
}

/// Accuracy per question template (colour words and numbers folded), for charts.
pub fn by_question(answers: &[Answer]) -> String {
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for a in answers {
        let key: String = a
            .question
            .split_whitespace()
            .map(|w| {
                if vlmtune::data::dataset::synthetic::PALETTE
                    .iter()
                    .any(|(c, _)| *c == w)
                {
                    "<colour>"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let e = groups.entry(key).or_default();
        e.0 += usize::from(a.correct());
        e.1 += 1;
    }
    if groups.len() > 12 {
        return String::new();
    }
    groups
        .iter()
        .map(|(q, (c, n))| format!("  {:>5.1}% of {n:>3}  {q}\n", 100.0 * *c as f64 / *n as f64))
        .collect()
}
