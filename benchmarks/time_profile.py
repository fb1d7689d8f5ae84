"""Where the time of unmask's training step and sampler goes, by kind of work.

Usage::

    python benchmarks/time_profile.py [--shape NAME] [--dtype fp32|bf16] [--json OUT.json]

For each shape of ``benchmarks/speed.py`` it runs, under ``torch.profiler``, one MDLM training
step (forward, backward, clipping, fused AdamW; dropout 0.1, random weights) and one generation
with the ``cached`` sampler at batch 1 and 16 with T = length steps, and sums the operators'
self time into kinds: attention (SDPA kernels), matmul (the linear layers and output head),
elementwise and norms (adaLN modulation, rotary, GELU, layer norm, residual adds, dtype casts),
random draws (dropout masks, noise, uniform draws), loss and draws (log-sum-exp, softmax,
cumulative sums of the sampler), optimizer, and the rest (indexing, Python-side framework work).
It is the profile the README's Speed section quotes for the targets that were missed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import SHAPES, _build  # noqa: E402 - the benchmark's own shapes and model builders

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


def profile(fn: Any) -> dict[str, float]:
    """Self CPU (or CUDA) milliseconds per kind of one call of ``fn``, after one warm-up call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = {kind: 0.0 for kind in [*KINDS, "other"]}
    for event in prof.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total / 1000
    return totals


def train_step(shape_name: str, dtype: str) -> Any:
    import torch

    from unmask import nelbo

    shape = SHAPES[shape_name]
    model = _build("unmask", shape, torch.device("cpu"))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0, fused=True)
    x0 = torch.randint(0, shape.vocab, (shape.train_batch, shape.length))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            loss = nelbo(model, x0, schedule="loglinear", mask_id=shape.vocab).sum() / x0.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sampling(shape_name: str, dtype: str, batch: int) -> Any:
    import torch

    from unmask.sampling import generate

    shape = SHAPES[shape_name]
    model = _build("unmask", shape, torch.device("cpu")).eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def run() -> None:
        with autocast:
            generate(model, batch_size=batch, length=shape.length, mask_id=shape.vocab, steps=shape.length,
                     sampler="cached", generator=torch.Generator().manual_seed(0))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="one shape (default: both)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()

    import torch

    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# {date}  cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.dtype}")
    kinds = [*KINDS, "other"]
    print(f"{'shape':<16} {'workload':<16} {'total ms':>9}  " + "  ".join(f"{k:>12.12}" for k in kinds))
    rows = []
    for shape_name in [args.shape] if args.shape else list(SHAPES):
        workloads = {"train step": train_step(shape_name, args.dtype)}
        for batch in (1, 16):
            workloads[f"sample b{batch} T=L"] = sampling(shape_name, args.dtype, batch)
        for name, fn in workloads.items():
            totals = profile(fn)
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
