//! Data-parallel training (burn-collective on the CPU backend): ranks that each take their
//! share of the batches and sum their gradients train exactly as one process accumulating
//! those batches: SFT and DPO, in one process and across two processes (orchestrator + 2
//! nodes on 127.0.0.1); a 2-rank run resumes exactly; a failing or missing rank ends every
//! rank with an error instead of a hang.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture_path, one_step_args, sft_command, AB, B};
use vlmtune_data::dataset::{jsonl, synthetic};
use vlmtune_data::{CollatorConfig, DatasetFormat, PreferenceCollator, Processor, SftCollator};
use vlmtune_model::load_dir;
use vlmtune_peft::load_adapter;
use vlmtune_quant::NamedTensor;
use vlmtune_train::distributed::{launch, DistributedConfig};
use vlmtune_train::{
    DpoConfig, DpoTrainer, Objective, SftTrainer, TrainError, Trainer, TrainingArgs,
};

const STEPS: i64 = 3;

/// What a rank ends with: its log records and its trained adapter weights.
struct RankRun {
    records: Vec<serde_json::Value>,
    weights: Vec<NamedTensor>,
}

/// `copies` x the SFT fixture rows (3 rows), image paths made absolute.
fn sft_rows(dir: &Path, copies: usize) -> PathBuf {
    let fixtures = fixture_path("");
    let rows = std::fs::read_to_string(fixtures.join("sft/data.jsonl"))
        .unwrap()
        .replace(
            "\"images/",
            &format!("\"{}/", fixtures.join("sft/images").display()),
        );
    let path = dir.join("data.jsonl");
    std::fs::write(&path, rows.repeat(copies)).unwrap();
    path
}

fn sft_trainer(args: TrainingArgs, data: &Path) -> Trainer<AB, vlmtune_train::SftObjective<AB>> {
    let mut model = load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    let config = load_adapter(&mut model, &fixture_path("sft/initial-adapter"), "default").unwrap();
    let collator = Arc::new(SftCollator::new(
        Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    ));
    let examples = jsonl::load_sft(data, &DatasetFormat::default()).unwrap();
    SftTrainer::new(model, args, collator, examples, Default::default())
        .unwrap()
        .with_adapter(config)
}

fn dpo_trainer(args: TrainingArgs) -> Trainer<AB, vlmtune_train::DpoObjective<AB>> {
    let mut model = load_dir::<AB>(&fixture_path("tiny-smolvlm"), &Default::default()).unwrap();
    let config = load_adapter(&mut model, &fixture_path("sft/initial-adapter"), "default").unwrap();
    let sft = SftCollator::new(
        Processor::from_dir(&fixture_path("tiny-smolvlm")).unwrap(),
        CollatorConfig::default(),
    );
    let pairs = synthetic::preference_examples(7, 0, 8, 32);
    DpoTrainer::new(
        model,
        args,
        DpoConfig::default(),
        Arc::new(PreferenceCollator { sft }),
        pairs,
        Default::default(),
    )
    .unwrap()
    .with_adapter(config)
}

fn args(dir: &Path, batch: usize, accumulation: usize) -> TrainingArgs {
    TrainingArgs {
        max_steps: STEPS,
        learning_rate: 1e-3,
        dataloader_num_workers: 1,
        ..one_step_args(batch, accumulation, dir)
    }
}

fn ranks(n: usize) -> DistributedConfig {
    DistributedConfig {
        nproc_per_node: n,
        timeout_s: 120,
        ..Default::default()
    }
}

/// Trains `make()`'s trainer on every rank of `config`; returns each rank's run by rank.
fn train_ranks<O: Objective<AB>>(
    config: &DistributedConfig,
    make: impl Fn() -> Trainer<AB, O> + Sync,
) -> Vec<RankRun> {
    let runs = Mutex::new(Vec::new());
    launch::<B, (), TrainError, _>(config, Default::default(), |collective, _device| {
        let rank = collective.rank();
        let mut trainer = make().with_collective(collective);
        trainer.train()?;
        let weights = vlmtune_peft::param_values::<AB, _>(&trainer.model, |p| p.contains("lora_"));
        let records = trainer.state.log_history.clone();
        runs.lock()
            .unwrap()
            .push((rank, RankRun { records, weights }));
        Ok(())
    })
    .unwrap();
    let mut runs = runs.into_inner().unwrap();
    runs.sort_by_key(|(rank, _)| *rank);
    runs.into_iter().map(|(_, run)| run).collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        "{what}: {a} vs {b} (difference {:e})",
        (a - b).abs()
    );
}

