"""The paper's zero-shot protocol: the reference's detokenizers, its wrapping, and the shared test files."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.data import DETOKENIZERS, ZERO_SHOT_DETOKENIZER, DataError, TokenBlocks, get_tokenizer, iter_documents
from unmask.data.detokenizers import lambada, lm1b, ptb, scientific_papers, wikitext
from unmask.data.hub import HUB_DATASETS, _hub_texts

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_wikitext_rules():
    raw = ' = = Career = = \n The 2 @,@ 000 @-@ seat ( large ) hall , built in 1 @.@ 5 years . He said " yes " ; '
    assert wikitext(raw) == ' == Career ==\nThe 2,000-seat (large) hall, built in 1.5 years. He said "yes"; '
    assert wikitext("the players ' union and N 30 \N{DEGREE SIGN} ") == "the players' union and 1 30\N{DEGREE SIGN}"
    assert wikitext("the union 's hall") == "the union's hall"


def test_ptb_rules():
    assert ptb("it does n't cost $ N or N N N <unk> \\/ the firm 's") == "it doesn't cost $1 or 1 1 1 ? / the firm's"
    assert ptb(" investors ' money \n next") == " investors' money\nnext"


def test_lm1b_lambada_and_scientific_paper_rules():
    text = 'See http : / / example.com , he said . " Fine " ( really ) [ no ] costs $ 5 or \N{POUND SIGN} 3 !'
    assert lm1b(text) == 'See http://example.com, he said. "Fine" (really) [no] costs $5 or \N{POUND SIGN}3!'
    assert lm1b("is it ?") == "is it?" and lm1b("I 'm here") == "I'm here"
    assert lambada(" \N{LEFT DOUBLE QUOTATION MARK}Hi,\N{RIGHT DOUBLE QUOTATION MARK} she said ") == '\n"Hi," she said'
    assert scientific_papers("a @-@ b , c") == lm1b(wikitext("a @-@ b , c")) == "a-b, c"


def test_every_zero_shot_dataset_has_a_known_rule():
    assert set(ZERO_SHOT_DETOKENIZER) <= set(HUB_DATASETS)
    assert set(ZERO_SHOT_DETOKENIZER.values()) <= set(DETOKENIZERS)


@given(st.text(max_size=200))
def test_detokenizers_accept_any_text(text):
    for rule in DETOKENIZERS.values():
        assert isinstance(rule(text), str)


def test_hub_rows_are_kept_as_published_in_the_protocol():
    rows = [{"text": " = Title = \n"}, {"text": ""}, {"text": " body . \n"}]
    assert list(_hub_texts([rows], "text", as_published=True)) == [" = Title = \n", "", " body . \n"]
    assert list(_hub_texts([rows], "text", as_published=False)) == ["= Title =", "body ."]


def test_the_protocol_drops_the_last_partial_block(tmp_path):
    source = tmp_path / "lines.txt"
    source.write_text("\n".join(["abc def"] * 10))  # 10 documents of 7 characters, each + EOS: 80 tokens
    tokenizer = get_tokenizer("char")
    ours = TokenBlocks(str(source), tokenizer, split="all", length=12, cache_dir=tmp_path)
    reference = TokenBlocks(str(source), tokenizer, split="all", length=12, cache_dir=tmp_path, detokenizer="none")
    assert (len(ours), len(reference)) == (8, 8)  # 80 = 8 x 10: no remainder
    source.write_text("\n".join(["abc def"] * 11))  # 88 tokens: 8 blocks of 10 and 8 left over
    ours = TokenBlocks(str(source), tokenizer, split="all", length=12, cache_dir=tmp_path)
    reference = TokenBlocks(str(source), tokenizer, split="all", length=12, cache_dir=tmp_path, detokenizer="none")
    assert (len(ours), len(reference)) == (9, 8) and reference.num_tokens == 8 * 12
    assert all(reference[i]["loss_mask"].all() for i in range(len(reference)))
    with pytest.raises(DataError, match="less than one block"):
        TokenBlocks(str(source), tokenizer, split="all", length=200, cache_dir=tmp_path, detokenizer="none")
    with pytest.raises(DataError, match="unknown detokenizer"):
        list(iter_documents(str(source), "all", detokenizer="nope"))


@pytest.mark.parametrize(("name", "rule"), [("ptb", "ptb"), ("wikitext-2", "wikitext")])
def test_the_shared_test_files_go_through_the_protocol(tmp_path, name, rule):
    path = SHARED_DATA / name / "test.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data exists only beside a development checkout)")
    tokenizer = get_tokenizer("gpt2")
    blocks = TokenBlocks(str(path), tokenizer, split="all", length=1024, cache_dir=tmp_path, detokenizer=rule)
    assert len(blocks) > 50 and blocks.num_tokens == 1024 * len(blocks)  # whole blocks only
    first = blocks[0]["input_ids"]
    assert first[0] == tokenizer.bos_id and first[-1] == tokenizer.eos_id
    text = tokenizer.decode(blocks[3]["input_ids"].tolist())
    if rule == "ptb":
        assert "n't" in text and " n't" not in text and " N " not in text and "<unk>" not in text
    else:
        assert " @-@ " not in text and " , " not in text
