//! Shared by the benchmarks: the PyTorch reference figures written by
//! `scripts/reference/bench_*.py`, peak memory, and the side-by-side report.
#![allow(dead_code)]

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
                "{label}: PyTorch {:.3} s, peak RSS {:.0} MiB -> time ratio vlmtune/PyTorch {:.2}, memory ratio {:.2}",
                theirs,
                peak,
                ours_s / theirs,
                ours_peak_mib / peak
            );
        }
        None => println!(
            "{label}: no PyTorch figure; run `python scripts/reference/bench_{name}.py` first"
        ),
    }
}
