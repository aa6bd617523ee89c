//! [`Collective`] on burn-collective: one thread per rank in this process (each holding a
//! burn-collective peer), and through its orchestrator, ranks on other machines.
//!
//! burn-collective has no timeouts and no way to call off a pending all-reduce: a rank that
//! fails or dies leaves the others waiting for ever. Each rank's peer therefore lives on a
//! thread of its own; the rank waits for the answer in short slices, checking whether a rank
//! of this process failed (it then stops with that rank's error) and, past `timeout_s`,
//! stops naming the ranks that did not arrive.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::tensor::backend::{Backend, Device, DeviceId};
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};

use super::{Collective, DistributedConfig, SingleProcess};
use crate::error::{Result, TrainError};

/// burn-collective keeps one group per process and backend type (tracel-ai/burn#3449): a
/// second [`launch`] waits until the first has ended.
static GROUP_SLOT: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

struct GroupSlot;

impl GroupSlot {
    fn acquire() -> Self {
        let (busy, freed) = &GROUP_SLOT;
        let mut busy = busy.lock().unwrap_or_else(PoisonError::into_inner);
        while *busy {
            busy = freed.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        *busy = true;
        Self
    }
}

impl Drop for GroupSlot {
    fn drop(&mut self) {
        *GROUP_SLOT.0.lock().unwrap_or_else(PoisonError::into_inner) = false;
        GROUP_SLOT.1.notify_all();
    }
}

/// What the ranks of this process know of each other.
struct Shared {
    /// The first rank to fail, and its error.
    failure: Mutex<Option<(usize, String)>>,
    /// All-reduces each local rank has started.
    calls: Vec<AtomicU64>,
    /// The peer threads, which leave the group after their rank is done.
    peers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Shared {
    fn failure(&self) -> Option<(usize, String)> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

type Reply<T> = mpsc::Sender<std::result::Result<T, String>>;

/// An all-reduce for the peer thread.
struct Request<B: Backend> {
    tensor: B::FloatTensorPrimitive,
    reply: Reply<B::FloatTensorPrimitive>,
}

/// A rank of a data-parallel group on burn-collective (made by [`launch`]).
pub struct BurnCollective<B: Backend> {
    rank: usize,
    local_rank: usize,
    config: DistributedConfig,
    requests: mpsc::Sender<Request<B>>,
    shared: Arc<Shared>,
}

impl<B: Backend> BurnCollective<B> {
    /// Registers local rank `local_rank` (waits until every rank of the group has).
    fn join(
        local_rank: usize,
        config: &DistributedConfig,
        collective: &CollectiveConfig,
        device: B::Device,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let (requests, inbox) = mpsc::channel::<Request<B>>();
        let (registered, on_registered) = mpsc::channel();
        let peer = PeerId::from(local_rank);
        let collective = collective.clone();
        let handle = std::thread::Builder::new()
            .name(format!("collective-{local_rank}"))
            .spawn(move || serve_peer::<B>(peer, device, collective, registered, inbox))
            .map_err(|e| {
                TrainError::Distributed(format!("cannot start a collective thread: {e}"))
            })?;
        shared
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        let me = Self {
            rank: config.rank(local_rank),
            local_rank,
            config: config.clone(),
            requests,
            shared,
        };
        me.wait(on_registered, "joining the group", 0)?;
        Ok(me)
    }

    fn error(&self, message: String) -> TrainError {
        TrainError::Distributed(format!("rank {}: {message}", self.rank))
    }

    /// Waits for the peer thread's answer to call number `call` (1-based; 0: joining).
    fn wait<T>(
        &self,
        answer: mpsc::Receiver<std::result::Result<T, String>>,
        what: &str,
        call: u64,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            match answer.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => return Err(self.error(format!("{what}: {e}"))),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.error(format!("{what}: the collective stopped")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some((rank, message)) = self.shared.failure() {
                        if rank != self.rank {
                            return Err(TrainError::Distributed(format!(
                                "rank {rank} failed: {message}"
                            )));
                        }
                    }
                    if start.elapsed() >= self.config.timeout() {
                        return Err(self.timeout_error(what, call));
                    }
                }
            }
        }
    }

    fn timeout_error(&self, what: &str, call: u64) -> TrainError {
        let late: Vec<String> = self
            .shared
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.load(Ordering::SeqCst) < call)
            .map(|(local, _)| self.config.rank(local).to_string())
            .collect();
        let who = if !late.is_empty() {
            format!(
                "rank(s) {} of this machine did not reach it",
                late.join(", ")
            )
        } else if self.config.nnodes > 1 {
            let others: Vec<String> = (0..self.config.nnodes)
                .filter(|n| *n != self.config.node_rank)
                .map(|n| {
                    let first = n * self.config.nproc_per_node;
                    format!("{first}..={}", first + self.config.nproc_per_node - 1)
                })
                .collect();
            format!(
                "the ranks of the other machines ({}) did not answer (one failed, stopped or cannot be reached)",
                others.join(", ")
            )
        } else {
            "the collective did not answer".to_string()
        };
        self.error(format!(
            "{what} timed out after {} s (distributed.timeout_s): {who}",
            self.config.timeout_s
        ))
    }
}

