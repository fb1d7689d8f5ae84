"""A pretrained causal LM (any Hugging Face ``AutoModelForCausalLM``) as a masked diffusion denoiser.

Adapting an autoregressive model rather than training from random weights is how DiffuLLaMA and
DiffuGPT (Gong et al., ICLR 2025), Dream 7B and Fast-dLLM v2 start. What changes:

- **Attention.** The causal mask becomes bidirectional (MDLM) or the block-causal mask of BD3-LM
  (:mod:`unmask.models.block_attention`), always passed as an additive float mask [B, 1, Q, K]
  (0 = seen, the float minimum = hidden): a boolean mask with padding is silently wrong under
  transformers' eager attention. **Annealing** (DiffuLLaMA, section 3.2): while ``future`` < 1 each
  query also sees a random fraction ``future`` of the positions after it in its block (its block is the
  whole sequence for MDLM), on top of the causal ones; the trainer raises it from 0 to 1 over
  ``anneal_steps`` (:meth:`CausalLM.set_training_step`). Evaluation and sampling use the same ``future``:
  1 once annealing is over or for a loaded model.
- **The shift** (DiffuLLaMA, Dream): the logits of position i are read from position i - 1's output, so the
  pretrained next-token head keeps its meaning. With the causal mask this is exactly the AR model: the logits
  at a masked position after a clean prefix are the AR model's next-token logits. Position 0 has no
  predecessor; every sequence unmask builds starts with BOS, so its logits put all mass on BOS. In the
  vectorised BD3-LM pass a block's first position reads the clean copy of the position before it (which sees
  the clean blocks up to its own), the same output a block-by-block sampler reads from its cache
  (:class:`ShiftedKVCache`).
- **MASK** is a token id of the tokenizer (a new one after the vocabulary, or its own): the embedding
  rows are resized when needed and the MASK row set to the mean embedding (:func:`adapted_rows`).
- **Time** is ignored: SUBS makes it redundant (MDLM section 3.2.3), as Dream and DiffuLLaMA drop it.
- **LoRA** (``lora_rank`` > 0, through ``peft``): adapters on the linear layers ``lora_targets``; every
  other weight is frozen (the embedding with it, so the MASK row stays the mean embedding). At
  initialisation the adapters change nothing; :meth:`CausalLM.merged` folds them into the weights.

The configuration holds the transformers configuration itself, so a checkpoint rebuilds the model
without the original weights file (:func:`unmask.models.build_model`, then the checkpoint's weights).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from unmask.errors import ConfigError, require
from unmask.models.block_attention import KVCache, block_causal_mask, block_diffusion_mask, cached_block_mask

# The logit of every id but BOS at position 0 (no predecessor): exp(-1e4) is 0 in every float type.
NO_PREDECESSOR_LOGIT = -1e4
ALL_LINEAR = "all-linear"


@dataclass
class CausalLMConfig:
    """An adapted causal LM (``model.json`` of its checkpoints).

    ``hf_config`` is the transformers configuration (``config.to_dict()``, embedding rows included);
    ``vocab_size`` the tokenizer's ids (MASK included), the width of the logits; ``length`` the run's
    sequence length; ``source`` what it was adapted from (``adapt.init``, for the record).
    """

    hf_config: dict
    vocab_size: int
    mask_id: int
    bos_id: int
    length: int
    shift: bool = True
    anneal_steps: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ALL_LINEAR
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _transformers_model(hf_config: dict) -> nn.Module:
    """A freshly initialised causal LM of ``hf_config`` (its weights come from a checkpoint next)."""
    require("transformers", "an adapted causal LM")
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(hf_config)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def lora_targets(text: str) -> str | list[str]:
    """peft's ``target_modules`` of ``adapt.lora_targets``: "all-linear" or comma-separated module names."""
    return ALL_LINEAR if text.strip() == ALL_LINEAR else [name.strip() for name in text.split(",") if name.strip()]


