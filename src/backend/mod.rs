//! Choosing the compute backend at run time: `Autodiff<Flex>` on the CPU (always built) or
//! `Autodiff<Cuda>` with the `cuda` cargo feature. Neither bf16 nor gradient checkpointing is
//! a backend: bf16 is f32 master weights with bf16 products under `vlmtune_kernels::Autocast`,
//! checkpointing the trainer's layer-wise recomputation (`vlmtune_model::recompute`), both on
//! any backend.

mod device;

use burn::tensor::backend::AutodiffBackend;

pub use device::{cuda_device_count, device_memory_reserved};

/// Where to run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (burn-flex, all cores).
    #[default]
    Cpu,
    /// The first CUDA GPU (burn-cuda; needs the `cuda` feature).
    Cuda,
}

/// The CPU training backend.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// The CUDA training backend.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn_cuda::Cuda>;

/// Sizes the CPU thread pool the kernels share: `threads`, else `RAYON_NUM_THREADS`, else
/// one thread per core. Call once, before any tensor work.
pub fn set_cpu_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        pool = pool.num_threads(n);
    }
    pool.build_global()
        .map_err(|e| anyhow::anyhow!("cannot set up {threads:?} CPU threads: {e}"))?;
    tracing::debug!(threads = rayon::current_num_threads(), "CPU threads");
    Ok(())
}

/// Work that runs on any autodiff backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the backend `kind` names. bf16 is not a backend: TRL's `bf16=True` keeps f32
/// weights and computes the products in bf16 under a [`vlmtune_kernels::Autocast`] guard
/// (the trainer's, for `bf16` in its arguments), on any backend.
pub fn dispatch<J: BackendJob>(kind: DeviceKind, job: J) -> anyhow::Result<J::Output> {
    match kind {
        DeviceKind::Cpu => Ok(job.run::<CpuBackend>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let devices =
                cuda_device_count().map_err(|why| anyhow::anyhow!("--device cuda: {why}"))?;
            tracing::debug!(devices, "CUDA devices");
            Ok(job.run::<CudaBackend>(Default::default()))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => anyhow::bail!(
            "this vlmtune was built without CUDA; rebuild with `cargo build --release --features cuda`"
        ),
    }
}
