"""Downloaded corpora: Hugging Face datasets (online only) and text8."""

from __future__ import annotations

import os
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from unmask.errors import require

from .env import offline
from .errors import DataError


@dataclass(frozen=True)
class HubDataset:
    """Where one of our dataset names lives on the Hugging Face hub.

    ``splits`` maps our split names to the hub's. Datasets without a validation split use
    their test split for it (the MDLM paper reports on those test splits). ``validation_tail``
    holds out the last N documents of the hub's train split as validation (OpenWebText).
    """

    path: str
    config: str | None
    text_field: str
    splits: dict[str, str] = field(default_factory=dict)
    validation_tail: int = 0


_STANDARD = {"train": "train", "validation": "validation", "test": "test"}
_NO_VALIDATION = {"train": "train", "validation": "test", "test": "test"}

HUB_DATASETS: dict[str, HubDataset] = {
    # The paper's split: the last 100,000 documents are validation; there is no test split.
    "openwebtext": HubDataset("Skylion007/openwebtext", None, "text",
                              {"train": "train", "validation": "train"}, validation_tail=100_000),
    "lm1b": HubDataset("dvruette/lm1b", None, "text", _NO_VALIDATION),
    "wikitext-2": HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1", "text", _STANDARD),
    "wikitext-103": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1", "text", _STANDARD),
    "ptb": HubDataset("ptb-text-only/ptb_text_only", "penn_treebank", "sentence", _STANDARD),
    "lambada": HubDataset("EleutherAI/lambada_openai", "en", "text",
                          {"validation": "test", "test": "test"}),
    "ag_news": HubDataset("fancyzhx/ag_news", None, "text", _NO_VALIDATION),
    "pubmed": HubDataset("armanc/scientific_papers", "pubmed", "article", _STANDARD),
    "arxiv": HubDataset("armanc/scientific_papers", "arxiv", "article", _STANDARD),
}

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_FILE_NAMES = ("text8", "text8.zip")
# text8 is one 100M-character line; documents are 1M-character chunks of it so tokenizing
# streams, and wrapped blocks see an EOS only once per million characters.
TEXT8_CHUNK_CHARS = 1_000_000
# The standard character split: 90M / 5M / 5M (as fractions, so small test files work too).
TEXT8_SPLITS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0),
                "all": (0.0, 1.0)}


def hub_documents(name: str, split: str, *, as_published: bool = False) -> Iterator[str]:
    """Documents of a dataset in ``HUB_DATASETS``; loads it now, yields lazily.

    Rows are stripped and empty ones skipped, or with ``as_published`` every row is yielded as it
    is (the reference's zero-shot reading: an empty row still ends with an EOS in the stream).
    """
    entry = HUB_DATASETS[name]
    if split == "all":
        hub_splits = list(dict.fromkeys(entry.splits.values()))
    elif split in entry.splits:
        hub_splits = [entry.splits[split]]
    else:
        raise DataError(f"dataset {name} has no {split!r} split (it has: "
                        f"{', '.join([*entry.splits, 'all'])})")
    require("datasets", f"dataset {name}")
    if offline():
        raise DataError(f"dataset {name} needs network access (offline mode is set); "
                        f"pass a local path instead")
    import datasets  # slow to import; only needed here

    try:
        parts = [datasets.load_dataset(entry.path, entry.config, split=hub_split)
                 for hub_split in hub_splits]
    except Exception as error:  # network, hub and format errors come in many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"could not load dataset {name} ({entry.path}): {reason}. It needs "
                        f"network access; pass a local path instead") from None
    if entry.validation_tail and split in ("train", "validation"):
        total = len(parts[0])
        cut = max(total - entry.validation_tail, 0)
        rows = range(cut) if split == "train" else range(cut, total)
        parts = [parts[0].select(rows)]
    return _hub_texts(parts, entry.text_field, as_published)


def _hub_texts(parts: list, text_field: str, as_published: bool) -> Iterator[str]:
    for part in parts:
        for row in part:
            text = row[text_field] or ""
            if as_published:
                yield text
            elif text.strip():
                yield text.strip()


def is_text8_path(path: Path) -> bool:
    return path.name in TEXT8_FILE_NAMES


def text8_documents(path: Path | None, split: str, download_dir: Path) -> Iterator[str]:
    """text8 split into 1M-character documents; ``path`` is text8.zip or the unzipped file, or
    None to download text8.zip into ``download_dir`` (once)."""
    if split not in TEXT8_SPLITS:
        raise DataError(f"text8 has splits {', '.join(TEXT8_SPLITS)}, not {split!r}")
    if path is None:
        path = download_dir / "text8.zip"
        if not path.is_file():
            _download(TEXT8_URL, path)
    elif not path.is_file():
        raise DataError(f"text8 file {path} does not exist")
    return _text8_chunks(path, *TEXT8_SPLITS[split])


def _text8_chunks(path: Path, start: float, stop: float) -> Iterator[str]:
    text = _read_text8(path)
    begin, end = round(len(text) * start), round(len(text) * stop)
    for offset in range(begin, end, TEXT8_CHUNK_CHARS):
        yield text[offset:min(offset + TEXT8_CHUNK_CHARS, end)]


def _read_text8(path: Path) -> str:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                member = "text8" if "text8" in names else names[0]
                data = archive.read(member)
        else:
            data = path.read_bytes()
        return data.decode("utf-8")
    except (zipfile.BadZipFile, IndexError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a valid text8 file ({error}); download it again "
                        f"from {TEXT8_URL}") from None


def _download(url: str, destination: Path) -> None:
    if offline():
        raise DataError(f"downloading {url} needs network access (offline mode is set); "
                        f"pass the path of a local copy instead")
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the destination and rename at the end: an interrupted download never
    # looks complete.
    partial = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
    try:
        urllib.request.urlretrieve(url, partial)
        os.replace(partial, destination)
    except OSError as error:
        raise DataError(f"could not download {url} ({error}); pass the path of a local copy "
                        f"instead") from None
    finally:
        partial.unlink(missing_ok=True)
