"""Streaming corpora (data.streaming): same blocks as the cache, disjoint ranks, exact resume.

Every test streams local files through ``datasets``' streaming mode, the code path a hub dataset
takes when online.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from unmask.checkpoint import resolve_checkpoint
from unmask.config import ConfigError, apply_overrides, load_preset
from unmask.data import DataError, TokenBlocks, get_tokenizer
from unmask.data.streaming import BlockList, StreamingBlocks, stream_batches
from unmask.evaluate import EvalConfig, evaluate_checkpoint
from unmask.train import Trainer
from unmask.validation import validate

pytest.importorskip("datasets")

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "hex"]


def _documents(count: int, seed: int = 0) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(count):
        size = int(torch.randint(1, 12, (1,), generator=generator))
        picks = torch.randint(0, len(WORDS), (size,), generator=generator).tolist()
        tag = "".join(chr(ord("a") + int(digit)) for digit in f"{seed}{len(docs):03d}")  # unique documents
        docs.append(" ".join([tag, *(WORDS[i] for i in picks)]))
    return docs


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    return path


@pytest.fixture()
def char():
    return get_tokenizer("char")


@pytest.fixture()
def folder(tmp_path):
    """Two jsonl shards of 30 documents each."""
    root = tmp_path / "corpus"
    root.mkdir()
    docs = _documents(60)
    _write_jsonl(root / "part-0.jsonl", docs[:30])
    _write_jsonl(root / "part-1.jsonl", docs[30:])
    return root


def _take(blocks, count):
    items = iter(blocks)
    return [next(items) for _ in range(count)]


def _ids(items):
    return [item["input_ids"].tolist() for item in items]


@pytest.mark.parametrize("layout", ["wrapped", "padded"])
def test_streamed_blocks_equal_cached_blocks(folder, char, tmp_path, layout):
    cached = TokenBlocks(str(folder), char, split="all", length=16, layout=layout, cache_dir=tmp_path / "cache")
    count = len(cached) - 1 if layout == "wrapped" else len(cached)  # the cache pads the stream's last piece
    streamed = _take(StreamingBlocks(str(folder), char, length=16, layout=layout), count)
    expected = [cached[i] for i in range(count)]
    assert _ids(streamed) == _ids(expected)
    assert [s["loss_mask"].tolist() for s in streamed] == [e["loss_mask"].tolist() for e in expected]


def test_ranks_read_disjoint_parts_that_cover_the_corpus(folder, char):
    everything = BlockList(StreamingBlocks(str(folder), char, length=16, layout="padded"), 1000)
    parts = [BlockList(StreamingBlocks(str(folder), char, length=16, layout="padded", rank=r, world_size=2), 1000)
             for r in range(2)]
    assert len(everything) == 60 and [len(p) for p in parts] == [30, 30]
    assert sorted(_ids(parts[0].items + parts[1].items)) == sorted(_ids(everything.items))
    assert not set(map(tuple, _ids(parts[0].items))) & set(map(tuple, _ids(parts[1].items)))


@pytest.mark.parametrize("where", ["start", "second shard", "next epoch"])
def test_a_restored_stream_continues_exactly(folder, char, where):
    per_epoch = len(BlockList(StreamingBlocks(str(folder), char, length=12), 10**6))
    stop = {"start": 3, "second shard": per_epoch // 2 + 3, "next epoch": per_epoch + 3}[where]
    straight = _ids(_take(StreamingBlocks(str(folder), char, length=12), stop + 10))
    first = StreamingBlocks(str(folder), char, length=12)
    items = iter(first)
    head = [next(items) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # it goes through state.json
    second = StreamingBlocks(str(folder), char, length=12)
    second.load_state_dict(state)
    assert _ids(head) + _ids(_take(second, 10)) == straight
    assert state["epoch"] == (where == "next epoch")


def test_resume_at_the_end_of_an_epoch_and_iterate_again(folder, char):
    per_epoch = len(BlockList(StreamingBlocks(str(folder), char, length=16, layout="padded"), 10**6))
    straight = _ids(_take(StreamingBlocks(str(folder), char, length=16, layout="padded"), per_epoch + 4))
    first = StreamingBlocks(str(folder), char, length=16, layout="padded")
    head = _take(first, per_epoch)  # the checkpoint falls right after the corpus' last document
    second = StreamingBlocks(str(folder), char, length=16, layout="padded")
    second.load_state_dict(first.state_dict())
    assert _ids(head) + _ids(_take(second, 4)) == straight
    # A second iteration over the same object goes on from where the first stopped.
    again = StreamingBlocks(str(folder), char, length=16, layout="padded")
    assert _ids(_take(again, 3)) + _ids(_take(again, 3)) == straight[:6]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_max_documents_counts_the_whole_stream(folder, char, world_size):
    parts = [BlockList(StreamingBlocks(str(folder), char, length=32, layout="padded", rank=r,
                                       world_size=world_size, max_documents=7), 1000) for r in range(world_size)]
    first_seven = BlockList(StreamingBlocks(str(folder), char, length=32, layout="padded"), 7)
    assert sorted(_ids([item for part in parts for item in part.items])) == sorted(_ids(first_seven.items))


def test_batches_follow_the_stream(folder, char):
    blocks = StreamingBlocks(str(folder), char, length=12)
    batches = stream_batches(blocks, 4)
    first, second = next(batches), next(batches)
    assert first["input_ids"].shape == (4, 12)
    assert _ids(_take(StreamingBlocks(str(folder), char, length=12), 8)) == (
        first["input_ids"].tolist() + second["input_ids"].tolist()
    )


def test_stream_errors_are_one_clear_line(folder, char, tmp_path):
    state = StreamingBlocks(str(folder), char, length=12, rank=0, world_size=2).state_dict()
    with pytest.raises(DataError, match="number of processes it was saved with"):
        StreamingBlocks(str(folder), char, length=12).load_state_dict(state)
    with pytest.raises(DataError, match="needs network access"):
        StreamingBlocks("openwebtext", char, length=12)  # the tests run with HF_DATASETS_OFFLINE=1
    with pytest.raises(DataError, match="set data.valid_source"):
        StreamingBlocks(str(folder), char, split="validation", length=12)
    with pytest.raises(DataError, match="does not exist"):
        StreamingBlocks(str(tmp_path / "missing.jsonl"), char, length=12)
    config = load_preset("tiny")
    apply_overrides(config, ["data.streaming=true"])
    with pytest.raises(ConfigError, match="needs a fixed tokenizer"):
        validate(config)


def _stream_config(folder, valid, overrides, *extra):
    config = load_preset("tiny")
    apply_overrides(config, [*overrides, f"data.source={folder}", f"data.valid_source={valid}",
                             "data.streaming=true", "train.max_steps=6", *extra])
    return config


def test_streaming_run_resumes_exactly(folder, tmp_path, tiny_overrides):
    valid = _write_jsonl(tmp_path / "valid.jsonl", _documents(10, seed=1))
    config = _stream_config(folder, valid, tiny_overrides)
    Trainer(config, tmp_path / "straight", progress=False).run()
    Trainer(config, tmp_path / "resumed", progress=False).run(max_steps=3)
    state = json.loads((resolve_checkpoint(tmp_path / "resumed") / "state.json").read_text())
    assert len(state["data"]["stream"]) == 1 and state["data"]["stream"][0]["world_size"] == 1
    Trainer(config, tmp_path / "resumed", resume=True, progress=False).run()
    straight = load_file(resolve_checkpoint(tmp_path / "straight") / "model.safetensors")
    resumed = load_file(resolve_checkpoint(tmp_path / "resumed") / "model.safetensors")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    # `unmask eval RUN` evaluates on the run's validation file, never on the streamed corpus.
    report = evaluate_checkpoint(tmp_path / "resumed", EvalConfig(max_batches=1))
    assert (report.data, report.split) == (str(valid), "all")


def test_an_interrupt_mid_step_loses_no_batch(folder, tmp_path, tiny_overrides):
    valid = _write_jsonl(tmp_path / "valid.jsonl", _documents(10, seed=1))
    config = _stream_config(folder, valid, tiny_overrides)
    Trainer(config, tmp_path / "straight", progress=False).run()
    trainer = Trainer(config, tmp_path / "interrupted", progress=False)
    train_step, steps = trainer.train_step, []

    def interrupted_on_the_third_step(batch):
        if len(steps) == 2:  # the third batch is drawn from the stream, then Ctrl-C
            raise KeyboardInterrupt
        steps.append(1)
        return train_step(batch)

    trainer.train_step = interrupted_on_the_third_step
    result = trainer.run()
    assert result.interrupted and result.step == 2
    Trainer(config, tmp_path / "interrupted", resume=True, progress=False).run()
    straight = load_file(resolve_checkpoint(tmp_path / "straight") / "model.safetensors")
    resumed = load_file(resolve_checkpoint(tmp_path / "interrupted") / "model.safetensors")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


@pytest.mark.slow
def test_two_process_streaming_run_resumes_only_with_two(folder, tmp_path, tiny_overrides):
    valid = _write_jsonl(tmp_path / "valid.jsonl", _documents(10, seed=1))
    args = [*tiny_overrides, "model.dropout=0.0", f"data.source={folder}", f"data.valid_source={valid}",
            "data.streaming=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def unmask(*cli, check=True):
        result = subprocess.run([sys.executable, "-m", "unmask", *cli], capture_output=True, text=True,
                                timeout=300, env=env)
        assert (result.returncode == 0) == check, result.stderr[-3000:]
        return result

    run = ["train", "--out", str(tmp_path / "run"), "--quiet", *args]
    unmask(*run[:1], "--nproc", "2", *run[1:], "--max-steps", "2")
    state = json.loads((resolve_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert [s["rank"] for s in state["data"]["stream"]] == [0, 1]
    refused = unmask(*run, "--max-steps", "4", "--resume", check=False)
    assert "resumes only with as many" in refused.stderr and "Traceback" not in refused.stderr
    unmask(*run[:1], "--nproc", "2", *run[1:], "--max-steps", "4", "--resume")
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000004"
