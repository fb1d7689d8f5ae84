"""Subword tokenizers: Hugging Face `tokenizers` models (BERT, trained BPE, any tokenizer.json)
and tiktoken BPE files (GPT-2)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import tiktoken
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import DataError
from .tokenizer_base import MASK_TEXT, Tokenizer

# The pre-tokenization regex published with GPT-2 (contractions, letters, digits, other
# symbols, whitespace); tiktoken needs it spelled out when built from a ranks file.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_END_OF_TEXT = "<|endoftext|>"
GPT2_END_OF_TEXT_ID = 50256

HF_TOKENIZER_FILE = "tokenizer.json"
RANKS_FILE = "ranks.tiktoken"

# Names for the special tokens we add to tokenizers that lack them (PAD is never added: a
# tokenizer without one pads with EOS).
ADDED_SPECIALS = {"bos": "[BOS]", "eos": "[EOS]", "mask": MASK_TEXT}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (a tokenizer.json) with the four special ids resolved.

    Build one with :func:`from_hf_backend`; the constructor takes ids that already exist.
    """

    kind = "hf"

    def __init__(self, backend: tokenizers.Tokenizer, name: str, *, bos_id: int, eos_id: int,
                 pad_id: int, mask_id: int, chat_template: str | None = None) -> None:
        # Saved tokenizer.json files often carry fixed-length padding and truncation (the
        # MiniLM one pads everything to 128); our layouts do their own, so turn both off.
        backend.no_padding()
        backend.no_truncation()
        # Literal "[MASK]" or "<|endoftext|>" in a document is text, not a control token.
        backend.encode_special_tokens = True
        self.backend = backend
        self.name = name
        self.bos_id, self.eos_id, self.pad_id, self.mask_id = bos_id, eos_id, pad_id, mask_id
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
        self.chat_template = chat_template
        self._chat_backend: tokenizers.Tokenizer | None = None

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_chat(self, text: str) -> list[int]:
        if self._chat_backend is None:  # a copy that reads special tokens as tokens
            self._chat_backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
            self._chat_backend.encode_special_tokens = False
        return self._chat_backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        if skip_special:
            special = self.special_ids
            ids = [i for i in ids if i not in special]
        # Other special tokens of the backend ([UNK], [SEP] used mid-text) stay visible.
        return self.backend.decode(ids, skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        chat = {"chat_template": self.chat_template} if self.chat_template else {}
        directory = self._write_config(directory, tokenizer_file=HF_TOKENIZER_FILE, **chat)
        self.backend.save(str(directory / HF_TOKENIZER_FILE))

    def _content_digest(self) -> bytes:
        return hashlib.sha256(self.backend.to_str().encode()).digest()


def from_hf_backend(backend: tokenizers.Tokenizer, name: str, specials: dict[str, str | None],
                    chat_template: str | None = None) -> HFTokenizer:
    """Wrap ``backend`` (with its ``chat_template``, if any), resolving the special ids from token strings.

    ``specials`` maps "bos", "eos", "pad", "mask" to the tokenizer's own token strings (or None).
    Missing BOS/EOS get added tokens "[BOS]"/"[EOS]"; a missing PAD reuses EOS (GPT-2 style, the
    loss mask marks padding); a missing MASK is added last, so it gets the highest id.
    """
    ids: dict[str, int] = {}
    for role in ("bos", "eos", "pad", "mask"):
        token = specials.get(role)
        token_id = backend.token_to_id(token) if token else None
        if token_id is None and role == "pad":
            token_id = ids["eos"]
        elif token_id is None:
            backend.add_special_tokens([tokenizers.AddedToken(ADDED_SPECIALS[role], special=True)])
            token_id = backend.token_to_id(ADDED_SPECIALS[role])
        ids[role] = token_id
    return HFTokenizer(backend, name, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"],
                       mask_id=ids["mask"], chat_template=chat_template)


def train_bpe(corpus: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) with ``vocab_size`` ids in total.

    The specials [BOS] [EOS] [MASK] take the last three ids (PAD is EOS, as for GPT-2), so MASK
    is the highest id. Any text encodes (all 256 bytes are in the base alphabet); a small corpus may
    stop short of ``vocab_size``, and then ``vocab_size`` reports the actual size.
    """
    base = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < base + len(ADDED_SPECIALS):
        raise DataError(f"bpe vocab_size must be at least {base + len(ADDED_SPECIALS)} "
                        f"(256 bytes + {len(ADDED_SPECIALS)} specials), got {vocab_size}")
    documents = 0

    def counted(texts: Iterable[str]) -> Iterable[str]:
        nonlocal documents
        for text in texts:
            documents += 1
            yield text

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ADDED_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(counted(corpus), trainer)
    if documents == 0:
        raise DataError("cannot train the bpe tokenizer on an empty corpus; pass corpus= with text")
    return from_hf_backend(backend, "bpe", {})


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE (GPT-2's 50,257 ids) plus a MASK id after the last one.

    GPT-2 has one special token, <|endoftext|> = 50256, used for BOS, EOS and PAD as in the
    MDLM paper; MASK = 50257, so vocab_size = 50,258.
    """

    kind = "tiktoken"

    def __init__(self, ranks_data: bytes, name: str = "gpt2", *, pattern: str = GPT2_PATTERN,
                 special_tokens: dict[str, int] | None = None) -> None:
        special_tokens = dict(special_tokens or {GPT2_END_OF_TEXT: GPT2_END_OF_TEXT_ID})
        self._ranks_data = ranks_data
        self._pattern = pattern
        self._special_tokens = special_tokens
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=parse_ranks(ranks_data),
            special_tokens=special_tokens,
        )
        self.name = name
        end_of_text = special_tokens[GPT2_END_OF_TEXT]
        self.bos_id = self.eos_id = self.pad_id = end_of_text
        self.mask_id = self.encoding.n_vocab
        self.vocab_size = self.mask_id + 1

    @property
    def ranks_data(self) -> bytes:
        """The ranks file this tokenizer was built from (base64 token, rank per line)."""
        return self._ranks_data

    @property
    def pattern(self) -> str:
        """The pre-tokenization regex."""
        return self._pattern

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: "<|endoftext|>" inside a document is plain text, never id 50256.
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        # Decode to bytes and join before the UTF-8 step, so a character split across a
        # [MASK] placeholder still decodes where its bytes are whole.
        special = self.special_ids
        pieces: list[bytes] = []
        run: list[int] = []
        for token in ids:
            if token in special:
                pieces.append(self.encoding.decode_bytes(run))
                run = []
                if not skip_special:
                    text = MASK_TEXT if token == self.mask_id else GPT2_END_OF_TEXT
                    pieces.append(text.encode())
            else:
                run.append(token)
        pieces.append(self.encoding.decode_bytes(run))
        return b"".join(pieces).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        directory = self._write_config(directory, ranks_file=RANKS_FILE, pattern=self._pattern,
                                       special_tokens=self._special_tokens)
        (directory / RANKS_FILE).write_bytes(self._ranks_data)

    def _content_digest(self) -> bytes:
        digest = hashlib.sha256(self._ranks_data)
        digest.update(json.dumps([self._pattern, self._special_tokens], sort_keys=True).encode())
        return digest.digest()


def parse_ranks(data: bytes) -> dict[bytes, int]:
    """Parse a .tiktoken ranks file: one "base64(token) rank" pair per line.

    Parsed here rather than with tiktoken.load, which keeps a copy in a temp cache keyed by the
    file's path only and would serve stale ranks if a saved tokenizer folder were overwritten.
    """
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise DataError(f"line {number} of the tiktoken ranks file is not "
                            f"'base64-token rank': {line[:60]!r}") from None
    return ranks
