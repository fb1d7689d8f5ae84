"""What ``benchmarks/speed.py`` prints: one line per row, then the ratios to GPT-2 against the targets.

``mfu`` of a training row = its FLOPs per second / the GEMM FLOP/s of the same dtype and shape
measured in the same run. The ratios compare rows of one group (timed in turns in one process):
the ratio of medians is the one judged, the ratio of the fastest repeats follows in brackets.

The paper's shape on a GPU (``dit-small-L1024``) also has absolute targets (issue 16, for one
H100/H200), each printed beside the reference code's own figure: :func:`gpu_target_lines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speed_workloads import BD3LM_BLOCK, BD3LM_ROWS, DTYPES, SHAPES

# Targets (ratios to GPT-2 measured in the same run): train is unmask/HF tokens/s (at least),
# sample is unmask/HF seconds (at most), keyed by (shape, batch, steps).
TRAIN_TARGETS = {"char-6x256-L256": 4.0, "gpt2-6x256-L128": 2.5}
SAMPLE_TARGETS = {
    ("char-6x256-L256", 1, 256): 2.5,
    ("char-6x256-L256", 16, 256): 12.0,
    ("gpt2-6x256-L128", 1, 128): 1.2,
    ("gpt2-6x256-L128", 16, 128): 3.0,
    ("char-6x256-L256", 1, 32): 1.0,
    ("gpt2-6x256-L128", 1, 16): 1.0,
    ("gpt2-6x256-L128", 16, 16): 1.0,
}
# Block diffusion's sampling: bd3lm/HF seconds (at most), keyed by (shape, batch, steps per block).
BD3LM_TARGETS = {
    ("gpt2-6x256-L128", 1, 16): 1.2,
    ("gpt2-6x256-L128", 16, 16): 1.5,
    ("gpt2-6x256-L128", 1, 4): 1.0,  # faster than GPT-2
    ("gpt2-6x256-L128", 16, 4): 1.0,
    ("char-6x256-L256", 16, 16): 3.0,
}
# The systems of unmask that are compared with GPT-2 (the static-shape path where it ran).
UNMASK_SYSTEMS = ("unmask", "unmask-static")


@dataclass(frozen=True)
class GpuTarget:
    """An absolute target of issue 16 on one H100/H200: ``field`` of the bf16 rows matching ``keys``
    (every unmask system's) at most (or, with ``at_least``, at least) ``limit``; ``reference`` is the
    reference code's figure on an H100 as the issue quotes it (None where it gives none)."""

    label: str
    keys: dict[str, Any]
    field: str
    limit: float
    reference: float | None
    unit: str
    at_least: bool = False


GPU_SHAPE = "dit-small-L1024"
GPU_TARGETS = (
    GpuTarget("train tokens/s, batch 32", {"what": "train", "objective": "mdlm"}, "tokens_per_s", 470_000, 117_000,
              "tokens/s", at_least=True),
    GpuTarget("train peak memory, batch 32", {"what": "train", "objective": "mdlm"}, "peak_cuda_mib", 24 * 1024,
              None, "MiB"),
    GpuTarget("one call, batch 1", {"what": "call", "batch": 1}, "seconds", 1.5e-3, 18e-3, "s"),
    GpuTarget("sample 1,024 tokens, batch 1, T=1000", {"what": "sample", "batch": 1, "steps": 1000}, "seconds", 0.8,
              9.8, "s"),
    GpuTarget("sample 1,024 tokens, batch 16, T=1000", {"what": "sample", "batch": 16, "steps": 1000}, "seconds",
              12.0, 55.0, "s"),
    GpuTarget("sample 1,024 tokens, batch 16, T=128", {"what": "sample", "batch": 16, "steps": 128}, "seconds", 1.5,
              7.0, "s"),
)

HEADER = (
    f"{'shape':<16} {'system':<8} {'what':<6} {'dtype':<5} {'batch':>5} {'steps':>5} {'seconds':>9} "
    f"{'tokens/s':>10} {'calls':>6} {'mfu':>6} {'rss_MiB':>8} {'+MiB':>6}  repeats"
)


def add_mfu(rows: list[dict[str, Any]]) -> None:
    """mfu of each training row against the GEMM throughput of its dtype on its shape's run."""
    gemm = {(r["shape"], r["dtype"]): r["flops_per_s"] for r in rows if r["what"] == "gemm" and r.get("seconds")}
    for row in rows:
        peak = gemm.get((row["shape"], row["dtype"]))
        if row["what"] == "train" and row.get("seconds") and peak:
            row["mfu"] = row["flops"] / row["seconds"] / peak


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: dict[str, Any]) -> str:
    label = row["objective"] if row["what"] == "train" else row["system"]
    prefix = f"{row['shape']:<16} {label:<8} {row['what']:<6} {row['dtype']:<5}"
    if row.get("error"):
        return f"{prefix} ERROR: {row['error']}"
    if row["what"] == "gemm":
        return f"{prefix} {'':>11} {row['seconds']:9.4f}  {row['flops_per_s'] / 1e9:.1f} GFLOP/s (n={row['gemm_n']})"
    mfu = row.get("mfu")
    return (
        f"{prefix} {_fmt(row['batch'], 'd'):>5} {_fmt(row['steps'], 'd'):>5} {row['seconds']:9.3f} "
        f"{row['tokens_per_s']:10.1f} {_fmt(row.get('model_calls'), '.1f'):>6} "
        f"{_fmt(mfu and mfu * 100, '5.1f') + ('%' if mfu else ''):>6} "
        f"{_fmt(row.get('peak_rss_mib'), '.0f'):>8} {_fmt(row.get('rss_growth_mib'), '.0f'):>6}  x{row['repeats']}"
    )