/// The peer thread: registers, then runs the rank's all-reduces until the rank drops its
/// [`BurnCollective`], then leaves the group.
fn serve_peer<B: Backend>(
    peer: PeerId,
    device: B::Device,
    config: CollectiveConfig,
    registered: Reply<()>,
    inbox: mpsc::Receiver<Request<B>>,
) {
    let result = burn_collective::register::<B>(peer, device, config).map_err(|e| format!("{e:?}"));
    let ok = result.is_ok();
    let _ = registered.send(result);
    if !ok {
        return;
    }
    while let Ok(Request { tensor, reply }) = inbox.recv() {
        let sum = burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum)
            .map_err(|e| format!("{e:?}"));
        let _ = reply.send(sum);
    }
    if let Err(e) = burn_collective::finish_collective::<B>(peer) {
        tracing::debug!(?e, "leaving the collective group");
    }
}

impl<B: Backend> Collective<B> for BurnCollective<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.config.world()
    }

    fn local_ranks(&self) -> usize {
        self.config.nproc_per_node
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let call = self.shared.calls[self.local_rank].fetch_add(1, Ordering::SeqCst) + 1;
        let (reply, answer) = mpsc::channel();
        let tensor = tensor.into_primitive().tensor();
        self.requests
            .send(Request { tensor, reply })
            .map_err(|_| self.error("the collective thread stopped".into()))?;
        let sum = self.wait(answer, &format!("all-reduce {call}"), call)?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(sum)))
    }

    fn abort(&self, error: &str) {
        let mut failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert_with(|| (self.rank, error.to_string()));
    }
}

/// The device of local rank `local_rank` when rank 0 has `first`: the `local_rank`-th after
/// it (GPU `k` for rank `k` from GPU 0), round robin where there are fewer devices than
/// ranks (as on the CPU's one device).
pub fn device_for<B: Backend>(first: &B::Device, local_rank: usize) -> B::Device {
    let id = first.to_id();
    let count = B::device_count(id.type_id).max(1);
    let index = (usize::from(id.index_id) + local_rank) % count;
    if index == usize::from(id.index_id) {
        return first.clone();
    }
    B::Device::from_id(DeviceId::new(id.type_id, index as u16))
}

/// Runs `work` on every rank of this machine (`nproc_per_node` threads, each with its
/// [`Collective`] and device: `device` for local rank 0, the next ones for the others, see
/// [`device_for`]) and returns local rank 0's result. One rank (no `[distributed]`) runs on
/// the calling thread with [`SingleProcess`]. When a rank fails,
/// the others stop at their next all-reduce and the failing rank's error is returned.
pub fn launch<B, T, E, F>(
    config: &DistributedConfig,
    device: B::Device,
    work: F,
) -> std::result::Result<T, E>
where
    B: Backend,
    T: Send,
    E: From<TrainError> + Display + Send,
    F: Fn(Arc<dyn Collective<B>>, B::Device) -> std::result::Result<T, E> + Sync,
{
    config.validate()?;
    if config.world() == 1 {
        return work(Arc::new(SingleProcess), device);
    }
    let _slot = GroupSlot::acquire();
    burn_collective::reset_collective::<B>();
    let collective = collective_config(config)?;
    if config.nnodes > 1 && config.node_rank == 0 {
        if let Some((_, port)) = config.master()? {
            start_orchestrator_unless_running(port);
        }
    }
    let shared = Arc::new(Shared {
        failure: Mutex::new(None),
        calls: (0..config.nproc_per_node)
            .map(|_| AtomicU64::new(0))
            .collect(),
        peers: Mutex::new(Vec::new()),
    });
    tracing::info!(
        world = config.world(),
        nproc_per_node = config.nproc_per_node,
        nnodes = config.nnodes,
        node_rank = config.node_rank,
        "data-parallel training"
    );
    let results: Vec<std::result::Result<T, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.nproc_per_node)
            .map(|local_rank| {
                let (work, shared, collective) = (&work, shared.clone(), &collective);
                let device = device_for::<B>(&device, local_rank);
                std::thread::Builder::new()
                    .name(format!("rank-{}", config.rank(local_rank)))
                    .spawn_scoped(scope, move || {
                        run_rank::<B, T, E, F>(local_rank, device, config, collective, shared, work)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(TrainError::Distributed("a rank thread panicked".into()).into())
                }),
                Err(e) => Err(TrainError::Distributed(format!("cannot start a rank: {e}")).into()),
            })
            .collect()
    });
    let first_failure = shared.failure().map(|(rank, _)| rank);
    // The peers leave the group before the next one forms: a late `finish` from this group
    // would otherwise unregister a peer of the next (burn-collective matches peers by id
    // only). A peer still waiting on a rank that failed is released by the reset.
    if !peers_left(&shared, Duration::from_secs(2)) {
        burn_collective::reset_collective::<B>();
        if !peers_left(&shared, Duration::from_secs(5)) {
            tracing::warn!("a collective peer thread did not stop");
        }
    }
    let mut first_error = None;
    let mut rank0 = None;
    for (local_rank, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) if local_rank == 0 => rank0 = Some(value),
            Ok(_) => {}
            // The failing rank's own error, not the others' "rank k failed".
            Err(e) if first_failure == Some(config.rank(local_rank)) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (first_error, rank0) {
        (Some(e), _) => Err(e),
        (None, Some(value)) => Ok(value),
        (None, None) => Err(TrainError::Distributed("rank 0 returned nothing".into()).into()),
    }
}

