//! Choosing the compute backend at run time: `Autodiff<NdArray>` on the CPU (always built) or
//! `Autodiff<Cuda>` with the `cuda` cargo feature.

use burn::tensor::backend::AutodiffBackend;

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
    /// The CPU (burn-ndarray).
    #[default]
    Cpu,
    /// The first CUDA GPU (burn-cuda; needs the `cuda` feature).
    Cuda,
}

/// The CPU training backend.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray>;

/// The CUDA training backend.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Autodiff<burn_cuda::Cuda>;

/// Work that runs on any autodiff backend.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on the backend `kind` names.
pub fn dispatch<J: BackendJob>(kind: DeviceKind, job: J) -> anyhow::Result<J::Output> {
    match kind {
        DeviceKind::Cpu => Ok(job.run::<CpuBackend>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(job.run::<CudaBackend>(Default::default())),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => anyhow::bail!(
            "this vlmtune was built without CUDA; rebuild with `cargo build --release --features cuda`"
        ),
    }
}
