//! The flags `sft` and `dpo` share for resuming and for bad data and diverging steps.

use vlmtune::data::OnBadExample;
use vlmtune::jobs::sft::DatasetSection;
use vlmtune::train::TrainingArgs;

/// Resume, bad examples, non-finite steps.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RunControlArgs {
    /// Resume: `true` or `latest` (the newest complete checkpoint in the output folder, as
    /// TRL spells it), or a checkpoint folder.
    #[arg(long)]
    pub resume_from_checkpoint: Option<String>,
    /// A dataset row that does not parse or an image that does not decode: `error` (stop,
    /// naming file and row) or `skip` (leave it out, counted in the summary).
    #[arg(long, value_parser = parse_on_bad)]
    pub on_bad_example: Option<OnBadExample>,
    /// Stop (checkpointing the last good weights) after this many steps in a row with a
    /// non-finite loss or gradient (0: never).
    #[arg(long)]
    pub max_nonfinite_steps: Option<usize>,
}

fn parse_on_bad(s: &str) -> Result<OnBadExample, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: expected `error` or `skip`"))
}

impl RunControlArgs {
    /// Applies the flags given over the config.
    pub fn apply(&self, training: &mut TrainingArgs, dataset: &mut DatasetSection) {
        if let Some(spec) = &self.resume_from_checkpoint {
            training.resume_from_checkpoint = Some(spec.clone());
        }
        if let Some(n) = self.max_nonfinite_steps {
            training.max_nonfinite_steps = n;
        }
        if let Some(v) = self.on_bad_example {
            dataset.on_bad_example = v;
        }
    }
}