/// Waits up to `patience` for every peer thread to end; whether they all did.
fn peers_left(shared: &Shared, patience: Duration) -> bool {
    let start = Instant::now();
    loop {
        let peers = shared.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if peers.iter().all(|p| p.is_finished()) {
            return true;
        }
        drop(peers);
        if start.elapsed() >= patience {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_rank<B, T, E, F>(
    local_rank: usize,
    device: B::Device,
    config: &DistributedConfig,
    collective: &CollectiveConfig,
    shared: Arc<Shared>,
    work: &F,
) -> std::result::Result<T, E>
where
    B: Backend,
    E: From<TrainError> + Display,
    F: Fn(Arc<dyn Collective<B>>, B::Device) -> std::result::Result<T, E>,
{
    let rank = config.rank(local_rank);
    let joined = BurnCollective::<B>::join(
        local_rank,
        config,
        collective,
        device.clone(),
        shared.clone(),
    );
    let member: Arc<BurnCollective<B>> = match joined {
        Ok(c) => Arc::new(c),
        Err(e) => {
            let mut failure = shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            failure.get_or_insert_with(|| (rank, e.to_string()));
            return Err(e.into());
        }
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        work(member.clone(), device)
    }));
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = crate::oom_retry::panic_message(&*panic);
            Err(TrainError::Distributed(format!("rank {rank} panicked: {message}")).into())
        }
    };
    if let Err(e) = &result {
        member.abort(&e.to_string());
    }
    result
}

/// burn-collective's settings for `config`: local sums over a binary tree; across machines
/// (each node serving its tensors on `master port + 1 + node_rank`) a binary tree too, which,
/// unlike burn's default ring, takes tensors shorter than the number of nodes.
fn collective_config(config: &DistributedConfig) -> Result<CollectiveConfig> {
    let mut collective = CollectiveConfig::default()
        .with_num_devices(config.nproc_per_node)
        .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
    if let Some((host, port)) = config.master()? {
        let data_port = port + 1 + config.node_rank as u16;
        let own = own_address_towards(&host, port)?;
        let address = |s: String| {
            s.parse::<burn_communication::Address>()
                .map_err(|e| TrainError::Config {
                    field: "distributed.master_addr".into(),
                    message: format!("{s}: {e}"),
                })
        };
        collective = collective
            .with_num_nodes(config.nnodes as u32)
            .with_global_address(address(format!("ws://{host}:{port}"))?)
            .with_node_address(address(format!("ws://{own}:{data_port}"))?)
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
        tracing::info!(orchestrator = %format!("{host}:{port}"), node = %format!("{own}:{data_port}"), "multi-node");
    }
    Ok(collective)
}

/// This machine's address as the orchestrator's host reaches it (the interface a UDP socket
/// towards it picks; nothing is sent).
fn own_address_towards(host: &str, port: u16) -> Result<String> {
    let fail = |e: std::io::Error| TrainError::Config {
        field: "distributed.master_addr".into(),
        message: format!("cannot find this machine's address towards {host}:{port}: {e}"),
    };
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(fail)?;
    socket.connect((host, port)).map_err(fail)?;
    Ok(match socket.local_addr().map_err(fail)?.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    })
}

fn start_orchestrator_unless_running(port: u16) {
    match port_free(port) {
        Ok(()) => {
            let started = std::thread::Builder::new()
                .name("orchestrator".into())
                .spawn(move || {
                    if let Err(e) = run_orchestrator(port) {
                        tracing::error!("orchestrator: {e}");
                    }
                });
            match started {
                Ok(_) => tracing::info!(port, "orchestrator started by node 0"),
                Err(e) => tracing::error!("cannot start the orchestrator: {e}"),
            }
        }
        Err(_) => tracing::info!(port, "an orchestrator already listens on the master port"),
    }
}

/// Serves burn-collective's orchestrator on `port` (all interfaces) until SIGINT / SIGTERM:
/// it introduces the nodes to each other when they register; the tensors go between them.
pub fn run_orchestrator(port: u16) -> Result<()> {
    // burn's orchestrator only logs a port it cannot bind.
    port_free(port)
        .map_err(|e| TrainError::Distributed(format!("orchestrator port {port}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Distributed(format!("cannot start the orchestrator: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

fn port_free(port: u16) -> std::io::Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map(drop)
}
