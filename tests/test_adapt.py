"""A pretrained causal LM adapted into a diffusion LM (unmask.models.causal_lm): exact at initialisation, its
block diffusion passes and cache equal to recomputing, LoRA that changes nothing at first and merges into the
same logits, and checkpoints that need nothing of the original model."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from tiny_lm import tiny_causal_lm  # noqa: E402

from unmask.adapt_config import AdaptConfig  # noqa: E402
from unmask.bounds.blocks import bd3lm_nelbo, time_range  # noqa: E402
from unmask.config import Config  # noqa: E402
from unmask.data import get_tokenizer  # noqa: E402
from unmask.errors import ConfigError  # noqa: E402
from unmask.interop.pretrained import adapt_pretrained  # noqa: E402
from unmask.models import build_model, describe  # noqa: E402
from unmask.models.causal_lm import annealed_mask  # noqa: E402
from unmask.pipeline import Pipeline, load  # noqa: E402
from unmask.sampling import SamplerConfig  # noqa: E402
from unmask.sampling.blocks import CachedContext, RecomputedContext, generate_blocks  # noqa: E402
from unmask.schedules import get_schedule  # noqa: E402
from unmask.validation import check_model_description  # noqa: E402

LENGTH = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def tokenizer(folder):
    return get_tokenizer(str(folder))


@pytest.fixture(scope="module")
def ar_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _adapted(folder, tokenizer, **adapt):
    return adapt_pretrained(AdaptConfig(init=str(folder), **adapt), tokenizer, LENGTH).eval()


def _sequences(tokenizer, rows=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(3, tokenizer.mask_id, (rows, LENGTH), generator=generator)
    x[:, 0] = tokenizer.bos_id
    return x


def test_a_new_mask_token_gets_a_row_at_the_mean_embedding(folder, tokenizer, ar_model):
    model = _adapted(folder, tokenizer)
    rows = ar_model.get_input_embeddings().weight
    assert tokenizer.mask_id == rows.shape[0] and tokenizer.vocab_size == rows.shape[0] + 1
    embedding = model.lm.get_input_embeddings().weight
    assert torch.equal(embedding[: rows.shape[0]], rows)
    assert torch.allclose(embedding[tokenizer.mask_id], rows.mean(0))


def test_under_the_causal_mask_the_shifted_logits_are_the_ar_models_next_token_logits(folder, tokenizer, ar_model):
    """Annealing's start: a masked position after a clean prefix gets the AR model's next-token logits."""
    model = _adapted(folder, tokenizer, anneal_steps=100)
    model.set_training_step(0)
    assert model.future == 0.0
    x = _sequences(tokenizer)
    vocab = ar_model.config.vocab_size
    with torch.no_grad():
        for k in (1, 2, 7, LENGTH - 1):
            x_t = x.clone()
            x_t[:, k:] = tokenizer.mask_id
            adapted = model(x_t)[:, k, :vocab]
            reference = ar_model(x[:, :k]).logits[:, -1]
            torch.testing.assert_close(adapted, reference, rtol=1e-5, atol=1e-5)
            assert model(x_t)[:, k, tokenizer.mask_id].isfinite().all()  # MASK is an id like any other here


def test_position_zero_has_no_predecessor_and_predicts_bos(folder, tokenizer):
    model = _adapted(folder, tokenizer)
    x_t = torch.full((1, LENGTH), tokenizer.mask_id)
    with torch.no_grad():
        first = torch.log_softmax(model(x_t)[0, 0].float(), -1)
    assert first.argmax() == tokenizer.bos_id and first[tokenizer.bos_id] > -1e-6


def test_block_diffusion_with_blocks_of_one_is_the_ar_nll_at_initialisation(folder, tokenizer, ar_model):
    """Each token's block diffusion term reads the clean prefix's output: the AR conditional, whatever the noise.
    All masked, the terms sum to the AR NLL exactly; the bound's expectation is that times
    E[weight * P(masked)] = alpha(t_min) - alpha(1) (the time floor's sliver: 1 - 2e-3 for log-linear)."""
    model = _adapted(folder, tokenizer)
    x = _sequences(tokenizer, rows=4)
    with torch.no_grad():
        ar_nll = torch.nn.functional.cross_entropy(ar_model(x).logits[:, :-1].transpose(1, 2), x[:, 1:],
                                                   reduction="none").sum(1)
        masked = torch.full_like(x, tokenizer.mask_id)
        logits = model(masked, block_size=1, x0=x)
        log_probs = torch.log_softmax(logits.float().index_fill(-1, torch.tensor([tokenizer.mask_id]), -torch.inf), -1)
        terms = -log_probs.gather(-1, x[..., None])[..., 0]
        torch.testing.assert_close(terms[:, 1:].sum(1), ar_nll, rtol=1e-5, atol=1e-4)
        assert terms[:, 0].abs().max() < 1e-4  # BOS, certain
        schedule = get_schedule("loglinear")
        sliver = float(schedule.alpha(torch.tensor(time_range(schedule)[0])) - schedule.alpha(torch.tensor(1.0)))
        bound = bd3lm_nelbo(model, x, block_size=1, schedule="loglinear", mask_id=tokenizer.mask_id, num_t=400,
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bound.sum(), sliver * ar_nll.sum(), rtol=0.03, atol=0.0)


def test_the_vectorised_pass_and_the_cache_give_the_logits_of_recomputing(folder, tokenizer):
    model = _adapted(folder, tokenizer)
    x = _sequences(tokenizer, rows=2, seed=1)
    block = 4
    masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    masked[:, 0] = False
    x_t = torch.where(masked, tokenizer.mask_id, x)
    with torch.no_grad():
        vectorised = model(x_t, where=masked, block_size=block, x0=x)
        recomputed = torch.cat([model(torch.cat([x[:, :b], x_t[:, b:b + block]], 1), block_size=block)[:, b:]
                                for b in range(0, LENGTH, block)], 1)
        cache, cached = model.new_cache(block), []
        for b in range(0, LENGTH, block):
            if b:
                model(x[:, b - block:b], cache=cache)
                cache.commit()
            cached.append(model(x_t[:, b:b + block], cache=cache, block_size=block))
    torch.testing.assert_close(vectorised, recomputed[masked], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(cached, 1), recomputed, rtol=1e-5, atol=1e-5)


def test_block_by_block_sampling_with_the_cache_gives_the_tokens_of_recomputing(folder, tokenizer):
    model = _adapted(folder, tokenizer)

    def sample(context, length):
        template = torch.full((length,), tokenizer.mask_id)
        template[:3] = torch.tensor([tokenizer.bos_id, 10, 11])
        return generate_blocks(context, SamplerConfig(steps=4), batch_size=2, length=length, block_size=4,
                               mask_id=tokenizer.mask_id, template=template,
                               generator=torch.Generator().manual_seed(5)).tokens

    cached = sample(CachedContext(model, 4), LENGTH)
    assert torch.equal(cached, sample(RecomputedContext(model, 4, LENGTH, tokenizer.mask_id), LENGTH))
    # Past the model's length the cache slides (keeping each block's keys as computed, as the DiT's does).
    longer = sample(CachedContext(model, 4), 2 * LENGTH)
    assert torch.equal(longer[:, :LENGTH], cached) and not (longer == tokenizer.mask_id).any()


def test_annealing_opens_the_future_gradually():
    causal = annealed_mask(8, 8, vectorised=False, future=0.0, device=torch.device("cpu"))
    assert torch.equal(causal, torch.ones(8, 8, dtype=torch.bool).tril())
    torch.manual_seed(0)
    half = annealed_mask(64, 64, vectorised=False, future=0.5, device=torch.device("cpu"))
    above = torch.ones(64, 64, dtype=torch.bool).triu(1)
    assert half[~above].all() and 0.4 < half[above].float().mean() < 0.6
    blocks = annealed_mask(8, 4, vectorised=True, future=1.0, device=torch.device("cpu"))
    assert torch.equal(blocks, annealed_mask(8, 4, vectorised=True, future=0.0, device=torch.device("cpu"))
                       | blocks)  # annealing only ever hides within blocks


def test_lora_at_initialisation_changes_nothing_and_merges_into_the_same_logits(folder, tokenizer, tmp_path):
    plain, lora = _adapted(folder, tokenizer), _adapted(folder, tokenizer, lora_rank=4)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    x_t = _sequences(tokenizer)
    x_t[:, 5:] = tokenizer.mask_id
    with torch.no_grad():
        assert torch.equal(lora(x_t), plain(x_t))
        for name, p in lora.named_parameters():  # as if trained
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
        adapted = lora(x_t)
    assert not torch.allclose(adapted, plain(x_t))
    config = Config()
    config.adapt = AdaptConfig(init=str(folder), lora_rank=4)
    config.data.tokenizer, config.data.length = str(folder), LENGTH
    pipeline = Pipeline(model=lora, tokenizer=tokenizer, config=config, checkpoint=tmp_path)
    pipeline.save(tmp_path / "lora")
    pipeline.merged().save(tmp_path / "merged")
    merged = load(tmp_path / "merged", device="cpu")
    assert merged.model.config.lora_rank == 0 and merged.config.adapt.lora_rank == 0
    assert not any("lora" in name for name in merged.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x_t), adapted, rtol=1e-5, atol=1e-4)  # float rounding of W + BA
        torch.testing.assert_close(load(tmp_path / "lora", device="cpu").model(x_t), adapted, rtol=0, atol=0)


