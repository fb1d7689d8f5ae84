"""A denoiser run at one fixed (batch, length) shape: on a GPU, replayed from a CUDA graph.

Why. A sampler calls the network hundreds of times on small batches (at batch 1, DiT small is
about 200 kernels per call). On a GPU each kernel then finishes long before Python has launched
the next one, so the launches, not the FLOPs, set the time: about 18 ms per call in the reference
code against 1.3 ms for the same call captured in a CUDA graph on an H100. A graph replays a fixed
sequence of kernels on fixed memory, so every call must have the same shape, and the cached
sampler's calls do not: they ask for the rows that unmask something and for logits only where
tokens unmask.

How. :class:`StaticShapeDenoiser` copies the R <= ``batch_size`` rows of a call into fixed input
buffers of ``[batch_size, length]`` (the other rows keep whatever they held: every row's output
depends on that row alone), runs the model on all of them with the full output head, and returns
the logits of the rows and positions asked for. On CUDA the run is a CUDA graph, captured on the
first call (one graph per autocast setting, since the captured kernels fix the dtypes); elsewhere
it is the plain call at the fixed shape, which ``compile=True`` hands to ``torch.compile`` once
instead of once per shape. The graph's output is overwritten by the next replay, so what is
returned is always a copy.

The logits are those of the plain call, so the samples are the same for a seed (up to rounding
that depends on the batch size, which only ever moves a draw that sits on a boundary). It is for
inference only (calls run under ``torch.inference_mode``), and on CUDA the wrapped denoiser's call
must not wait for the host (no ``.item()``, no data-dependent shapes), as a CUDA graph requires:
``unmask.DiT`` called without ``where`` and ``attention_mask`` is such a call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unmask.denoiser import Denoiser, denoise

# Calls before a capture: they trigger every lazy initialisation (cuBLAS workspaces, kernel
# choice, torch.compile) outside the graph, on a side stream as CUDA graphs require.
WARMUP_CALLS = 3

AutocastKey = tuple[bool, torch.dtype | None]


class StaticShapeDenoiser(torch.nn.Module):
    """``denoiser`` run at one shape ``[batch_size, length]``; calls of up to ``batch_size`` rows of
    that length (see the module docstring). Accepts ``where`` like ``unmask.DiT`` does."""

    supports_positions = True

    def __init__(self, denoiser: Denoiser, *, batch_size: int, length: int, compile: bool = False) -> None:
        super().__init__()
        if batch_size < 1 or length < 1:
            raise ValueError(f"a static shape needs batch_size and length >= 1, got [{batch_size}, {length}]")
        self.denoiser = denoiser
        self.batch_size, self.length = batch_size, length
        # dynamic=False: one shape, so one compilation; no graphs from torch.compile (this module makes them).
        self._forward: Callable[[Tensor, Tensor], Tensor] = (
            torch.compile(self._full_logits, dynamic=False) if compile else self._full_logits)
        self._x: Tensor | None = None  # the fixed inputs [batch_size, length] and [batch_size]
        self._t: Tensor | None = None
        self._graphs: dict[AutocastKey, tuple[torch.cuda.CUDAGraph, Tensor]] = {}

    def _full_logits(self, x_t: Tensor, t: Tensor) -> Tensor:
        return denoise(self.denoiser, x_t, t)

    def forward(self, x_t: Tensor, t: Tensor, where: Tensor | None = None) -> Tensor:
        """Logits [R, L, V] of the R rows of ``x_t`` [R, L], or [N, V] at the True positions of ``where``."""
        rows, length = x_t.shape
        if length != self.length or rows > self.batch_size:
            raise ValueError(f"this denoiser runs at the static shape [{self.batch_size}, {self.length}]; a call "
                             f"of {rows} rows of length {length} does not fit")
        with torch.inference_mode():
            if self._x is None or self._x.device != x_t.device:
                self._x = torch.zeros(self.batch_size, self.length, dtype=torch.long, device=x_t.device)
                self._t = torch.zeros(self.batch_size, device=x_t.device)
                self._graphs.clear()
            self._x[:rows].copy_(x_t)
            self._t[:rows].copy_(t)
            logits = self._replay() if x_t.device.type == "cuda" else self._forward(self._x, self._t)
            logits = logits[:rows]
            # A copy either way: a graph's output is overwritten by the next replay.
            return logits.clone() if where is None else logits[where]

    def _replay(self) -> Tensor:
        key = _autocast_key("cuda")
        if key not in self._graphs:
            self._graphs[key] = self._capture(key)
        graph, output = self._graphs[key]
        graph.replay()
        return output

    def _capture(self, key: AutocastKey) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        enabled, dtype = key

        # The caller's autocast, but casting the weights inside the graph: autocast's cache of cast
        # weights is emptied when the caller's autocast region ends, and a graph that read a cached
        # copy would replay on freed memory.
        def recast() -> torch.autocast:
            return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), recast():
            for _ in range(WARMUP_CALLS):
                self._forward(self._x, self._t)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), recast():
            output = self._forward(self._x, self._t)
        return graph, output


def _autocast_key(device_type: str) -> AutocastKey:
    """Whether autocast is on for ``device_type`` and in which dtype: what a captured graph fixes."""
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, torch.get_autocast_dtype(device_type) if enabled else None
