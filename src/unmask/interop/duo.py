"""Released Duo checkpoints (``s-sahoo/duo``, ``s-sahoo/duo-distilled``), loaded into unmask's DiT exactly, and a
duo run written back in their layout.

The facts, read from the reference repository (github s-sahoo/duo, ``models/dit.py``: class ``DIT``):

- The backbone is MDLM's DiT (the same parameter names: ``vocab_embed.embedding``, ``sigma_map.mlp.*``,
  ``blocks.N.*``, ``output_layer.*``, the rotary buffer; :func:`unmask.interop.reference.name_pairs`), with
  time conditioning ON, fed sigma_t = -log alpha_t of the log-linear schedule, unscaled (unmask's
  ``DiTConfig.time_input = "sigma"``), tanh GELU, MLP ratio 4, rotary base 10000. Its logits read as the
  mean parameterization: x_theta = softmax over every id.
- Saved with ``huggingface_hub.PyTorchModelHubMixin``: ``config.json`` holds the constructor's arguments,
  ``{"config": <the run's Hydra config>, "vocab_size": V}`` (the shape in ``config.model``: ``hidden_size``,
  ``cond_dim``, ``n_blocks``, ``n_heads``, ``length``, ``dropout``; ``config.algo.causal_attention`` false), and
  ``model.safetensors`` the state dict, names without a prefix. A folder of the transformers remote-code form
  (``model_type`` "duo", the MDLM field names, weights under ``backbone.``) is read too.
- The tokenizer is GPT-2's with ``[PAD]`` appended (V = 50,258, BOS = EOS = 50,256). unmask's GPT-2 tokenizer
  has the same ids with MASK at 50,257, which a duo run leaves out of the uniform process: the reference's
  process has 50,258 states (its [PAD] one of them, never in the data), unmask's 50,257. The logits are equal;
  the uniform noise and posterior differ by that one state (a probability of 1 / 50,258 per draw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unmask.checkpoint import CheckpointError
from unmask.config import Config
from unmask.data import Tokenizer
from unmask.interop.folders import (
    CONFIG_JSON,
    DUO_MODEL_TYPES,
    SAFETENSORS,
    read_config_json,
    read_safetensors_folder,
)
from unmask.interop.reference import MLP_RATIO, PREFIX, ROPE_BASE, UNMASK_FIELD, run_config, to_unmask
from unmask.interop.released import released_tokenizer
from unmask.kinds.duo import DUO
from unmask.models import DiT, DiTConfig
from unmask.sizes import check_fits, model_bytes, summary

SHAPE_FIELDS = ("hidden_size", "cond_dim", "n_blocks", "n_heads", "length")


def _positive(value: Any, key: str, source: Path | str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def duo_model_config(values: dict[str, Any], source: Path | str) -> DiTConfig:
    """The DiT configuration of a Duo ``config.json`` (either form), every field checked."""
    if values.get("model_type") in DUO_MODEL_TYPES:  # the transformers form: MDLM's field names
        fields = {"hidden_size": values.get("hidden_dim"), "cond_dim": values.get("cond_dim"),
                  "n_blocks": values.get("n_blocks"), "n_heads": values.get("n_heads"),
                  "length": values.get("model_length")}
        dropout, causal = values.get("dropout", 0.1), values.get("causal", False)
    else:
        model, algo = values["config"]["model"], values["config"]["algo"]
        if not isinstance(model, dict) or not isinstance(algo, dict):
            raise CheckpointError(f"{source}: config.model and config.algo must be objects")
        fields = {key: model.get(key) for key in SHAPE_FIELDS}
        dropout, causal = model.get("dropout", 0.1), algo.get("causal_attention", False)
    shape = {key: _positive(value, key, source) for key, value in fields.items()}
    vocab_size = _positive(values.get("vocab_size"), "vocab_size", source)
    if causal is not False:
        raise CheckpointError(f"{source} is the reference's causal (AR) variant of the DiT; unmask loads the Duo "
                              "denoiser (causal_attention false)")
    if shape["hidden_size"] % shape["n_heads"] or (shape["hidden_size"] // shape["n_heads"]) % 2:
        raise CheckpointError(f"{source}: hidden size {shape['hidden_size']} does not split into {shape['n_heads']} "
                              "heads of even size; the config contradicts itself")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CheckpointError(f"{source}: dropout must be a number in [0, 1), got {dropout!r}")
    extra = values.get(UNMASK_FIELD) or (values.get("config") or {}).get(UNMASK_FIELD) or {}
    gelu = extra.get("gelu", "tanh") if isinstance(extra, dict) else "tanh"
    return DiTConfig(vocab_size=vocab_size, length=shape["length"], n_layers=shape["n_blocks"],
                     hidden=shape["hidden_size"], n_heads=shape["n_heads"], cond_dim=shape["cond_dim"],
                     mlp_ratio=MLP_RATIO, dropout=float(dropout), time_conditioning=True, causal=False,
                     rope_base=ROPE_BASE, gelu=gelu if gelu in ("tanh", "erf") else "tanh", time_input="sigma")


def load_released_duo(folder: Path) -> tuple[DiT, Tokenizer, Config]:
    """The DiT, tokenizer and run configuration (a duo run) of a released Duo folder."""
    values = read_config_json(folder)
    model_config = duo_model_config(values, folder / CONFIG_JSON)
    check_fits(model_bytes(model_config), torch.device("cpu"), f"loading {summary(model_config)}",
               f"check {folder / CONFIG_JSON}, or free memory")
    tokenizer, spec = released_tokenizer(folder, model_config.vocab_size)
    tensors = read_safetensors_folder(folder)
    # The mixin saves the state dict as it is; the transformers form nests it under ``backbone.``.
    if tensors and all(name.startswith(PREFIX) for name in tensors):
        tensors = {name.removeprefix(PREFIX): value for name, value in tensors.items()}
    model = DiT(model_config)
    model.load_state_dict(to_unmask(tensors, model_config, folder / SAFETENSORS))
    config = run_config(model_config, tokenizer=spec, source="openwebtext" if spec == "gpt2" else "default")
    config.objective.name = DUO.name
    return model, tokenizer, config


def duo_config_json(config: Config, model: DiTConfig) -> dict[str, Any]:
    """The mixin's ``config.json`` for a duo run: the constructor arguments the reference's ``DIT`` takes."""
    shape = {"hidden_size": model.hidden, "cond_dim": model.cond_dim, "n_blocks": model.n_layers,
             "n_heads": model.n_heads, "length": model.length, "dropout": model.dropout, "scale_by_sigma": False}
    algo = {"name": "duo", "parameterization": "mean", "time_conditioning": True, "causal_attention": False}
    # unmask's own field sits inside the Hydra config, which the reference's DIT ignores beyond what it reads.
    extra = {"gelu": model.gelu, "schedule": config.objective.schedule}
    return {"config": {"algo": algo, "model": shape, "noise": {"type": "log-linear"}, UNMASK_FIELD: extra},
            "vocab_size": model.vocab_size}