def test_an_adapted_model_rebuilds_from_its_description_without_the_original(folder, tokenizer, tmp_path):
    model = _adapted(folder, tokenizer)
    state = model.state_dict()
    assert not any(name.startswith("lm.lm_head") for name in state)  # tied to the embedding: saved once
    description = describe(model)
    assert description["architecture"] == "causal_lm" and description["source"] == str(folder)
    rebuilt = build_model(description).eval()
    rebuilt.load_state_dict(state)
    x_t = _sequences(tokenizer)
    x_t[:, 3:] = tokenizer.mask_id
    with torch.no_grad():
        assert torch.equal(rebuilt(x_t), model(x_t))


def test_a_damaged_adapted_model_description_is_refused_in_one_line(folder, tokenizer):
    description = json.loads(json.dumps(describe(_adapted(folder, tokenizer))))  # as model.json holds it
    assert check_model_description(description) == description
    damaged = [({**description, "lora_rnak": 4}, "unknown causal_lm model field 'lora_rnak'"),
               ({k: v for k, v in description.items() if k != "hf_config"}, "lacks hf_config"),
               ({**description, "length": 0}, "must be integers >= 1"),
               ({**description, "architecture": "mamba"}, "unknown architecture 'mamba'")]
    for values, message in damaged:
        with pytest.raises(ConfigError, match=message):
            check_model_description(values)
