"""``unmask train --nproc N``: N worker processes on this machine, and one line when one of them fails.

The same as ``torchrun --standalone --nproc-per-node N -m unmask ARGV``, through torchrun's own
launcher API. Failures are read from torchrun's error records, not from what the workers print:
each worker records an unexpected exception in the error file torchrun gives it
(:func:`record_failure`; ``torch.distributed.elastic``'s ``@record`` does the same), and the
launcher names the cause from the exit statuses and those records (:func:`describe_failure`):

- a worker that stopped on a user error (status 2) or an interrupt (130) has printed its one line
  already: its status is passed on;
- a worker killed by a signal the launcher did not send (SIGKILL, SIGSEGV, the OOM killer) is the
  cause: "a worker process died (rank r, signal S)";
- otherwise the first recorded failure is the cause, named with its error file (which holds the
  traceback). The others, stopped because a peer was gone, are consequences.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

import torch
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

# Set by ``launch`` for its workers: the launcher reports a failed worker, so workers stay quiet.
LAUNCHED_ENV = "UNMASK_LAUNCHED"
# Exit statuses of a worker that has already told the user why it stopped.
REPORTED_EXITS = (2, 130)
RESUME_HINT = "continue from the last complete checkpoint with --resume"


def launched() -> bool:
    """True in a worker started by :func:`launch`."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def record_failure(error: BaseException) -> None:
    """Write ``error`` (with the traceback being handled) to this worker's torchrun error file, if it has one."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        ErrorHandler().record_exception(error)


def devices_present() -> tuple[int, str]:
    """How many processes this machine can run one per device (a GPU each, else a CPU core each), and those
    devices in words."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return count, f"{count} GPU{'s' if count != 1 else ''}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, f"{cores} CPU core{'s' if cores != 1 else ''} and no GPU"


def launch(nproc: int, argv: list[str], command: str = "train") -> int:
    """Run ``unmask ARGV`` in ``nproc`` worker processes; returns the exit status for the user."""
    if nproc < 1:
        print(f"unmask {command}: error: --nproc must be at least 1", file=sys.stderr)
        return 2
    most, what = devices_present()
    if nproc > most:  # more would share devices: each process holds a whole model, and they all compete
        print(f"unmask {command}: error: --nproc {nproc} is more processes than this machine has devices ({what}); "
              f"give at most --nproc {most}", file=sys.stderr)
        return 2
    # The elastic agent logs every step of a teardown; the one line below says what matters.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"unmask-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )
    saved = {name: os.environ.get(name) for name in (LAUNCHED_ENV, "OMP_NUM_THREADS")}
    os.environ[LAUNCHED_ENV] = "1"
    if saved["OMP_NUM_THREADS"] is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "unmask", *argv)
    except ChildFailedError as err:
        status, line = describe_failure(err)
        if line:
            print(f"unmask {command}: error: {line}", file=sys.stderr)
        return status
    except (KeyboardInterrupt, SignalException):  # the workers are stopped by then
        print(f"unmask {command}: interrupted; {RESUME_HINT}", file=sys.stderr)
        return 130
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def describe_failure(err: ChildFailedError) -> tuple[int, str | None]:
    """(exit status, the line to print or None when a worker has printed it) for a failed job."""
    failures = err.failures  # {global rank: ProcessFailure}
    reported = sorted(rank for rank, f in failures.items() if f.exitcode in REPORTED_EXITS)
    if reported:
        return failures[reported[0]].exitcode, None
    killed = sorted(rank for rank, f in failures.items() if f.exitcode < 0 and f.exitcode != -signal.SIGTERM)
    if killed:
        rank = killed[0]
        return 1, f"a worker process died (rank {rank}, signal {failures[rank].signal_name()}); {RESUME_HINT}"
    recorded = {rank: f for rank, f in failures.items() if f.exitcode > 0 and f.error_file_data}
    if recorded:
        rank = min(recorded, key=lambda r: (recorded[r].timestamp, r))
        failure = recorded[rank]
        # The record's message is {"message": "Type: text", "extraInfo": {...}} as ErrorHandler writes it.
        record = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        message = str(record).strip().splitlines()[0] if str(record).strip() else "an error"
        return 1, f"rank {rank} failed: {message} (traceback in {failure.error_file}); {RESUME_HINT}"
    return 1, f"a worker process lost contact with the others; {RESUME_HINT}"
