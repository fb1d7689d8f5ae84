"""Where the time of unmask's training step and sampler goes, by kind of work.

Usage::

    python benchmarks/time_profile.py [--shape NAME] [--dtype fp32|bf16] [--json OUT.json]

For each shape of ``benchmarks/speed.py`` (the two default ones unless ``--shape``) it runs on the
CPU, under ``torch.profiler``, one training step of the trainer itself
(``unmask.train.Trainer.train_step`` on random tokens, as ``speed.py`` times it: forward, backward,
clipping, fused AdamW, EMA; dropout 0.1) and one generation with the ``cached`` sampler at batch 1
and 16 with T = length steps (random N(0, 0.02) weights), and sums the operators' self time into
kinds: attention (SDPA kernels), matmul (the linear layers and output head), elementwise and
norms (adaLN modulation, rotary, GELU, layer norm, residual adds, dtype casts), random draws
(dropout masks, noise, uniform draws), loss and draws (log-sum-exp, softmax, cumulative sums of
the sampler), optimizer, and the rest (indexing, Python-side framework work). It is the profile
``benchmarks/README.md`` quotes for the targets that were missed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from speed_runner import Device
from speed_workloads import DEFAULT_SHAPES, SHAPES, build_model, build_trainer, trainer_step, unmask_sampling
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

KINDS = {
    "attention": ("scaled_dot_product", "flash_attention"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "random draws": ("random_", "bernoulli", "aten::rand", "uniform_"),
    "loss and draws": ("logsumexp", "softmax", "cumsum", "searchsorted", "aten::exp"),
    "optimizer": ("adamw", "_foreach", "linalg_vector_norm", "clip_grad"),
    "elementwise and norms": ("aten::mul", "aten::add", "aten::sub", "aten::div", "gelu", "layer_norm", "aten::cat",
                              "copy_", "_to_copy", "aten::neg", "aten::where", "aten::ge", "bitwise"),
}


def kind_of(name: str) -> str:
    for kind, patterns in KINDS.items():
        if any(pattern in name for pattern in patterns):
            return kind
    return "other"


def profile(fn: Callable[[], Any]) -> dict[str, float]:
    """Self CPU milliseconds per kind of one call of ``fn``, after one warm-up call."""
    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = {kind: 0.0 for kind in [*KINDS, "other"]}
    for event in prof.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total / 1000
    return totals


def profile_shape(shape_name: str, dtype: str) -> dict[str, dict[str, float]]:
    """Milliseconds per kind of the trainer's step and of sampling at batch 1 and 16, for one shape."""
    shape, dev = SHAPES[shape_name], Device("cpu")
    profiles = {}
    with tempfile.TemporaryDirectory(prefix="unmask-profile-") as folder:
        trainer = build_trainer(shape, Path(folder), objective="mdlm", precision=dtype, device="cpu")
        try:
            profiles["train step"] = profile(trainer_step(trainer, shape))
        finally:
            trainer.close()
    model = build_model("unmask", shape, dev.device).eval()
    for batch in (1, 16):
        run_steps = unmask_sampling(model, shape, dev, dtype, batch)
        profiles[f"sample b{batch} T=L"] = profile(functools.partial(run_steps, shape.length))
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help=f"one shape (default: {', '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)

    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# {date}  cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}")
    kinds = [*KINDS, "other"]
    print(f"{'shape':<16} {'workload':<16} {'total ms':>9}  " + "  ".join(f"{k:>12.12}" for k in kinds))
    rows = []
    for shape_name in [args.shape] if args.shape else DEFAULT_SHAPES:
        for name, totals in profile_shape(shape_name, args.dtype).items():
            total = sum(totals.values())
            shares = {kind: 100 * value / total for kind, value in totals.items()}
            print(f"{shape_name:<16} {name:<16} {total:>9.0f}  " + "  ".join(f"{shares[k]:>11.1f}%" for k in kinds),
                  flush=True)
            rows.append({"shape": shape_name, "workload": name, "dtype": args.dtype, "date": date,
                         "total_ms": total, "ms": totals})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
