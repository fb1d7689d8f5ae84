"""Token blocks streamed with Hugging Face ``datasets``, for corpora larger than the local disk.

``TokenBlocks`` tokenizes a corpus once into a memory-mapped cache, so corpus and tokens must fit
on disk. With ``data.streaming: true`` the training batches come from ``datasets``' streaming
mode instead: every process reads its own part of the corpus (``split_dataset_by_node``: whole
shards when their number divides evenly, else every world_size-th document), tokenizes
documents as they arrive and lays them out exactly as ``TokenBlocks`` does ("wrapped": documents
joined with EOS and cut into ``[BOS] + L-2 tokens + [EOS]``; "padded": one document per block).

Resume. The position of a stream is datasets' own iterator state (shard and document) plus the
tokens read but not yet placed in a block, and the epoch. Checkpoints save it for every process
(``state_dict``), and a resumed run continues at the same token, so it sees the batches the
uninterrupted run would have seen. The stream is read in corpus order: a shuffle buffer's
contents are not part of datasets' resumable state, so shuffling would break that guarantee.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from unmask.errors import require

from .batching import Batch, stack_items
from .blocks import check_block_options, frame_block
from .env import offline
from .errors import DataError
from .hub import HUB_DATASETS
from .local_files import source_files
from .tokenizer_base import Tokenizer

# datasets' builder for each local file type; other files are read as plain text, one document
# per line.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def open_stream(source: str, split: str, *, rank: int = 0, world_size: int = 1, text_field: str = "text",
                max_documents: int | None = None) -> tuple[Any, str]:
    """This process's part of ``split`` of ``source`` as a streaming ``datasets.IterableDataset``,
    and the name of its text column. ``source`` is a name in ``HUB_DATASETS`` or a local file or
    folder (.jsonl, .json, .parquet, or plain text); ``max_documents`` keeps the first documents of
    the whole stream, however many processes share it."""
    if source in HUB_DATASETS:
        dataset, text_field, limit = _hub_stream(source, split)
    else:
        dataset, limit = _local_stream(source, split), None
    if max_documents is not None:
        limit = max_documents if limit is None else min(limit, max_documents)
    if limit is None:
        from datasets.distributed import split_dataset_by_node

        return split_dataset_by_node(dataset, rank=rank, world_size=world_size), text_field
    # split_dataset_by_node would apply a take() per process when it splits by shards, so a
    # global limit (OpenWebText's held-out tail, max_documents) would not hold: every process
    # reads the limited stream and keeps its every world_size-th document instead.
    dataset = dataset.take(limit)
    if world_size > 1:
        dataset = dataset.filter(lambda _, index: index % world_size == rank, with_indices=True)
    return dataset, text_field


def _hub_stream(name: str, split: str) -> tuple[Any, str, int | None]:
    entry = HUB_DATASETS[name]
    if split not in entry.splits:
        raise DataError(f"dataset {name} has no {split!r} split to stream (it has: {', '.join(entry.splits)})")
    require("datasets", f"streaming dataset {name}")
    if offline():
        raise DataError(f"streaming dataset {name} needs network access (offline mode is set); "
                        f"pass a local path instead")
    import datasets

    try:
        dataset = datasets.load_dataset(entry.path, entry.config, split=entry.splits[split], streaming=True)
    except Exception as error:  # network, hub and format errors come in many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"could not stream dataset {name} ({entry.path}): {reason}. It needs network "
                        f"access; pass a local path instead") from None
    if entry.validation_tail:  # OpenWebText: the last documents of the train split are validation
        if split != "train":
            raise DataError(f"the validation documents of {name} are the last {entry.validation_tail:,} of its "
                            f"stream, which is read only by reading all of it; set data.valid_source to a "
                            f"local file of them")
        return dataset, entry.text_field, max(_num_examples(dataset, entry.splits[split]) - entry.validation_tail, 0)
    return dataset, entry.text_field, None


def _num_examples(dataset: Any, hub_split: str) -> int:
    splits = getattr(dataset.info, "splits", None) or {}
    info = splits.get(hub_split)
    if info is None or not info.num_examples:
        raise DataError("the hub does not say how many documents this dataset has, so its held-out "
                        "validation tail cannot be streamed; set data.valid_source to a local file")
    return int(info.num_examples)


def _local_stream(source: str, split: str) -> Any:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path {source} does not exist")
    if split not in ("train", "all"):
        raise DataError(f"a streamed local source has no {split!r} split; set data.valid_source to a "
                        f"validation file")
    files = source_files(path)
    if not files:
        raise DataError(f"{source} holds no readable files to stream")
    builders = {_BUILDERS.get(file.suffix, "text") for file in files}
    if len(builders) > 1:
        raise DataError(f"{source} mixes file types ({', '.join(sorted(builders))}); stream one type per folder")
    require("datasets", "data.streaming")
    import datasets

    try:
        return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train",
                                     streaming=True)
    except Exception as error:  # parse errors come from several libraries
        raise DataError(f"could not stream {source}: {error}") from None


class StreamingBlocks:
    """Endless blocks of ``length`` tokens from this process's part of a streamed corpus.

    Iterating yields ``{"input_ids": LongTensor[L], "loss_mask": BoolTensor[L]}`` items, the same
    items ``TokenBlocks`` holds for the same documents; at the end of the corpus the next epoch
    starts. ``state_dict()`` taken between two items and given to ``load_state_dict()`` of a new
    instance makes that one continue with the next item.
    """

    def __init__(self, source: str, tokenizer: Tokenizer, *, split: str = "train", length: int,
                 layout: str = "wrapped", rank: int = 0, world_size: int = 1, text_field: str = "text",
                 max_documents: int | None = None) -> None:
        check_block_options(layout, length, max_documents)
        self.tokenizer, self.length, self.layout = tokenizer, length, layout
        self.source, self.split, self.rank, self.world_size = source, split, rank, world_size
        self.dataset, self.text_field = open_stream(source, split, rank=rank, world_size=world_size,
                                                    text_field=text_field, max_documents=max_documents)
        self._start = self.dataset.state_dict()  # where every epoch begins
        self.epoch = 0
        self.buffer: list[int] = []  # tokens read but not yet in a block (wrapped layout)
        self._resumed = False  # positioned by load_state_dict, possibly at the very end of an epoch

    def state_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset.state_dict(), "buffer": list(self.buffer), "epoch": self.epoch,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("rank"), state.get("world_size")) != (self.rank, self.world_size):
            raise DataError(f"the saved stream position is that of process {state.get('rank')} of "
                            f"{state.get('world_size')}, not {self.rank} of {self.world_size}; resume a "
                            f"streaming run with the number of processes it was saved with")
        self.epoch = int(state["epoch"])
        # datasets ignores a saved position unless the dataset is at the saved epoch too.
        self.dataset.set_epoch(self.epoch)
        self.dataset.load_state_dict(state["dataset"])
        self.buffer = [int(token) for token in state["buffer"]]
        self._resumed = True

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        interior = self.length - 2
        if not self._resumed:  # a new iteration continues where the last one stopped
            self.dataset.load_state_dict(self.dataset.state_dict())
        while True:
            read_any, resumed, self._resumed = False, self._resumed, False
            for row in self.dataset:
                text = (row.get(self.text_field) or "").strip()
                if not text:
                    continue
                read_any = True
                tokens = self.tokenizer.encode(text)
                if self.layout == "padded":
                    yield self._block(tokens[:interior])
                    continue
                self.buffer.extend(tokens)
                self.buffer.append(self.tokenizer.eos_id)
                while len(self.buffer) >= interior:
                    body, self.buffer = self.buffer[:interior], self.buffer[interior:]
                    yield self._block(body)
            if not read_any and not resumed and self.epoch == 0 and not self.buffer:
                raise DataError(f"the stream of {self.source} ({self.split}) holds no documents for process "
                                f"{self.rank} of {self.world_size}")
            # The next epoch; the wrapped stream carries its partial block over the boundary.
            self.epoch += 1
            self.dataset.load_state_dict(self._start)
            self.dataset.set_epoch(self.epoch)

    def _block(self, body: list[int]) -> dict[str, torch.Tensor]:
        return frame_block(torch.tensor(body, dtype=torch.long), self.length, self.tokenizer)


def stream_batches(blocks: StreamingBlocks, batch_size: int) -> Iterator[Batch]:
    """Consecutive blocks stacked into batches; nothing is read ahead of the batch asked for, so
    ``blocks.state_dict()`` between two batches is the position of the next one."""
    items = iter(blocks)
    while True:
        yield stack_items(list(islice(items, batch_size)))


class BlockList(torch.utils.data.Dataset):
    """A few streamed blocks held in memory: the fixed validation set of a streaming run."""

    def __init__(self, blocks: StreamingBlocks, count: int) -> None:
        self.items = []
        for item in iter(blocks):
            if blocks.epoch > 0 or len(self.items) == count:  # one pass at most: no repeated blocks
                break
            self.items.append(item)
        self.num_tokens = int(sum(item["loss_mask"].sum() for item in self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]
