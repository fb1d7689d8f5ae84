"""Starting from a pretrained causal LM (``unmask train --init MODEL``): a Hugging Face hub name, a local
model folder or a ``.gguf`` file, loaded by transformers and adapted into a masked diffusion denoiser
(:class:`unmask.models.CausalLM`).

Loading refuses, in one line each: a file that is not a GGUF file transformers reads, a model that is not a
causal LM (a masked LM, an encoder-decoder), weights stored only as pickles, and a model unmask cannot make
bidirectional or whose logits are not its output layer on its last hidden state (checked on three tokens, so
the adapted model is exactly the pretrained one under the causal mask). No code from the model's folder runs
(``trust_remote_code=False``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import nn

from unmask.adapt_config import AdaptConfig
from unmask.checkpoint import CheckpointError
from unmask.data import Tokenizer
from unmask.errors import require
from unmask.interop.folders import locate, refuse_pickled_weights
from unmask.interop.masked_lm import _quiet_transformers
from unmask.models.causal_lm import CausalLM, CausalLMConfig, adapted_rows, additive

GGUF_SUFFIX = ".gguf"
# What transformers raises for a file or folder it cannot read (a truncated GGUF header: struct.error).
_UNREADABLE = (ValueError, OSError, KeyError, TypeError, struct.error)
_CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_causal_lm(spec: str) -> nn.Module:
    """The transformers causal LM ``spec`` names (a .gguf file, a folder, or a hub name), in float32."""
    require("transformers", f"adapting {spec}")
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM

    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != GGUF_SUFFIX:
            raise CheckpointError(f"{spec} is a file but not a .gguf model; pass a .gguf file, a model folder or a "
                                  "hub name")
        require("gguf", f"reading {path.name}")
        folder, source = path.parent, {"gguf_file": path.name}
    else:
        folder, source = locate(spec), {}
        if not folder.is_dir():
            raise CheckpointError(f"{spec} does not exist; pass a .gguf file, a model folder or a hub name")
    try:
        hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=False, **source)
    except _UNREADABLE as error:
        what = "a GGUF file transformers can read" if source else "a model folder transformers can read"
        raise CheckpointError(f"{spec} is not {what} ({_reason(error)}); pass a causal LM as a .gguf file, a "
                              "model folder or a hub name") from None
    architectures = getattr(hf_config, "architectures", None) or []
    causal = type(hf_config) in MODEL_FOR_CAUSAL_LM_MAPPING and not hf_config.is_encoder_decoder and (
        not architectures or any(name.endswith(_CAUSAL_ARCHITECTURES) for name in architectures))
    if not causal:
        shown = ", ".join(architectures) or hf_config.model_type
        raise CheckpointError(f"{spec} is not a causal language model ({shown}); --init adapts a model with a "
                              "next-token head (Llama, Qwen, Mistral, SmolLM, GPT-2, ...)")
    if not source:
        refuse_pickled_weights(folder)
        source = {"use_safetensors": True}
    try:
        with _quiet_transformers():
            lm = AutoModelForCausalLM.from_pretrained(folder, config=hf_config, trust_remote_code=False, **source)
    except _UNREADABLE as error:
        raise CheckpointError(f"transformers cannot load the weights of {spec} ({_reason(error)}); download or "
                              "export the model again") from None
    # Trained in float32 (autocast does the rest); a GGUF file is dequantised to float32 already.
    return lm.float() if any(p.dtype != torch.float32 for p in lm.parameters()) else lm


def check_adaptable(lm: nn.Module, spec: str) -> None:
    """Refuse a model whose logits are not its output layer on its last hidden states, or that ignores the
    attention masks unmask passes (both checked on three tokens)."""
    ids = torch.tensor([[0, 1, 2]])
    other = ids.clone()
    other[0, 2] = 3
    seen = additive(torch.ones(1, 1, 3, 3, dtype=torch.bool))
    with torch.no_grad():
        logits = lm(input_ids=ids).logits
        hidden = lm.base_model(input_ids=ids)[0]
        first = lm.base_model(input_ids=ids, attention_mask=seen)[0][:, 0]
        changed = lm.base_model(input_ids=other, attention_mask=seen)[0][:, 0]
    if not torch.allclose(lm.get_output_embeddings()(hidden), logits, rtol=1e-4, atol=1e-4):
        raise CheckpointError(f"the logits of {spec} are not its output layer applied to its last hidden states "
                              "(they are scaled or capped), so its next-token head cannot be shifted; unmask "
                              "adapts plain decoder LMs")
    if torch.equal(first, changed):
        raise CheckpointError(f"{spec} ignores the attention mask unmask passes, so its attention cannot be made "
                              "bidirectional; unmask adapts models that take a 4D attention mask (Llama, Qwen, ...)")


def adapt_pretrained(adapt: AdaptConfig, tokenizer: Tokenizer, length: int) -> CausalLM:
    """The pretrained model ``adapt.init`` as a denoiser over ``tokenizer``'s ids for sequences of ``length``:
    embedding rows for every id (MASK and any the tokenizer added get the mean embedding), the shift,
    annealing and LoRA as ``adapt`` says."""
    lm = load_causal_lm(adapt.init)
    check_adaptable(lm, adapt.init)
    rows = lm.get_input_embeddings().weight.shape[0]
    adapted_rows(lm, tokenizer.vocab_size, sorted({tokenizer.mask_id, *range(rows, tokenizer.vocab_size)}))
    config = CausalLMConfig(hf_config=lm.config.to_dict(), vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                            bos_id=tokenizer.bos_id, length=length, shift=adapt.shift, anneal_steps=adapt.anneal_steps,
                            lora_rank=adapt.lora_rank, lora_alpha=adapt.lora_alpha, lora_dropout=adapt.lora_dropout,
                            lora_targets=adapt.lora_targets, source=adapt.init)
    return CausalLM(config, lm=lm.train())
