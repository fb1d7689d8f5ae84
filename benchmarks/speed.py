"""Speed of ``unmask`` next to Hugging Face ``transformers`` GPT-2 of the same shape.

Usage::

    python benchmarks/speed.py [--shape NAME] [--device cpu|cuda] [--json OUT.json] [--repeats N] [--quick]
                               [--static-shapes]

What runs is in ``speed_workloads.py`` (shapes, workloads, the plan of groups), how it is timed in
``speed_runner.py`` (groups in fresh processes, turns, memory apart), what is printed in
``speed_report.py`` (table, mfu, ratios to GPT-2 and their targets). Every row goes to ``--json``
with its repeats, spread, memory, machine and date. Results and their reading:
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from typing import Any

import torch
import transformers
from speed_report import HEADER, add_mfu, format_row, gpu_target_lines, ratio_lines
from speed_runner import child_setup, measure_memory, run_group, time_members
from speed_workloads import DEFAULT_SHAPES, DTYPES, SHAPES, WORKLOADS, build_member, plan

from unmask.runtime import device_name


def child(args: argparse.Namespace) -> None:
    """The fresh process of one group (``--_group``) or of one member's memory (``--_memory``)."""
    job = json.loads(args._group or args._memory)
    dev, base_rss = child_setup(job)
    if args._group:
        answer: Any = time_members(dev, [build_member(dev, spec) for spec in job["members"]], job["repeats"])
    else:
        answer = measure_memory(dev, build_member(dev, job["member"]), base_rss)
    with open(args._out, "w") as f:
        json.dump(answer, f)


def main(argv: list[str] | None = None) -> None:
    whats = tuple(WORKLOADS)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help=f"one shape (default: {', '.join(DEFAULT_SHAPES)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    parser.add_argument("--quick", action="store_true", help="2 repeats and batch-1 sampling only")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list of {', '.join(DTYPES)}")
    parser.add_argument("--what", default=",".join(whats), help=f"comma list of {', '.join(whats)}")
    parser.add_argument("--budget-s", type=float, default=120.0, help="timed seconds per sampling row (soft cap)")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child")
    parser.add_argument("--static-shapes", action="store_true",
                        help="also time the static-shape path (unmask-static rows; always with --device cuda)")
    parser.add_argument("--_group", help=argparse.SUPPRESS)
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._group or args._memory:
        child(args)
        return
    if args.quick:
        args.repeats = min(args.repeats, 2)
    dtypes, chosen = args.dtypes.split(","), args.what.split(",")
    for dtype in dtypes:
        if dtype not in DTYPES:
            parser.error(f"unknown dtype {dtype!r}")
    for what in chosen:
        if what not in whats:
            parser.error(f"unknown measurement {what!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")

    name = device_name(args.device)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"# {date}  device {args.device}: {name}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    for shape_name in [args.shape] if args.shape else DEFAULT_SHAPES:
        for group in plan(shape_name, dtypes=dtypes, whats=chosen, quick=args.quick, budget_s=args.budget_s,
                          static=args.static_shapes or args.device == "cuda"):
            for row in run_group(group, device=args.device, threads=args.threads, repeats=args.repeats,
                                 skip_memory=args.skip_memory):
                row.update(device=args.device, device_name=name, date=date)
                rows.append(row)
                add_mfu(rows)
                print(format_row(row), flush=True)
            if args.json:  # after every group: a run stopped part way keeps what it measured
                write_rows(rows, args.json)
    print()
    for line in ratio_lines(rows) + gpu_target_lines(rows):
        print(line)
    if args.json:
        print(f"\nwrote {len(rows)} rows to {args.json}")
    failed = [row for row in rows if row.get("error") or row.get("memory_error")]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(rows)} rows failed: see their error or memory_error field")


def write_rows(rows: list[dict[str, Any]], path: str) -> None:
    """The rows as JSON at ``path``, replaced whole (never a half-written file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    main()
