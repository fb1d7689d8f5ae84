"""Conversations: rendered with the tokenizer's chat template, for supervised fine-tuning and for chatting.

A chat file is JSON lines of ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant",
"content": ...}, ...]}``, the format chat data sets share. Each assistant turn is one example, as in LLaDA's
supervised fine-tuning (Nie et al. 2025, section 2.3): the conversation before it, rendered with
``add_generation_prompt`` (the template's opening of an assistant turn), is the **prompt**; the rest of the
rendering up to and including the end-of-turn token (EOS; appended when the template has none) is the
**answer**. An example is ``prompt + answer`` followed by EOS up to ``data.length``:

- ``loss_mask`` is False on the prompt, True on the answer and on the EOS padding after it: the prompt is
  never masked nor scored; the padding is masked and predicted like the answer, as LLaDA does, so the model
  learns where an answer ends (sampling stops at the first EOS of an answer);
- ``attention_mask`` is True everywhere: the prompt is seen, as clean context.

Examples longer than ``data.length`` are left out (a cut answer would teach answers that never end).
A source is a chat file when ``data.format`` says so, or (``auto``) when it is a .jsonl file whose first
record has ``messages``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unmask.errors import require

from .errors import DataError
from .sources import LOCAL_VALIDATION_FRACTION
from .tokenizer_base import Tokenizer

FORMATS = ("auto", "text", "chat")
Messages = list[dict[str, str]]


def is_chat_source(source: str, data_format: str = "auto") -> bool:
    """Whether ``source`` is read as conversations: ``data_format`` "chat", or "auto" and a .jsonl file whose
    first record has ``messages``."""
    if data_format != "auto":
        return data_format == "chat"
    path = Path(source).expanduser()
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as file:
        first = next((line for line in file if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "messages" in record


def checked_messages(value: Any) -> Messages:
    """``value`` as a conversation: a list of {"role": ..., "content": ...} with string values."""
    if not isinstance(value, list) or not value or not all(_is_message(m) for m in value):
        raise DataError('a chat is a non-empty list of messages {"role": ..., "content": ...} with string values')
    return [{"role": m["role"], "content": m["content"]} for m in value]


def render_chat(tokenizer: Tokenizer, messages: Messages, *, add_generation_prompt: bool) -> str:
    """The text of ``messages`` under the tokenizer's chat template (as transformers renders it)."""
    if not tokenizer.chat_template:
        raise DataError(f"tokenizer {tokenizer.name!r} has no chat template, which a conversation needs; use a "
                        "model whose tokenizer has one (tokenizer_config.json chat_template or chat_template.jinja)")
    require("transformers", "rendering a chat template")
    from transformers.utils.chat_template_utils import render_jinja_template

    specials = {f"{role}_token": tokenizer.decode([token_id], skip_special=False)
                for role, token_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id),
                                       ("pad", tokenizer.pad_id))}
    try:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=tokenizer.chat_template,
                                            add_generation_prompt=add_generation_prompt, **specials)
    except Exception as error:  # noqa: BLE001 - jinja2's TemplateError, or the template's own raise_exception
        raise DataError(f"the chat template of {tokenizer.name!r} refused the conversation "
                        f"({str(error).splitlines()[0] if str(error).strip() else type(error).__name__}); "
                        "check its roles and their order") from None
    return rendered[0]


def prompt_ids(tokenizer: Tokenizer, messages: Messages) -> list[int]:
    """Token ids of a conversation to answer: rendered with the opening of an assistant turn, BOS first
    (added when the template does not start with it: every sequence unmask builds starts with BOS)."""
    ids = tokenizer.encode_chat(render_chat(tokenizer, messages, add_generation_prompt=True))
    return ids if ids[:1] == [tokenizer.bos_id] else [tokenizer.bos_id, *ids]


