"""On-disk token caches: the documents of one (source, split, tokenizer) tokenized once.

A cache is a folder ``tokens-<key>/`` under the cache dir ($UNMASK_CACHE, else
~/.cache/unmask) holding
- tokens.bin: every document's ids followed by EOS, concatenated (uint16 when the vocabulary
  fits, else uint32) -- exactly the "wrapped" stream;
- starts.bin: int64 offsets of each document in tokens.bin, plus the total at the end;
- meta.json: counts, dtype and the identity the key was hashed from.
Both layouts and every block length are cheap views of these arrays (see ``datasets``), so
the key covers only what changes the tokens: the source (paths, sizes, times), the split,
the tokenizer's fingerprint and the document limit.

A build streams documents through ``Tokenizer.encode_batch`` into a private staging folder,
fsyncs it and renames it into place in one step (:mod:`unmask.fileio`, as checkpoints are). A
crashed build leaves only a staging folder (ignored, and removed by the next build on the same
host), and when two processes build the same cache both succeed: the first rename wins and the
second uses its result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from unmask.fileio import discard_folder, fsync_dir, publish_folder, remove_leftovers, staging_folder

from .errors import DataError
from .tokenizer_base import Tokenizer

CACHE_FORMAT = 1
TOKENS_FILE = "tokens.bin"
STARTS_FILE = "starts.bin"
META_FILE = "meta.json"
# Documents are encoded in batches of about this many characters (or documents): large
# enough for the tokenizer's parallel batch path, small enough to keep memory flat.
BATCH_CHARS = 1 << 21
BATCH_DOCUMENTS = 4096

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$UNMASK_CACHE if set, else ~/.cache/unmask."""
    return Path(os.environ.get("UNMASK_CACHE") or Path.home() / ".cache" / "unmask").expanduser()


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def cache_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class _Corrupt(Exception):
    """A cache folder whose files do not match its metadata."""


class TokenCache:
    """A built cache, memory-mapped read-only.

    ``tokens``: the document stream; ``starts``: ``num_documents + 1`` offsets, so document i
    (with its EOS) is ``tokens[starts[i]:starts[i + 1]]``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.meta = json.loads((path / META_FILE).read_text())
            dtype = np.dtype(self.meta["dtype"])
            num_tokens, num_documents = self.meta["num_tokens"], self.meta["num_documents"]
            expected_format = self.meta["format"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise _Corrupt(f"unreadable {META_FILE} ({error})") from None
        if expected_format != CACHE_FORMAT:
            raise _Corrupt(f"format {expected_format}, expected {CACHE_FORMAT}")
        for name, size in ((TOKENS_FILE, num_tokens * dtype.itemsize),
                           (STARTS_FILE, (num_documents + 1) * 8)):
            actual = (path / name).stat().st_size if (path / name).is_file() else None
            if actual != size:
                raise _Corrupt(f"{name} has {actual} bytes, expected {size}")
        self.tokens = np.memmap(path / TOKENS_FILE, dtype=dtype, mode="r", shape=(num_tokens,))
        self.starts = np.memmap(path / STARTS_FILE, dtype=np.int64, mode="r",
                                shape=(num_documents + 1,))

    @property
    def num_documents(self) -> int:
        return len(self.starts) - 1

    def __reduce__(self) -> tuple:
        # Pickle (e.g. for DataLoader workers) by path, reopening the maps instead of copying.
        return (TokenCache, (self.path,))


def open_or_build(cache_dir: Path, identity: dict[str, Any],
                  documents: Callable[[], Iterable[str]], tokenizer: Tokenizer) -> TokenCache:
    """Open the cache for ``identity``, building it from ``documents()`` if it is missing or
    damaged."""
    key = cache_key(identity)
    final = cache_dir / f"tokens-{key}"
    if final.exists():
        try:
            return TokenCache(final)
        except _Corrupt as reason:
            warnings.warn(f"rebuilding damaged token cache {final}: {reason}", stacklevel=3)
            discard_folder(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(cache_dir)  # builds of processes that died on this host
    with staging_folder(final, "build") as temp:
        _build(temp, identity, documents(), tokenizer)
        # If another process finished the same cache first, its content is identical: use it.
        publish_folder(temp, final, replace=False)
    return TokenCache(final)


def _build(folder: Path, identity: dict[str, Any], documents: Iterable[str],
           tokenizer: Tokenizer) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    started = time.time()
    source = identity.get("source")
    named = source.get("path") or source.get("name") if isinstance(source, dict) else source
    logger.info("tokenizing %s (%s split) into %s", named or "the corpus", identity.get("split", "all"),
                folder.parent)
    num_tokens = num_documents = 0
    with open(folder / TOKENS_FILE, "wb") as tokens_out, \
            open(folder / STARTS_FILE, "wb") as starts_out:
        starts_out.write(np.zeros(1, dtype=np.int64).tobytes())
        for batch in _batches(documents):
            encoded = tokenizer.encode_batch(batch)
            ends = np.cumsum([len(ids) + 1 for ids in encoded])  # +1: the EOS after each
            flat = np.empty(int(ends[-1]), dtype=dtype)
            start = 0
            for ids, end in zip(encoded, ends, strict=True):
                flat[start:end - 1] = ids
                start = int(end)
            flat[ends - 1] = tokenizer.eos_id
            tokens_out.write(flat.tobytes())
            starts_out.write((num_tokens + ends).astype(np.int64).tobytes())
            num_tokens += int(ends[-1])
            num_documents += len(batch)
        for file in (tokens_out, starts_out):
            file.flush()
            os.fsync(file.fileno())
    if num_documents == 0:
        raise DataError("the data source yielded no documents to tokenize")
    meta = {
        "format": CACHE_FORMAT,
        "identity": identity,
        "tokenizer": tokenizer.name,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(folder / META_FILE, "w") as meta_out:
        json.dump(meta, meta_out, indent=2)
        meta_out.flush()
        os.fsync(meta_out.fileno())
    fsync_dir(folder)
    logger.info("tokenized %d documents into %d tokens in %.1fs", num_documents, num_tokens,
                time.time() - started)


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCUMENTS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
