"""The released MDLM layout (the reference code's DiT, as on the Hugging Face hub) and its map to unmask's DiT.

The facts, read from the reference repository (kuleshov-group/mdlm, ``models/dit.py``; the hub
model's modeling file holds the same backbone):

- ``config.json``: ``model_type`` "mdlm", ``vocab_size``, ``model_length``, ``hidden_dim``,
  ``cond_dim`` (the config class defaults it to 129, the released model has 128: always read the
  file), ``n_blocks``, ``n_heads``, ``dropout``, ``time_conditioning``.
- every weight is under ``backbone.``; the architecture is unmask's DiT with the tanh GELU, rotary
  base 10000, MLP ratio 4 and a 256-dim cos|sin time embedding whose argument is the noise level
  sigma (unscaled). With time conditioning off the reference feeds sigma = 0 and unmask t = 0:
  both embed to cos = 1, sin = 0, so the conditioning vector is the same constant.
- ``rotary_emb.inv_freq`` is a saved buffer (1 / 10000^(2i / head_dim)); unmask recomputes it.

So a model is expressible exactly in this layout when it is bidirectional, has no time
conditioning (a time-conditioned reference model sees sigma(t), unmask's sees 1000 t), GELU tanh,
rope base 10000 and MLP ratio 4. :func:`check_expressible` says which of these fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from unmask.checkpoint import CheckpointError
from unmask.config import Config
from unmask.kinds import get_kind
from unmask.kinds.duo import DUO
from unmask.kinds.mdlm import MDLM
from unmask.models import DiT, DiTConfig

MODEL_TYPE = "mdlm"
PREFIX = "backbone."
ROTARY_BUFFER = "rotary_emb.inv_freq"
ROPE_BASE = 10000.0
MLP_RATIO = 4
# Where transformers finds the released modeling code for an exported folder (repo--module.Class).
CODE_REPO = "kuleshov-group/mdlm-owt"
AUTO_MAP = {"AutoConfig": f"{CODE_REPO}--configuration_mdlm.MDLMConfig",
            "AutoModelForMaskedLM": f"{CODE_REPO}--modeling_mdlm.MDLM"}
# config.json fields without a default we could trust (the config class's cond_dim default is wrong).
REQUIRED_FIELDS = ("vocab_size", "model_length", "hidden_dim", "cond_dim", "n_blocks", "n_heads")
# What unmask adds to config.json: the switches the released layout does not carry.
UNMASK_FIELD = "unmask"


def name_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(reference name without ``backbone.``, unmask name) of every trainable parameter, in the
    reference's module order: the order of its ``parameters()`` and so of its EMA's shadow list."""
    pairs = [("vocab_embed.embedding", "embed.weight")]
    pairs += [(f"sigma_map.mlp.{i}.{kind}", f"time_embed.mlp.{i}.{kind}")
              for i in (0, 2) for kind in ("weight", "bias")]
    for layer in range(n_layers):
        prefix = f"blocks.{layer}."
        block = [("norm1.weight", "norm1.weight"), ("attn_qkv.weight", "qkv.weight"),
                 ("attn_out.weight", "attn_out.weight"), ("norm2.weight", "norm2.weight")]
        block += [(f"mlp.{i}.{kind}", f"mlp.{i}.{kind}") for i in (0, 2) for kind in ("weight", "bias")]
        block += [(f"adaLN_modulation.{kind}", f"adaLN.{kind}") for kind in ("weight", "bias")]
        pairs += [(prefix + reference, prefix + unmask) for reference, unmask in block]
    pairs += [("output_layer.norm_final.weight", "norm_final.weight"),
              ("output_layer.linear.weight", "head.weight"), ("output_layer.linear.bias", "head.bias"),
              ("output_layer.adaLN_modulation.weight", "adaLN_final.weight"),
              ("output_layer.adaLN_modulation.bias", "adaLN_final.bias")]
    return pairs


