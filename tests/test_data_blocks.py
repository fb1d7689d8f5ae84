"""TokenBlocks layouts and the on-disk token cache."""

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unmask.data import DataError, TokenBlocks, corpus_entropy, get_tokenizer  # noqa: E402
from unmask.data.cache import token_dtype  # noqa: E402
from unmask.data.char_tokenizer import CharTokenizer  # noqa: E402
from unmask.data.env import package_path  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

documents_strategy = st.lists(
    st.text(alphabet="abc xyz.\n", min_size=1, max_size=60).filter(str.strip),
    min_size=1, max_size=12,
)


class CountingCharTokenizer(CharTokenizer):
    """A char tokenizer that counts encode_batch calls, to see whether a cache was rebuilt."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += 1
        return super().encode_batch(texts)


def write_jsonl(path, documents):
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in documents))
    return str(path)


def stream_of(tokenizer, documents):
    return [i for doc in documents for i in [*tokenizer.encode(doc.strip()), tokenizer.eos_id]]


@settings(max_examples=40, deadline=None)
@given(documents_strategy, st.integers(3, 40))
def test_wrapped_blocks_cover_the_stream(documents, length):
    tok = get_tokenizer("char")
    with tempfile.TemporaryDirectory() as folder:
        source = write_jsonl(Path(folder) / "docs.jsonl", documents)
        blocks = TokenBlocks(source, tok, split="all", length=length, cache_dir=folder)
        interiors = []
        for i in range(len(blocks)):
            item = blocks[i]
            ids, mask = item["input_ids"], item["loss_mask"]
            assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == (length,)
            used = int(mask.sum())
            assert mask[:used].all() and not mask[used:].any()
            assert ids[0] == tok.bos_id and ids[used - 1] == tok.eos_id
            assert (ids[used:] == tok.pad_id).all()
            if i < len(blocks) - 1:
                assert used == length  # only the final block may be partial
            interiors.extend(ids[1:used - 1].tolist())
        assert interiors == stream_of(tok, documents)
        assert blocks.num_tokens == sum(int(item["loss_mask"].sum()) for item in blocks)


@settings(max_examples=40, deadline=None)
@given(documents_strategy, st.integers(3, 30))
def test_padded_blocks_hold_one_document_each(documents, length):
    tok = get_tokenizer("char")
    with tempfile.TemporaryDirectory() as folder:
        source = write_jsonl(Path(folder) / "docs.jsonl", documents)
        blocks = TokenBlocks(source, tok, split="all", length=length, layout="padded",
                             cache_dir=folder)
        assert len(blocks) == len(documents)
        for i, doc in enumerate(documents):
            ids, mask = blocks[i]["input_ids"], blocks[i]["loss_mask"]
            body = tok.encode(doc.strip())[:length - 2]
            expected = [tok.bos_id, *body, tok.eos_id]
            assert ids[:len(expected)].tolist() == expected
            assert torch.equal(mask, ids != tok.pad_id)
        assert blocks.num_tokens == sum(int(item["loss_mask"].sum()) for item in blocks)


def test_cache_is_built_once_and_shared_by_layouts(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", [f"document number {i}" for i in range(50)])
    tok = CountingCharTokenizer()
    first = TokenBlocks(source, tok, split="all", length=16, cache_dir=tmp_path / "cache")
    assert tok.calls == 1
    meta = next((tmp_path / "cache").glob("tokens-*/meta.json"))
    stamp = meta.stat().st_mtime_ns
    again = TokenBlocks(source, tok, split="all", length=16, cache_dir=tmp_path / "cache")
    TokenBlocks(source, tok, split="all", length=64, layout="padded", cache_dir=tmp_path / "cache")
    assert tok.calls == 1 and meta.stat().st_mtime_ns == stamp
    assert torch.equal(first[3]["input_ids"], again[3]["input_ids"])
    assert len(list((tmp_path / "cache").glob("tokens-*"))) == 1


def test_cache_key_follows_tokenizer_split_limit_and_file_changes(tmp_path):
    path = tmp_path / "docs.jsonl"
    source = write_jsonl(path, [f"document number {i}" for i in range(60)])
    cache = tmp_path / "cache"
    char = get_tokenizer("char")
    TokenBlocks(source, char, split="all", length=16, cache_dir=cache)
    bpe = get_tokenizer("bpe", corpus=["document number one two"] * 3, vocab_size=270)
    TokenBlocks(source, bpe, split="all", length=16, cache_dir=cache)
    TokenBlocks(source, char, split="train", length=16, cache_dir=cache)
    TokenBlocks(source, char, split="all", length=16, cache_dir=cache, max_documents=5)
    assert len(list(cache.glob("tokens-*"))) == 4
    write_jsonl(path, ["changed"] * 3)
    changed = TokenBlocks(source, char, split="all", length=16, cache_dir=cache)
    assert len(list(cache.glob("tokens-*"))) == 5
    assert char.decode(torch.cat([changed[i]["input_ids"] for i in range(len(changed))]).tolist()) \
        == "changed" * 3


def test_partial_and_corrupt_caches_are_ignored(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", ["hello world"] * 10)
    cache = tmp_path / "cache"
    tok = get_tokenizer("char")
    good = TokenBlocks(source, tok, split="all", length=8, cache_dir=cache)
    expected = torch.stack([good[i]["input_ids"] for i in range(len(good))])
    folder = next(cache.glob("tokens-*"))
    key = folder.name.removeprefix("tokens-")
    # Crashed builds: one from a dead process on this host (removed by the next build), one
    # from another host (left alone: its process may be alive); and a truncated final cache.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = cache / f".tokens-{key}~build~{socket.gethostname()}~{finished.stdout.strip()}~deadbeef"
    elsewhere = cache / f".tokens-{key}~build~otherhost~1~deadbeef"
    for temp in (dead, elsewhere):
        temp.mkdir()
        (temp / "tokens.bin").write_bytes(b"\1\2")
    tokens = folder / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:10])
    with pytest.warns(UserWarning, match="damaged token cache"):
        rebuilt = TokenBlocks(source, tok, split="all", length=8, cache_dir=cache)
    assert torch.equal(torch.stack([item["input_ids"] for item in rebuilt]), expected)
    assert not dead.exists() and elsewhere.exists()
    (folder / "meta.json").unlink()
    with pytest.warns(UserWarning, match="damaged token cache"):
        TokenBlocks(source, tok, split="all", length=8, cache_dir=cache)


def test_concurrent_builds_both_succeed(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", [f"text {i} " * 20 for i in range(300)])
    results, errors = [], []

    def build():
        try:
            blocks = TokenBlocks(source, get_tokenizer("char"), split="all", length=32,
                                 cache_dir=tmp_path / "cache")
            results.append([blocks[i]["input_ids"] for i in range(len(blocks))])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(torch.equal(torch.stack(r), torch.stack(results[0])) for r in results)
    assert [p.name.startswith("tokens-") for p in (tmp_path / "cache").iterdir()] == [True]


def test_blocks_pickle_and_validate_arguments(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", ["abc def"] * 20)
    tok = get_tokenizer("char")
    blocks = TokenBlocks(source, tok, split="all", length=10, cache_dir=tmp_path)
    copy = pickle.loads(pickle.dumps(blocks))
    assert torch.equal(copy[2]["input_ids"], blocks[2]["input_ids"])
    assert isinstance(copy.cache.tokens, np.memmap)
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    with pytest.raises(DataError, match="layout"):
        TokenBlocks(source, tok, split="all", length=10, layout="packed", cache_dir=tmp_path)
    with pytest.raises(DataError, match="at least 3"):
        TokenBlocks(source, tok, split="all", length=2, cache_dir=tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        TokenBlocks(source, tok, split="dev", length=10, cache_dir=tmp_path)
    assert token_dtype(50258) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_corpus_entropy(tmp_path):
    # Padded blocks of "ab" with length 4: [BOS] a b [EOS] -> four equally likely tokens.
    source = write_jsonl(tmp_path / "docs.jsonl", ["ab"] * 5)
    blocks = TokenBlocks(source, get_tokenizer("char"), split="all", length=4, layout="padded",
                         cache_dir=tmp_path)
    assert corpus_entropy(blocks) == pytest.approx(np.log(4))


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2" / "test.txt").is_file(),
                    reason=f"zero-shot data not found at {SHARED_DATA} (only present beside the "
                           f"development checkout)")
def test_zero_shot_wikitext_file(tmp_path):
    gpt2 = package_path("whisper", "assets", "gpt2.tiktoken")
    tok = get_tokenizer("gpt2") if gpt2 else get_tokenizer("char")
    blocks = TokenBlocks(str(SHARED_DATA / "wikitext-2" / "test.txt"), tok, split="all",
                         length=128, cache_dir=tmp_path)
    assert len(blocks) > 100
    first = blocks[0]
    assert first["input_ids"][0] == tok.bos_id and first["loss_mask"].all()
    assert "Robert" in tok.decode(first["input_ids"]) or "robert" in tok.decode(first["input_ids"])
    assert 0 < corpus_entropy(blocks) < np.log(tok.vocab_size)
