//! Data parallelism as accelerate + TRL define it: every rank holds the whole model, takes its
//! share of each epoch's batches ([`vlmtune_data::Shard`]), and the ranks sum their gradients
//! once per optimizer step, so clipping and AdamW run identically everywhere and the replicas
//! stay equal. The trainer talks to the other ranks through a [`Collective`]: [`SingleProcess`]
//! (one rank) or [`BurnCollective`] (burn-collective: worker threads of one process and, through
//! its orchestrator, several machines).

mod group;
pub(crate) mod step;

use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use group::{launch, run_orchestrator, BurnCollective};

use crate::error::{Result, TrainError};

/// `[distributed]` (torchrun's names): how many ranks, on how many machines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributedConfig {
    /// Worker threads (ranks) on this machine: one per GPU with `--device cuda` (local rank
    /// `k` uses GPU `k`); on the CPU they share the cores.
    pub nproc_per_node: usize,
    /// Machines taking part.
    pub nnodes: usize,
    /// This machine's place among them (0 = the main node: it writes the files, and starts
    /// the orchestrator unless one already listens on `master_addr`).
    pub node_rank: usize,
    /// `host:port` of the orchestrator (`vlmtune orchestrator --port P`), needed with
    /// `nnodes > 1`. Node `n` serves its tensors on port `port + 1 + n`.
    pub master_addr: Option<String>,
    /// Seconds a rank waits for the others at a step before it gives up, naming the ranks
    /// that did not arrive (torch's default process-group timeout: 30 minutes).
    pub timeout_s: u64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            nproc_per_node: 1,
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            timeout_s: 1800,
        }
    }
}

impl DistributedConfig {
    /// Ranks in all.
    pub fn world(&self) -> usize {
        self.nproc_per_node * self.nnodes
    }

    /// The global rank of local rank `local_rank` on this node.
    pub fn rank(&self, local_rank: usize) -> usize {
        self.node_rank * self.nproc_per_node + local_rank
    }

    /// How long a rank waits for the others.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// The orchestrator's host and port (`None` on a single machine).
    pub fn master(&self) -> Result<Option<(String, u16)>> {
        if self.nnodes <= 1 {
            return Ok(None);
        }
        let bad = |message: String| TrainError::Config {
            field: "distributed.master_addr".into(),
            message,
        };
        let addr = self.master_addr.as_deref().ok_or_else(|| {
            bad(format!(
                "nnodes = {} needs the orchestrator's host:port",
                self.nnodes
            ))
        })?;
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("`{addr}` is not host:port")))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| bad(format!("`{addr}`: the port must be a number below 65536")))?;
        if host.is_empty() {
            return Err(bad(format!("`{addr}` has no host")));
        }
        Ok(Some((host.to_string(), port)))
    }

    /// Checks the settings (each error names its field).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(TrainError::Config {
                field: format!("distributed.{field}"),
                message,
            })
        };
        if self.nproc_per_node == 0 {
            return bad("nproc_per_node", "must be at least 1".into());
        }
        if self.nnodes == 0 {
            return bad("nnodes", "must be at least 1".into());
        }
        if self.node_rank >= self.nnodes {
            return bad(
                "node_rank",
                format!("{} is not below nnodes = {}", self.node_rank, self.nnodes),
            );
        }
        if self.timeout_s == 0 {
            return bad("timeout_s", "must be at least 1 second".into());
        }
        if let Some((_, port)) = self.master()? {
            if usize::from(port) + self.nnodes > usize::from(u16::MAX) {
                return bad(
                    "master_addr",
                    format!("port {port} leaves no room for the nodes' ports above it"),
                );
            }
        }
        Ok(())
    }
}

/// The other ranks, as the trainer needs them.
pub trait Collective<B: Backend>: Send + Sync {
    /// This rank (0 is the main one: it logs, evaluates and writes the files).
    fn rank(&self) -> usize;
    /// Ranks in all.
    fn world(&self) -> usize;
    /// The sum of `tensor` over the ranks; every rank gets it. Every rank must call it the
    /// same number of times with tensors of the same length.
    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>>;
    /// Ranks of this machine (sharing its memory; 1 by default).
    fn local_ranks(&self) -> usize {
        1
    }
    /// Returns once every rank has called it.
    fn barrier(&self, device: &B::Device) -> Result<()> {
        self.all_reduce_sum(Tensor::zeros([1], device)).map(|_| ())
    }
    /// Tells the other ranks this one failed with `error`, so they stop instead of waiting.
    fn abort(&self, _error: &str) {}
}

/// One rank: the sum over ranks is the tensor itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl<B: Backend> Collective<B> for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        Ok(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_name_their_field() {
        let config = DistributedConfig {
            nnodes: 2,
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("distributed.master_addr"), "{err}");
        let config = DistributedConfig {
            nnodes: 2,
            node_rank: 2,
            master_addr: Some("10.0.0.1:29500".into()),
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("distributed.node_rank"), "{err}");
        let config = DistributedConfig {
            node_rank: 1,
            ..config
        };
        config.validate().unwrap();
        assert_eq!(config.master().unwrap(), Some(("10.0.0.1".into(), 29500)));
        assert_eq!((config.world(), config.rank(0)), (2, 1));
        let config = DistributedConfig {
            master_addr: Some("10.0.0.1".into()),
            ..config
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("host:port"));
    }
}
