"""Speed on a shared CPU: the demo's model training alone and beside one other busy process, and
sampling alone, per OpenMP setting.

Usage::

    python benchmarks/shared_cpu.py [--seconds S] [--repeats N] [--json OUT.json]

Each probe runs in a fresh process with its OpenMP settings in its environment (they are read when
torch loads, so they cannot change inside one process):

- ``libgomp default``: GOMP_SPINCOUNT=300000, the spin count libgomp uses when nothing is set (a
  thread that reaches a barrier first spins that long before it sleeps); set explicitly, since
  unmask now sets its own (``unmask/openmp.py``);
- ``unmask default``: nothing set, so unmask's GOMP_SPINCOUNT=1000;
- ``PASSIVE``: OMP_WAIT_POLICY=PASSIVE (sleep at once);
- each with OMP_NUM_THREADS = the number of cores, and unmask's default with one thread.

Training: ``unmask.demo.training_speed`` (forward, backward and AdamW of the demo's tiny model on
random tokens, at the precision unmask picks here), alone and beside a competitor, a second process
spinning on one core (as a build, a test run or another user would). With 2 cores a fair share is
half the machine, so a slowdown of 2x beside the competitor is what a well-behaved program shows.
Sampling: seconds for the cached sampler's 64 steps at batch 1 on the tiny shape (random weights),
alone: many small parallel regions, where waking sleeping threads costs most. Probes are timed in
turns (alone, beside, sampling, alone, ...) so that drift in the machine's speed falls on all alike;
the JSON keeps every repeat and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

from unmask.runtime import device_name

TRAIN_PROBE = """
import json, sys
from unmask.config import load_preset
from unmask.demo import training_speed
print(json.dumps(training_speed(load_preset("tiny"), seconds=float(sys.argv[1]))))
"""
SAMPLE_PROBE = """
import time, torch
from unmask import DiT, DiTConfig
from unmask.runtime import autocast, resolve_precision
from unmask.sampling import SamplerConfig, generate
torch.manual_seed(0)
model = DiT(DiTConfig(vocab_size=4097, length=128, n_layers=4, hidden=256, n_heads=4, dropout=0.0)).eval()
cpu = torch.device("cpu")
def run():
    with torch.inference_mode(), autocast(resolve_precision("auto", cpu), cpu):
        generate(model, SamplerConfig(steps=64), batch_size=1, length=128, mask_id=4096,
                 generator=torch.Generator().manual_seed(0))
run()
times = []
for _ in range(3):
    started = time.perf_counter()
    run()
    times.append(time.perf_counter() - started)
print(min(times))
"""
SPINNER = "while True: pass"
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# (name, threads (None: the number of cores), environment)
SETTINGS = [
    ("libgomp default", None, {"GOMP_SPINCOUNT": "300000"}),
    ("unmask default", None, {}),
    ("PASSIVE", None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("unmask default", 1, {}),
]


def run_probe(probe: str, env: dict[str, str], seconds: float, competitor: bool = False) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER]) if competitor else None
    try:
        time.sleep(0.2 if competitor else 0)
        out = subprocess.run([sys.executable, "-c", probe, str(seconds)], env=env, capture_output=True, text=True,
                             check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per training probe")
    parser.add_argument("--repeats", type=int, default=2, help="turns of (alone, beside, sampling) per setting")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    rows = []
    for name, threads, variables in SETTINGS:
        env = {**base, **variables, "OMP_NUM_THREADS": str(threads or cores)}
        alone, beside, sampling = [], [], []
        for _ in range(args.repeats):
            alone.append(run_probe(TRAIN_PROBE, env, args.seconds))
            beside.append(run_probe(TRAIN_PROBE, env, args.seconds, competitor=True))
            sampling.append(run_probe(SAMPLE_PROBE, env, args.seconds))
        rows.append({"setting": name, "threads": threads or cores, "environment": variables,
                     "alone_tokens_per_s": statistics.median(alone), "beside_tokens_per_s": statistics.median(beside),
                     "slowdown": statistics.median(alone) / statistics.median(beside),
                     "sample_batch1_s": statistics.median(sampling),
                     "alone_repeats": alone, "beside_repeats": beside, "sample_repeats": sampling})
    reference = rows[0]
    for r in rows:
        r["alone_vs_libgomp_default"] = r["alone_tokens_per_s"] / reference["alone_tokens_per_s"]
        r["sample_vs_libgomp_default"] = r["sample_batch1_s"] / reference["sample_batch1_s"]
    print(f"{'setting':>16} {'threads':>7} {'alone tok/s':>12} {'beside tok/s':>13} {'slowdown':>9} "
          f"{'alone/ref':>9} {'sample b1 s':>11} {'sample/ref':>10}")
    for r in rows:
        print(f"{r['setting']:>16} {r['threads']:>7} {r['alone_tokens_per_s']:>12,.0f} "
              f"{r['beside_tokens_per_s']:>13,.0f} {r['slowdown']:>8.2f}x {r['alone_vs_libgomp_default']:>8.2f}x "
              f"{r['sample_batch1_s']:>11.3f} {r['sample_vs_libgomp_default']:>9.2f}x")
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": device_name("cpu"),
              "cores": cores, "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "seconds": args.seconds, "reference": "libgomp default", "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
