"""A tiny pretrained causal LM for the adaptation tests: a random 2-layer Llama and a small BPE tokenizer with a
ChatML chat template, saved as a Hugging Face model folder (built in seconds, offline)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

# SmolLM2's template (ChatML) without its default system prompt.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1 (BOS), 2 (EOS and PAD), as SmolLM2's
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. What is the capital of France? Paris is the capital of France. Hello! How can I help you today?")


def chats(count: int = 12) -> list[dict]:
    """Conversations in the chat file format: a question and its answer, some with a system turn."""
    pairs = [("What is the capital of France?", "Paris."), ("Hello!", "How can I help you today?"),
             ("Is it a truth?", "It is a truth universally acknowledged.")]
    out = []
    for i in range(count):
        question, answer = pairs[i % len(pairs)]
        system = [{"role": "system", "content": "Be brief."}] if i % 2 else []
        out.append({"messages": [*system, {"role": "user", "content": question},
                                 {"role": "assistant", "content": answer}]})
    return out


def write_chats(path: Path, conversations: list[dict]) -> Path:
    path.write_text("".join(json.dumps(conversation) + "\n" for conversation in conversations))
    return path


def tiny_causal_lm(folder: Path, *, seed: int = 0, chat_template: str | None = CHATML, vocab_size: int = 96,
                   layers: int = 2) -> Path:
    """Save a random Llama (hidden 32, 4 heads / 2 KV heads, tied embeddings) and its tokenizer in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    alphabet = list(string.ascii_letters + string.digits + ".,!?'\n:;-")
    backend.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                            initial_alphabet=alphabet, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<unk>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, tie_word_embeddings=True, max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init, so that positions and tokens matter
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return folder
