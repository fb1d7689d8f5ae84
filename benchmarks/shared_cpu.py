"""Training speed on a shared CPU: the tiny model's step alone and beside one other busy process.

Usage::

    python benchmarks/shared_cpu.py [--seconds S] [--json OUT.json]

Each row runs `unmask.demo.training_speed` (forward, backward and AdamW of the demo's tiny model on
random tokens, at the precision unmask picks here) in a fresh process, with OpenMP settings given in
its environment (they are read when torch loads, so they cannot change inside one process):

- threads: OMP_NUM_THREADS = the number of cores, or 1;
- wait policy: OpenMP's default (a thread that reaches a barrier first spins before it sleeps), or
  OMP_WAIT_POLICY=PASSIVE (it sleeps at once).

Each runs alone and beside a competitor: a second process spinning on one core (as a build, a test
run or another user would). With 2 cores, a fair share is half the machine, so a slowdown of 2x
beside the competitor is what a well-behaved program shows; the collapse this measures is larger.
Rows are timed in turns (alone, beside, alone, ...) so that drift in the machine's speed falls on
both alike; the JSON keeps every repeat and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

PROBE = """
import json, sys
from unmask.config import load_preset
from unmask.demo import training_speed
print(json.dumps(training_speed(load_preset("tiny"), seconds=float(sys.argv[1]))))
"""
SPINNER = "while True: pass"


def cpu_name() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_probe(threads: int, passive: bool, seconds: float, competitor: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER]) if competitor else None
    try:
        time.sleep(0.2 if competitor else 0)
        out = subprocess.run([sys.executable, "-c", PROBE, str(seconds)], env=env, capture_output=True, text=True,
                             check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per probe")
    parser.add_argument("--repeats", type=int, default=2, help="alone/beside pairs per setting")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = [(cores, False), (cores, True), (1, False), (1, True)]
    rows = []
    for threads, passive in settings:
        alone, beside = [], []
        for _ in range(args.repeats):
            alone.append(run_probe(threads, passive, args.seconds, competitor=False))
            beside.append(run_probe(threads, passive, args.seconds, competitor=True))
        rows.append({"threads": threads, "wait_policy": "PASSIVE" if passive else "default",
                     "alone_tokens_per_s": statistics.median(alone), "beside_tokens_per_s": statistics.median(beside),
                     "slowdown": statistics.median(alone) / statistics.median(beside),
                     "alone_repeats": alone, "beside_repeats": beside})
    best_alone = max(r["alone_tokens_per_s"] for r in rows)
    print(f"{'threads':>7} {'wait policy':>11} {'alone tok/s':>12} {'beside tok/s':>13} {'slowdown':>9} "
          f"{'alone vs best':>13}")
    for r in rows:
        relative = r["alone_tokens_per_s"] / best_alone
        print(f"{r['threads']:>7} {r['wait_policy']:>11} {r['alone_tokens_per_s']:>12,.0f} "
              f"{r['beside_tokens_per_s']:>13,.0f} {r['slowdown']:>8.2f}x {relative:>12.2f}x")
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(), "cores": cores,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "seconds": args.seconds,
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
