"""Block diffusion (BD3-LM, Arriola et al. 2025) in the DiT: attention masks and a key/value cache.

A sequence of length L is cut into blocks of ``block_size`` tokens; block b is generated after
blocks 0..b-1 and sees them clean. Three ways to run the DiT on that factorisation:

- **Block-causal** (``block_size=``): every token sees its own block and the blocks before it.
  On a sequence of clean blocks followed by one noisy block, the noisy block's logits are the
  denoiser p_theta(x^b | x_t^b, x^{<b}) of the paper.
- **Vectorised training** (``x0=`` with ``block_size=``): the input is the noisy sequence x_t
  followed by the clean one x0 (length 2L, as the paper trains), under one mask:
  a noisy block sees itself (block diagonal) and the clean blocks before it (offset
  block-causal); a clean block sees the clean blocks up to and including itself (block-causal)
  and never the noisy half. The clean copy of a position has the same rotary position as its
  noisy copy, so each noisy block gets exactly the logits of the block-causal pass on its clean
  prefix followed by it, for every block in one forward pass.
- **Cached** (``cache=``): new tokens (the block being sampled) see the cached keys and values of
  the finished blocks and each other; their positions continue after the cache. The keys and
  values of a finished block are computed once, as the block-causal pass computes them, and
  appended (:meth:`unmask.models.DiT.extend_cache`, or :meth:`KVCache.commit` after a cached
  block-causal pass over the finished block followed by the next one, which fills the cache and
  answers the next block's first call in one pass).

SDPA with a boolean mask runs everywhere; with ``DiTConfig.attention="flex"`` the vectorised and
block-causal masks use FlexAttention's block-sparse kernels instead on CUDA (same results; it
compiles the kernel on first use), which skip the blocks the mask hides.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

try:  # FlexAttention (torch >= 2.5): optional
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = create_block_mask = flex_attention = None

ATTENTIONS = ("sdpa", "flex")


def _block_ids(length: int, block_size: int, device: torch.device | str | None) -> Tensor:
    return torch.arange(length, device=device) // block_size


def block_causal_mask(length: int, block_size: int, device: torch.device | str | None = None) -> Tensor:
    """Bool [L, L]: query i sees key j when j's block is not after i's block."""
    block = _block_ids(length, block_size, device)
    return block[:, None] >= block[None, :]


def block_diffusion_mask(length: int, block_size: int, device: torch.device | str | None = None) -> Tensor:
    """Bool [2L, 2L] over the vectorised input [x_t, x0]: see the module docstring."""
    block = _block_ids(length, block_size, device).repeat(2)
    noisy = torch.arange(2 * length, device=device) < length
    q_block, k_block, q_noisy, k_noisy = block[:, None], block[None, :], noisy[:, None], noisy[None, :]
    itself = q_noisy & k_noisy & (q_block == k_block)
    clean_before = q_noisy & ~k_noisy & (k_block < q_block)
    clean_causal = ~q_noisy & ~k_noisy & (k_block <= q_block)
    return itself | clean_before | clean_causal


def _mask_rule(length: int, block_size: int, vectorised: bool):
    """The masks above as a FlexAttention ``mask_mod(batch, head, q, k)`` (index arithmetic only)."""

    def block_causal(b, h, q, k):
        return q // block_size >= k // block_size

    def vectorised_rule(b, h, q, k):
        q_noisy, k_noisy = q < length, k < length
        q_block, k_block = (q % length) // block_size, (k % length) // block_size
        itself = q_noisy & k_noisy & (q_block == k_block)
        clean_before = q_noisy & ~k_noisy & (k_block < q_block)
        clean_causal = ~q_noisy & ~k_noisy & (k_block <= q_block)
        return itself | clean_before | clean_causal

    return vectorised_rule if vectorised else block_causal


@functools.cache
def flex_block_mask(length: int, block_size: int, vectorised: bool, device: str):
    """FlexAttention's block mask for the block-causal ([L, L]) or vectorised ([2L, 2L]) rule, built once."""
    size = 2 * length if vectorised else length
    return create_block_mask(_mask_rule(length, block_size, vectorised), None, None, size, size, device=device)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    """Attention under a FlexAttention block mask (the kernel is compiled on first use)."""
    return _compiled_flex()(q, k, v, block_mask=block_mask)


