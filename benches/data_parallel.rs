//! What data parallelism costs on this machine:
//!
//! * `job`: the tiny main job (`vlmtune sft`'s built-in defaults, 200 steps, no evaluation)
//!   with 1 and 2 ranks: steps/s and examples/s (each rank keeps its batch of 8, so 2 ranks
//!   take 16 examples a step; on a CPU they share the cores).
//! * `allreduce`: the all-reduce of one step's gradients for the SmolVLM-256M LoRA r8 (text
//!   attention) adapter, summed by 2 ranks: as 2 threads of one process, and as 2 processes
//!   through the orchestrator on 127.0.0.1; next to PyTorch's gloo all-reduce of the same
//!   buffer between 2 processes when `scripts/reference/bench_allreduce.py` has run.
//!
//! `cargo bench --bench data_parallel [-- job | allreduce]`

mod common;

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Tensor;
use vlmtune::jobs::sft::{run_sft, SftJobConfig};
use vlmtune::train::distributed::{launch, Collective, DistributedConfig};
use vlmtune::train::TrainError;

type B = burn::backend::Flex;
type AB = burn::backend::Autodiff<B>;

const RUNS: usize = 20;

fn job(ranks: usize) -> (f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SftJobConfig::builtin();
    config.training.output_dir = dir.path().join("run");
    config.training.max_steps = 200;
    config.training.save_steps = 0;
    config.training.eval_steps = None;
    config.training.progress_bar = false;
    config.dataset.num_eval = 0;
    config.distributed.nproc_per_node = ranks;
    let report = run_sft::<AB>(&config, Default::default()).expect("the job runs");
    let examples = report.losses.len() * config.training.per_device_train_batch_size * ranks;
    (report.train_seconds, examples)
}

/// Trainable values of the 256M LoRA r8 adapter (the flat gradient buffer of a step).
fn adapter_numel() -> usize {
    let model = common::lora_256m::<AB>(&Default::default());
    vlmtune::peft::named_params::<AB, _>(&model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

/// Median seconds of an all-reduce of `numel` f32 on rank 0 of `config`.
fn time_all_reduce(config: &DistributedConfig, numel: usize) -> f64 {
    launch::<B, f64, TrainError, _>(
        config,
        Default::default(),
        |collective: Arc<dyn Collective<B>>, device| {
            let buffer = Tensor::<B, 1>::zeros([numel], &device);
            collective.all_reduce_sum(buffer.clone())?;
            let mut times = Vec::new();
            for _ in 0..RUNS {
                let start = Instant::now();
                collective.all_reduce_sum(buffer.clone())?;
                times.push(start.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Ok(times[RUNS / 2])
        },
    )
    .expect("all-reduce")
}

/// `--node K --port P --numel N`: one node of the two-process measurement.
fn node_mode() -> Option<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    let node: usize = value("--node")?.parse().ok()?;
    let port: u16 = value("--port")?.parse().ok()?;
    let numel: usize = value("--numel")?.parse().ok()?;
    let config = DistributedConfig {
        nnodes: 2,
        node_rank: node,
        master_addr: Some(format!("127.0.0.1:{port}")),
        timeout_s: 120,
        ..Default::default()
    };
    let median = time_all_reduce(&config, numel);
    if node == 0 {
        println!("{{\"median_s\": {median}}}");
    }
    Some(())
}

fn two_processes(numel: usize) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let port = 29711u16;
    let spawn = |node: usize| {
        std::process::Command::new(&exe)
            .args(["--node", &node.to_string(), "--port", &port.to_string()])
            .args(["--numel", &numel.to_string()])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let first = spawn(0);
    let second = spawn(1);
    let out = first.wait_with_output().unwrap();
    let _ = second.wait_with_output();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("{\"median_s\""))
        .expect("node 0 reports");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["median_s"]
        .as_f64()
        .unwrap()
}

fn main() {
    if node_mode().is_some() {
        return;
    }
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "job" || a == "allreduce")
        .collect();
    let wants = |m: &str| which.is_empty() || which.iter().any(|w| w == m);
    if wants("job") {
        let (one_s, one_n) = job(1);
        let (two_s, two_n) = job(2);
        println!(
            "tiny main job, 200 steps: 1 rank {:.2} steps/s ({:.0} examples/s), 2 ranks {:.2} steps/s ({:.0} examples/s); 2 ranks / 1 rank: steps/s x{:.2}, examples/s x{:.2}",
            200.0 / one_s,
            one_n as f64 / one_s,
            200.0 / two_s,
            two_n as f64 / two_s,
            one_s / two_s,
            (two_n as f64 / two_s) / (one_n as f64 / one_s),
        );
    }
    if wants("allreduce") {
        let numel = adapter_numel();
        let threads = time_all_reduce(
            &DistributedConfig {
                nproc_per_node: 2,
                ..Default::default()
            },
            numel,
        );
        let processes = two_processes(numel);
        println!(
            "all-reduce of the 256M LoRA r8 gradients ({numel} f32, {:.1} MiB): 2 threads {:.2} ms, 2 processes via the orchestrator {:.2} ms",
            numel as f64 * 4.0 / (1 << 20) as f64,
            threads * 1e3,
            processes * 1e3
        );
        if let Some(r) = common::reference("allreduce") {
            let theirs = r["median_s"].as_f64().unwrap_or(f64::NAN);
            // The side-by-side line of scripts/bench_vs_pytorch.sh (PyTorch: gloo, 2 processes).
            println!(
                "allreduce_256m_lora: vlmtune {processes:.5} s, PyTorch {theirs:.5} s, time ratio vlmtune/PyTorch {:.2}",
                processes / theirs
            );
        }
    }
}
