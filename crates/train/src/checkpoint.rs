//! Checkpoints: trainable weights by path, optimizer state, and the trainer's position,
//! written atomically (a temporary folder renamed into place) and rotated by
//! `save_total_limit`; plus the user-facing files (a PEFT adapter, or a Hugging Face model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vlmtune_peft::PathTracker;
use vlmtune_quant::{write_atomic, write_safetensors, NamedTensor, SafetensorsFiles, SaveDtype};

use crate::error::{Result, TrainError};

/// Trainable weights by burn module path.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// Optimizer moments and step.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// [`TrainerState`] as JSON.
pub const STATE_FILE: &str = "trainer_state.json";

/// Where training stands: enough to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Next micro-batch of the current epoch.
    pub batch_in_epoch: usize,
    /// Non-padding tokens seen.
    pub num_tokens: u64,
    /// Every logged record.
    pub log_history: Vec<serde_json::Value>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder of the checkpoint of `step`: `root/checkpoint-<step>`.
pub fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("checkpoint-{step}"))
}

/// Writes a checkpoint folder `root/checkpoint-<step>` atomically. `write_files` fills the
/// temporary folder with the model files; the trainer adds weights, optimizer and state.
pub fn save_checkpoint(
    root: &Path,
    state: &TrainerState,
    trainable: &[NamedTensor],
    optimizer: &[NamedTensor],
    write_files: impl FnOnce(&Path) -> Result<()>,
    save_total_limit: Option<usize>,
) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(root, state.global_step);
    let name = format!("checkpoint-{}", state.global_step);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let written =
        write_checkpoint_files(&tmp, &final_dir, state, trainable, optimizer, write_files);
    if let Err(e) = written {
        // Best effort: a half-written folder is never resumed from (no state file, a dot
        // name), but it should not fill the disk either.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(TrainError::Checkpoint {
            path: final_dir,
            message: format!(
                "could not be written ({e}); earlier checkpoints in {} are untouched",
                root.display()
            ),
        });
    }
    if let Some(limit) = save_total_limit {
        let mut all = list_checkpoints(root)?;
        while all.len() > limit.max(1) {
            let (_, oldest) = all.remove(0);
            std::fs::remove_dir_all(&oldest).map_err(io(&oldest))?;
        }
    }
    Ok(final_dir)
}

/// Fills `tmp` and renames it to `final_dir` (replacing a checkpoint of the same step).
fn write_checkpoint_files(
    tmp: &Path,
    final_dir: &Path,
    state: &TrainerState,
    trainable: &[NamedTensor],
    optimizer: &[NamedTensor],
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
    }
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    if !trainable.is_empty() {
        write_safetensors(&tmp.join(TRAINABLE_FILE), trainable, SaveDtype::F32, None)?;
    }
    write_safetensors(&tmp.join(OPTIMIZER_FILE), optimizer, SaveDtype::F32, None)?;
    write_files(tmp)?;
    let json =
        serde_json::to_string_pretty(state).map_err(|e| TrainError::Readback(e.to_string()))?;
    write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(io(final_dir))?;
    }
    std::fs::rename(tmp, final_dir).map_err(io(final_dir))
}

/// `(step, folder)` of every complete checkpoint under `root`, oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .map_err(io(root))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The checkpoint `spec` names: `latest` / `true` for the newest under `root`, else a path.
pub fn resolve_checkpoint(spec: &str, root: &Path) -> Result<PathBuf> {
    if spec == "latest" || spec == "true" {
        return list_checkpoints(root)?
            .pop()
            .map(|(_, p)| p)
            .ok_or_else(|| TrainError::Checkpoint {
                path: root.to_path_buf(),
                message: "no checkpoint-* folder to resume from".into(),
            });
    }
    let path = PathBuf::from(spec);
    if !path.join(STATE_FILE).is_file() {
        return Err(TrainError::Checkpoint {
            path,
            message: format!("not a checkpoint (no {STATE_FILE})"),
        });
    }
    Ok(path)
}

/// Reads a checkpoint's [`TrainerState`].
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("{STATE_FILE}: {e}"),
    })
}

/// Reads every tensor of a safetensors file as named f32 values.
pub fn read_named(path: &Path) -> Result<Vec<NamedTensor>> {
    let files = SafetensorsFiles::open(&[path.to_path_buf()])?;
    files
        .keys()
        .into_iter()
        .map(|k| {
            let (values, shape) = files.read_f32(&k)?;
            Ok(NamedTensor {
                name: k,
                values,
                shape,
            })
        })
        .collect()
}

struct ParamSetter<'a> {
    path: PathTracker,
    values: &'a mut HashMap<String, NamedTensor>,
}

impl<B: Backend> ModuleMapper<B> for ParamSetter<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(t) = self.values.remove(&self.path.path()) else {
            return param;
        };
        let trainable = param.is_require_grad();
        let (id, old, mapper) = param.consume();
        let device = old.device();
        let shape = old.shape();
        let value = Tensor::<B, 1>::from_data(
            TensorData::new(t.values, [t.shape.iter().product::<usize>()]),
            &device,
        )
        .reshape(shape)
        .set_require_grad(trainable);
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Sets the float parameters of `module` named in `tensors` (by module path). Returns the
/// module and the names that matched nothing.
pub fn set_params<B: Backend, M: Module<B>>(
    module: M,
    tensors: Vec<NamedTensor>,
) -> (M, Vec<String>) {
    let mut values: HashMap<String, NamedTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let module = module.map(&mut ParamSetter {
        path: PathTracker::default(),
        values: &mut values,
    });
    let mut left: Vec<String> = values.into_keys().collect();
    left.sort();
    (module, left)
}
