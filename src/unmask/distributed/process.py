"""This process's place in a job of several (torchrun), and the few collective steps unmask needs.

:func:`setup` joins the process group that ``torchrun`` describes in the environment (nccl on
CUDA, gloo on CPU) and picks this process's device; a single process gets a :class:`Parallel`
whose methods do nothing. Rank 0 alone prints, logs and writes the run's files.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from unmask.runtime import resolve_device

T = TypeVar("T")


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

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (JSON-like data) on every process."""
        if not self.is_distributed:
            return obj
        message = [obj]
        dist.broadcast_object_list(message, src=0, device=self.device)
        return message[0]

    def main_only(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only (its result there, None elsewhere); the others wait for it.

        An error on rank 0 is raised on every rank, so that no process waits for it forever.
        """
        if not self.is_distributed:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
                error = err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")
        error = self.broadcast(error)
        if error is not None:
            raise error
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the other ranks: rank 0 creates files, the others reuse them."""
        result = self.main_only(fn)
        return result if self.is_main else fn()

    def scale_loss(self, loss: Tensor) -> Tensor:
        """DDP and FSDP average gradients over processes; the loop wants their sum."""
        return loss * self.world_size if self.is_distributed else loss


def _picklable(error: BaseException) -> bool:
    try:
        pickle.dumps(error)
    except Exception:  # noqa: BLE001 - anything that cannot travel is sent as text
        return False
    return True


def setup(device: str = "auto") -> Parallel:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or describe one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    initialized = dist.is_available() and dist.is_initialized()
    chosen = resolve_device(device)
    if world_size <= 1 and not initialized:
        return Parallel(device=chosen)
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank if chosen.index is None else chosen.index)
        torch.cuda.set_device(chosen)
    if not initialized:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=chosen if chosen.type == "cuda" else None)
    return Parallel(device=chosen, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown() -> bool:
    """Leave the process group, if this process joined one; True if it did."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def exit_process(status: int) -> NoReturn:
    """End a worker of a multi-process job once its work is done and its output flushed.

    ``os._exit`` skips the interpreter's teardown, where the C++ threads of a destroyed process
    group sometimes abort the process ("terminate called without an active exception", seen in 1
    of 6 runs on a loaded 2-core machine, after every file had been written).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
