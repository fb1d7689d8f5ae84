"""The paper's denoiser: a diffusion transformer (DiT) over tokens.

Token embedding -> N pre-norm blocks (rotary self-attention, GELU MLP x4, adaLN modulation from a
sinusoidal time embedding) -> adaLN final norm -> untied output head over every id (MASK included;
the objective removes MASK's mass). The adaLN projections and the output layer start at zero, so
each block starts as the identity and the first prediction is uniform (as in DiT, Peebles & Xie).
One departure from the reference DiT, for speed and not part of the MDLM math: by default the
exact (erf) GELU instead of its tanh approximation (they differ by < 1e-3; on CPU the erf kernel is
~5x faster in bf16); ``gelu="tanh"`` is the reference's, for its released checkpoints. As in the
reference, dropout acts on the residual branches only (see ``Block.forward``).

Causal mode (``causal=True``) turns the same backbone into the AR baseline.

The model implements the optional parts of the denoiser protocol (``unmask.denoiser``):
``where`` selects the positions the output head runs on, and ``attention_mask`` hides padding.
For block diffusion (BD3-LM) it also runs block-causal (``block_size=``), vectorised over the noisy
and clean sequence (``x0=``) and with a key/value cache of finished blocks (``cache=``): see
:mod:`unmask.models.block_attention`. None of it costs the plain path anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unmask.models.block_attention import (
    ATTENTIONS,
    BlockMask,
    KVCache,
    LayerCache,
    block_attention_mask,
    cached_block_mask,
    flex_attend,
)
from unmask.models.dropout import Dropout

GELUS = ("erf", "tanh")


def _derived(source: str):
    """A field a run configuration does not set: it follows from ``source`` (see ``Config.model_config``)."""
    return {"derived": source}


@dataclass
class DiTConfig:
    """The denoiser's architecture: the one model configuration (the ``model:`` section of a run's config).

    Defaults are the paper's "small" model (12 x 768, 12 heads; 169.6M parameters with the GPT-2
    vocabulary). In a run configuration ``vocab_size``, ``length`` and ``causal`` are not set by
    hand: they follow from the tokenizer, ``data.length`` and ``objective.name``.
    """

    vocab_size: int | None = field(default=None, metadata=_derived("the tokenizer's vocabulary"))
    length: int = field(default=1024, metadata=_derived("data.length"))
    n_layers: int = 12
    hidden: int = 768
    n_heads: int = 12
    cond_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False
    causal: bool = field(default=False, metadata=_derived("objective.name"))
    rope_base: float = 10000.0
    gelu: str = "erf"  # "erf" (exact, faster on CPU) or "tanh" (the reference DiT's approximation)
    attention: str = "sdpa"  # block diffusion's masks: "sdpa" (everywhere) or "flex" (FlexAttention kernels)
    # What the time embedding sees: "t" (1000 t, DDPM/DiT's scale) or "sigma" (-log alpha_t of the log-linear
    # schedule, unscaled: the reference Duo's conditioning, for its released checkpoints).
    time_input: str = "t"

    def to_dict(self) -> dict:
        return asdict(self)


TIME_INPUTS = ("t", "sigma")
LOGLINEAR_EPS = 1e-3  # the log-linear schedule's alpha_1 (unmask.schedules.LogLinear), for time_input "sigma"


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, *, time_input: str = "t") -> Tensor:
    """Sinusoidal features (cos | sin) of the time t in [0, 1]: of 1000 t as in DDPM/DiT, or with ``time_input``
    "sigma" of sigma_t = -log(1 - (1 - eps) t), the log-linear schedule's total noise, as the reference Duo."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    level = -torch.log1p(-(1 - LOGLINEAR_EPS) * t.double()).float() if time_input == "sigma" else 1000.0 * t.float()
    angles = level[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimeEmbedding(nn.Module):
    """t -> conditioning vector c of size cond_dim (sinusoidal features, then a 2-layer MLP)."""

    def __init__(self, cond_dim: int, frequency_dim: int = 256, time_input: str = "t") -> None:
        super().__init__()
        self.frequency_dim, self.time_input = frequency_dim, time_input
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_dim, time_input=self.time_input))


