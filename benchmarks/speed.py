"""Speed of ``unmask`` next to Hugging Face ``transformers`` GPT-2 of the same shape.

Usage::

    python benchmarks/speed.py [--shape NAME] [--device cpu|cuda] [--json OUT.json] [--repeats N] [--quick]

Two shapes (``SHAPES``), both with 6 blocks, hidden 256 and 8 heads:

- ``char-6x256-L256``: vocabulary 28 (text8 characters), length 256, training batch 32;
- ``gpt2-6x256-L128``: vocabulary 50,257 (GPT-2 BPE), length 128, training batch 16.

unmask runs ``DiT(DiTConfig(vocab_size=V + 1, ...))`` (the extra id is MASK); the baseline is
``GPT2LMHeadModel`` with ``tie_word_embeddings=False`` (so both have an untied head) and its
default attention implementation (SDPA). Both keep their default dropout of 0.1. Weights are
random: GPT-2 keeps its own initialisation (N(0, 0.02)); every Linear and Embedding weight of the
DiT is redrawn from N(0, 0.02) with zero biases, since the DiT zero-initialises its adaLN and
output layer, which would make every draw uniform.

What is measured, for each shape and each dtype (fp32, and bf16 autocast):

- ``gemm``: this machine's matmul throughput (n x n @ n x n, n = 2048 on CPU, 8192 on CUDA; five
  products per timed repeat), the yardstick for the model FLOP utilisation (``mfu``) of the
  training rows. It is timed in turns with the training steps of its dtype (see Timing), so the
  yardstick sees the same load as what it measures.
- ``train``: tokens/s of a whole optimisation step: forward, backward, gradient clipping at 1.0,
  AdamW (the fused kernel where torch has one, for both systems) and, for unmask, a float32 EMA
  of the weights. Objectives: ``mdlm`` (``unmask.nelbo(...).sum() / tokens``, log-linear
  schedule), ``ar`` (``unmask.ar_loss`` with a causal DiT) and ``hf`` (GPT-2 with labels).
- ``call``: one forward call on a full-length batch (1 and 16) in inference mode, logits at every
  position.
- ``sample``: wall time to generate full-length sequences (batch 1 and 16). unmask:
  ``unmask.sampling.generate(..., sampler="cached")`` with T = length and T = length / 8 steps
  (``model_calls`` is its ``num_calls``). GPT-2: ``generate`` with the KV cache, ``do_sample=True,
  top_k=0``, ``length - 1`` new tokens (min and max) after a one-token prompt, so both systems
  produce ``length`` tokens per sequence and ``tokens_per_s = batch * length / seconds``.

Timing. The rows that are compared form a group (GEMM and the three training objectives of one
dtype; the two systems' calls at one batch size; GPT-2 and the two step counts of unmask
sampling at one batch size), and a group is timed in one fresh process: every member is built
and warmed up (two steps or calls; for sampling one generation with an eighth of the steps),
then the members take turns, one timed repeat each per turn, so that load from other processes
on a shared machine falls on all of them alike. ``seconds`` is the median of the repeats
(``seconds_min`` and ``seconds_max`` go with it). A sampling member stops once its next repeat
would take its timed total past ``--budget-s`` (at least one timed run is made); ``repeats``
says how many ran.

Memory. Each row's memory is measured apart, in a fresh process of its own that imports the same
modules (torch, unmask, transformers), builds that one member and runs it once (no warm-up):
``peak_rss_mib`` is that process's ``ru_maxrss`` and ``rss_growth_mib`` the part of it above the
level reached after the imports. On CUDA ``peak_cuda_mib`` is ``torch.cuda.max_memory_allocated``.
``--skip-memory`` leaves these out.

FLOPs of a training step (``flops``; fwd + bwd = 3 x forward, 2 FLOPs per multiply-add):

    6 * 12 * n_layers * d^2 * tokens                   matmuls of the blocks (qkv 3d^2, out d^2, MLP 8d^2)
  + a * n_layers * L * d * tokens                      attention scores QK^T and the weighted sum AV
  + 6 * d * V_out * head_rows                          output head, only where it is computed

with tokens = batch * L; a = 12 for bidirectional attention (forward 2Ld for QK^T + 2Ld for AV
per token and layer) and a = 6 for causal attention (only the lower triangle is useful work).
head_rows is counted, not assumed: for ``mdlm`` the number of masked positions the head actually
ran on (about half of the tokens under the log-linear schedule), for ``ar`` batch * (L - 1)
(positions that have a next token), for GPT-2 batch * L (it computes logits everywhere). V_out is
V + 1 for unmask, V for GPT-2. Embedding lookups, norms, activations, softmax and the loss are
not counted, nor the per-sequence adaLN and time-embedding matmuls of the DiT (under 0.1 %).
``mfu`` = flops / seconds / (GEMM FLOP/s of the same dtype measured in the same run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("fp32", "bf16")
WHATS = ("gemm", "train", "call", "sample")
GEMM_BURST = 5  # matmuls per timed GEMM repeat
ROW_KEYS = ("shape", "system", "what", "objective", "dtype", "batch", "steps")


@dataclass(frozen=True)
class Shape:
    vocab: int
    length: int
    n_layers: int
    hidden: int
    n_heads: int
    train_batch: int


SHAPES: dict[str, Shape] = {
    "char-6x256-L256": Shape(vocab=28, length=256, n_layers=6, hidden=256, n_heads=8, train_batch=32),
    "gpt2-6x256-L128": Shape(vocab=50257, length=128, n_layers=6, hidden=256, n_heads=8, train_batch=16),
}

# Targets (ratios to GPT-2 measured in the same run): train is unmask/HF tokens/s (at least),
# sample is unmask/HF seconds (at most), keyed by (shape, batch, steps as a fraction of length).
TRAIN_TARGETS = {"char-6x256-L256": 4.0, "gpt2-6x256-L128": 2.5}
SAMPLE_TARGETS = {
    ("char-6x256-L256", 1, 1): 2.5,
    ("char-6x256-L256", 16, 1): 12.0,
    ("gpt2-6x256-L128", 1, 1): 1.2,
    ("gpt2-6x256-L128", 16, 1): 3.0,
    ("char-6x256-L256", 1, 8): 1.0,
    ("gpt2-6x256-L128", 1, 8): 1.0,
    ("gpt2-6x256-L128", 16, 8): 1.0,
}


def train_flops(shape: Shape, batch: int, head_rows: float, vocab_out: int, causal: bool) -> float:
    """Model FLOPs of one training step (forward + backward); see the module docstring."""
    d, length, layers = shape.hidden, shape.length, shape.n_layers
    tokens = batch * length
    body = 6 * 12 * layers * d * d * tokens
    attention = (6 if causal else 12) * layers * length * d * tokens
    head = 6 * d * vocab_out * head_rows
    return float(body + attention + head)


# ---------------------------------------------------------------------------------------------
# Child processes: build the members of a group and time them, or run one member for its memory.
# ---------------------------------------------------------------------------------------------


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class _Device:
    """Timing, autocast and memory for one torch device (cpu or cuda)."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.device = torch.device(name)
        if name == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        if self.name == "cuda":
            self.torch.cuda.synchronize()

    def autocast(self, dtype: str) -> AbstractContextManager[Any]:
        if dtype == "fp32":
            return nullcontext()
        return self.torch.autocast(self.name, dtype=self.torch.bfloat16)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def peak_cuda_mib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.name == "cuda" else None


