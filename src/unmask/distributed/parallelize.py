"""Activation checkpointing, compilation and data parallelism, applied to a plain model from outside.

As torchtitan's parallelize functions do: the model is written for one device and knows nothing
of these; :func:`parallelize` applies, in this order,

1. activation checkpointing (``parallel.activation_checkpointing``): each block keeps only its
   input and recomputes its activations in the backward pass;
2. ``torch.compile`` of each block (``train.compile``), where a compiler works here;
3. DDP (``parallel.strategy=ddp``, a wrapper) or FSDP2 (``fsdp``, each block and then the root
   sharded in place) when the job has several processes.

Parameter names stay those of the plain model (what the optimizer, the EMA and the checkpoints
use), and the model's capabilities (``where=``, attention masks) are read through the wrapper
by :func:`unmask.denoiser.capabilities`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from unmask.config import ParallelConfig
from unmask.distributed.process import Parallel


def parallelize(model: nn.Module, parallel: Parallel, config: ParallelConfig, *, precision: str,
                compile: bool = False) -> nn.Module:
    """Apply what the configuration asks for; returns what the training loop calls (DDP's wrapper,
    or ``model`` itself)."""
    blocks = list(getattr(model, "blocks", []))
    if config.activation_checkpointing:
        own = getattr(model, "checkpoint_activations", None)  # a model whose library has its own (transformers)
        if own is not None:
            own()
        else:
            for block in blocks:
                apply_activation_checkpointing(block)
    if compile and compiler_works():
        for block in blocks:
            block.compile(dynamic=True)
    if not parallel.is_distributed:
        return model
    if config.strategy == "fsdp":
        # Inputs keep their dtypes (times and rotary angles stay float32); autocast and the bf16
        # parameters make the matrix products bf16. Gradients are reduced in float32.
        bf16 = dict(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else {}
        policy = MixedPrecisionPolicy(cast_forward_inputs=False, **bf16)
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    device_ids = [parallel.device] if parallel.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def apply_activation_checkpointing(block: nn.Module) -> None:
    """Recompute ``block`` in the backward pass instead of keeping its activations.

    The block's own ``forward`` is replaced (not the block wrapped), so parameter names stay the same.
    """
    plain = block.forward

    @functools.wraps(plain)
    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            return plain(*args, **kwargs)
        return checkpoint(plain, *args, use_reentrant=False, **kwargs)

    block.forward = forward


@functools.cache
def compiler_works() -> bool:
    """Whether torch.compile can build kernels here (a C compiler, a supported platform); warns once if not."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(4))
    except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
        warnings.warn(f"torch.compile does not work here ({type(err).__name__}: {str(err).splitlines()[0]}); "
                      "running eagerly", stacklevel=3)
        return False
    return True


def is_sharded(model: nn.Module) -> bool:
    """True for a model sharded with FSDP2: every forward pass is then a collective step."""
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(forward: nn.Module, enabled: bool) -> Iterator[None]:
    """Within it, backward passes reduce gradients across processes only if ``enabled``
    (off for all but the last micro-batch of a step: the reduction then happens once)."""
    if isinstance(forward, DistributedDataParallel) and not enabled:
        with forward.no_sync():
            yield
        return
    if isinstance(forward, FSDPModule):
        forward.set_requires_gradient_sync(enabled)
    yield
