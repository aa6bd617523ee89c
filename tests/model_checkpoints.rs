//! Checkpoint I/O: save/load round trips in f32/bf16/f16, sharded loading, and clear errors
//! for missing, unexpected or mis-shaped keys and bad configs.

mod common;

use std::path::Path;

use common::{fixture_path, host, max_abs_diff, B};
use vlmtune_model::{load_dir, save_pretrained, SmolVlm, TokenBatch};
use vlmtune_quant::{write_safetensors, NamedTensor, SafetensorsFiles, SaveDtype};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn logits(model: &SmolVlm<B>) -> Vec<f32> {
    let toks = TokenBatch::from_rows(&[vec![1, 20, 30, 40, 50]]).unwrap();
    host(model.forward(&toks, None).unwrap())
}

/// Rewrites `dir/model.safetensors` with `edit` applied to its tensors.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<NamedTensor>)) {
    let path = dir.join("model.safetensors");
    let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
    let mut tensors: Vec<NamedTensor> = files
        .keys()
        .into_iter()
        .map(|k| {
            let (values, shape) = files.read_f32(&k).unwrap();
            NamedTensor {
                name: k,
                values,
                shape,
            }
        })
        .collect();
    drop(files);
    edit(&mut tensors);
    write_safetensors(&path, &tensors, SaveDtype::F32, None).unwrap();
}

fn load_err(dir: &Path) -> String {
    load_dir::<B>(dir, &Default::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn save_and_reload_in_each_dtype() {
    let original = load_dir::<B>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    let want = logits(&original);
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, tol) in [
        (SaveDtype::F32, 0.0),
        (SaveDtype::Bf16, 0.5),
        (SaveDtype::F16, 0.05),
    ] {
        let dir = tmp.path().join(format!("{dtype:?}"));
        save_pretrained(&original, &dir, dtype).unwrap();
        let reloaded = load_dir::<B>(&dir, &Default::default()).unwrap();
        let err = max_abs_diff(&logits(&reloaded), &want);
        assert!(err <= tol, "{dtype:?}: max abs logit change {err}");
        assert_eq!(reloaded.config(), original.config());
    }
}

#[test]
fn sharded_bf16_checkpoint_loads_every_shard() {
    let dir = fixture_path("tiny-idefics3");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let model = load_dir::<B>(&dir, &Default::default()).unwrap();
    // Round trip through a single f32 file keeps every value (bf16 -> f32 is exact).
    let tmp = tempfile::tempdir().unwrap();
    save_pretrained(&model, tmp.path(), SaveDtype::F32).unwrap();
    let again = load_dir::<B>(tmp.path(), &Default::default()).unwrap();
    assert_eq!(logits(&again), logits(&model));
}

#[test]
fn missing_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_path("tiny-smolvlm"), tmp.path());
    let key = "model.text_model.layers.1.mlp.up_proj.weight";
    rewrite_weights(tmp.path(), |t| t.retain(|x| x.name != key));
    let err = load_err(tmp.path());
    assert!(err.contains(key) && err.contains("missing"), "{err}");
}

#[test]
fn misshaped_key_names_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_path("tiny-smolvlm"), tmp.path());
    let key = "model.connector.modality_projection.proj.weight";
    rewrite_weights(tmp.path(), |t| {
        let x = t.iter_mut().find(|x| x.name == key).unwrap();
        x.shape = vec![x.shape[1], x.shape[0]];
    });
    let err = load_err(tmp.path());
    assert!(
        err.contains(key) && err.contains("[128, 48]") && err.contains("[48, 128]"),
        "{err}"
    );
}

#[test]
fn unexpected_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_path("tiny-smolvlm"), tmp.path());
    rewrite_weights(tmp.path(), |t| {
        t.push(NamedTensor {
            name: "model.text_model.layers.7.extra.weight".into(),
            values: vec![0.0; 2],
            shape: vec![2],
        })
    });
    let err = load_err(tmp.path());
    assert!(
        err.contains("model.text_model.layers.7.extra.weight"),
        "{err}"
    );
}

#[test]
fn bad_config_names_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_path("tiny-smolvlm"), tmp.path());
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"silu\"", "\"relu\"")).unwrap();
    let err = load_err(tmp.path());
    assert!(
        err.contains("config.json")
            && err.contains("text_config.hidden_act")
            && err.contains("relu"),
        "{err}"
    );
    std::fs::write(&path, "{ not json").unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}