def _find(rows: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    for row in rows:
        if row.get("seconds") and all(row.get(k) == v for k, v in keys.items()):
            return row
    return None


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("  PASS" if ok else "  MISS")


def train_ratio_lines(rows: list[dict[str, Any]], shape_name: str, dtype: str) -> list[str]:
    """unmask/HF training tokens/s (same batch and length: the inverse ratio of seconds)."""
    lines = []
    hf = _find(rows, shape=shape_name, what="train", objective="hf", dtype=dtype)
    for objective in ("mdlm", "ar"):
        own = _find(rows, shape=shape_name, what="train", objective=objective, dtype=dtype)
        if hf and own:
            ratio, best = hf["seconds"] / own["seconds"], hf["seconds_min"] / own["seconds_min"]
            target = TRAIN_TARGETS.get(shape_name) if (objective, dtype) == ("mdlm", "bf16") else None
            goal = f" target >= {target}x" if target else ""
            ok = None if target is None else ratio >= target
            lines.append(f"{shape_name} train {dtype} {objective}: unmask/HF tokens/s = {ratio:.2f}x "
                         f"[{best:.2f}x]{goal}{_verdict(ok)}")
    return lines


def seconds_ratio_lines(rows: list[dict[str, Any]], shape_name: str, what: str, dtype: str) -> list[str]:
    """unmask/HF seconds of one call or of sampling, at each batch (and step count), for each unmask system.
    The targets judge the plain path (``unmask``); the static-shape path's ratio is printed beside it."""
    lines = []
    for batch in (1, 16):
        hf = _find(rows, shape=shape_name, what=what, system="hf-gpt2", dtype=dtype, batch=batch)
        for steps in SHAPES[shape_name].sample_steps if what == "sample" else (None,):
            for system in UNMASK_SYSTEMS:
                own = _find(rows, shape=shape_name, what=what, system=system, dtype=dtype, batch=batch, steps=steps)
                if not (hf and own):
                    continue
                ratio, best = own["seconds"] / hf["seconds"], own["seconds_min"] / hf["seconds_min"]
                target = SAMPLE_TARGETS.get((shape_name, batch, steps)) if system == "unmask" else None
                goal = f" target <= {target}x" if target else ""
                ok = None if target is None else ratio <= target
                label = f"{what} {dtype} b{batch}" + (f" T={steps}" if steps else "")
                lines.append(f"{shape_name} {label}: {system}/HF seconds = {ratio:.2f}x [{best:.2f}x] "
                             f"(HF/{system} {1 / ratio:.2f}x){goal}{_verdict(ok)}")
    return lines


def bd3lm_ratio_lines(rows: list[dict[str, Any]], shape_name: str, dtype: str) -> list[str]:
    """bd3lm/HF seconds of sampling, at each batch and step count per block of the bd3lm rows."""
    lines = []
    for (shape, batch), step_counts in BD3LM_ROWS.items():
        hf = _find(rows, shape=shape_name, what="sample", system="hf-gpt2", dtype=dtype, batch=batch)
        for steps in step_counts if shape == shape_name else ():
            own = _find(rows, shape=shape_name, what="sample", system=f"bd3lm-{BD3LM_BLOCK}", dtype=dtype,
                        batch=batch, steps=steps)
            if not (hf and own):
                continue
            ratio, best = own["seconds"] / hf["seconds"], own["seconds_min"] / hf["seconds_min"]
            target = BD3LM_TARGETS.get((shape_name, batch, steps))
            goal = f" target <= {target}x" if target else ""
            ok = None if target is None else ratio <= target
            lines.append(f"{shape_name} sample {dtype} b{batch} bd3lm-{BD3LM_BLOCK} T={steps}/block: bd3lm/HF "
                         f"seconds = {ratio:.2f}x [{best:.2f}x] (HF/bd3lm {1 / ratio:.2f}x){goal}{_verdict(ok)}")
    return lines


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Every ratio the rows allow, shape by shape, with the targets where there is one."""
    lines = []
    for shape_name in SHAPES:
        for dtype in DTYPES:
            lines += train_ratio_lines(rows, shape_name, dtype)
        for what in ("call", "sample"):
            for dtype in DTYPES:
                lines += seconds_ratio_lines(rows, shape_name, what, dtype)
        for dtype in DTYPES:
            lines += bd3lm_ratio_lines(rows, shape_name, dtype)
    return lines


def _figure(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 0.1 else f"{value:.2f} s"
    if unit == "MiB":
        return f"{value / 1024:.1f} GiB"
    return f"{value:,.0f} {unit}"


def gpu_target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The absolute targets of the paper's shape (``GPU_TARGETS``), judged for every unmask system
    that has a bf16 row (training: the trainer's), with the speed-up over the reference code's figure."""
    lines = []
    for target in GPU_TARGETS:
        for system in ("unmask",) if target.keys["what"] == "train" else UNMASK_SYSTEMS:
            row = _find(rows, shape=GPU_SHAPE, dtype="bf16", system=system, **target.keys)
            if row is None or row.get(target.field) is None:
                continue
            value = row[target.field]
            ok = value >= target.limit if target.at_least else value <= target.limit
            sign = ">=" if target.at_least else "<="
            line = (f"{GPU_SHAPE} {target.label} ({row.get('device_name') or row.get('device')}, {system}): "
                    f"{_figure(value, target.unit)}, target {sign} {_figure(target.limit, target.unit)}{_verdict(ok)}")
            if target.reference is not None:
                speedup = value / target.reference if target.at_least else target.reference / value
                line += f"; {speedup:.1f}x the reference code's speed ({_figure(target.reference, target.unit)})"
            lines.append(line)
    return lines
