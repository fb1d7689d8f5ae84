"""The Python side of ``benchmarks/gpu.sh``: two of its parts, and its summary (its checks before it
starts are ``gpu_preflight.py``).

    python benchmarks/gpu_report.py env OUT.json          # GPU, driver, CUDA, torch, versions, commit
    python benchmarks/gpu_report.py tests OUT_DIR         # pytest -m cuda -> tests-cuda.xml and tests-cuda.json
    python benchmarks/gpu_report.py summary OUT_DIR       # summary.md: every part, the figures against the targets

The summary reads what the parts wrote (``parts.json``, ``env.json``, ``tests-cuda.json``,
``speed-*.json``, ``train-owt-small.json``, ``profile.json``), so it also reports a run whose
later parts failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import transformers
from speed_report import gpu_target_lines, ratio_lines

from unmask.runtime import device_name

ROOT = Path(__file__).resolve().parent.parent
SPEED_PARTS = ("speed-train", "speed-call", "speed-sample")


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable: {error}"


NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "power.limit", "clocks.max.sm", "pci.bus_id")


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cuda = torch.cuda.is_available()
    gpus = [{
        "name": torch.cuda.get_device_name(i),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
        "memory_mib": torch.cuda.get_device_properties(i).total_memory / 2**20,
        "multiprocessors": torch.cuda.get_device_properties(i).multi_processor_count,
    } for i in range(torch.cuda.device_count())] if cuda else []
    query = _run(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader"])
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": device_name("cpu"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "transformers": transformers.__version__,
        "gpus": gpus,
        "nvidia_smi": [dict(zip(NVIDIA_SMI_FIELDS, (v.strip() for v in line.split(","))))
                       for line in query.splitlines() if "," in line] or query,
        "nvidia_smi_text": _run(["nvidia-smi"]),
        "commit": _run(["git", "rev-parse", "HEAD"]),
        "uncommitted_changes": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def junit_to_json(xml_file: Path) -> dict[str, Any]:
    """Counts and one record per test case of a JUnit XML file written by pytest."""
    tests = []
    for case in ElementTree.parse(xml_file).iter("testcase"):
        outcome, message = "passed", None
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind], \
                    found.get("message")
                break
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "error",
                                                                                   "skipped")}
    return {"counts": counts, "tests": tests}


def run_tests(out: Path) -> int:
    """``pytest -m cuda`` over the whole suite; its JUnit XML and the same as JSON in ``out``."""
    xml_file = out / "tests-cuda.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={xml_file}", "tests"]
    status = subprocess.run(command, cwd=ROOT).returncode
    if xml_file.exists():
        result = {"command": " ".join(command[1:]), "exit_status": status, **junit_to_json(xml_file)}
        (out / "tests-cuda.json").write_text(json.dumps(result, indent=1))
    return status


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(out: Path) -> str:
    """The run in Markdown: machine, parts, tests, the targets of issue 16, the ratios to GPT-2, training."""
    env, parts, tests = _load(out / "env.json") or {}, _load(out / "parts.json") or [], _load(out / "tests-cuda.json")
    gpu = ", ".join(g["name"] for g in env.get("gpus", [])) or "no GPU"
    driver = next((g.get("driver_version") for g in env.get("nvidia_smi", []) if isinstance(g, dict)), None)
    lines = [f"# GPU run: {gpu}", "",
             f"{env.get('date', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime')}, driver {driver}, "
             f"transformers {env.get('transformers', '?')}; commit {env.get('commit', '?')}"
             f"{' (with uncommitted changes)' if env.get('uncommitted_changes') else ''}; {out}", "",
             "| part | outcome | seconds | command |", "|---|---|---:|---|"]
    lines += [f"| {p['part']} | {p['outcome']} | {p['seconds']} | `{p['command']}` |" for p in parts]
    if tests:
        counts = tests["counts"]
        lines += ["", f"CUDA tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
                      f"{counts['skipped']} skipped"]
        lines += [f"- {t['outcome']}: {t['test']}: {t['message']}" for t in tests["tests"]
                  if t["outcome"] in ("failed", "error")]
        skips = Counter(t["message"] for t in tests["tests"] if t["outcome"] == "skipped")
        lines += [f"- skipped, {count} tests: {reason}" for reason, count in skips.items()]
    rows = [row for part in SPEED_PARTS for row in _load(out / f"{part}.json") or []]
    if rows:
        lines += ["", "## Targets of issue 16 (one H100/H200, bf16)", ""]
        lines += [f"- {line}" for line in gpu_target_lines(rows)] or ["- no row of dit-small-L1024"]
        lines += ["", "## Beside Hugging Face GPT-2 of the same shape, same run", ""]
        lines += [f"- {line}" for line in ratio_lines(rows)]
        errors = [row for row in rows if row.get("error")]
        lines += [f"- ERROR {row['system']} {row['what']} batch {row.get('batch')}: {row['error']}" for row in errors]
    train = _load(out / "train-owt-small.json")
    if train:
        lines += ["", "## Two minutes of owt-small's model on random tokens", ""]
        for row in train["rows"]:
            peak = row["peak_cuda_mib"]
            lines.append(f"- {row['device_name']}, {row['precision']}, global batch {row['batch']} x {row['length']} "
                         f"(micro-batches of {row['micro_batch']}): {row['tokens_per_s']:,.0f} tokens/s over "
                         f"{row['steps']} steps in {row['seconds']:.0f} s, peak CUDA memory "
                         f"{'-' if peak is None else f'{peak / 1024:.1f} GiB'}")
    profile = _load(out / "profile.json")
    if profile:
        lines += ["", "## Where the time goes (profile.json: operators' time by kind, on CUDA their kernels')", "",
                  "| workload | wall ms | profiled ms | largest kinds |", "|---|---:|---:|---|"]
        for row in profile:
            kinds = sorted(row["ms"].items(), key=lambda item: -item[1])[:3]
            share = ", ".join(f"{kind} {100 * ms / row['total_ms']:.0f}%" for kind, ms in kinds)
            lines.append(f"| {row['workload']} | {row['wall_ms']:.1f} | {row['total_ms']:.1f} | {share} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env").add_argument("out", type=Path)
    sub.add_parser("tests").add_argument("out", type=Path)
    sub.add_parser("summary").add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "env":
        args.out.write_text(json.dumps(environment(), indent=1))
    elif args.command == "tests":
        raise SystemExit(run_tests(args.out))
    else:
        text = summary(args.out)
        (args.out / "summary.md").write_text(text)
        print(text, end="")


if __name__ == "__main__":
    main()
