"""PyTorch's side of `cargo bench --bench data_parallel`: the all-reduce of one optimizer step's
gradients for the SmolVLM-256M LoRA r8 (text attention) adapter between 2 CPU processes
(torch.distributed, gloo, 127.0.0.1) as DDP does it: one flat f32 buffer of the adapter's size,
summed. Writes target/bench-reference/allreduce.json.
"""

import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench_common import RESULTS, lora_256m_model

RUNS = 20


def worker(rank: int, numel: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    buffer = torch.zeros(numel)
    dist.all_reduce(buffer)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def main():
    model = lora_256m_model()
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(numel, 29611, queue), nprocs=2, join=True)
    median = queue.get()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"numel": numel, "median_s": median, "torch": torch.__version__}
    (RESULTS / "allreduce.json").write_text(json.dumps(result))
    print(f"allreduce (PyTorch gloo, 2 processes): {numel} f32 in {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
