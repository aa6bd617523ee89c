"""Reads a vlmtune run's TensorBoard events with the `tensorboard` package (as `tensorboard
--logdir` does) and checks them against the run's metrics.jsonl: every numeric field of every
record must be a scalar under transformers' tag (`train/<key>`, `eval/<key>` for `eval_<key>`)
at the record's step, equal as float32.

    vlmtune sft --report_to tensorboard --output-dir /tmp/run ...
    .venv/bin/python scripts/reference/check_tensorboard.py /tmp/run
"""

import json
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir):
    run = Path(run_dir)
    acc = EventAccumulator(str(run / "runs"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    values = {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}
    checked = 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record["step"]
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            tag = "eval/" + key[5:] if key.startswith("eval_") else "train/" + key
            got = values.get((tag, step))
            assert got is not None, f"no {tag} at step {step} (tags: {sorted(tags)})"
            assert np.float32(got) == np.float32(value), (tag, step, got, value)
            checked += 1
    print(f"{checked} scalars under {len(tags)} tags match metrics.jsonl: {sorted(tags)}")


if __name__ == "__main__":
    main(sys.argv[1])
