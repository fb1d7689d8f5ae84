"""Hugging Face masked LMs (BERT, RoBERTa, ModernBERT, ...) as MDLM denoisers.

A masked LM predicts the tokens under its mask token from the rest: exactly what an MDLM denoiser
without time conditioning does, so one samples, fills templates and gets an MDLM bound with the
same code as an unmask model. MASK is the model's own mask token; the time is ignored; padding is
hidden through the attention mask. Logits are cut to the tokenizer's ids (some models pad their
output layer past the vocabulary). Weights are read from safetensors only, and only from folders
whose every weight was saved: a masked-LM head that would be freshly initialised is refused.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from unmask.checkpoint import CheckpointError
from unmask.config import Config
from unmask.data import Tokenizer, get_tokenizer
from unmask.errors import RemoteCodeRefused, asks_for_remote_code, require
from unmask.interop.folders import CONFIG_JSON, read_config_json, safetensors_files

# Above this a tokenizer's model_max_length is transformers' "no limit" placeholder.
_NO_LIMIT = 1_000_000


class MaskedLMDenoiser(nn.Module):
    """``denoiser(x_t, t) -> logits [B, L, V]`` of a Hugging Face masked LM (t is ignored)."""

    supports_attention_mask = True
    reads_time = False

    def __init__(self, model: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size

    def forward(self, x_t: Tensor, t: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        logits = self.model(input_ids=x_t, attention_mask=attention_mask).logits
        return logits[..., : self.vocab_size]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs every weight it initialises and draws a progress bar; unmask reports what matters."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def model_length(folder: Path, max_positions: int | None) -> int:
    """The longest input: the position table's size, or the tokenizer's model_max_length if smaller
    (RoBERTa's table has two extra rows its tokenizer never uses)."""
    lengths = [max_positions] if max_positions else []
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            limit = json.loads(tokenizer_config.read_text()).get("model_max_length")
            if isinstance(limit, int) and 2 < limit < _NO_LIMIT:
                lengths.append(limit)
    if not lengths:
        raise CheckpointError(f"{folder} says neither max_position_embeddings ({CONFIG_JSON}) nor model_max_length "
                              "(tokenizer_config.json); unmask cannot tell how long its inputs may be")
    return min(lengths)


def load_masked_lm(folder: Path, *, trust_remote_code: bool = False) -> tuple[MaskedLMDenoiser, Tokenizer, Config]:
    """A Hugging Face ``AutoModelForMaskedLM`` folder as a denoiser, with its tokenizer and a run config.

    A folder whose config names code of its own (``auto_map``) for a model type transformers does not know
    is refused unless ``trust_remote_code``: loading it would run that code. transformers is told so
    explicitly, so that it never asks on the terminal.
    """
    require("transformers", "loading a Hugging Face masked LM")
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoConfig, AutoModelForMaskedLM

    values = read_config_json(folder)
    model_type = values.get("model_type")
    try:
        hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as err:
        if asks_for_remote_code(err):
            raise RemoteCodeRefused(str(folder)) from None
        raise CheckpointError(f"{folder} holds a model of type {model_type!r}, which is neither an MDLM nor a masked "
                              "LM this version of transformers knows; unmask loads unmask runs, MDLM checkpoints "
                              "and Hugging Face masked LMs") from None
    custom = trust_remote_code and "AutoModelForMaskedLM" in (values.get("auto_map") or {})
    if type(hf_config) not in MODEL_FOR_MASKED_LM_MAPPING and not custom:
        raise CheckpointError(f"{folder} holds a {model_type!r} model, which has no masked-LM form; unmask loads "
                              "unmask runs, MDLM checkpoints and masked LMs (BERT, RoBERTa, ModernBERT, ...)")
    safetensors_files(folder)  # a damaged weights file is named here, not deep inside transformers
    try:
        with _quiet_transformers():
            model, info = AutoModelForMaskedLM.from_pretrained(folder, use_safetensors=True, output_loading_info=True,
                                                               trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a folder it cannot load
        if asks_for_remote_code(err):
            raise RemoteCodeRefused(str(folder)) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"transformers cannot load the model in {folder} ({type(err).__name__}: {reason}); "
                              "download the model again") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(f"{folder} lacks trained weights for {missing[0]} (and {len(missing) - 1} more): it is "
                              f"a {model_type} model without its masked-LM head, which unmask would have to invent")
    tokenizer = get_tokenizer(str(folder), trust_remote_code=trust_remote_code)
    outputs = model.get_output_embeddings().weight.shape[0]
    special = {"MASK": tokenizer.mask_id, "BOS": tokenizer.bos_id, "EOS": tokenizer.eos_id}
    unknown = next((role for role, token_id in special.items() if token_id >= outputs), None)
    if unknown is not None or tokenizer.vocab_size > outputs:
        what = f"no {unknown} token of its own" if unknown else f"{tokenizer.vocab_size} ids for {outputs} outputs"
        raise CheckpointError(f"the tokenizer of {folder} has {what}; a masked LM needs a mask token and "
                              "start/end tokens the model knows")
    config = Config()
    config.data.length = model_length(folder, getattr(hf_config, "max_position_embeddings", None))
    config.data.tokenizer = str(folder)
    return MaskedLMDenoiser(model.float(), tokenizer.vocab_size), tokenizer, config
