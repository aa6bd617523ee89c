//! Data-parallel sharding of an epoch's batches, as accelerate's `BatchSamplerShard` does it
//! under the Trainer (`split_batches=False`, `even_batches=True`, `drop_last=False`): rank `k`
//! of `world` takes the batches `i` with `i % world == k`; a short last batch is completed
//! with the epoch's first examples, and more batches made from them until every rank has the
//! same count, so every rank steps the same number of times.

/// Which of the data-parallel ranks this loader feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This rank (0-based).
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
}

impl Default for Shard {
    /// A single process: every batch, the last one possibly short (accelerate does not shard
    /// a single process's dataloader).
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

impl Shard {
    /// The batches this rank takes from `batches` (an epoch's, in order, all of
    /// `batch_size` examples but possibly the last).
    pub fn batches(&self, batches: Vec<Vec<usize>>, batch_size: usize) -> Vec<Vec<usize>> {
        let (world, rank) = (self.world.max(1), self.rank);
        if world == 1 {
            return batches;
        }
        let mut out = Vec::new();
        // The first `world` batches' examples, which fill the ranks' last batches.
        let mut initial: Vec<usize> = Vec::new();
        let mut to_yield: Vec<usize> = Vec::new();
        let Some(last) = batches.last().cloned() else {
            return out;
        };
        let count = batches.len();
        for (idx, batch) in batches.into_iter().enumerate() {
            if idx < world {
                initial.extend(&batch);
            }
            let full = batch.len() == batch_size;
            if idx % world == rank {
                to_yield = batch;
            }
            // A round of `world` full batches is complete: each rank takes its own.
            if idx % world == world - 1 && full {
                out.push(std::mem::take(&mut to_yield));
            }
        }
        if to_yield.len() == batch_size {
            out.push(to_yield);
        }
        while initial.len() < world * batch_size {
            initial.extend_from_within(..);
        }
        let (mut batch, mut idx) = (last, count - 1);
        if batch.len() == batch_size {
            batch.clear();
            idx += 1;
        }
        let mut cycle = 0;
        while idx % world != 0 || !batch.is_empty() {
            let end = (cycle + batch_size - batch.len()).min(initial.len());
            batch.extend(&initial[cycle..end]);
            if idx % world == rank {
                out.push(std::mem::take(&mut batch));
            }
            batch.clear();
            cycle = end;
            idx += 1;
        }
        out
    }

    /// Batches per epoch on each rank for `batches` batches in all.
    pub fn batches_per_rank(&self, batches: usize) -> usize {
        batches.div_ceil(self.world.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// accelerate 1.15's `BatchSamplerShard` over the identity order
    /// (scripts/reference/accelerate_shards.py).
    #[test]
    fn shards_match_accelerate() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/data/accelerate_shards.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let n = case["examples"].as_u64().unwrap() as usize;
            let batch_size = case["batch_size"].as_u64().unwrap() as usize;
            let world = case["world"].as_u64().unwrap() as usize;
            let batches: Vec<Vec<usize>> = (0..n)
                .collect::<Vec<_>>()
                .chunks(batch_size)
                .map(<[usize]>::to_vec)
                .collect();
            for (rank, expected) in case["ranks"].as_array().unwrap().iter().enumerate() {
                let expected: Vec<Vec<usize>> = serde_json::from_value(expected.clone()).unwrap();
                let shard = Shard { rank, world };
                assert_eq!(
                    shard.batches(batches.clone(), batch_size),
                    expected,
                    "{n} examples, batch {batch_size}, rank {rank} of {world}"
                );
                assert_eq!(shard.batches_per_rank(batches.len()), expected.len());
            }
        }
    }

    #[test]
    fn five_batches_on_two_ranks() {
        let batches: Vec<Vec<usize>> = (0..5).map(|b| vec![2 * b, 2 * b + 1]).collect();
        let rank = |rank| Shard { rank, world: 2 }.batches(batches.clone(), 2);
        assert_eq!(rank(0), vec![vec![0, 1], vec![4, 5], vec![8, 9]]);
        assert_eq!(rank(1), vec![vec![2, 3], vec![6, 7], vec![0, 1]]);
        assert_eq!(Shard::default().batches(batches.clone(), 2), batches);
    }
}