def rotary_inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every unmask parameter of ``config``, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        model = DiT(config)
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def to_unmask(tensors: dict[str, torch.Tensor], config: DiTConfig, source: Path | str) -> dict[str, torch.Tensor]:
    """unmask's state dict from reference tensors (names without ``backbone.``), every name and shape checked."""
    shapes = expected_shapes(config)
    pairs = name_pairs(config.n_layers)
    known = {reference for reference, _ in pairs} | {ROTARY_BUFFER}
    stray = next((name for name in sorted(tensors) if name not in known), None)
    if stray is not None:
        raise CheckpointError(f"{source} holds {PREFIX}{stray}, which the MDLM layout with {config.n_layers} blocks "
                              "does not have; the weights are of another architecture or the config is wrong")
    state = {}
    for reference, unmask in pairs:
        if reference not in tensors:
            raise CheckpointError(f"{source} has no tensor {PREFIX}{reference}; the weights are incomplete "
                                  "or of another architecture")
        value = tensors[reference]
        if tuple(value.shape) != shapes[unmask]:
            raise CheckpointError(f"{source}: {PREFIX}{reference} has shape {tuple(value.shape)}, the config asks "
                                  f"for {shapes[unmask]}; the config does not describe these weights")
        state[unmask] = value
    if ROTARY_BUFFER in tensors:
        head_dim = config.hidden // config.n_heads
        saved = tensors[ROTARY_BUFFER].float()
        if saved.shape != (head_dim // 2,) or not torch.allclose(saved, rotary_inv_freq(head_dim), rtol=1e-5):
            raise CheckpointError(f"{source}: {PREFIX}{ROTARY_BUFFER} does not match {config.n_heads} heads of size "
                                  f"{head_dim} with base {ROPE_BASE:g}; n_heads in the config contradicts the weights")
    return state


def to_reference(state: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """The released layout's tensors (``backbone.*``, rotary buffer included) from unmask's state dict."""
    tensors = {PREFIX + reference: state[unmask] for reference, unmask in name_pairs(config.n_layers)}
    tensors[PREFIX + ROTARY_BUFFER] = rotary_inv_freq(config.hidden // config.n_heads)
    return tensors


def _positive_int(values: dict[str, Any], key: str, source: Path | str) -> int:
    if key not in values:
        raise CheckpointError(f"{source} lacks the field {key!r}; an MDLM config.json needs "
                              f"{', '.join(REQUIRED_FIELDS)}")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def config_from_json(values: dict[str, Any], source: Path | str) -> tuple[DiTConfig, str]:
    """The DiT configuration (exact: tanh GELU, constant conditioning) and the noise schedule of an
    MDLM ``config.json``; missing, wrong or contradictory fields raise CheckpointError."""
    fields = {key: _positive_int(values, key, source) for key in REQUIRED_FIELDS}
    if fields["hidden_dim"] % fields["n_heads"] or (fields["hidden_dim"] // fields["n_heads"]) % 2:
        raise CheckpointError(f"{source}: hidden_dim {fields['hidden_dim']} does not split into {fields['n_heads']} "
                              "heads of even size; hidden_dim and n_heads contradict each other")
    dropout = values.get("dropout", 0.1)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CheckpointError(f"{source}: dropout must be a number in [0, 1), got {dropout!r}")
    time_conditioning = values.get("time_conditioning", False)
    if not isinstance(time_conditioning, bool):
        raise CheckpointError(f"{source}: time_conditioning must be true or false, got {time_conditioning!r}")
    if time_conditioning:
        raise CheckpointError(f"{source} is a time-conditioned MDLM; unmask loads only the released kind without "
                              "time conditioning (the reference conditions on sigma(t), unmask's DiT on 1000 t)")
    extra = values.get(UNMASK_FIELD, {})
    gelu, schedule = (extra.get("gelu", "tanh"), extra.get("schedule", "loglinear")) if isinstance(extra, dict) \
        else (None, None)
    if gelu not in ("tanh", "erf") or not isinstance(schedule, str):
        raise CheckpointError(f"{source}: the {UNMASK_FIELD!r} field is malformed ({extra!r}); export the model again")
    config = DiTConfig(vocab_size=fields["vocab_size"], length=fields["model_length"], n_layers=fields["n_blocks"],
                       hidden=fields["hidden_dim"], n_heads=fields["n_heads"], cond_dim=fields["cond_dim"],
                       mlp_ratio=MLP_RATIO, dropout=float(dropout), time_conditioning=False, causal=False,
                       rope_base=ROPE_BASE, gelu=gelu)
    return config, schedule


def run_config(model: DiTConfig, *, tokenizer: str, schedule: str = "loglinear", source: str = "openwebtext",
               layout: str = "wrapped") -> Config:
    """An unmask run configuration describing a model from outside: what pipelines and evaluation read."""
    config = Config(model=dataclasses.replace(model))
    config.data.length = model.length
    config.data.tokenizer = tokenizer
    config.data.source = source
    config.data.layout = layout
    config.objective.schedule = schedule
    return config


def check_expressible(config: Config, model: DiTConfig, *, allow_erf: bool = False) -> None:
    """Refuse (one line) a model the released layout of its kind (MDLM's, or Duo's: :mod:`unmask.interop.duo`)
    cannot express: it would load silently wrong."""
    kind = get_kind(config.objective.name)
    duo = kind is DUO
    reasons = [
        (kind not in (MDLM, DUO), f"it is an {config.objective.name.upper()} model; the released layouts hold MDLM "
                                  "and Duo denoisers only"),
        (not duo and model.time_conditioning, "it is time-conditioned; the reference conditions on sigma(t), unmask "
                                              "on 1000 t, so the layout cannot express it"),
        (duo and (model.time_input != "sigma" or config.objective.schedule != "loglinear"),
         "the reference Duo conditions on sigma_t of the log-linear schedule; train with model.time_input=sigma "
         "(and objective.schedule=loglinear) to export a duo run"),
        (model.rope_base != ROPE_BASE, f"its rotary base is {model.rope_base:g}; the reference's is fixed at "
                                       f"{ROPE_BASE:g}"),
        (model.mlp_ratio != MLP_RATIO, f"its MLP ratio is {model.mlp_ratio}; the reference's is fixed at {MLP_RATIO}"),
        (model.gelu == "erf" and not allow_erf,
         "it was trained with the exact (erf) GELU and the reference computes the tanh approximation, so its logits "
         "would differ slightly; pass --allow-approximate-gelu to export it anyway (unmask still loads it exactly), "
         "or train with model.gelu=tanh"),
    ]
    reason = next((text for failed, text in reasons if failed), None)
    if reason is not None:
        raise CheckpointError(f"cannot export to the released {'Duo' if duo else 'MDLM'} layout: {reason}")


def config_to_json(config: Config, vocab_size: int) -> dict[str, Any]:
    """The ``config.json`` of the released layout for an unmask model, with the modeling code's address."""
    model = config.model
    return {
        "architectures": ["MDLM"],
        "auto_map": AUTO_MAP,
        "model_type": MODEL_TYPE,
        "vocab_size": vocab_size,
        "model_length": config.data.length,
        "hidden_dim": model.hidden,
        "cond_dim": model.cond_dim,
        "n_blocks": model.n_layers,
        "n_heads": model.n_heads,
        "dropout": model.dropout,
        "time_conditioning": False,
        UNMASK_FIELD: {"gelu": model.gelu, "schedule": config.objective.schedule},
    }
