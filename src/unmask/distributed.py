"""Several processes, GPUs or nodes: the process group, model wrapping, reductions and the launcher.

The training loop (:mod:`unmask.train.loop`) is the same for one process and for many; what
differs lives here, behind a :class:`Parallel` whose methods do nothing in a single process:

- :func:`setup` joins the process group that ``torchrun`` describes in the environment (nccl on
  CUDA, gloo on CPU) and picks this process's device;
- :meth:`Parallel.wrap` wraps the model for data parallelism (DDP, the default) or shards it
  with FSDP2 (``parallel.strategy=fsdp``), optionally with activation checkpointing;
- :meth:`Parallel.reduce_sum`, :meth:`Parallel.any`, :meth:`Parallel.barrier` and
  :meth:`Parallel.main_first` are the few collective steps the loop needs;
- :func:`launch` is ``unmask train --nproc N``: it starts N workers through torchrun's own
  launcher API and turns a failed worker into one line.

Rank 0 alone prints, logs and writes the run's files; every rank writes its own shard of a
checkpoint (:mod:`unmask.checkpoint_dist`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unmask.config import ParallelConfig

T = TypeVar("T")

# Set by ``launch`` for its workers: the launcher reports a failed worker, so workers stay quiet.
LAUNCHED_ENV = "UNMASK_LAUNCHED"


# What gloo and NCCL say when a peer process is gone.
PEER_FAILURE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout",
                        "Watchdog caught collective operation timeout", "NCCL communicator was aborted")


# The exit status of a worker that stopped because another one failed (not a cause itself).
PEER_FAILURE_EXIT = 75


SIGTERM_STOP = "stopped by SIGTERM"
# What a wrapped error (DCP's CheckpointException) may hold: a lost peer, or our own SIGTERM stop.
WRAPPED_PEER_FAILURE_MARKERS = (*PEER_FAILURE_MARKERS, SIGTERM_STOP)


class PeerFailure(RuntimeError):
    """Another process of the job died or stopped; the run can continue from its last checkpoint."""


def is_main_process() -> bool:
    """True in a single process and on global rank 0 of a torchrun job (also before ``setup``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


@dataclass
class Parallel:
    """This process's place in the job; every method is a no-op for a single process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _ddp: nn.Module | None = field(default=None, repr=False)
    _fsdp: nn.Module | None = field(default=None, repr=False)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """True when the model is sharded (FSDP): every forward is then a collective step."""
        return self._fsdp is not None

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over all processes (a new tensor on ``tensor``'s device)."""
        if not self.is_distributed:
            return tensor
        total = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (so that all processes take the same branch)."""
        if not self.is_distributed:
            return flag
        return bool(self.reduce_sum(torch.tensor(int(flag), device=self.device)).item())

    def gather_objects(self, obj: T) -> list[T]:
        """Every process's ``obj`` (JSON-like data), in rank order, on every process."""
        if not self.is_distributed:
            return [obj]
        gathered: list[T] = [None] * self.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, obj)
        return gathered

    def main_only(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only (its result there, None elsewhere); the others wait for it.

        An error on rank 0 is raised on every rank, so that no process waits for it forever.
        """
        if not self.is_distributed:
            return fn()
        error: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                error = err
        message: list[BaseException | None] = [error]
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # noqa: BLE001 - send what can be sent; every rank still fails
                message = [RuntimeError(f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(message, src=0, device=self.device)
        if error is not None:
            raise error
        if message[0] is not None:
            raise message[0]
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the other ranks: rank 0 creates files, the others reuse them."""
        result = self.main_only(fn)
        return result if self.is_main else fn()

    def wrap(self, model: nn.Module, config: ParallelConfig, precision: str) -> nn.Module:
        """What the loop calls in the forward pass; ``model`` itself keeps its parameter names.

        DDP returns a wrapper (``model`` stays the plain module the optimizer, the EMA and the
        checkpoints use); FSDP2 shards ``model`` in place (each block, then the root) with bf16
        compute when ``precision`` is "bf16" and float32 otherwise.
        """
        if config.activation_checkpointing and hasattr(model, "activation_checkpointing"):
            model.activation_checkpointing = True
        if not self.is_distributed:
            return model
        if config.strategy == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # Inputs keep their dtypes (times and rotary angles stay float32); autocast and the
            # bf16 parameters make the matrix products bf16. Gradients are reduced in float32.
            policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                           cast_forward_inputs=False)
                      if precision == "bf16" else MixedPrecisionPolicy(cast_forward_inputs=False))
            for block in getattr(model, "blocks", []):
                fully_shard(block, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            self._fsdp = model
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)
        # unmask.denoiser.denoise reads these to call the fast positions-only head.
        ddp.supports_positions = getattr(model, "supports_positions", False)
        ddp.supports_attention_mask = getattr(model, "supports_attention_mask", False)
        self._ddp = ddp
        return ddp

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Within it, backward passes reduce gradients across processes only if ``enabled``
        (off for all but the last micro-batch of a step: the reduction then happens once)."""
        if self._ddp is not None and not enabled:
            with self._ddp.no_sync():
                yield
            return
        if self._fsdp is not None:
            self._fsdp.set_requires_gradient_sync(enabled)
        yield

    def scale_loss(self, loss: Tensor) -> Tensor:
        """DDP and FSDP average gradients over processes; the loop wants their sum."""
        return loss * self.world_size if self.is_distributed else loss


def setup(device: str = "auto") -> Parallel:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or describe one process."""
    from unmask.pipeline import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    initialized = dist.is_available() and dist.is_initialized()
    if world_size <= 1 and not initialized:
        return Parallel(device=resolve_device(device))
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank if chosen.index is None else chosen.index)
        torch.cuda.set_device(chosen)
    if not initialized:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None)
        if os.environ.get(LAUNCHED_ENV) != "1":
            signal.signal(signal.SIGTERM, _on_sigterm)
    return Parallel(device=chosen, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _on_sigterm(signum: int, frame: object) -> None:
    # torchrun stops the surviving workers with SIGTERM when one fails; so does a scheduler.
    raise PeerFailure(f"{SIGTERM_STOP} (torchrun stops every process when one fails; or the job was "
                      "cancelled or preempted)")


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(error: BaseException) -> bool:
    """True for the errors a collective raises when another process is gone."""
    if isinstance(error, PeerFailure):
        return True
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(error, (dist.DistNetworkError, dist.DistStoreError)):
        return True
    text = str(error)
    # A collective inside torch.distributed.checkpoint.save/load fails as DCP's CheckpointException
    # (a BaseException), whose text holds the underlying errors: a lost peer, or our SIGTERM stop.
    wrapped = type(error).__name__ == "CheckpointException"
    markers = WRAPPED_PEER_FAILURE_MARKERS if wrapped else PEER_FAILURE_MARKERS
    return (isinstance(error, RuntimeError) or wrapped) and any(marker in text for marker in markers)


def report_peer_failure(command: str, error: BaseException) -> int:
    """One line on rank 0 (unless ``launch`` started this worker: it reports); exit code ``PEER_FAILURE_EXIT``."""
    if is_main_process() and os.environ.get(LAUNCHED_ENV) != "1":
        lines = str(error).splitlines() or [type(error).__name__]
        # A wrapped error (DCP's CheckpointException) says what happened on one of its later lines.
        reason = next((line for line in lines if any(m in line for m in WRAPPED_PEER_FAILURE_MARKERS)), lines[0])
        reason = re.sub(r"^\w+Error: ", "", reason)
        reason = re.sub(r"^\[[^\]]*\] ", "", reason).split(". This is typically")[0]  # gloo's source location
        print(f"unmask {command}: error: lost another process of the job ({reason}); "
              "continue from the last checkpoint with --resume", file=sys.stderr)
    return PEER_FAILURE_EXIT


def launch(nproc: int, argv: list[str]) -> int:
    """``unmask train --nproc N``: run ``unmask ARGV`` in N worker processes on this machine.

    The same as ``torchrun --standalone --nproc-per-node N -m unmask ARGV``, through torchrun's
    launcher API. A worker that dies takes the others down (no restarts) and is reported in one
    line; the workers' own messages (rank 0's) are printed as they happen.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        print("unmask train: error: --nproc must be at least 1", file=sys.stderr)
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
        return _report_child_failure(err)
    except (KeyboardInterrupt, SignalException):  # the workers are stopped by then
        print("unmask train: interrupted; continue from the last checkpoint with --resume", file=sys.stderr)
        return 130
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return 0


def _report_child_failure(err: object) -> int:
    failures = err.failures  # {global rank: ProcessFailure}
    # A worker that exited with an error has said why (rank 0 prints user errors, any rank a
    # traceback): pass its status on. Those stopped by the launcher (SIGTERM) or by a lost peer
    # are consequences; a worker killed otherwise is the cause, and is reported here.
    errored = sorted(rank for rank, f in failures.items() if f.exitcode > 0 and f.exitcode != PEER_FAILURE_EXIT)
    if errored:
        return failures[errored[0]].exitcode
    killed = sorted((f.exitcode == -signal.SIGTERM, rank) for rank, f in failures.items() if f.exitcode < 0)
    if killed:
        rank = killed[0][1]
        cause = f"a worker process died (rank {rank}, signal {failures[rank].signal_name()})"
    else:
        cause = "a worker process lost contact with the others"
    print(f"unmask train: error: {cause}; continue from the last complete checkpoint with --resume", file=sys.stderr)
    return 1