def answer_turns(tokenizer: Tokenizer, messages: Messages) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids ending with EOS) of every assistant turn of a conversation."""
    turns = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opening = render_chat(tokenizer, messages[:index], add_generation_prompt=True)
        whole = render_chat(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not whole.startswith(opening):
            raise DataError(f"the chat template of {tokenizer.name!r} does not render a conversation as its prompt "
                            "followed by the answer, so the answer's tokens cannot be told apart; use another model")
        answer = tokenizer.encode_chat(whole[len(opening):])
        eos = tokenizer.eos_id
        answer = answer[: answer.index(eos) + 1] if eos in answer else [*answer, eos]
        turns.append((prompt_ids(tokenizer, messages[:index]), answer))
    return turns


def read_conversations(path: Path) -> list[Messages]:
    """The conversations of a chat file, every message checked to be a {"role", "content"} of strings."""
    if not path.is_file():
        raise DataError(f"chat file {path} does not exist")
    conversations = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON ({error.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
                raise DataError(f'{path}:{number} has no "messages" list of {{"role": ..., "content": ...}} '
                                "strings; every line of a chat file holds one conversation")
            conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return conversations


def _is_message(message: Any) -> bool:
    return isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(
        message.get("content"), str)


def split_conversations(conversations: list[Messages], split: str, source: str) -> list[Messages]:
    """The conversations of ``split``: as for local files, the last 2% (at least one) are validation."""
    if split == "all":
        return conversations
    if split == "test":
        raise DataError(f"chat file {source} has splits train, validation and all; evaluate a test file by "
                        "passing it as --data (all of it is used)")
    if len(conversations) < 2:
        raise DataError(f"{source} has {len(conversations)} conversation(s), too few to hold out validation; give "
                        "a validation file with data.valid_source=FILE (train), or use --split all (eval)")
    held_out = max(1, round(len(conversations) * LOCAL_VALIDATION_FRACTION))
    return conversations[:-held_out] if split == "train" else conversations[-held_out:]


class ChatExamples(Dataset):
    """The examples (one per assistant turn) of ``split`` of a chat file, each ``{"input_ids", "loss_mask",
    "attention_mask"}`` of ``length`` tokens (see the module docstring). ``num_tokens`` counts the tokens
    scored (answers and their padding)."""

    def __init__(self, source: str, tokenizer: Tokenizer, *, split: str = "train", length: int) -> None:
        path = Path(source).expanduser()
        conversations = split_conversations(read_conversations(path), split, source)
        turns = [turn for messages in conversations for turn in answer_turns(tokenizer, messages)]
        if not turns:
            raise DataError(f"{source} ({split}) has no assistant turns: supervised fine-tuning scores the answers, "
                            'so each conversation needs messages with "role": "assistant"')
        self.examples = [(prompt, answer) for prompt, answer in turns if len(prompt) + len(answer) <= length]
        if not self.examples:
            shortest = min(len(prompt) + len(answer) for prompt, answer in turns)
            raise DataError(f"every conversation of {source} ({split}) is longer than data.length={length} tokens "
                            f"(the shortest has {shortest}); raise data.length")
        self.source, self.split, self.length, self.tokenizer = source, split, length, tokenizer
        self.skipped = len(turns) - len(self.examples)
        if self.skipped:
            warnings.warn(f"{self.skipped} of the {len(turns)} answers of {source} ({split}) do not fit data.length="
                          f"{length} with their prompt and were left out", stacklevel=2)
        self.num_tokens = sum(length - len(prompt) for prompt, _ in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        prompt, answer = self.examples[index]
        return chat_item(prompt, answer, self.length, self.tokenizer.eos_id)


def chat_item(prompt: Sequence[int], answer: Sequence[int], length: int, eos_id: int) -> dict[str, torch.Tensor]:
    """One example: ``prompt + answer`` and EOS up to ``length``; the prompt seen but not counted."""
    input_ids = torch.full((length,), eos_id, dtype=torch.long)
    input_ids[: len(prompt) + len(answer)] = torch.tensor([*prompt, *answer])
    loss_mask = torch.ones(length, dtype=torch.bool)
    loss_mask[: len(prompt)] = False
    return {"input_ids": input_ids, "loss_mask": loss_mask, "attention_mask": torch.ones(length, dtype=torch.bool)}