@dataclass
class Member:
    """One row's workload: ``run`` is one timed repeat and returns its model calls (or None)."""

    spec: dict[str, Any]
    run: Callable[[], Any]
    warm: Callable[[], Any]
    tokens: int | None = None
    budget_s: float = float("inf")
    extra: Callable[[], dict[str, Any]] = dict
    times: list[float] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)


def _randomize(model: Any) -> None:
    """N(0, 0.02) weights and zero biases for every Linear and Embedding (as GPT-2 initialises)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def _build(system: str, shape: Shape, device: Any, *, causal: bool = False) -> Any:
    if system == "unmask":
        from unmask import DiT, DiTConfig

        config = DiTConfig(
            vocab_size=shape.vocab + 1,
            length=shape.length,
            n_layers=shape.n_layers,
            hidden=shape.hidden,
            n_heads=shape.n_heads,
            causal=causal,
        )
        model = DiT(config)
        _randomize(model)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        last = shape.vocab - 1  # bos/eos/pad must be valid ids of the vocabulary
        config = GPT2Config(
            vocab_size=shape.vocab,
            n_positions=shape.length,
            n_embd=shape.hidden,
            n_layer=shape.n_layers,
            n_head=shape.n_heads,
            tie_word_embeddings=False,
            bos_token_id=last,
            eos_token_id=last,
            pad_token_id=last,
        )
        model = GPT2LMHeadModel(config)
    return model.to(device)


def _gemm_member(dev: _Device, spec: dict[str, Any]) -> Member:
    torch = dev.torch
    n = 8192 if dev.name == "cuda" else 2048
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev.device, dtype=dtype)
    b = torch.randn(n, n, device=dev.device, dtype=dtype)

    def run() -> None:
        for _ in range(GEMM_BURST):
            a @ b

    return Member(spec, run, run, extra=lambda: {"flops": GEMM_BURST * 2.0 * n**3, "gemm_n": n})


def _train_member(dev: _Device, shape: Shape, spec: dict[str, Any]) -> Member:
    import unmask

    torch = dev.torch
    objective, dtype = spec["objective"], spec["dtype"]
    system = spec["system"]
    model = _build(system, shape, dev.device, causal=objective == "ar").train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.AdamW(params, lr=3e-4, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device in this torch build
        optimizer = torch.optim.AdamW(params, lr=3e-4)
    ema = [p.detach().float().clone() for p in params] if system == "unmask" else None
    batch = shape.train_batch
    x0 = torch.randint(0, shape.vocab, (batch, shape.length), device=dev.device)
    tokens = x0.numel()

    head_rows: list[int] = []
    if system == "unmask":
        model.head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[0]))

    def loss_fn() -> Any:
        if objective == "mdlm":
            return unmask.nelbo(model, x0, schedule="loglinear", mask_id=shape.vocab).sum() / tokens
        if objective == "ar":
            return unmask.ar_loss(model, x0, mask_id=shape.vocab).sum() / tokens
        return model(input_ids=x0, labels=x0).loss

    def step() -> None:
        with dev.autocast(dtype):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1 - 0.9999)

    def warm() -> None:
        for _ in range(2):
            step()
        head_rows.clear()

    def extra() -> dict[str, Any]:
        if system == "unmask":
            rows, vocab_out = statistics.mean(head_rows), shape.vocab + 1
        else:
            rows, vocab_out = float(tokens), shape.vocab
        flops = train_flops(shape, batch, rows, vocab_out, causal=objective != "mdlm")
        return {"batch": batch, "flops": flops, "head_rows": rows}

    return Member(spec, step, warm, tokens=tokens, extra=extra)


def _call_member(dev: _Device, shape: Shape, spec: dict[str, Any]) -> Member:
    torch = dev.torch
    system, dtype, batch = spec["system"], spec["dtype"], spec["batch"]
    model = _build(system, shape, dev.device).eval()
    x = torch.randint(0, shape.vocab, (batch, shape.length), device=dev.device)
    t = torch.rand(batch, device=dev.device)

    def call() -> int:
        with torch.inference_mode(), dev.autocast(dtype):
            model(x, t) if system == "unmask" else model(input_ids=x, use_cache=False)
        return 1

    def warm() -> None:
        for _ in range(2):
            call()

    return Member(spec, call, warm, tokens=x.numel())


def _sample_member(dev: _Device, shape: Shape, spec: dict[str, Any], budget_s: float) -> Member:
    torch = dev.torch
    system, dtype, batch, steps = spec["system"], spec["dtype"], spec["batch"], spec["steps"]
    model = _build(system, shape, dev.device).eval()
    length = shape.length

    if system == "unmask":
        from unmask.sampling import generate

        def run_steps(num_steps: int) -> int:
            with dev.autocast(dtype):
                out = generate(
                    model, batch_size=batch, length=length, mask_id=shape.vocab, steps=num_steps, sampler="cached"
                )
            return out.num_calls

    else:
        calls = [0]
        model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
        prompt = torch.zeros(batch, 1, dtype=torch.long, device=dev.device)

        def run_steps(num_steps: int) -> int:
            calls[0] = 0
            with torch.no_grad(), dev.autocast(dtype):
                out = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    top_k=0,
                    max_new_tokens=num_steps,
                    min_new_tokens=num_steps,
                    pad_token_id=shape.vocab - 1,
                    use_cache=True,
                )
            if out.shape != (batch, num_steps + 1):
                raise RuntimeError(f"GPT-2 generated {tuple(out.shape)}, expected {(batch, num_steps + 1)}")
            return calls[0]

    return Member(
        spec,
        lambda: run_steps(steps),
        lambda: run_steps(max(1, steps // 8)),
        tokens=batch * length,
        budget_s=budget_s,
    )


def _member(dev: _Device, spec: dict[str, Any]) -> Member:
    shape = SHAPES[spec["shape"]]
    what = spec["what"]
    if what == "gemm":
        return _gemm_member(dev, spec)
    if what == "train":
        return _train_member(dev, shape, spec)
    if what == "call":
        return _call_member(dev, shape, spec)
    return _sample_member(dev, shape, spec, spec["budget_s"])


def _child_setup(options: dict[str, Any]) -> tuple[_Device, float]:
    """Imports shared by every child (so that their RSS is comparable), threads, seed, device."""
    import torch
    import transformers

    import unmask  # noqa: F401

    transformers.logging.set_verbosity_error()
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    return _Device(options["device"]), _max_rss_mib()


def time_group(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Build and warm up every member, then time them in turns; one row per member."""
    dev, _ = _child_setup(job)
    members = [_member(dev, spec) for spec in job["members"]]
    for member in members:
        member.warm()
    load_before = os.getloadavg()[0]
    for _ in range(job["repeats"]):
        for member in members:
            if member.times and sum(member.times) + member.times[-1] > member.budget_s:
                continue
            seconds, calls = dev.time(member.run)
            member.times.append(seconds)
            member.calls.append(calls)
    load_after = os.getloadavg()[0]

    rows = []
    for member in members:
        seconds = statistics.median(member.times)
        calls = [c for c in member.calls if c is not None]
        row = {
            **{key: member.spec.get(key) for key in ROW_KEYS},
            "seconds": seconds,
            "seconds_min": min(member.times),
            "seconds_max": max(member.times),
            "repeats": len(member.times),
            "times": member.times,
            "tokens_per_s": member.tokens / seconds if member.tokens else None,
            "model_calls": statistics.mean(calls) if calls else None,
            "threads": dev.torch.get_num_threads(),
            "loadavg": [round(load_before, 2), round(load_after, 2)],
            **member.extra(),
        }
        if row["what"] == "gemm":
            row["flops_per_s"] = row["flops"] / seconds
        rows.append(row)
    return rows


