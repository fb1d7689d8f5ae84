"""``unmask export --format hf``: an unmask model in the released MDLM layout.

The folder holds ``config.json`` (model_type "mdlm", the released field names, and an ``auto_map``
naming the released modeling code on the hub, so that ``AutoModelForMaskedLM.from_pretrained(folder,
trust_remote_code=True)`` fetches it), ``model.safetensors`` with the released ``backbone.*`` names,
and the tokenizer files (unmask's and, where there is an equivalent, transformers'). The reference
code and transformers load it as they load the hub's model, and :func:`unmask.load` gives back the
same logits. A model the layout cannot express is refused in one line (see
:func:`unmask.interop.reference.check_expressible`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unmask.checkpoint import (
    CheckpointError,
    load_config,
    load_weights,
    model_weights,
    resolve_checkpoint,
    write_new_folder,
)
from unmask.checkpoint.layout import TOKENIZER_DIR, load_model_config
from unmask.data import load_tokenizer
from unmask.fileio import write_tensors
from unmask.interop.duo import duo_config_json
from unmask.interop.folders import CONFIG_JSON, SAFETENSORS
from unmask.interop.hf_tokenizer import write_tokenizer_files
from unmask.interop.reference import PREFIX, check_expressible, config_to_json, to_reference
from unmask.kinds import get_kind
from unmask.kinds.duo import DUO
from unmask.models import DiT, DiTConfig


@dataclass
class Export:
    out: Path
    transformers_tokenizer: bool  # False: transformers has no equivalent of the model's tokenizer
    layout: str  # "MDLM" or "Duo": whose released layout


def export_hf(source: str | Path, out: str | Path, *, step: int | None = None, weights: str = "ema",
              allow_approximate_gelu: bool = False) -> Export:
    """Write the run or checkpoint ``source`` (its EMA weights by default) to ``out`` in the released layout."""
    checkpoint = resolve_checkpoint(source, step=step)
    config = load_config(checkpoint)
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_DIR)
    model_config = load_model_config(checkpoint, config, tokenizer.vocab_size)
    if not isinstance(model_config, DiTConfig):
        raise CheckpointError(f"{checkpoint} is an adapted causal LM, which the released layout (the reference's DiT) "
                              "cannot hold; export it as an unmask checkpoint (drop --format hf)")
    check_expressible(config, model_config, allow_erf=allow_approximate_gelu)
    model = DiT(model_config)
    load_weights(model, model_weights(checkpoint, weights), checkpoint)  # every name and shape checked
    tensors = to_reference(model.state_dict(), model_config)
    layout = "Duo" if get_kind(config.objective.name) is DUO else "MDLM"
    if layout == "Duo":  # the PyTorchModelHubMixin's layout: no prefix
        tensors = {name.removeprefix(PREFIX): value for name, value in tensors.items()}
        described = duo_config_json(config, model_config)
    else:
        described = config_to_json(config, tokenizer.vocab_size)
    written = {}

    def build(tmp: Path) -> None:
        write_tensors(tensors, tmp / SAFETENSORS)
        (tmp / CONFIG_JSON).write_text(json.dumps(described, indent=2) + "\n")
        written["transformers"] = write_tokenizer_files(tokenizer, tmp, model_length=config.data.length)

    return Export(out=write_new_folder(out, build), transformers_tokenizer=written["transformers"], layout=layout)
