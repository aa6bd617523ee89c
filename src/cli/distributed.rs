//! torchrun's flags for data-parallel `sft` / `dpo` (over `[distributed]`), and
//! `vlmtune orchestrator`.

use vlmtune::train::distributed::DistributedConfig;

/// Data parallelism: ranks on this machine, and machines.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DistributedArgs {
    /// Ranks (worker threads) on this machine: one per GPU with `--device cuda` (local rank
    /// k uses GPU k); on the CPU they share the cores.
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// Machines taking part.
    #[arg(long)]
    pub nnodes: Option<usize>,
    /// This machine's place among them (0: the main node, which writes the files and starts
    /// the orchestrator unless one listens on --master-addr).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// host:port of the orchestrator (`vlmtune orchestrator --port P`, or node 0's).
    #[arg(long)]
    pub master_addr: Option<String>,
}

impl DistributedArgs {
    /// Applies the flags given over the config's `[distributed]`.
    pub fn apply(&self, config: &mut DistributedConfig) {
        if let Some(n) = self.nproc_per_node {
            config.nproc_per_node = n;
        }
        if let Some(n) = self.nnodes {
            config.nnodes = n;
        }
        if let Some(n) = self.node_rank {
            config.node_rank = n;
        }
        if let Some(a) = &self.master_addr {
            config.master_addr = Some(a.clone());
        }
    }
}

/// Arguments of `vlmtune orchestrator`.
#[derive(clap::Args, Debug)]
pub struct OrchestratorArgs {
    /// Port to listen on (all interfaces); the nodes' `--master-addr` is this machine:PORT.
    #[arg(long, default_value_t = 29500)]
    pub port: u16,
}

impl OrchestratorArgs {
    /// Serves until SIGINT / SIGTERM.
    pub fn run(&self) -> anyhow::Result<()> {
        eprintln!(
            "orchestrator listening on port {} (Ctrl-C to stop)",
            self.port
        );
        Ok(vlmtune::train::distributed::run_orchestrator(self.port)?)
    }
}
