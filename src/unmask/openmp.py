"""OpenMP's spin before sleep, chosen before torch loads its OpenMP runtime.

Why. torch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the Linux wheels). A thread
that reaches a barrier first spins, by default 300,000 times, before it sleeps, so that the next
parallel region starts at once. On a machine with as many busy threads as cores, those spins steal
the cores that the other threads (of this process or of another one) need: on the project's 2-core
CPU, beside one other busy process, a training step of the demo's model ran 2.9-3.3x slower than
alone, where 2x is a fair share. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixes sharing but
slowed batch-1 sampling by 1.7-1.8x, whose many small parallel regions then each wake sleeping
threads. A spin count of 1,000 keeps most of both: 1.8-1.9x beside a competitor, for 2-10% on a
training step alone and 14-20% on batch-1 sampling (two measurements on that CPU;
``benchmarks/shared_cpu.py`` measures the settings side by side). Set GOMP_SPINCOUNT=300000 to get OpenMP's default back
on a machine that runs nothing else.

libgomp reads the variable once, when it loads, so this module sets it before anything imports
torch (``unmask/__init__.py`` imports it first) and only where the user chose neither variable;
a process that loaded torch before unmask keeps OpenMP's default.
"""

import os

SPIN_COUNT = 1000

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
