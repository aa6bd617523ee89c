//! Batches in a seeded per-epoch order, encoded on background threads (image decoding and
//! processing, tokenisation) so the model does not wait on the CPU pipeline, and delivered
//! in order, so a run is reproducible and resumable at any batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};

use crate::error::Result;
pub use crate::shard::Shard;

/// Turns a batch's examples into a model batch (runs on worker threads).
pub trait BatchEncoder<E>: Send + Sync {
    /// The encoded batch.
    type Batch: Send;
    /// Encodes `(dataset index, example)` pairs.
    fn encode_batch(&self, examples: &[(usize, &E)]) -> Result<Self::Batch>;
}

/// The order of one epoch: a seeded permutation (or the identity), cut into batches.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        for i in (1..len).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
    }
    order
}

/// Loader settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle each epoch (seeded).
    pub shuffle: bool,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Background encoding threads (0 encodes on the calling thread).
    pub workers: usize,
    /// Batches encoded ahead of the consumer.
    pub prefetch: usize,
    /// The data-parallel rank fed (its share of every epoch's batches).
    pub shard: Shard,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            shuffle: true,
            seed: 42,
            workers: 2,
            prefetch: 4,
            shard: Shard::default(),
        }
    }
}

/// Number of batches per epoch (the last may be short).
pub fn batches_per_epoch(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size.max(1))
}

/// Iterates the batches of `epoch` (this rank's share) from batch `start` on, encoding ahead on worker threads.
pub struct EpochBatches<B> {
    receiver: crossbeam_channel::Receiver<(usize, Result<B>)>,
    buffer: BTreeMap<usize, Result<B>>,
    next: usize,
    end: usize,
    handles: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl<B> EpochBatches<B> {
    /// Index of the next batch this iterator yields.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl<B> Iterator for EpochBatches<B> {
    type Item = (usize, Result<B>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        loop {
            if let Some(batch) = self.buffer.remove(&self.next) {
                self.next += 1;
                return Some((self.next - 1, batch));
            }
            match self.receiver.recv() {
                Ok((i, b)) => {
                    self.buffer.insert(i, b);
                }
                Err(_) => return None,
            }
        }
    }
}

impl<B> Drop for EpochBatches<B> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Drain so blocked workers can finish.
        while self.receiver.try_recv().is_ok() {}
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Starts encoding the batches `start..` of `epoch`.
pub fn epoch_batches<E, Enc>(
    examples: Arc<Vec<E>>,
    encoder: Arc<Enc>,
    config: LoaderConfig,
    epoch: usize,
    start: usize,
) -> EpochBatches<Enc::Batch>
where
    E: Send + Sync + 'static,
    Enc: BatchEncoder<E> + 'static,
{
    let order = epoch_order(examples.len(), config.seed, epoch, config.shuffle);
    let batches: Vec<Vec<usize>> = order
        .chunks(config.batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let batches = config.shard.batches(batches, config.batch_size.max(1));
    let end = batches.len();
    let workers = config.workers.max(1);
    let (job_tx, job_rx) =
        crossbeam_channel::bounded::<(usize, Vec<usize>)>(config.prefetch.max(1));
    let (out_tx, out_rx) = crossbeam_channel::bounded(config.prefetch.max(1) + workers);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    {
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            for (i, b) in batches.into_iter().enumerate().skip(start) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || job_tx.send((i, b)).is_err() {
                    break;
                }
            }
        }));
    }
    for _ in 0..workers {
        let (jobs, out, examples, encoder, stop) = (
            job_rx.clone(),
            out_tx.clone(),
            examples.clone(),
            encoder.clone(),
            stop.clone(),
        );
        handles.push(std::thread::spawn(move || {
            while let Ok((i, indices)) = jobs.recv() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let items: Vec<(usize, &E)> = indices.iter().map(|&k| (k, &examples[k])).collect();
                let batch = encoder.encode_batch(&items);
                if out.send((i, batch)).is_err() {
                    break;
                }
            }
        }));
    }
    EpochBatches {
        receiver: out_rx,
        buffer: BTreeMap::new(),
        next: start.min(end),
        end,
        handles,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl BatchEncoder<u32> for Sum {
        type Batch = Vec<usize>;
        fn encode_batch(&self, examples: &[(usize, &u32)]) -> Result<Vec<usize>> {
            std::thread::sleep(std::time::Duration::from_millis((examples[0].0 % 3) as u64));
            Ok(examples.iter().map(|(i, _)| *i).collect())
        }
    }

    #[test]
    fn order_is_seeded_complete_and_resumable() {
        let data = Arc::new((0..23u32).collect::<Vec<_>>());
        let config = LoaderConfig {
            batch_size: 4,
            workers: 3,
            ..Default::default()
        };
        let all: Vec<Vec<usize>> = epoch_batches(data.clone(), Arc::new(Sum), config, 1, 0)
            .map(|(_, b)| b.unwrap())
            .collect();
        assert_eq!(all.len(), 6);
        let mut seen: Vec<usize> = all.concat();
        assert_eq!(seen.len(), 23);
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        assert_eq!(all.concat(), epoch_order(23, 42, 1, true));
        assert_ne!(epoch_order(23, 42, 1, true), epoch_order(23, 42, 2, true));
        let resumed: Vec<Vec<usize>> = epoch_batches(data, Arc::new(Sum), config, 1, 4)
            .map(|(_, b)| b.unwrap())
            .collect();
        assert_eq!(resumed, all[4..].to_vec());
    }

    #[test]
    fn dropping_early_stops_the_workers() {
        let data = Arc::new((0..1000u32).collect::<Vec<_>>());
        let mut it = epoch_batches(data, Arc::new(Sum), LoaderConfig::default(), 0, 0);
        assert!(it.next().is_some());
        drop(it);
    }
}