/// Loss, grad norm and `num_tokens` of every step, and the trained weights, agree within 1e-6.
fn assert_same_training(one: &RankRun, other: &RankRun) {
    let steps = |r: &RankRun| {
        r.records
            .iter()
            .filter(|r| r.get("loss").is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a, b) = (steps(one), steps(other));
    assert_eq!(a.len(), STEPS as usize);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let step = x["step"].as_u64().unwrap();
        for key in ["loss", "grad_norm"] {
            close(
                x[key].as_f64().unwrap(),
                y[key].as_f64().unwrap(),
                &format!("step {step} {key}"),
            );
        }
        assert_eq!(x["num_tokens"], y["num_tokens"], "step {step} num_tokens");
    }
    assert_weights_within(one, other, 1e-6);
}

fn assert_weights_within(one: &RankRun, other: &RankRun, tolerance: f32) {
    assert!(!one.weights.is_empty());
    assert_eq!(one.weights.len(), other.weights.len());
    for (x, y) in one.weights.iter().zip(&other.weights) {
        assert_eq!(x.name, y.name);
        let diff = common::max_abs_diff(&x.values, &y.values);
        assert!(diff <= tolerance, "{}: {diff:e}", x.name);
    }
}

#[test]
fn sft_two_ranks_equal_one_rank_accumulating_their_batches() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_rows(dir.path(), 4);
    let out = |name: &str| dir.path().join(name);
    // 2 ranks x batch 1 == 1 rank x batch 1 x accumulation 2.
    let single = train_ranks(&ranks(1), || sft_trainer(args(&out("a1"), 1, 2), &data));
    let pair = train_ranks(&ranks(2), || sft_trainer(args(&out("a2"), 1, 1), &data));
    assert_same_training(&single[0], &pair[0]);
    // The replicas are the same model, bit for bit.
    assert_weights_within(&pair[0], &pair[1], 0.0);
    // 2 ranks x batch 2 == 1 rank x batch 4.
    let single = train_ranks(&ranks(1), || sft_trainer(args(&out("b1"), 4, 1), &data));
    let pair = train_ranks(&ranks(2), || sft_trainer(args(&out("b2"), 2, 1), &data));
    assert_same_training(&single[0], &pair[0]);
    assert_weights_within(&pair[0], &pair[1], 0.0);
    // Only rank 0 logged: one line a step.
    let lines = std::fs::read_to_string(out("b2").join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), STEPS as usize);
}

#[test]
fn dpo_two_ranks_equal_one_rank_accumulating_their_batches() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let single = train_ranks(&ranks(1), || dpo_trainer(args(&out("a1"), 1, 2)));
    let pair = train_ranks(&ranks(2), || dpo_trainer(args(&out("a2"), 1, 1)));
    assert_same_training(&single[0], &pair[0]);
    assert_weights_within(&pair[0], &pair[1], 0.0);
    let single = train_ranks(&ranks(1), || dpo_trainer(args(&out("b1"), 4, 1)));
    let pair = train_ranks(&ranks(2), || dpo_trainer(args(&out("b2"), 2, 1)));
    assert_same_training(&single[0], &pair[0]);
    assert_weights_within(&pair[0], &pair[1], 0.0);
}

#[test]
fn a_two_rank_run_resumes_exactly_and_only_rank_0_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_rows(dir.path(), 4);
    let resumable = |out: &Path| TrainingArgs {
        max_steps: 4,
        save_steps: 2,
        ..args(out, 1, 1)
    };
    let whole = train_ranks(&ranks(2), || {
        sft_trainer(resumable(&dir.path().join("whole")), &data)
    });
    let out = dir.path().join("split");
    train_ranks(&ranks(2), || {
        let mut trainer = sft_trainer(resumable(&out), &data);
        trainer.stop_after = Some(2);
        trainer
    });
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"checkpoint-2".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    let resumed = train_ranks(&ranks(2), || {
        sft_trainer(
            TrainingArgs {
                resume_from_checkpoint: Some("latest".into()),
                ..resumable(&out)
            },
            &data,
        )
    });
    for rank in 0..2 {
        assert_weights_within(&whole[rank], &resumed[rank], 0.0);
    }
    let losses = |r: &RankRun| -> Vec<f64> {
        r.records
            .iter()
            .filter_map(|r| r["loss"].as_f64())
            .collect()
    };
    assert_eq!(losses(&whole[0])[2..], losses(&resumed[0])[2..]);
    // Rank 0 alone wrote the log: steps 1-2, then 3-4 after the resume.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
}