def _inject_lora(lm: nn.Module, config: CausalLMConfig) -> None:
    """LoRA adapters in place (peft freezes every other weight); B starts at zero, so nothing changes yet."""
    require("peft", "adapt.lora_rank (LoRA)")
    import peft

    lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=lora_targets(config.lora_targets), bias="none")
    try:
        peft.inject_adapter_in_model(lora, lm)
    except ValueError as err:
        raise ConfigError(f"adapt.lora_targets={config.lora_targets!r} does not fit this model "
                          f"({str(err).splitlines()[0]}); name its linear layers (e.g. q_proj,v_proj) or "
                          f"use {ALL_LINEAR}") from None


def additive(allowed: Tensor) -> Tensor:
    """The float attention mask of a boolean one: 0 where a key is seen, the float32 minimum where hidden."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def annealed_mask(length: int, block_size: int, *, vectorised: bool, future: float,
                  device: torch.device) -> Tensor:
    """Bool [L, L] (or [2L, 2L] over [x_t, x0]): the block-causal (or vectorised BD3-LM) mask in which,
    within each block, a query sees the positions up to its own and a random fraction ``future`` of those
    after it (DiffuLLaMA's annealing; ``future`` = 1 is the mask itself, 0 causal within blocks)."""
    allowed = (block_diffusion_mask if vectorised else block_causal_mask)(length, block_size, device)
    if future >= 1:
        return allowed
    size = allowed.shape[0]
    position = torch.arange(size, device=device) % length
    seen = position[None, :] <= position[:, None]
    if future > 0:
        upper = torch.rand(length, length, device=device) < future  # one draw shared by both copies
        seen = seen | upper[position[:, None], position[None, :]]
    half = torch.arange(size, device=device) < length
    within = (position[:, None] // block_size == position[None, :] // block_size) & (half[:, None] == half[None, :])
    return torch.where(within, allowed & seen, allowed)


class ShiftedKVCache(KVCache):
    """The key/value cache of finished blocks, and the output of their last position: under the shift
    the first position of the next block reads its logits from there."""

    def __init__(self, n_layers: int, capacity: int) -> None:
        super().__init__(n_layers, capacity)
        self.last: Tensor | None = None  # [B, hidden]
        self.fresh_outputs: Tensor | None = None  # the latest pass's outputs [B, n, hidden]

    def rows(self, index: Tensor | None) -> ShiftedKVCache:
        if index is None:
            return self
        view = ShiftedKVCache(0, self.capacity)
        view.layers, view.end = super().rows(index).layers, self.end
        view.last = None if self.last is None else self.last[index]
        return view

    def commit(self, count: int | None = None) -> None:
        outputs = self.fresh_outputs
        super().commit(count)
        self.last = outputs[:, (outputs.shape[1] if count is None else count) - 1]
        self.fresh_outputs = None


class CausalLM(nn.Module):
    """``model(x_t, t) -> logits [B, L, vocab_size]`` of an adapted causal LM (see the module docstring);
    ``lm`` is the transformers model, built from ``config.hf_config`` when not given."""

    supports_positions = True
    supports_attention_mask = True
    supports_block_diffusion = True  # block_size=, x0=, cache=

    def __init__(self, config: CausalLMConfig, lm: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else _transformers_model(config.hf_config)
        if config.lora_rank > 0:
            _inject_lora(self.lm, config)
        # Fraction of the positions after a query (in its block) that it sees: 1 = the diffusion mask.
        self.future = 1.0
        parameters = inspect.signature(self.lm.base_model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # Tied weights (input embedding = output layer) are one tensor: saved once, under its first name.
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_post_hook(_allow_missing_aliases)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's layers: what activation checkpointing, compilation and FSDP treat layer by layer
        (:func:`unmask.distributed.parallelize.parallelize`), as the DiT's blocks."""
        base = self.lm.base_model
        return next((layers for layers in (getattr(base, name, None) for name in ("layers", "h"))
                     if isinstance(layers, nn.ModuleList)), nn.ModuleList())

    def checkpoint_activations(self) -> None:
        """Recompute each layer in the backward pass (``parallel.activation_checkpointing``), the way transformers
        does it for its own layers."""
        if hasattr(self.lm, "activation_checkpointing_enable"):  # its newer name (the old one is deprecated)
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def set_training_step(self, step: int) -> None:
        """Attention-mask annealing: ``future`` rises linearly from 0 to 1 over ``anneal_steps``."""
        steps = self.config.anneal_steps
        self.future = min(1.0, step / steps) if steps > 0 else 1.0

    def forward(self, x_t: Tensor, t: Tensor | None = None, *, where: Tensor | None = None,
                attention_mask: Tensor | None = None, block_size: int | None = None, x0: Tensor | None = None,
                cache: ShiftedKVCache | None = None) -> Tensor:
        """Logits [B, L, V], or [N, V] at the True positions of ``where``; block diffusion as the DiT's
        (``block_size``, ``x0``, ``cache``: see :mod:`unmask.models.block_attention`). ``t`` is ignored."""
        length = x_t.shape[1]
        if cache is not None:
            if x0 is not None or attention_mask is not None:
                raise ValueError("a cached pass takes new tokens only (no x0 or padding)")
            outputs, first = self._cached(x_t, cache, block_size), cache.last
        else:
            outputs, first = self._uncached(x_t, attention_mask, block_size, x0), None
        if self.config.shift:
            before = self._predecessors(outputs, length, block_size, x0, first)
        else:
            before = outputs[:, :length]
        orphan = self.config.shift and first is None  # position 0 has no predecessor: it is BOS
        head = self.lm.get_output_embeddings()
        if where is None:
            logits = head(before)[..., : self.config.vocab_size]
            at_start = torch.arange(length, device=x_t.device)[None, :, None] == 0
        else:
            logits = head(before[where])[..., : self.config.vocab_size]
            at_start = (where.nonzero()[:, 1] == 0)[:, None]
        return torch.where(at_start, self._bos_logits(logits), logits) if orphan else logits

    def _predecessors(self, outputs: Tensor, length: int, block_size: int | None, x0: Tensor | None,
                      first: Tensor | None) -> Tensor:
        """The output each position reads its logits from, position i - 1's [B, L, H] (``first`` for
        position 0, or its own output when there is none: its logits are then BOS's)."""
        noisy = outputs[:, :length]
        before = torch.cat([noisy[:, :1] if first is None else first[:, None], noisy[:, :-1]], dim=1)
        if x0 is not None:  # a block's first position reads the clean copy of the position before it
            starts = torch.arange(block_size, length, block_size, device=outputs.device)
            before[:, starts] = outputs[:, length + starts - 1]
        return before

    def _bos_logits(self, logits: Tensor) -> Tensor:
        """The logits [V] of a position without predecessor: all mass on BOS."""
        bos = torch.full(logits.shape[-1:], NO_PREDECESSOR_LOGIT, dtype=logits.dtype, device=logits.device)
        bos[self.config.bos_id] = 0.0
        return bos

    def _uncached(self, x_t: Tensor, padding: Tensor | None, block_size: int | None, x0: Tensor | None) -> Tensor:
        """Outputs [B, L (2L with x0), H] of a whole-sequence pass: bidirectional, block-causal or vectorised."""
        batch, length = x_t.shape
        if x0 is not None and block_size is None:
            raise ValueError("the vectorised pass (x0=) needs block_size")
        if block_size is not None and (block_size < 1 or length % block_size):
            raise ValueError(f"block_size must divide the sequence length {length}, got {block_size}")
        vectorised = x0 is not None
        allowed = annealed_mask(length, block_size or length, vectorised=vectorised, future=self.future,
                                device=x_t.device)
        positions = torch.arange(length, device=x_t.device)
        ids = x_t
        if vectorised:
            if x0.shape != x_t.shape:
                raise ValueError(f"x0 {tuple(x0.shape)} and x_t {tuple(x_t.shape)} must have the same shape")
            # The clean copy of each position has the noisy copy's position.
            ids, positions = torch.cat([x_t, x0], dim=1), positions.repeat(2)
        if padding is not None and not bool(padding.all()):
            keys = padding.bool().repeat(1, 2) if vectorised else padding.bool()
            allowed = allowed & keys[:, None, None, :]
        mask = additive(allowed.expand(batch, 1, *allowed.shape[-2:]))
        return self._run(ids, positions.expand(batch, -1), mask)

    def _cached(self, x_t: Tensor, cache: ShiftedKVCache, block_size: int | None) -> Tensor:
        """Outputs [B, n, H] of new tokens after the cached ones: they see all of the cache and, among
        themselves, their own block and the blocks before (everything without ``block_size``)."""
        batch, length = x_t.shape
        # As the DiT's: a block-causal pass sees a window of the model's length (its block and the cache's last
        # ``capacity`` positions before it); a pass without blocks sees all of the cache.
        if block_size is None:
            if length + cache.length > self.config.length:
                raise ValueError(f"sequence length {length + cache.length} exceeds the model's length "
                                 f"{self.config.length}")
            allowed = torch.ones(length, cache.length + length, dtype=torch.bool, device=x_t.device)
        else:
            allowed = cached_block_mask(cache.length, length, block_size, cache.capacity, x_t.device)
        mask = additive(allowed.expand(batch, 1, *allowed.shape))
        positions = (cache.end + torch.arange(length, device=x_t.device)).expand(batch, -1)
        past = _transformers_cache([(layer.keys, layer.values) for layer in cache.layers if layer.keys is not None])
        outputs = self._run(x_t, positions, mask, past)
        for layer, filled in zip(cache.layers, past.layers):  # the keys and values of the new tokens
            layer.fresh = (filled.keys[:, :, cache.length:], filled.values[:, :, cache.length:])
        cache.fresh_outputs = outputs
        return outputs

    def _run(self, ids: Tensor, positions: Tensor, mask: Tensor, past: object | None = None) -> Tensor:
        """The transformer's last hidden states (after its final norm) [B, n, H]."""
        extra = {} if past is None else {self._cache_argument: past, "use_cache": True}
        return self.lm.base_model(input_ids=ids, position_ids=positions, attention_mask=mask, **extra)[0]

    def new_cache(self, block_size: int) -> ShiftedKVCache:
        """An empty cache for sampling blocks of ``block_size``: it keeps the model's length minus a block."""
        if not 0 < block_size <= self.config.length:
            raise ValueError(f"block size {block_size} must be in [1, {self.config.length}] (the model's length)")
        return ShiftedKVCache(self.lm.config.get_text_config().num_hidden_layers, self.config.length - block_size)

    def merged(self) -> CausalLM:
        """A copy with the LoRA adapters folded into the weights (itself without adapters): the same logits."""
        if self.config.lora_rank == 0:
            return self
        from peft.tuners.tuners_utils import BaseTunerLayer

        lm = copy.deepcopy(self.lm)
        for name, module in list(lm.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(lm.get_submodule(parent), child, module.get_base_layer())
        merged = CausalLM(replace(self.config, lora_rank=0), lm=lm)
        merged.future = self.future
        return merged


def _transformers_cache(layers: list[tuple[Tensor, Tensor]]) -> object:
    """transformers' dynamic cache holding ``layers`` (keys, values) (empty when there are none)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()


def _aliases(module: nn.Module) -> set[str]:
    """Names of parameters that are another parameter under a second name (tied weights)."""
    first = {name for name, _ in module.named_parameters()}
    return {name for name, _ in module.named_parameters(remove_duplicate=False)} - first


def _drop_aliases(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    for name in _aliases(module):
        state.pop(prefix + name, None)


def _allow_missing_aliases(module: nn.Module, incompatible) -> None:
    aliases = _aliases(module)
    for key in [key for key in incompatible.missing_keys if key in aliases]:
        incompatible.missing_keys.remove(key)


def adapted_rows(lm: nn.Module, vocab_size: int, new_ids: list[int]) -> None:
    """Give ``lm`` at least ``vocab_size`` embedding rows and set the rows ``new_ids`` (MASK, and any id the
    tokenizer added past the model's vocabulary) to the mean of the model's own rows."""
    rows = lm.get_input_embeddings().weight.shape[0]
    if vocab_size > rows:
        lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        weight = lm.get_input_embeddings().weight
        weight[new_ids] = weight[:rows].mean(0)