def flex_available() -> bool:
    return flex_attention is not None


def cached_block_mask(context: int, length: int, block_size: int, capacity: int, device: torch.device) -> Tensor:
    """Bool [n, context + n] of a cached pass over n new tokens (whole blocks) after ``context`` cached ones:
    a token sees its own block and the last ``capacity`` positions before that block (the sliding window)."""
    start = context + torch.arange(length, device=device)[:, None] // block_size * block_size  # its block's start
    key = torch.arange(context + length, device=device)[None, :]
    return ((key >= start) & (key < start + block_size)) | ((key < start) & (key >= start - capacity))


def block_attention_mask(
    length: int,
    block_size: int,
    *,
    vectorised: bool,
    attention_mask: Tensor | None,
    attention: str,
    device: torch.device,
):
    """The mask of a block-causal or vectorised pass: a FlexAttention block mask when asked for (and
    there is no padding), else a bool tensor [L, L] / [2L, 2L], or [B, 1, Q, K] with padding keys hidden.

    FlexAttention has no backward pass on CPU: there it serves inference only, and training uses SDPA.
    """
    flex = attention == "flex" and flex_available() and (device.type == "cuda" or not torch.is_grad_enabled())
    if flex and attention_mask is None:
        return flex_block_mask(length, block_size, vectorised, str(device))
    rule = block_diffusion_mask if vectorised else block_causal_mask
    mask = rule(length, block_size, device)
    if attention_mask is not None:
        keys = attention_mask.bool().repeat(1, 2) if vectorised else attention_mask.bool()
        mask = mask & keys[:, None, None, :]
    return mask


class LayerCache:
    """One layer's cached keys and values [B, H, n, Dh], and the fresh ones of the latest pass."""

    def __init__(self, keys: Tensor | None = None, values: Tensor | None = None) -> None:
        self.keys, self.values = keys, values
        self.fresh: tuple[Tensor, Tensor] | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values the new tokens attend to: the cached ones, then their own."""
        self.fresh = (k, v)
        if self.keys is None:
            return k, v
        return torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)


class KVCache:
    """Keys and values of the finished blocks at every layer, for sampling block by block.

    ``capacity`` is the number of positions kept (the model's length minus one block): beyond it the
    oldest positions are dropped, so generation continues past the model's length with a sliding
    window. The kept keys are those computed when their block finished (they saw the blocks before
    it), as in the reference code; positions keep counting (``end``), which rotary attention
    does not mind (it depends on position differences only). ``fills`` counts the blocks appended.
    """

    def __init__(self, n_layers: int, capacity: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.capacity = capacity
        self.end = 0
        self.fills = 0

    @property
    def length(self) -> int:
        """Positions held now."""
        keys = self.layers[0].keys
        return 0 if keys is None else keys.shape[2]

    def rows(self, index: Tensor | None) -> KVCache:
        """A read-only view on some rows (all of them for None), for a call on part of the batch."""
        if index is None:
            return self
        view = KVCache(0, self.capacity)
        view.layers = [LayerCache(None if layer.keys is None else layer.keys[index],
                                  None if layer.values is None else layer.values[index]) for layer in self.layers]
        view.end = self.end
        return view

    def commit(self, count: int | None = None) -> None:
        """Append the keys and values of the latest pass at every layer (its first ``count`` positions: a
        finished block), then trim to the capacity."""
        added = 0
        for layer in self.layers:
            if layer.fresh is None:
                raise RuntimeError("no pass to commit: run the finished block through the model with this cache")
            k, v = (tensor[:, :, :count] for tensor in layer.fresh)
            added = k.shape[2]
            if layer.keys is not None:
                k, v = torch.cat([layer.keys, k], dim=2), torch.cat([layer.values, v], dim=2)
            start = max(0, k.shape[2] - self.capacity)
            layer.keys, layer.values, layer.fresh = k[:, :, start:], v[:, :, start:], None
        self.end += added
        self.fills += 1
