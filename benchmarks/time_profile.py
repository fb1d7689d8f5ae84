"""Where the time of unmask's training step and sampler goes, by kind of work.

Usage::

    python benchmarks/time_profile.py [--shape NAME] [--dtype fp32|bf16] [--device cpu|cuda] [--steps T]
                                      [--static-shapes] [--json OUT.json]

For each shape of ``benchmarks/speed.py`` (the two default ones unless ``--shape``) it runs, under
``torch.profiler``, one training step of the trainer itself (``unmask.train.Trainer.train_step`` on
random tokens, as ``speed.py`` times it: forward, backward, clipping, fused AdamW, EMA; dropout 0.1)
and one generation with the ``cached`` sampler at batch 1 and 16 with T = length steps (or
``--steps``; random N(0, 0.02) weights), with ``--static-shapes`` also through the static-shape
path, and sums the operators' self time (on CUDA: the time of the kernels each operator launched)
into kinds: attention (SDPA kernels), matmul (the linear layers and output head), elementwise and
norms (adaLN modulation, rotary, GELU, layer norm, residual adds, dtype casts), random draws
(dropout masks, noise, uniform draws), loss and draws (log-sum-exp, softmax, cumulative sums of
the sampler), optimizer, and the rest (indexing, Python-side framework work). It is the profile
``benchmarks/README.md`` quotes for the targets that were missed. Each row also has its wall time:
on a GPU, a wall time far above the kernels' total is time spent launching them (what the
static-shape path removes), not computing.
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
from speed_workloads import DEFAULT_SHAPES, SAMPLERS, SHAPES, build_model, build_trainer, trainer_step
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


def profile(fn: Callable[[], Any], dev: Device) -> tuple[dict[str, float], float]:
    """(Self milliseconds per kind, wall milliseconds) of one call of ``fn``, after one warm-up call.
    On CUDA the time of an operator is that of the kernels it launched."""
    fn()
    cuda = dev.name == "cuda"
    with torch_profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        wall, _ = dev.time(fn)
    totals: dict[str, float] = {kind: 0.0 for kind in [*KINDS, "other"]}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CPU:  # operators; CUDA kernels count through them
            totals[kind_of(event.key)] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1000
    return totals, 1000 * wall


def profile_shape(shape_name: str, dtype: str, device: str, steps: int | None, static: bool
                  ) -> dict[str, tuple[dict[str, float], float]]:
    """Milliseconds per kind (and wall milliseconds) of the trainer's step and of sampling at batch 1
    and 16, for one shape."""
    shape, dev = SHAPES[shape_name], Device(device)
    steps = steps or shape.length
    profiles = {}
    with tempfile.TemporaryDirectory(prefix="unmask-profile-") as folder:
        trainer = build_trainer(shape, Path(folder), objective="mdlm", precision=dtype, device=device)
        try:
            profiles["train step"] = profile(trainer_step(trainer, shape), dev)
        finally:
            trainer.close()
    model = build_model("unmask", shape, dev.device).eval()
    for system in ("unmask", "unmask-static") if static else ("unmask",):
        for batch in (1, 16):
            run_steps = SAMPLERS[system](model, shape, dev, dtype, batch)
            name = f"{'static' if system == 'unmask-static' else 'sample'} b{batch} T={steps}"
            profiles[name] = profile(functools.partial(run_steps, steps), dev)
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help=f"one shape (default: {', '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, help="sampling steps T (default: the shape's length)")
    parser.add_argument("--static-shapes", action="store_true", help="also sample through the static-shape path")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)

    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# {date}  {where}, torch {torch.__version__}, {args.dtype}")
    kinds = [*KINDS, "other"]
    print(f"{'shape':<16} {'workload':<16} {'wall ms':>9} {'total ms':>9}  " + "  ".join(f"{k:>12.12}" for k in kinds))
    rows = []
    for shape_name in [args.shape] if args.shape else DEFAULT_SHAPES:
        for name, (totals, wall) in profile_shape(shape_name, args.dtype, args.device, args.steps,
                                                  args.static_shapes).items():
            total = sum(totals.values())
            shares = {kind: 100 * value / total for kind, value in totals.items()}
            print(f"{shape_name:<16} {name:<16} {wall:>9.0f} {total:>9.0f}  "
                  + "  ".join(f"{shares[k]:>11.1f}%" for k in kinds), flush=True)
            rows.append({"shape": shape_name, "workload": name, "dtype": args.dtype, "device": args.device,
                         "date": date, "wall_ms": wall, "total_ms": total, "ms": totals})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