#[test]
fn a_failing_rank_stops_every_rank_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_rows(dir.path(), 4);
    let start = Instant::now();
    let err = launch::<B, (), TrainError, _>(&ranks(2), Default::default(), |collective, _| {
        if collective.rank() == 1 {
            return Err(TrainError::Config {
                field: "rank1".into(),
                message: "broke on purpose".into(),
            });
        }
        sft_trainer(args(&dir.path().join("out"), 1, 1), &data)
            .with_collective(collective)
            .train()
            .map(drop)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("broke on purpose"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_rank_that_never_arrives_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_rows(dir.path(), 4);
    let config = DistributedConfig {
        timeout_s: 1,
        ..ranks(2)
    };
    let err = launch::<B, (), TrainError, _>(&config, Default::default(), |collective, _| {
        let trainer = sft_trainer(args(&dir.path().join("out"), 1, 1), &data);
        if collective.rank() == 1 {
            std::thread::sleep(Duration::from_secs(4));
        }
        trainer.with_collective(collective).train().map(drop)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("timed out after 1 s") && err.contains("rank(s) 1 of this machine"),
        "{err}"
    );
}

/// Children killed when the test ends, whatever happens.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port `p` with `p + 1` and `p + 2` free as well (the nodes' tensor ports).
fn free_ports() -> u16 {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65000
            && (1..=2).all(|k| std::net::TcpListener::bind(("0.0.0.0", port + k)).is_ok())
        {
            return port;
        }
    }
    panic!("no free ports");
}

/// `(loss, grad_norm, num_tokens)` of every step of a run's `metrics.jsonl`.
fn logged(output: &Path) -> Vec<(f64, f64, u64)> {
    std::fs::read_to_string(output.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| {
            (
                r["loss"].as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
                r["num_tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// tracel-ai/burn#4549: burn-collective 0.21 reused its transfer ids (and never reset its
/// barrier) across multi-node all-reduces, so a second step hung or read the previous one's
/// sums; vlmtune's patched copy must give the single-process numbers at every step.
#[test]
fn two_processes_through_the_orchestrator_train_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = sft_rows(dir.path(), 4);
    let config = dir.path().join("sft.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nname = \"{}\"\n[dataset]\nsource = \"{}\"\n[training]\nper_device_train_batch_size = 1\nmax_steps = 4\nlogging_steps = 1\nsave_steps = 0\nprogress_bar = false\nlearning_rate = 1e-3\ndataloader_num_workers = 1\n[distributed]\ntimeout_s = 60\n",
            fixture_path("tiny-smolvlm").display(),
            data.display()
        ),
    )
    .unwrap();
    let single = dir.path().join("single");
    let status = sft_command(&config, &single, &["--gradient-accumulation-steps", "2"])
        .status()
        .unwrap();
    assert!(status.success());

    let port = free_ports();
    let master = format!("127.0.0.1:{port}");
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(env!("CARGO_BIN_EXE_vlmtune"))
            .args(["orchestrator", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let node = |rank: usize| dir.path().join(format!("node{rank}"));
    for rank in 0..2 {
        let rank_s = rank.to_string();
        let extra = [
            "--nnodes",
            "2",
            "--node-rank",
            &rank_s,
            "--master-addr",
            &master,
        ];
        children
            .0
            .push(sft_command(&config, &node(rank), &extra).spawn().unwrap());
    }
    let start = Instant::now();
    for i in 1..3 {
        loop {
            if let Some(status) = children.0[i].try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                children.0[i]
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                assert!(status.success(), "node {}: {stderr}", i - 1);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "the nodes did not finish (killed)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (one, two) = (logged(&single), logged(&node(0)));
    assert_eq!(one.len(), 4);
    assert_eq!(one.len(), two.len());
    for (step, (a, b)) in one.iter().zip(&two).enumerate() {
        close(a.0, b.0, &format!("step {} loss", step + 1));
        close(a.1, b.1, &format!("step {} grad_norm", step + 1));
        assert_eq!(a.2, b.2, "step {} num_tokens", step + 1);
    }
    // Node 1 trained (it had to, for node 0 to finish) but wrote nothing of the run.
    for file in ["metrics.jsonl", "final", "curves.png"] {
        assert!(!node(1).join(file).exists(), "node 1 wrote {file}");
    }
    assert!(node(0).join("final").is_dir());
}
