"""The text8 character tokenizer: 26 lowercase letters and space, plus four special ids."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .tokenizer_base import MASK_TEXT, Tokenizer

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
# Bump when normalize() changes: the version is part of the fingerprint, so caches rebuild.
NORMALIZATION_VERSION = 1

_NOT_LETTER = re.compile(r"[^a-z]+")

# Byte value -> id for the 27 symbols a normalized string can contain.
_BYTE_TO_ID = np.zeros(256, dtype=np.int64)
for _index, _char in enumerate(ALPHABET):
    _BYTE_TO_ID[ord(_char)] = _index


def normalize(text: str) -> str:
    """Map any text onto the text8 alphabet.

    The rule: compatibility-decompose (NFKD) and drop combining marks, so "Café" -> "Cafe" and
    "ﬁ" -> "fi"; lowercase; then every run of characters that are not a-z (digits, punctuation,
    whitespace, other scripts) becomes a single space, leading and trailing runs included.
    Digits are not spelled out (text8's original script did that).
    """
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _NOT_LETTER.sub(" ", text.lower())


class CharTokenizer(Tokenizer):
    """Ids 0..26 are " ", "a".."z"; then BOS 27, EOS 28, PAD 29 and MASK 30 (vocab_size 31)."""

    kind = "char"

    def __init__(self) -> None:
        self.name = "char"
        # The specials follow the alphabet, MASK last.
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = (27, 28, 29, 30)
        self.vocab_size = 31
        self._pieces = [*ALPHABET, "[BOS]", "[EOS]", "[PAD]", MASK_TEXT]

    def encode(self, text: str) -> list[int]:
        """Ids of ``normalize(text)``; so decode(encode(s)) == normalize(s)."""
        data = np.frombuffer(normalize(text).encode("ascii"), dtype=np.uint8)
        return _BYTE_TO_ID[data].tolist()

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        if skip_special:
            ids = [i for i in ids if i < len(ALPHABET)]
        return "".join(self._pieces[i] for i in ids)

    def save(self, directory: str | Path) -> None:
        self._write_config(directory, alphabet=ALPHABET, normalization=NORMALIZATION_VERSION)

    def _content_digest(self) -> bytes:
        return hashlib.sha256(f"{ALPHABET}|{NORMALIZATION_VERSION}".encode()).digest()
