"""``unmask convert``: the reference code's PyTorch Lightning checkpoints (``.ckpt``) as unmask checkpoints.

A ``.ckpt`` is a pickle, and reading a pickle runs whatever code it names: it is read only when
the user says they trust it (``trust_pickle``); nothing else in unmask unpickles. What is used:

- ``state_dict``: the ``backbone.*`` tensors (a ``_orig_mod.`` left by torch.compile is dropped);
- ``ema.shadow_params``: the EMA of the weights, a list in the order of the backbone's trainable
  parameters (no buffers; the noise schedule's parameters, if any, follow). These are the weights
  the paper evaluates, and the default;
- ``hyper_parameters.config``, where readable: length, time conditioning, tokenizer, layout and
  noise schedule (a setting it lacks takes the paper's value, and the result lists it as assumed).
  The architecture itself is read off the tensors' shapes.

The result is an ordinary unmask checkpoint folder (safetensors, ``config.yaml`` recording the
reference's switches: tanh GELU, no time conditioning), so it stays exact after save and load.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unmask.checkpoint import CheckpointError, write_new_folder
from unmask.checkpoint.layout import write_checkpoint
from unmask.data import get_tokenizer
from unmask.interop.reference import MLP_RATIO, PREFIX, ROTARY_BUFFER, name_pairs, run_config, to_unmask
from unmask.models import DiTConfig
from unmask.schedules import SCHEDULES

# Tokenizers the reference names, by name and, when its config is unreadable, by vocabulary size.
TOKENIZERS = {"gpt2": "gpt2", "bert-base-uncased": "bert-base-uncased"}
TOKENIZER_BY_VOCAB = {50258: "gpt2", 30522: "bert-base-uncased"}
# The data the reference trained each tokenizer's models on (what `unmask eval` uses by default).
TRAINING_DATA = {"gpt2": "openwebtext", "bert-base-uncased": "lm1b"}
DEFAULT_LENGTH = 1024
_BLOCK = re.compile(r"blocks\.(\d+)\.")


class PickleRefused(CheckpointError):
    """A pickle the user has not said they trust."""


@dataclass
class Conversion:
    out: Path
    step: int
    weights: str  # "ema" or "model"
    config: DiTConfig
    tokenizer: str
    assumed: list[str] = field(default_factory=list)  # settings the checkpoint does not record


def read_lightning(path: Path, *, trust_pickle: bool) -> dict[str, Any]:
    """The unpickled checkpoint, only with ``trust_pickle``."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file; pass the .ckpt file to convert")
    if not trust_pickle:
        raise PickleRefused(f"{path} is a pickle, and reading it runs any code it contains; convert it only if you "
                            "trust its source, with --trust-pickle")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no state_dict; it is not a Lightning checkpoint of the reference MDLM")
    return checkpoint


def _lookup(node: Any, dotted: str) -> Any:
    """``node[a][b]...`` for "a.b...", or None: the config is a dict or an OmegaConf node."""
    for key in dotted.split("."):
        try:
            node = node[key]
        except Exception:  # noqa: BLE001 - dicts, OmegaConf nodes and missing values fail differently
            return None
    return node


def backbone_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``backbone.*`` tensors by reference name (without the prefix), torch.compile's ``_orig_mod.`` removed."""
    tensors = {}
    for key, value in state.items():
        name = key.replace("_orig_mod.", "")
        if name.startswith(PREFIX) and isinstance(value, torch.Tensor):
            tensors[name.removeprefix(PREFIX)] = value
    return tensors


def architecture(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, int]:
    """Vocabulary, width, depth, heads and conditioning size, read off the tensors' shapes."""
    needed = ("vocab_embed.embedding", "sigma_map.mlp.0.weight", ROTARY_BUFFER, "blocks.0.mlp.0.weight")
    absent = next((name for name in needed if name not in tensors), None)
    if absent is not None:
        raise CheckpointError(f"{path} has no {PREFIX}{absent}; it is not a checkpoint of the reference's DiT "
                              "(MDLM) backbone")
    vocab_size, hidden = tensors["vocab_embed.embedding"].shape
    head_dim = 2 * tensors[ROTARY_BUFFER].shape[0]
    if hidden % head_dim or tensors["blocks.0.mlp.0.weight"].shape[0] != MLP_RATIO * hidden:
        raise CheckpointError(f"{path}: the tensors' shapes do not fit the reference's DiT (hidden {hidden}, "
                              f"head size {head_dim}, MLP ratio {MLP_RATIO})")
    n_layers = 1 + max(int(match.group(1)) for name in tensors if (match := _BLOCK.match(name)))
    return {"vocab_size": vocab_size, "hidden": hidden, "n_heads": hidden // head_dim, "n_layers": n_layers,
            "cond_dim": tensors["sigma_map.mlp.0.weight"].shape[0]}


