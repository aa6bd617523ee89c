//! Choosing the compute backend at run time: `Autodiff<Flex>` on the CPU (always built) or
//! `Autodiff<Cuda>` with the `cuda` cargo feature; bf16 compute is a backend type too.
//! (Gradient checkpointing is not: it is the trainer's layer-wise recomputation,
//! `vlmtune_model::recompute`, on any backend.)

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
/// The CUDA training backend computing in bf16.
#[cfg(feature = "cuda")]
pub type CudaBf16Backend = burn::backend::Autodiff<burn_cuda::Cuda<half::bf16>>;

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

/// Runs `job` on the backend `kind` names.
pub fn dispatch<J: BackendJob>(kind: DeviceKind, job: J) -> anyhow::Result<J::Output> {
    dispatch_training(kind, false, job)
}

/// Runs `job` on the backend for `kind`, computing in bf16 when asked (bf16 needs CUDA; on
/// the CPU it falls back to f32 with a warning).
pub fn dispatch_training<J: BackendJob>(
    kind: DeviceKind,
    bf16: bool,
    job: J,
) -> anyhow::Result<J::Output> {
    match kind {
        DeviceKind::Cpu => {
            if bf16 {
                tracing::warn!("bf16 needs the CUDA backend; computing in f32 on the CPU");
            }
            Ok(job.run::<CpuBackend>(Default::default()))
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let devices = cuda_device_count()
                .map_err(|why| anyhow::anyhow!("--device cuda: {why}"))?;
            tracing::debug!(devices, "CUDA devices");
            Ok(if bf16 {
            job.run::<CudaBf16Backend>(Default::default())
        } else {
            job.run::<CudaBackend>(Default::default())
            })
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => anyhow::bail!(
            "this vlmtune was built without CUDA; rebuild with `cargo build --release --features cuda`"
        ),
    }
}
