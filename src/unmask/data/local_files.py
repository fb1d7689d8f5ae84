"""Documents from local files: .txt (and other plain text), .jsonl, .parquet, or folders of them.

Document rules:
- plain text (.txt or any other non-binary file): if the file has a blank (whitespace-only)
  line, each blank-line-separated block is a document (paragraphs, WikiText articles'
  paragraphs); otherwise each non-empty line is one (PTB/LM1B style one sentence per line).
- .jsonl: one JSON object per line; the document is its ``text_field`` (default "text").
- .parquet: the ``text_field`` column.
Documents are stripped of surrounding whitespace; empty ones are skipped. Folders are read
recursively in sorted path order, skipping hidden entries; files that are binary or not UTF-8
are skipped with a warning (given directly, they are an error).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unmask.errors import require

from .errors import DataError

# How a user names the field of their files that holds the text, in every message that needs it.
TEXT_FIELD_FIX = "name the one that holds the text with data.text_field=NAME (train) or --text-field NAME (eval)"
_SNIFF_BYTES = 8192
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalFile:
    """A readable file and how to read it ("lines", "blocks", "jsonl" or "parquet")."""

    path: Path
    mode: str


class _Unreadable(Exception):
    """A file that cannot be read as text; the message says why."""


def plan_files(path: Path, text_field: str) -> list[LocalFile]:
    """Check every file under ``path`` once and decide how to read it.

    Raises DataError for a missing path, an unreadable file given directly, or a folder with
    nothing readable; warns about (and skips) unreadable files inside a folder.
    """
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        try:
            return [_plan_file(path, text_field)]
        except _Unreadable as reason:
            raise DataError(f"cannot read {path}: {reason}") from None
    plan = []
    for file in source_files(path):
        try:
            plan.append(_plan_file(file, text_field))
        except _Unreadable as reason:
            warnings.warn(f"skipping {file}: {reason}", stacklevel=3)
    if not plan:
        raise DataError(f"folder {path} holds no readable text, .jsonl or .parquet files")
    return plan


def read_documents(plan: list[LocalFile], text_field: str) -> Iterator[str]:
    """Yield the non-empty, stripped documents of the planned files, in order."""
    for file in plan:
        if file.mode == "jsonl":
            texts = _jsonl_texts(file.path, text_field)
        elif file.mode == "parquet":
            texts = _parquet_texts(file.path, text_field)
        elif file.mode == "blocks":
            texts = _blocks(file.path)
        else:
            texts = _lines(file.path)
        for text in texts:
            text = text.strip()
            if text:
                yield text


def source_files(path: Path) -> list[Path]:
    """``path`` itself, or every non-hidden file under the folder ``path`` in sorted order."""
    if path.is_file():
        return [path]
    return sorted(
        file for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )


def _plan_file(path: Path, text_field: str) -> LocalFile:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        _check_parquet(path, text_field)
        return LocalFile(path, "parquet")
    has_blank_line = _check_text(path)
    if suffix == ".jsonl":
        return LocalFile(path, "jsonl")
    return LocalFile(path, "blocks" if has_blank_line else "lines")


def _check_text(path: Path) -> bool:
    """Validate ``path`` as UTF-8 text (reading it all, so reading never fails halfway) and
    report whether it has a blank line."""
    with open(path, "rb") as raw:
        if b"\0" in raw.read(_SNIFF_BYTES):
            raise _Unreadable("it looks binary (NUL bytes)")
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    # Found one; the rest only needs decoding, which chunks do faster.
                    while file.read(_READ_CHUNK):
                        pass
                    return True
    except UnicodeDecodeError as error:
        raise _Unreadable(f"it is not UTF-8 text ({error.reason})") from None
    return False


def _check_parquet(path: Path, text_field: str) -> None:
    require("pyarrow", f"reading {path.name}")
    import pyarrow.parquet as pq  # only needed for parquet input

    try:
        schema = pq.ParquetFile(path).schema_arrow
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise _Unreadable(f"it is not a readable parquet file ({error})") from None
    if text_field not in schema.names:
        raise DataError(f"{path} has no column {text_field!r} (columns: "
                        f"{', '.join(schema.names)}); {TEXT_FIELD_FIX}")


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        yield from file


def _blocks(path: Path) -> Iterator[str]:
    block: list[str] = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block)
                block = []
    if block:
        yield "".join(block)


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{number} has no field {text_field!r}; {TEXT_FIELD_FIX}")
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(f"{path}:{number}: field {text_field!r} is "
                                f"{type(text).__name__}, not a string")
            yield text


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    # Stream record batches so a large file never has to fit in memory.
    for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield str(text)
