"""Training throughput of a preset through the real training loop (EMA on, checkpoints off).

    python benchmarks/train_throughput.py [--preset tiny] [--steps 30 | --seconds S] [--precision fp32 bf16]
                                          [--device cpu|cuda] [--random-tokens] [--json OUT] [key=value ...]

Times whole optimizer steps (data, forward, backward, clipping, AdamW, EMA) after a few warm-up
steps and reports tokens/s (all timed tokens over all timed seconds) and peak memory (resident;
on CUDA also torch's peak allocation), for each precision side by side in one run (a CPU here is
noisy: compare the ratio, not the figures). Each measurement runs in a fresh process, so its peak
memory is its own.

``--random-tokens`` trains the preset's model on batches of uniformly random ids drawn on the
device (no data loading) instead of its corpus; the trainer opens a small generated corpus with
the preset's tokenizer only to start, so nothing is downloaded (``benchmarks/gpu.sh`` runs
owt-small's model this way). ``--seconds`` trains for that long after the warm-up instead of
``--steps`` steps. ``key=value`` overrides the preset (e.g. a smaller model for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import torch
from generated_corpus import write_corpus

from unmask.config import apply_overrides, load_preset
from unmask.data import batch_iterator
from unmask.runtime import device_name
from unmask.train import Trainer


def random_batches(trainer: Trainer, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Global batches of ids drawn uniformly from every id but MASK, on the trainer's device."""
    config, device, mask_id = trainer.config, trainer.device, trainer.mask_id
    shape = (config.train.global_batch, config.data.length)
    generator = torch.Generator(device).manual_seed(seed)
    while True:
        ids = torch.randint(0, trainer.tokenizer.vocab_size - 1, shape, generator=generator, device=device)
        ids += ids >= mask_id  # skip MASK
        yield {"input_ids": ids, "loss_mask": torch.ones_like(ids, dtype=torch.bool)}


def corpus_batches(trainer: Trainer) -> Iterator[dict[str, torch.Tensor]]:
    """The preset's own training batches, moved to the trainer's device."""
    for batch in batch_iterator(trainer.train_set, batch_size=trainer.config.train.global_batch, seed=0):
        yield {k: v.to(trainer.device) for k, v in batch.items()}


def measure(preset: str, precision: str, device: str, steps: int, seconds: float | None, warmup: int,
            random_tokens: bool, overrides: list[str]) -> dict:
    config = load_preset(preset)
    apply_overrides(config, [f"train.precision={precision}", f"train.device={device}", "train.tensorboard=false",
                             *overrides])
    with tempfile.TemporaryDirectory() as folder:
        if random_tokens:
            corpus = write_corpus(Path(folder) / "corpus.txt", config.data.length)
            apply_overrides(config, [f"data.source={corpus}", f"data.cache_dir={Path(folder) / 'cache'}"])
        trainer = Trainer(config, Path(folder) / "run", progress=False)
        try:
            batches = random_batches(trainer) if random_tokens else corpus_batches(trainer)
            trainer.model.train()
            for _ in range(warmup):
                trainer.train_step(next(batches))
            times: list[float] = []
            while (sum(times) < seconds) if seconds is not None else (len(times) < steps):
                started = time.perf_counter()
                trainer.train_step(next(batches))  # returns the loss as a float: the step has finished
                times.append(time.perf_counter() - started)
        finally:
            trainer.close()
    tokens = config.train.global_batch * config.data.length
    on_cuda = trainer.device.type == "cuda"
    return {
        "preset": preset,
        "precision": precision,
        "device": trainer.device.type,
        "device_name": device_name(trainer.device),
        "data": "random tokens" if random_tokens else config.data.source,
        "batch": config.train.global_batch,
        "micro_batch": config.train.micro_batch,
        "length": config.data.length,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "steps": len(times),
        "seconds": sum(times),
        "seconds_per_step": statistics.median(times),
        "tokens_per_s": tokens * len(times) / sum(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if on_cuda else None,
        "peak_cuda_reserved_mib": torch.cuda.max_memory_reserved(trainer.device) / 2**20 if on_cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (unless --seconds)")
    parser.add_argument("--seconds", type=float, help="train for this many seconds after the warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--random-tokens", action="store_true",
                        help="train on random ids drawn on the device instead of the preset's corpus")
    parser.add_argument("--json", default="benchmarks/results/train-throughput.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.length=256")
    args = parser.parse_args()
    rows = []
    for precision in args.precision:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(measure, args.preset, precision, args.device, args.steps, args.seconds,
                                    args.warmup, args.random_tokens, args.overrides).result())
    print(f"{'preset':<10}{'precision':<10}{'batch x len':>13}{'steps':>7}{'s/step':>9}{'tokens/s':>11}"
          f"{'peak RSS MiB':>14}{'peak CUDA MiB':>15}")
    for r in rows:
        cuda = "-" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:,.0f}"
        print(f"{r['preset']:<10}{r['precision']:<10}{r['batch']:>6} x {r['length']:<5}{r['steps']:>7}"
              f"{r['seconds_per_step']:>9.3f}{r['tokens_per_s']:>11,.0f}{r['peak_rss_mib']:>14,.0f}{cuda:>15}")
    meta = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": device_name("cpu"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
