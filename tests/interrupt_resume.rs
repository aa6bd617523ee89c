//! Ctrl-C on `vlmtune sft`: the run finishes its step, checkpoints, says how to resume and
//! exits with 130; `--resume-from-checkpoint true` continues from the newest complete
//! checkpoint (never a half-written one) and the losses equal an uninterrupted run's. A second
//! Ctrl-C exits at once.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const STEPS: usize = 150;

/// The config of the runs; `copies` > 1 repeats the fixture rows that many times (one long
/// epoch, for steps of many micro-batches).
fn config(dir: &Path, copies: usize) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut data = fixtures.join("sft/data.jsonl");
    if copies > 1 {
        let rows = std::fs::read_to_string(&data).unwrap().replace(
            "\"images/",
            &format!("\"{}/", fixtures.join("sft/images").display()),
        );
        data = dir.join("data.jsonl");
        std::fs::write(&data, rows.repeat(copies)).unwrap();
    }
    let text = format!(
        "[model]\nname = \"{}\"\n[dataset]\nsource = \"{}\"\n[training]\nper_device_train_batch_size = 1\nmax_steps = {STEPS}\nlogging_steps = 1\nsave_steps = 0\nprogress_bar = false\nlearning_rate = 1e-3\ndataloader_num_workers = 1\n",
        fixtures.join("tiny-smolvlm").display(),
        data.display(),
    );
    let path = dir.join("sft.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sft(config: &Path, output: &Path, extra: &[&str]) -> Child {
    common::sft_command(config, output, extra).spawn().unwrap()
}

/// `(step, loss, grad_norm, learning_rate)` of every record of `metrics.jsonl`.
fn logged(output: &Path) -> Vec<(u64, f64, f64, f64)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap();
            (
                r["step"].as_u64().unwrap(),
                f("loss"),
                f("grad_norm"),
                f("learning_rate"),
            )
        })
        .collect()
}

fn wait_for_steps(output: &Path, child: &mut Child, steps: usize) {
    let start = Instant::now();
    while logged(output).len() < steps {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was interrupted"
        );
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn interrupt(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_interrupted_run_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1);
    let whole = dir.path().join("whole");
    let (code, stderr) = finish(sft(&config, &whole, &[]));
    assert_eq!(code, Some(0), "{stderr}");
    let reference = logged(&whole);
    assert_eq!(reference.len(), STEPS);

    let run = dir.path().join("interrupted");
    let mut child = sft(&config, &run, &[]);
    wait_for_steps(&run, &mut child, 3);
    interrupt(&child);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    let done = logged(&run).len();
    assert!(done < STEPS, "{stderr}");
    let checkpoint = run.join(format!("checkpoint-{done}"));
    assert!(
        stderr.contains(&format!("interrupted after step {done}"))
            && stderr.contains(&checkpoint.display().to_string())
            && stderr.contains("--resume-from-checkpoint true"),
        "{stderr}"
    );
    // Decoys a crash could leave: neither is a complete checkpoint.
    std::fs::create_dir_all(run.join(format!("checkpoint-{}", done + 1000))).unwrap();
    let half_written = run.join(format!(".checkpoint-{}.tmp-1", done + 2000));
    std::fs::create_dir_all(&half_written).unwrap();
    std::fs::copy(
        checkpoint.join("trainer_state.json"),
        half_written.join("trainer_state.json"),
    )
    .unwrap();

    let (code, stderr) = finish(sft(&config, &run, &["--resume-from-checkpoint", "true"]));
    assert_eq!(code, Some(0), "{stderr}");
    let resumed = logged(&run);
    assert_eq!(resumed.len(), STEPS, "one record per step, none repeated");
    assert_eq!(resumed, reference, "bit-exact continuation");
}

#[test]
fn a_second_interrupt_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 100);
    let run = dir.path().join("run");
    // One long step (200 micro-batches, seconds): both signals land inside it.
    let mut child = sft(&config, &run, &["--gradient-accumulation-steps", "200"]);
    let start = Instant::now();
    while !run.join("metrics.jsonl").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    interrupt(&child);
    // Apart, so the second is not merged into the first while it is pending.
    std::thread::sleep(Duration::from_millis(50));
    interrupt(&child);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        !stderr.contains("interrupted after step") && logged(&run).is_empty(),
        "exited without finishing the step: {stderr}"
    );
}
