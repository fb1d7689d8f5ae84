"""How ``benchmarks/speed.py`` times its rows: groups in fresh processes, members in turns, memory apart.

Timing. The rows that are compared form a group (see ``speed_workloads.plan``), and a group is
timed in one fresh process: every member is built and warmed up, then the members take turns,
one timed repeat each per turn, so that load from other processes on a shared machine falls on
all of them alike. ``seconds`` is the median of the repeats (``seconds_min`` and ``seconds_max``
go with it). A member with a time budget (sampling, ``--budget-s``) stops once its next repeat
would take its timed total past the budget (at least one timed run is made); ``repeats`` says
how many ran.

Memory. Each row's memory is measured apart, in a fresh process of its own that imports the same
modules (torch, transformers, unmask), builds that one member and runs it once (no warm-up):
``peak_rss_mib`` is that process's ``ru_maxrss`` and ``rss_growth_mib`` the part of it above the
level reached after the imports. On CUDA ``peak_cuda_mib`` is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from unmask.runtime import autocast

ROW_KEYS = ("shape", "system", "what", "objective", "dtype", "batch", "steps")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "speed.py")


class Device:
    """Timing, autocast and memory on one torch device (cpu or cuda)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = torch.device(name)
        if name == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize()

    def autocast(self, dtype: str) -> AbstractContextManager[Any]:
        return autocast(dtype, self.device)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def peak_cuda_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.name == "cuda" else None


@dataclass
class Member:
    """One row's workload: ``run`` is one timed repeat and returns its model calls (or None);
    ``warm`` warms it up, ``extra`` adds fields to its row, ``close`` releases what it holds."""

    spec: dict[str, Any]
    run: Callable[[], Any]
    warm: Callable[[], Any]
    tokens: int | None = None
    budget_s: float = float("inf")
    extra: Callable[[], dict[str, Any]] = dict
    close: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)


def max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def child_setup(job: dict[str, Any]) -> tuple[Device, float]:
    """Threads, seed and device of a child process; its resident memory after the imports."""
    transformers.logging.set_verbosity_error()
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    return Device(job["device"]), max_rss_mib()


def time_members(dev: Device, members: list[Member], repeats: int) -> list[dict[str, Any]]:
    """Warm up every member, then time them in turns; one row per member."""
    for member in members:
        member.warm()
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
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
            "threads": torch.get_num_threads(),
            "loadavg": [round(load_before, 2), round(load_after, 2)],
            **member.extra(),
        }
        if row["what"] == "gemm":
            row["flops_per_s"] = row["flops"] / seconds
        rows.append(row)
        member.close()
    return rows


def measure_memory(dev: Device, member: Member, base_rss_mib: float) -> dict[str, Any]:
    """Peak memory of ``member`` run once in this fresh process."""
    dev.sync()
    member.run()
    dev.sync()
    member.close()
    peak = max_rss_mib()
    return {
        "peak_rss_mib": round(peak, 1),
        "rss_growth_mib": round(peak - base_rss_mib, 1),
        "peak_cuda_mib": dev.peak_cuda_mib(),
    }


def run_child(flag: str, job: dict[str, Any]) -> Any:
    """Run ``speed.py FLAG JOB`` in a fresh interpreter; return its JSON answer or raise."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "answer.json")
        proc = subprocess.run([sys.executable, SCRIPT, flag, json.dumps(job), "--_out", out],
                              capture_output=True, text=True)
        if proc.returncode == 0 and os.path.exists(out):
            with open(out) as f:
                return json.load(f)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise RuntimeError(tail[0])


def run_group(group: list[dict[str, Any]], *, device: str, threads: int | None, repeats: int,
              skip_memory: bool) -> list[dict[str, Any]]:
    """Time one group in a child process, then (unless ``skip_memory``) each member's memory in its own."""
    options = {"device": device, "threads": threads}
    try:
        rows = run_child("--_group", {**options, "members": group, "repeats": repeats})
    except RuntimeError as error:
        return [{**{key: spec.get(key) for key in ROW_KEYS}, "seconds": None, "error": str(error)} for spec in group]
    if not skip_memory:
        for row, spec in zip(rows, group):
            try:
                row.update(run_child("--_memory", {**options, "member": spec}))
            except RuntimeError as error:
                row["memory_error"] = str(error)
    return rows