def ema_tensors(checkpoint: dict[str, Any], n_layers: int, path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights by reference name, from the shadow list in the backbone's parameter order."""
    shadow = _lookup(checkpoint, "ema.shadow_params")
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointError(f"{path} has no EMA weights (ema.shadow_params); pass --no-ema to convert the "
                              "trained weights")
    names = [reference for reference, _ in name_pairs(n_layers)]
    if len(shadow) < len(names):
        raise CheckpointError(f"{path}: ema.shadow_params has {len(shadow)} tensors, the backbone {len(names)} "
                              "parameters; the EMA is of another model")
    return dict(zip(names, shadow))


def _tokenizer_spec(hyper: Any, vocab_size: int, path: Path) -> str:
    named = _lookup(hyper, "data.tokenizer_name_or_path")
    if named == "text8":
        raise CheckpointError(f"{path} uses the reference's text8 tokenizer, which numbers characters differently "
                              "from unmask's; unmask cannot convert it")
    spec = TOKENIZERS.get(named) if isinstance(named, str) else None
    spec = spec or (named if isinstance(named, str) and named else TOKENIZER_BY_VOCAB.get(vocab_size))
    if spec is None:
        raise CheckpointError(f"{path} does not say its tokenizer and its vocabulary ({vocab_size} ids) is not "
                              "GPT-2's or BERT's; unmask cannot tell which tokenizer goes with it")
    return spec


def _setting(hyper: Any, dotted: str, default: Any, kind: type, path: Path, assumed: list[str]) -> Any:
    value = _lookup(hyper, dotted)
    if value is None:
        assumed.append(f"{dotted}={default}")
        return default
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise CheckpointError(f"{path}: {dotted} is {value!r}, not a {kind.__name__}")
    return value


def convert_lightning(path: str | Path, out: str | Path, *, ema: bool = True, trust_pickle: bool = False
                      ) -> Conversion:
    """Write the reference Lightning checkpoint ``path`` as an unmask checkpoint folder ``out``."""
    path = Path(path)
    checkpoint = read_lightning(path, trust_pickle=trust_pickle)
    hyper = _lookup(checkpoint, "hyper_parameters.config")
    parameterization = _lookup(hyper, "parameterization")
    if parameterization not in (None, "subs"):
        raise CheckpointError(f"{path} is a {parameterization!r} model; unmask converts MDLM (subs) checkpoints")
    tensors = backbone_tensors(checkpoint["state_dict"])
    shape = architecture(tensors, path)
    if ema:
        tensors = {**tensors, **ema_tensors(checkpoint, shape["n_layers"], path)}
    assumed: list[str] = []
    if _setting(hyper, "time_conditioning", False, bool, path, assumed):
        raise CheckpointError(f"{path} is time-conditioned; unmask converts the kind without time conditioning "
                              "(the reference conditions on sigma(t), unmask's DiT on 1000 t)")
    length = _setting(hyper, "model.length", DEFAULT_LENGTH, int, path, assumed)
    dropout = _lookup(hyper, "model.dropout")
    model_config = DiTConfig(length=length, mlp_ratio=MLP_RATIO, time_conditioning=False, gelu="tanh",
                             dropout=float(dropout) if isinstance(dropout, (int, float)) else 0.1, **shape)
    state = to_unmask(tensors, model_config, path)
    spec = _tokenizer_spec(hyper, shape["vocab_size"], path)
    tokenizer = get_tokenizer(spec)
    if tokenizer.vocab_size != shape["vocab_size"]:
        raise CheckpointError(f"{path} has {shape['vocab_size']} token embeddings, tokenizer {spec} "
                              f"{tokenizer.vocab_size} ids; they do not belong together")
    schedule = _lookup(hyper, "noise.type")
    wrap = _lookup(hyper, "data.wrap")
    config = run_config(model_config, tokenizer=spec, schedule=schedule if schedule in SCHEDULES else "loglinear",
                        layout="padded" if wrap is False else "wrapped",
                        source=TRAINING_DATA.get(spec, "default"))
    step = checkpoint.get("global_step", 0)
    step = step if isinstance(step, int) else 0
    weights = "ema" if ema else "model"

    def build(tmp: Path) -> None:
        record = {"step": step, "converted_from": str(path.resolve()), "weights": weights}
        write_checkpoint(tmp, tensors={"model": {name: value.float() for name, value in state.items()}},
                         record=record, config=config, model={"architecture": "dit", **model_config.to_dict()},
                         tokenizer=tokenizer)

    return Conversion(out=write_new_folder(out, build), step=step, weights=weights, config=model_config,
                      tokenizer=spec, assumed=assumed)