def measure_memory(job: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one member built and run once in this fresh process."""
    dev, base_rss = _child_setup(job)
    member = _member(dev, job["member"])
    dev.sync()
    member.run()
    dev.sync()
    peak = _max_rss_mib()
    return {
        "peak_rss_mib": round(peak, 1),
        "rss_growth_mib": round(peak - base_rss, 1),
        "peak_cuda_mib": dev.peak_cuda_mib(),
    }


# ---------------------------------------------------------------------------------------------
# The parent process: the plan, the children, the table and the ratios.
# ---------------------------------------------------------------------------------------------


def plan(shape_name: str, args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """The groups of one shape, in the order they run; each group is a list of row specs."""
    shape = SHAPES[shape_name]
    dtypes = args.dtypes.split(",")
    whats = args.what.split(",")
    base = {"shape": shape_name}
    groups: list[list[dict[str, Any]]] = []
    if "gemm" in whats and "train" not in whats:
        groups.append([{**base, "system": "torch", "what": "gemm", "dtype": d} for d in dtypes])
    for dtype in dtypes:
        if "train" in whats:
            # The GEMM yardstick of the mfu takes its turns among the training steps it divides.
            gemm = [{**base, "system": "torch", "what": "gemm", "dtype": dtype}] if "gemm" in whats else []
            groups.append(
                gemm
                + [
                    {**base, "system": system, "what": "train", "dtype": dtype, "objective": objective}
                    for system, objective in (("unmask", "mdlm"), ("unmask", "ar"), ("hf-gpt2", "hf"))
                ]
            )
        for batch in (1, 16) if "call" in whats else ():
            groups.append(
                [
                    {**base, "system": system, "what": "call", "dtype": dtype, "batch": batch}
                    for system in ("unmask", "hf-gpt2")
                ]
            )
        for batch in ((1,) if args.quick else (1, 16)) if "sample" in whats else ():
            sample = {**base, "what": "sample", "dtype": dtype, "batch": batch, "budget_s": args.budget_s}
            groups.append(
                [
                    {**sample, "system": "hf-gpt2", "steps": shape.length - 1},
                    {**sample, "system": "unmask", "steps": shape.length},
                    {**sample, "system": "unmask", "steps": shape.length // 8},
                ]
            )
    return groups


def run_child(flag: str, job: dict[str, Any]) -> Any:
    """Run ``speed.py FLAG JOB`` in a fresh interpreter; return its JSON answer or raise."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "answer.json")
        cmd = [sys.executable, os.path.abspath(__file__), flag, json.dumps(job), "--_out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0 and os.path.exists(out):
            with open(out) as f:
                return json.load(f)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise RuntimeError(tail[0])


def run_group(group: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    options = {"device": args.device, "threads": args.threads}
    try:
        rows = run_child("--_group", {**options, "members": group, "repeats": args.repeats})
    except RuntimeError as error:
        return [{**{key: spec.get(key) for key in ROW_KEYS}, "seconds": None, "error": str(error)} for spec in group]
    if not args.skip_memory:
        for row, spec in zip(rows, group):
            try:
                row.update(run_child("--_memory", {**options, "member": spec}))
            except RuntimeError as error:
                row["memory_error"] = str(error)
    return rows


def add_mfu(rows: list[dict[str, Any]]) -> None:
    """mfu of each training row against the GEMM throughput of its dtype on its shape's run."""
    gemm = {(r["shape"], r["dtype"]): r["flops_per_s"] for r in rows if r["what"] == "gemm" and r.get("seconds")}
    for row in rows:
        peak = gemm.get((row["shape"], row["dtype"]))
        if row["what"] == "train" and row.get("seconds") and peak:
            row["mfu"] = row["flops"] / row["seconds"] / peak


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'shape':<16} {'system':<8} {'what':<6} {'dtype':<5} {'batch':>5} {'steps':>5} {'seconds':>9} "
    f"{'tokens/s':>10} {'calls':>6} {'mfu':>6} {'rss_MiB':>8} {'+MiB':>6}  repeats"
)


def format_row(row: dict[str, Any]) -> str:
    label = row["objective"] if row["what"] == "train" else row["system"]
    prefix = f"{row['shape']:<16} {label:<8} {row['what']:<6} {row['dtype']:<5}"
    if row.get("error"):
        return f"{prefix} ERROR: {row['error']}"
    if row["what"] == "gemm":
        return f"{prefix} {'':>11} {row['seconds']:9.4f}  {row['flops_per_s'] / 1e9:.1f} GFLOP/s (n={row['gemm_n']})"
    return (
        f"{prefix} {_fmt(row['batch'], 'd'):>5} {_fmt(row['steps'], 'd'):>5} {row['seconds']:9.3f} "
        f"{row['tokens_per_s']:10.1f} {_fmt(row.get('model_calls'), '.1f'):>6} "
        f"{_fmt(row.get('mfu') and row['mfu'] * 100, '5.1f') + ('%' if row.get('mfu') else ''):>6} "
        f"{_fmt(row.get('peak_rss_mib'), '.0f'):>8} {_fmt(row.get('rss_growth_mib'), '.0f'):>6}  x{row['repeats']}"
    )


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    """unmask/HF train tokens/s and unmask/HF call and sampling seconds, with the targets.

    The ratio of medians is the one judged; the ratio of the fastest repeats follows in brackets.
    """

    def find(**keys: Any) -> dict[str, Any] | None:
        for row in rows:
            if row.get("seconds") and all(row.get(k) == v for k, v in keys.items()):
                return row
        return None

    def verdict(ok: bool | None) -> str:
        return "" if ok is None else ("  PASS" if ok else "  MISS")

    lines = []
    for shape_name, shape in SHAPES.items():
        for dtype in DTYPES:
            hf = find(shape=shape_name, what="train", objective="hf", dtype=dtype)
            for objective in ("mdlm", "ar"):
                own = find(shape=shape_name, what="train", objective=objective, dtype=dtype)
                if hf and own:  # same batch and length: the tokens/s ratio is the inverse seconds ratio
                    ratio, best = hf["seconds"] / own["seconds"], hf["seconds_min"] / own["seconds_min"]
                    target = TRAIN_TARGETS[shape_name] if (objective, dtype) == ("mdlm", "bf16") else None
                    goal = f" target >= {target}x" if target else ""
                    ok = None if target is None else ratio >= target
                    lines.append(
                        f"{shape_name} train {dtype} {objective}: unmask/HF tokens/s = {ratio:.2f}x "
                        f"[{best:.2f}x]{goal}{verdict(ok)}"
                    )
        for what in ("call", "sample"):
            for dtype in DTYPES:
                for batch in (1, 16):
                    hf = find(shape=shape_name, what=what, system="hf-gpt2", dtype=dtype, batch=batch)
                    for divisor in (1, 8) if what == "sample" else (None,):
                        steps = shape.length // divisor if divisor else None
                        own = find(shape=shape_name, what=what, system="unmask", dtype=dtype, batch=batch, steps=steps)
                        if not (hf and own):
                            continue
                        ratio = own["seconds"] / hf["seconds"]
                        best = own["seconds_min"] / hf["seconds_min"]
                        target = SAMPLE_TARGETS.get((shape_name, batch, divisor)) if what == "sample" else None
                        goal = f" target <= {target}x" if target else ""
                        ok = None if target is None else ratio <= target
                        label = f"{what} {dtype} b{batch}" + (f" T={steps}" if steps else "")
                        lines.append(
                            f"{shape_name} {label}: unmask/HF seconds = {ratio:.2f}x [{best:.2f}x] "
                            f"(HF/unmask {1 / ratio:.2f}x){goal}{verdict(ok)}"
                        )
    return lines


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="one shape (default: both)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    parser.add_argument("--quick", action="store_true", help="2 repeats and batch-1 sampling only")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--what", default=",".join(WHATS), help=f"comma list of {', '.join(WHATS)}")
    parser.add_argument("--budget-s", type=float, default=120.0, help="timed seconds per sampling row (soft cap)")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child")
    parser.add_argument("--_group", help=argparse.SUPPRESS)
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._group or args._memory:
        answer = time_group(json.loads(args._group)) if args._group else measure_memory(json.loads(args._memory))
        with open(args._out, "w") as f:
            json.dump(answer, f)
        return

    if args.quick:
        args.repeats = min(args.repeats, 2)
    for dtype in args.dtypes.split(","):
        if dtype not in DTYPES:
            parser.error(f"unknown dtype {dtype!r}")
    for what in args.what.split(","):
        if what not in WHATS:
            parser.error(f"unknown measurement {what!r}")

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    name = device_name(args.device)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# {date}  device {args.device}: {name}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    for shape_name in [args.shape] if args.shape else list(SHAPES):
        for group in plan(shape_name, args):
            for row in run_group(group, args):
                row.update(device=args.device, device_name=name, date=date)
                rows.append(row)
                add_mfu(rows)
                print(format_row(row), flush=True)
    print()
    for line in ratio_lines(rows):
        print(line)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"\nwrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