class Rotary(nn.Module):
    """Rotary position embedding (Su et al.): rotates query/key channel pairs by position * frequency.

    The cos/sin tables are computed once in float32 for the model's length and cast to the
    activations' dtype per call (under bf16 autocast the rotation runs in bf16, as q and k do).
    Positions past the table (block-by-block sampling beyond the model's length) are computed on
    demand from float64 angles, so they stay exact however far generation goes.
    """

    def __init__(self, head_dim: int, base: float, max_length: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_length, dtype=torch.float32), inv_freq)
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        self.register_buffer("inv_freq", 1.0 / base**exponents, persistent=False)  # float64, for far positions
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, length: int, dtype: torch.dtype, start: int = 0) -> tuple[Tensor, Tensor]:
        if start + length <= self.cos.shape[0]:
            return self.cos[start : start + length].to(dtype), self.sin[start : start + length].to(dtype)
        positions = torch.arange(start, start + length, dtype=torch.float64, device=self.inv_freq.device)
        angles = torch.outer(positions, self.inv_freq)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [..., L, D]; rotate the two halves of the head dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, in one kernel."""
    return torch.addcmul(shift, x, 1 + scale)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN: x + gate * f(modulate(norm(x)))."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d = config.hidden
        self.n_heads = config.n_heads
        self.causal = config.causal
        self.norm1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d),
            nn.GELU(approximate="none" if config.gelu == "erf" else "tanh"),
            nn.Linear(config.mlp_ratio * d, d),
        )
        self.adaLN = nn.Linear(config.cond_dim, 6 * d)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, c: Tensor, rotary: tuple[Tensor, Tensor], attn_mask: Tensor | BlockMask | None,
                cache: LayerCache | None = None) -> Tensor:
        b, length, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None].chunk(6, dim=-1)

        h = modulate(self.norm1(x), shift1, scale1)
        qkv = self.qkv(h).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        (q, k), v = apply_rotary(qkv[:2], *rotary), qkv[2]  # q and k rotated together: half the kernels
        if cache is not None:  # block-by-block sampling: the finished blocks' keys and values come first
            k, v = cache.extend(k, v)
        # No dropout on the attention weights (the reference DiT has none either): it would force
        # SDPA off its fused kernels onto the [B, H, L, L] math path.
        if attn_mask is None:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        elif isinstance(attn_mask, Tensor):
            h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # a FlexAttention block mask (block diffusion with attention="flex")
            h = flex_attend(q, k, v, attn_mask)
        h = self.attn_out(h.transpose(1, 2).reshape(b, length, d))
        x = torch.addcmul(x, gate1, self.dropout(h))  # x + gate * h

        h = self.mlp(modulate(self.norm2(x), shift2, scale2))
        return torch.addcmul(x, gate2, self.dropout(h))


class DiT(nn.Module):
    """The MDLM denoiser: ``model(x_t, t) -> logits [B, L, V]`` (see :mod:`unmask.denoiser`)."""

    supports_positions = True
    supports_attention_mask = True
    supports_block_diffusion = True  # block_size=, x0=, cache= (unmask.models.block_attention)

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.vocab_size < 1:
            raise ValueError(f"DiTConfig.vocab_size must be a positive number of ids, got {config.vocab_size}")
        if config.hidden % config.n_heads:
            raise ValueError(f"hidden size {config.hidden} is not divisible by n_heads {config.n_heads}")
        if config.gelu not in GELUS:
            raise ValueError(f"DiTConfig.gelu must be one of {', '.join(GELUS)}, got {config.gelu!r}")
        if config.time_input not in TIME_INPUTS:
            raise ValueError(f"DiTConfig.time_input must be one of {', '.join(TIME_INPUTS)}, got {config.time_input!r}")
        if config.attention not in ATTENTIONS:
            raise ValueError(f"DiTConfig.attention must be one of {', '.join(ATTENTIONS)}, got {config.attention!r}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.time_embed = TimeEmbedding(config.cond_dim, time_input=config.time_input)
        self.rotary = Rotary(config.hidden // config.n_heads, config.rope_base, config.length)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_final = nn.LayerNorm(config.hidden, bias=False)
        self.adaLN_final = nn.Linear(config.cond_dim, 2 * config.hidden)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, std=0.02)
        # Zero-initialised adaLN and output layer: blocks start as the identity, logits at zero.
        for module in [*(block.adaLN for block in self.blocks), self.adaLN_final, self.head]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def reads_time(self) -> bool:
        """Whether its output depends on t (time conditioning; :mod:`unmask.denoiser`)."""
        return self.config.time_conditioning

    def num_parameters(self, *, embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if embeddings else total - self.embed.weight.numel() - self.head.weight.numel()

    def forward(
        self,
        x_t: Tensor,
        t: Tensor | None = None,
        *,
        where: Tensor | None = None,
        attention_mask: Tensor | None = None,
        block_size: int | None = None,
        x0: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Logits [B, L, V], or [N, V] at the True positions of ``where`` [B, L] (row-major).

        Block diffusion (:mod:`unmask.models.block_attention`): ``block_size`` alone makes the pass
        block-causal; with ``x0`` (the clean sequence, [B, L]) it is the vectorised pass over
        [x_t, x0] and the logits are those of x_t; ``cache`` lets x_t (new tokens) attend to the
        finished blocks' keys and values, positions continuing after them (block-causal among
        them with ``block_size``).
        """
        x, c = self._hidden(x_t, t, attention_mask, block_size, x0, cache)
        if x0 is not None:
            x = x[:, : x_t.shape[1]]  # the noisy half
        shift, scale = self.adaLN_final(c)[:, None].chunk(2, dim=-1)
        if where is None:
            return self.head(modulate(self.norm_final(x), shift, scale))
        rows = where.nonzero()[:, 0]
        h = modulate(self.norm_final(x[where]), shift[rows, 0], scale[rows, 0])
        return self.head(h)

    def new_cache(self, block_size: int) -> KVCache:
        """An empty key/value cache for sampling blocks of ``block_size``: it keeps the model's length minus a block."""
        if not 0 < block_size <= self.config.length:
            raise ValueError(f"block size {block_size} must be in [1, {self.config.length}] (the model's length)")
        return KVCache(self.config.n_layers, self.config.length - block_size)

    @torch.no_grad()
    def extend_cache(self, cache: KVCache, tokens: Tensor) -> None:
        """Append a finished block ``tokens`` [B, n] to ``cache``: its keys and values at every layer,
        computed once, seeing the cache and itself (as the block-causal pass computes them)."""
        self._hidden(tokens, None, None, None, None, cache)
        cache.commit()

    def _hidden(self, x_t: Tensor, t: Tensor | None, attention_mask: Tensor | None, block_size: int | None,
                x0: Tensor | None, cache: KVCache | None) -> tuple[Tensor, Tensor]:
        """The last block's output [B, L (or 2L), hidden] and the conditioning vector c [B, cond]."""
        b, length = x_t.shape[:2]
        # A cached block-causal pass limits what each token sees to the model's length itself (its window).
        context = 0 if cache is None or block_size is not None else cache.length
        if length + context > self.config.length:
            raise ValueError(f"sequence length {length + context} exceeds the model's length {self.config.length}")
        blockwise = block_size is not None or x0 is not None or cache is not None
        if blockwise and self.config.time_conditioning:
            raise ValueError("block diffusion gives every block its own time: it needs a DiT without time conditioning")
        # Without time conditioning the model sees t = 0 always: SUBS makes t redundant (paper 3.2.3).
        if t is None or not self.config.time_conditioning:
            t = torch.zeros(b, device=x_t.device)
        c = F.silu(self.time_embed(t))
        dtype = torch.get_autocast_dtype(x_t.device.type) if torch.is_autocast_enabled(x_t.device.type) else None
        dtype = dtype or self.embed.weight.dtype
        padding = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        if not blockwise:
            rotary = self.rotary(length, dtype)
            attn_mask = None
            if padding is not None:
                attn_mask = padding[:, None, None, :].bool()
                if self.config.causal:
                    attn_mask = attn_mask & torch.ones(length, length, dtype=torch.bool, device=x_t.device).tril()
            x = self._embed(x_t)
        else:
            x, rotary, attn_mask = self._block_inputs(x_t, dtype, padding, block_size, x0, cache)

        layers = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer in zip(self.blocks, layers):
            x = block(x, c, rotary, attn_mask, layer)
        return x, c

    def _embed(self, x_t: Tensor) -> Tensor:
        """Input embeddings of ids [B, L], or of probability vectors [B, L, V] as the mixture of the embeddings
        with those weights (Duo's relaxed inputs during its curriculum)."""
        if x_t.is_floating_point():
            return x_t.to(self.embed.weight.dtype) @ self.embed.weight
        return self.embed(x_t)

    def _block_inputs(self, x_t: Tensor, dtype: torch.dtype, padding: Tensor | None, block_size: int | None,
                      x0: Tensor | None, cache: KVCache | None):
        """Embeddings, rotary tables and attention mask of a block-causal, vectorised or cached pass."""
        length = x_t.shape[1]
        if block_size is not None and (block_size < 1 or length % block_size):
            raise ValueError(f"block_size must divide the sequence length {length}, got {block_size}")
        if cache is not None:
            if x0 is not None or padding is not None:
                raise ValueError("a cached pass takes new tokens only (no x0 or padding)")
            mask = None if block_size is None else cached_block_mask(cache.length, length, block_size,
                                                                     cache.capacity, x_t.device)
            return self._embed(x_t), self.rotary(length, dtype, start=cache.end), mask
        if block_size is None:
            raise ValueError("the vectorised pass (x0=) needs block_size")
        cos, sin = self.rotary(length, dtype)
        mask = block_attention_mask(length, block_size, vectorised=x0 is not None, attention_mask=padding,
                                    attention=self.config.attention, device=x_t.device)
        if x0 is None:
            return self._embed(x_t), (cos, sin), mask
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x_t {tuple(x_t.shape)} must have the same shape")
        # The clean copy of each position has the noisy copy's rotary position.
        return self.embed(torch.cat([x_t, x0], dim=1)), (cos.repeat(2, 1), sin.repeat(2, 1)), mask
