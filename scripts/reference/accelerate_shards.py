"""How accelerate shards a dataloader's batches over processes (`BatchSamplerShard`, the
defaults `prepare` uses with Trainer: `split_batches=False`, `even_batches=True`,
`drop_last=False`), for vlmtune's data-parallel sharding test.

Writes tests/fixtures/data/accelerate_shards.json: for each case (examples, batch size,
processes), the example indices of every batch each process receives, over the identity order
(the shuffle is the loader's, the same on every rank).
"""

import json
from pathlib import Path

from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/data/accelerate_shards.json"

# (examples, batch size, processes): 5 full batches on 2 ranks (the case), a short last
# batch, fewer examples than ranks x batch, three ranks. (One process is not sharded: accelerate
# keeps its plain dataloader, short last batch included.)
CASES = [(10, 2, 2), (9, 2, 2), (3, 2, 4), (10, 3, 3), (7, 4, 2)]


def main():
    cases = []
    for n, batch_size, world in CASES:
        sampler = BatchSampler(SequentialSampler(range(n)), batch_size, drop_last=False)
        ranks = [
            [list(b) for b in BatchSamplerShard(sampler, world, rank, split_batches=False, even_batches=True)]
            for rank in range(world)
        ]
        cases.append({"examples": n, "batch_size": batch_size, "world": world, "ranks": ranks})
    OUT.write_text(json.dumps({"accelerate": __import__("accelerate").__version__, "cases": cases}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
