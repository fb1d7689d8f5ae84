"""CPU training throughput of a preset through the real training loop (data, EMA, checkpoints off).

    python benchmarks/train_throughput.py [--preset tiny] [--steps 30] [--precision fp32 bf16] [--json OUT]

Times whole optimizer steps (data loading, forward, backward, clipping, AdamW, EMA) after a few
warm-up steps and reports tokens/s and peak resident memory, for each precision side by side in
one run (this machine is noisy: compare the ratio, not the figures). Each measurement runs in a
fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date

import torch

from unmask.config import apply_overrides, load_preset
from unmask.data import batch_iterator
from unmask.train import Trainer


def measure(preset: str, precision: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    config = load_preset(preset)
    apply_overrides(config, [f"train.precision={precision}", "train.tensorboard=false", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, run_dir, progress=False)
        try:
            batches = batch_iterator(trainer.train_set, batch_size=config.train.global_batch, seed=0)
            trainer.model.train()
            times = []
            for i in range(warmup + steps):
                started = time.perf_counter()
                batch = {k: v.to(trainer.device) for k, v in next(batches).items()}
                trainer.train_step(batch)
                if i >= warmup:
                    times.append(time.perf_counter() - started)
        finally:
            trainer.close()
    seconds = statistics.median(times)
    tokens = config.train.global_batch * config.data.length
    return {
        "preset": preset,
        "precision": precision,
        "batch": config.train.global_batch,
        "length": config.data.length,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "seconds_per_step": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--json", default="benchmarks/results/train-throughput.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.length=256")
    args = parser.parse_args()
    rows = []
    for precision in args.precision:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(measure, args.preset, precision, args.steps, args.warmup, args.overrides).result())
    print(f"{'preset':<8}{'precision':<10}{'batch x len':>12}{'s/step':>9}{'tokens/s':>10}{'peak RSS MiB':>14}")
    for r in rows:
        print(
            f"{r['preset']:<8}{r['precision']:<10}{r['batch']:>6} x {r['length']:<4}{r['seconds_per_step']:>9.3f}"
            f"{r['tokens_per_s']:>10,.0f}{r['peak_rss_mib']:>14,.0f}"
        )
    meta = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
