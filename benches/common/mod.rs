//! Shared by the benchmarks: the PyTorch reference figures written by
//! `scripts/reference/bench_*.py`, peak memory, the side-by-side report, the one-tile inputs
//! the reference scripts use too, and running each mode in its own process.
#![allow(dead_code)]

vlmtune::use_retaining_allocator!(counting);

use std::path::PathBuf;

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The PyTorch figures of benchmark `name`, if its script has been run.
pub fn reference(name: &str) -> Option<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-reference")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Median of `runs` timings of `f` after one warm-up, in seconds.
pub fn median_secs(runs: usize, f: &mut impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Prints vlmtune's figure next to PyTorch's (from `reference(name)[key]`) with the ratio.
pub fn report(name: &str, label: &str, ours_s: f64, ours_peak_mib: f64) {
    println!(
        "{label}: vlmtune {:.3} s, peak RSS {:.0} MiB",
        ours_s, ours_peak_mib
    );
    match reference(name) {
        Some(r) => {
            let theirs = r["median_s"].as_f64().unwrap_or(f64::NAN);
            let peak = r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{}",
                ratio_line(name, (ours_s, ours_peak_mib), (theirs, peak))
            );
        }
        None => println!(
            "{label}: no PyTorch figure; run `python scripts/reference/bench_{name}.py` first"
        ),
    }
}

// Each benchmark uses some of these.
#[allow(unused_imports)]
pub use vlmtune::bench_inputs::{
    lora_256m, one_tile_pixels, one_tile_prompt, test_frame, tiled_pixels, tiled_prompt,
};

/// The `--mode` argument, when this process was started to run one mode.
pub fn mode_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--mode")?;
    args.get(i + 1).cloned()
}

/// Prints a mode's figures as the JSON line [`run_mode_in_subprocess`] reads.
pub fn print_mode_result(mode: &str, median_s: f64) {
    println!(
        "{{\"mode\": \"{mode}\", \"median_s\": {median_s:.3}, \"peak_rss_mib\": {:.0}, \"peak_heap_mib\": {:.0}}}",
        peak_rss_mib(),
        peak_heap_mib()
    );
}

/// The most heap that was live at once in this process, in MiB (what the allocator was asked
/// for; peak RSS adds what it kept around that).
pub fn peak_heap_mib() -> f64 {
    vlmtune::heap::peak_bytes() as f64 / (1024.0 * 1024.0)
}

/// One mode's figures, from its own process.
pub struct ModeFigures {
    /// Median seconds of a step.
    pub secs: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// Peak live heap, MiB.
    pub peak_heap_mib: f64,
}

impl ModeFigures {
    /// `vlmtune X s, peak RSS Y MiB (live heap Z)`.
    pub fn summary(&self) -> String {
        format!(
            "vlmtune {:.2} s, peak RSS {:.0} MiB (live heap {:.0})",
            self.secs, self.peak_rss_mib, self.peak_heap_mib
        )
    }

    /// Seconds and peak RSS, as [`ratio_suffix`] and [`ratio_line`] take them.
    pub fn time_and_rss(&self) -> (f64, f64) {
        (self.secs, self.peak_rss_mib)
    }
}

/// Runs this benchmark binary again with `--mode <mode>` (its own process, so the peak
/// memory is the mode's own).
pub fn run_mode_in_subprocess(mode: &str) -> ModeFigures {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(&exe)
        .args(["--mode", mode])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let ours: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|_| panic!("{line}\n{}", String::from_utf8_lossy(&out.stderr)));
    ModeFigures {
        secs: ours["median_s"].as_f64().unwrap(),
        peak_rss_mib: ours["peak_rss_mib"].as_f64().unwrap(),
        peak_heap_mib: ours["peak_heap_mib"].as_f64().unwrap(),
    }
}

/// The side-by-side line `scripts/bench_vs_pytorch.sh` collects:
/// `NAME: vlmtune X s, PyTorch Y s, time ratio vlmtune/PyTorch R, memory ratio M`.
pub fn ratio_line(name: &str, ours: (f64, f64), theirs: (f64, f64)) -> String {
    format!(
        "{name}: vlmtune {:.3} s, PyTorch {:.3} s, time ratio vlmtune/PyTorch {:.2}, memory ratio {:.2}",
        ours.0,
        theirs.0,
        ours.0 / theirs.0,
        ours.1 / theirs.1
    )
}

/// Whether the benchmark was started with `--summary` (the side-by-side figures only, no
/// criterion samples).
pub fn summary_only() -> bool {
    std::env::args().any(|a| a == "--summary")
}

/// The positional arguments (modes to run), without flags such as `--summary` or `--bench`.
pub fn positional_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

/// `"; <label> 1.23 s, 456 MiB -> time x.., memory x.."` for a PyTorch figure.
pub fn ratio_suffix(label: &str, ours: (f64, f64), theirs: (f64, f64)) -> String {
    format!(
        "; {label} {:.2} s, {:.0} MiB -> time x{:.2}, memory x{:.2}",
        theirs.0,
        theirs.1,
        ours.0 / theirs.0,
        ours.1 / theirs.1
    )
}
