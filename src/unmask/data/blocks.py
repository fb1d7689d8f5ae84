"""Fixed-length token blocks for training and evaluation, in the MDLM paper's two layouts.

- "wrapped" (OpenWebText / text8): documents, each followed by EOS, form one stream that is
  cut into blocks ``[BOS] + L-2 stream tokens + [EOS]``. Every position counts in the loss.
  The stream's final partial piece becomes one last block, right-padded, so evaluation sees
  every token.
- "padded" (LM1B): one document per block, ``[BOS] tokens [EOS]``, with the document
  truncated to L-2 tokens (the EOS always stays) and right-padded with PAD.
In both, ``loss_mask`` is True exactly on the non-padding positions.
With a ``detokenizer`` the blocks follow the reference's zero-shot protocol (see
:mod:`.detokenizers`): wrapped, and the last partial block dropped as the reference drops it. It is computed from
lengths, not by comparing with ``pad_id``, because GPT-2's PAD is the same id as its EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import default_cache_dir, open_or_build
from .errors import DataError
from .sources import iter_documents, source_identity
from .tokenizer_base import Tokenizer

LAYOUTS = ("wrapped", "padded")


def check_block_options(layout: str, length: int, max_documents: int | None) -> None:
    """The checks every source of blocks (cached or streamed) makes of its options."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if length < 3:
        raise DataError(f"block length must be at least 3 (BOS, a token, EOS), got {length}")
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be positive, got {max_documents}")


def frame_block(body: torch.Tensor, length: int, tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
    """One item: ``[BOS] body [EOS]`` right-padded with PAD to ``length`` (body has at most
    length - 2 tokens), and its loss mask, True up to and including the EOS."""
    size = len(body)
    input_ids = torch.full((length,), tokenizer.pad_id, dtype=torch.long)
    input_ids[0] = tokenizer.bos_id
    input_ids[1:size + 1] = body
    input_ids[size + 1] = tokenizer.eos_id
    loss_mask = torch.zeros(length, dtype=torch.bool)
    loss_mask[:size + 2] = True
    return {"input_ids": input_ids, "loss_mask": loss_mask}


def wrapped_blocks(stream: Sequence[int], length: int, tokenizer: Tokenizer) -> list[dict[str, torch.Tensor]]:
    """The "wrapped" blocks of a token ``stream`` (documents each followed by EOS): ``[BOS] L-2 tokens [EOS]``,
    the last partial piece right-padded; what :class:`TokenBlocks` gives for a file holding that stream."""
    interior = length - 2
    return [frame_block(torch.tensor(stream[start:start + interior], dtype=torch.long), length, tokenizer)
            for start in range(0, len(stream), interior)]


class TokenBlocks(Dataset):
    """Blocks of ``length`` token ids from ``split`` of ``source``, tokenized once and cached.

    Items are ``{"input_ids": LongTensor[L], "loss_mask": BoolTensor[L]}``. ``num_tokens`` is
    the number of loss-mask positions over the whole set (for per-token figures).
    """

    def __init__(self, source: str, tokenizer: Tokenizer, *, split: str = "train", length: int,
                 layout: str = "wrapped", cache_dir: str | Path | None = None,
                 max_documents: int | None = None, text_field: str = "text", detokenizer: str | None = None
                 ) -> None:
        check_block_options(layout, length, max_documents)
        if detokenizer is not None and layout != "wrapped":
            raise DataError("the zero-shot protocol (a detokenizer) wraps documents; use layout='wrapped'")
        self.source, self.split, self.layout, self.length = source, split, layout, length
        self.tokenizer = tokenizer
        identity = {
            "source": source_identity(source, text_field=text_field),
            "split": split,
            "tokenizer": tokenizer.fingerprint(),
            "max_documents": max_documents,
            **({"detokenizer": detokenizer} if detokenizer is not None else {}),
        }
        # Documents are only read when the cache has to be built (reading can be a full pass
        # over the files); a bad split never has a cache, so it still fails here.
        self.cache = open_or_build(
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
            identity,
            lambda: islice(iter_documents(source, split, text_field=text_field, detokenizer=detokenizer),
                           max_documents),
            tokenizer,
        )
        stream_length = len(self.cache.tokens)
        interior = length - 2
        if layout == "wrapped":
            full, rest = divmod(stream_length, interior)
            if detokenizer is not None:
                rest = 0  # the reference drops the last partial block
            if full + (rest > 0) == 0:
                raise DataError(f"{source} ({split}) has {stream_length} tokens, less than one block of {length}")
            self._size = full + (rest > 0)
            self.num_tokens = full * length + (rest + 2 if rest else 0)
        else:
            # Document lengths without their EOS, truncated to fit between BOS and EOS.
            kept = np.minimum(np.diff(self.cache.starts) - 1, interior)
            self._size = len(kept)
            self.num_tokens = int(kept.sum()) + 2 * len(kept)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"block {index} out of range for {self._size} blocks")
        interior = self.length - 2
        if self.layout == "wrapped":
            start = index * interior
            body = self.cache.tokens[start:start + interior]
        else:
            start, end = self.cache.starts[index], self.cache.starts[index + 1] - 1  # drop EOS
            body = self.cache.tokens[start:min(end, start + interior)]
        return frame_block(torch.from_numpy(body.astype(np.int64)), self.length, self.tokenizer)

    def __repr__(self) -> str:
        return (f"TokenBlocks(source={self.source!r}, split={self.split!r}, "
                f"layout={self.layout!r}, length={self.length}, blocks={self._size}, "
                f"tokens={self.num_tokens}, tokenizer={self.tokenizer.name!r})")
