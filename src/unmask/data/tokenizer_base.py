"""The interface every unmask tokenizer implements, and the small config file they save."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DataError

CONFIG_FILE = "unmask_tokenizer.json"
CONFIG_FORMAT = 1
MASK_TEXT = "[MASK]"


class Tokenizer(ABC):
    """Text <-> token ids, plus the special ids a masked diffusion LM needs.

    Attributes:
        name: a short label ("char", "gpt2", "bert-base-uncased", "bpe", a folder name, ...).
        vocab_size: every id the model may see or predict, including ``mask_id``; the
            denoiser outputs this many logits.
        mask_id: the absorbing-state id. The tokenizer's own mask token where it has one
            (BERT's [MASK]); otherwise an id added after all others.
        bos_id, eos_id, pad_id: always defined; ids the tokenizer lacks are added (or, for
            pad, shared with eos: the loss mask, not the id, marks padding).
        chat_template: the Jinja template that renders a conversation (Hugging Face tokenizers that
            bring one), None otherwise; see :mod:`unmask.data.chat`.
    """

    name: str
    vocab_size: int
    mask_id: int
    bos_id: int
    eos_id: int
    pad_id: int

    kind: str  # the key load_tokenizer dispatches on; set by each subclass
    chat_template: str | None = None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special tokens added."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts; subclasses override this with their library's batch call."""
        return [self.encode(text) for text in texts]

    def encode_chat(self, text: str) -> list[int]:
        """Token ids of a conversation rendered by the chat template, whose special tokens (``<|im_start|>``)
        are tokens there; in ``encode`` they are plain text."""
        return self.encode(text)

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``. With ``skip_special=False`` the mask id reads as "[MASK]"
        (or the tokenizer's own mask token) and the other special ids as their tokens."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write everything needed to rebuild this tokenizer offline into ``directory``."""

    @abstractmethod
    def _content_digest(self) -> bytes:
        """Bytes that determine how text maps to ids (vocabulary, merges, rules)."""

    @property
    def special_ids(self) -> frozenset[int]:
        """The ids of BOS, EOS, PAD and MASK (some may coincide, e.g. GPT-2's BOS = EOS)."""
        return frozenset((self.bos_id, self.eos_id, self.pad_id, self.mask_id))

    def fingerprint(self) -> str:
        """A stable hash of everything that affects encodings; token caches are keyed on it."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            digest = hashlib.sha256(json.dumps(self._special_config(), sort_keys=True).encode())
            digest.update(self._content_digest())
            cached = self._fingerprint = digest.hexdigest()[:32]
        return cached

    def _special_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "mask_id": self.mask_id,
        }

    def _write_config(self, directory: str | Path, **extra: Any) -> Path:
        """Create ``directory`` and write the unmask config file; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"format": CONFIG_FORMAT, "name": self.name, **self._special_config(), **extra}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(
                f"token id {bad[0]} is out of range for tokenizer {self.name!r} "
                f"(ids are 0..{self.vocab_size - 1}); was the model trained with another tokenizer?"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"mask_id={self.mask_id}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id})"
        )
