"""Block-by-block sampling (BD3-LM): the exact key/value cache, every sampler per block, any length,
the exact toy distribution; and bd3lm runs through the CLI, unmask.load and the frontier."""

import json

import pytest
import torch
from released import random_released_weights, released_config, write_released_folder
from runs import untrained_run
from safetensors.torch import load_file, save_file
from toy import ToyDistribution

from unmask import DiT, DiTConfig, load
from unmask.checkpoint import CheckpointError
from unmask.cli import main
from unmask.data import get_tokenizer
from unmask.evaluate.frontier import sweep
from unmask.generation import PromptError, generate_text
from unmask.sampling import DrawConfig, Remasking, SamplerConfig
from unmask.sampling.blocks import CachedContext, RecomputedContext, generate_blocks

MASK = 11
CONFIGS = {
    "cached": SamplerConfig(steps=4),
    "ancestral": SamplerConfig(sampler="ancestral", steps=3),
    "first_hitting": SamplerConfig(sampler="first_hitting"),
    "analytic": SamplerConfig(sampler="analytic", steps=4),
    "margin": SamplerConfig(order="margin", steps=2),
    "threshold": SamplerConfig(order="confidence", threshold=0.3, steps=2),
    "remasking": SamplerConfig(steps=6, remasking=Remasking("cap", eta=0.1)),
    "draw": SamplerConfig(steps=4, draw=DrawConfig(temperature=0.7, top_k=5, top_p=0.9)),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=12, length=16, n_layers=2, hidden=32, n_heads=4, cond_dim=16, dropout=0.0)).eval()
    for p in model.parameters():  # random outputs: every draw depends on the logits
        torch.nn.init.normal_(p, std=0.3)
    return model


def _blocks(context, config, *, length=16, block_size=4, seed=3, **kwargs):
    return generate_blocks(context, config, batch_size=5, length=length, block_size=block_size, mask_id=MASK,
                           generator=torch.Generator().manual_seed(seed), **kwargs)


class Counted(CachedContext):
    """The cached context, counting the tokens its denoiser calls ask for and every pass of the model:
    forward calls, passes through the first layer and the tokens they run."""

    def __init__(self, model, block_size):
        super().__init__(model, block_size)
        self.asked = self.calls = self.passes = self.tokens = 0
        self.handles = [model.register_forward_hook(lambda *_: self._add(calls=1)),
                        model.blocks[0].register_forward_pre_hook(
                            lambda _, args: self._add(passes=1, tokens=args[0].shape[0] * args[0].shape[1]))]

    def _add(self, **counts):
        for name, count in counts.items():
            setattr(self, name, getattr(self, name) + count)

    def answer(self, call):
        self.asked += call.x.numel()
        return (yield from super().answer(call))

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("block_size", [4, 8])
def test_cache_gives_the_tokens_of_recomputing_every_prefix(model, name, block_size):
    template = torch.full((16,), MASK)
    template[:6] = torch.tensor([0, 1, 2, 3, 4, 5])  # a prompt: one block and a half (block 4), or less than one
    context = Counted(model, block_size)
    cached = _blocks(context, CONFIGS[name], block_size=block_size, template=template)
    context.remove()
    recomputed = _blocks(RecomputedContext(model, block_size, 16, MASK), CONFIGS[name], block_size=block_size,
                         template=template)
    assert torch.equal(cached.tokens, recomputed.tokens)
    assert (cached.tokens[:, :6] == template[:6]).all() and not (cached.tokens == MASK).any()
    # Each finished block is run through the model once to fill the cache, and never again: the model runs
    # the tokens the calls ask for and every finished block's once more (alone, or with the next block's call).
    blocks = 16 // block_size
    assert context.cache.fills == blocks - 1
    assert context.tokens == context.asked + (blocks - 1) * 5 * block_size
    assert cached.num_calls == context.passes == context.calls  # a fill is a call of its own
    assert cached.num_calls == recomputed.num_calls + context.fill_calls
    assert context.cache.length == 16 - block_size and context.cache.end == 16 - block_size


def test_generation_continues_past_the_models_length_with_a_sliding_cache(model):
    context = CachedContext(model, 4)
    long = _blocks(context, CONFIGS["cached"], length=50)
    assert long.tokens.shape == (5, 50) and not (long.tokens == MASK).any()
    assert context.cache.length == 12 and context.cache.end == 48  # the last 12 positions; 13 blocks done
    assert context.cache.fills == 12
    # The first window is what a run of the model's length gives: later blocks draw after it.
    short = _blocks(CachedContext(model, 4), CONFIGS["cached"], length=16)
    assert torch.equal(long.tokens[:, :16], short.tokens)
    # Recomputing sees the same window of tokens; the cache keeps each block's keys as they were computed.
    recomputed = _blocks(RecomputedContext(model, 4, 16, MASK), CONFIGS["cached"], length=50)
    assert torch.equal(recomputed.tokens[:, :16], short.tokens)
    # A finished block riding along with the next block's first call is the same as a call of its own.
    alone = FillAlone(model, 4)
    assert torch.equal(_blocks(alone, CONFIGS["cached"], length=50).tokens, long.tokens)
    assert alone.fill_calls == 12 and context.fill_calls < 12


class FillAlone(CachedContext):
    """Fills the cache with a call of its own for every finished block."""

    def append(self, block):
        yield from super().append(block)
        yield from self._fill()


def test_generation_stops_at_eos(model):
    stop = int(_blocks(CachedContext(model, 4), CONFIGS["cached"], length=8).tokens[0, 1])
    out = _blocks(CachedContext(model, 4), CONFIGS["cached"], length=64, stop_id=stop)
    assert out.tokens.shape[1] % 4 == 0 and out.tokens.shape[1] < 64
    assert ((out.tokens == stop).any(1)).all()
    rows_with_stop = [(out.tokens[:, : k * 4] == stop).any(1).all() for k in range(1, out.tokens.shape[1] // 4)]
    assert not any(rows_with_stop)  # it stopped after the first block in which every row had it


def _toy_blocks(toy, config, block_size):
    return generate_blocks(RecomputedContext(toy.denoiser(), block_size, toy.length, toy.mask_id), config,
                           batch_size=20000, length=toy.length, block_size=block_size, mask_id=toy.mask_id,
                           generator=torch.Generator().manual_seed(0)).tokens


@pytest.mark.slow
@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_block_sampling_with_the_exact_denoiser_reproduces_the_distribution(block_size):
    toy = ToyDistribution(vocab=3, length=4, seed=1)
    assert toy.tv_distance(_toy_blocks(toy, SamplerConfig(sampler="first_hitting"), block_size)) < 0.03
    # One parallel step per block is exact at block size 1, and loses the correlations within larger blocks.
    one_step = toy.tv_distance(_toy_blocks(toy, SamplerConfig(sampler="ancestral", steps=1), block_size))
    assert one_step < 0.03 if block_size == 1 else one_step > 0.1


def test_a_template_keeps_its_fixed_tokens_in_every_block(model):
    template = torch.full((16,), MASK)
    template[[0, 5, 9, 15]] = torch.tensor([1, 2, 3, 4])
    out = _blocks(CachedContext(model, 4), CONFIGS["threshold"], template=template)
    assert (out.tokens[:, [0, 5, 9, 15]] == torch.tensor([1, 2, 3, 4])).all()


# --- bd3lm runs through the library and the CLI --------------------------------------------------


@pytest.fixture(scope="module")
def bd3lm_run(tmp_path_factory):
    return untrained_run(tmp_path_factory.mktemp("bd3lm_run"), "bd3lm", block_size=8, scrambled=True)[0]


def test_load_and_generate_text(bd3lm_run):
    pipeline = load(bd3lm_run)
    assert pipeline.block_size == 8 and not pipeline.model.config.causal
    samples = generate_text(pipeline, SamplerConfig(steps=8), num_samples=2, length=70, prompt="it is", seed=0)
    assert samples.tokens.shape == (2, 70) and all(text.startswith("it is") for text in samples.texts)
    again = generate_text(pipeline, SamplerConfig(steps=8), num_samples=2, length=70, prompt="it is", seed=0)
    assert torch.equal(samples.tokens, again.tokens)
    filled = generate_text(pipeline, SamplerConfig(steps=4), num_samples=1, template="a [MASK:12] b [MASK:30] c")
    assert filled.texts[0].startswith("a") and filled.texts[0].endswith(" c") and len(filled.tokens[0]) == 48
    with pytest.raises(PromptError, match="overlap"):
        generate_text(pipeline, num_samples=1, length=40, overlap=8)


def test_the_server_samples_a_bd3lm_model_block_by_block(bd3lm_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from served import alone

    from unmask.serve import Limits, create_app

    pipeline = load(bd3lm_run, device="cpu")
    with TestClient(create_app(pipeline, limits=Limits(max_length=96)), base_url="http://localhost") as client:
        for body in ({"prompt": "it is", "length": 80, "steps": 4, "seed": 2}, {"num_samples": 2, "seed": 3}):
            answer = client.post("/v1/generate", json=body).json()
            assert [s["tokens"] for s in answer["samples"]] == alone(pipeline, body).tokens.tolist()


def test_a_released_bd3lm_folder_loads_as_a_bd3lm_run(tmp_path):
    """Released BD3-LM checkpoints: MDLM's backbone layout, block_size in config.json, the clipped range beside."""
    config = {**released_config(vocab_size=31), "model_type": "bd3lm", "block_size": 4, "cross_attn": True}
    folder = write_released_folder(tmp_path / "bd3lm", config, random_released_weights(config))
    get_tokenizer("char").save(folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "sampling_eps_min": torch.tensor(0.3), "sampling_eps_max": torch.tensor(0.8)},
              folder / "model.safetensors")
    pipeline = load(folder, device="cpu")
    assert pipeline.block_size == 4 and pipeline.config.objective.mask_rate_range == pytest.approx([0.3, 0.8])
    mdlm = write_released_folder(tmp_path / "mdlm", {**config, "model_type": "mdlm"}, random_released_weights(config))
    get_tokenizer("char").save(mdlm)
    x = torch.randint(0, 30, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pipeline.model(x, block_size=4), load(mdlm, device="cpu").model(x, block_size=4))
    samples = generate_text(pipeline, SamplerConfig(steps=4), num_samples=2, length=40, prompt="it", seed=0)
    assert samples.tokens.shape == (2, 40)
    (folder / "config.json").write_text(json.dumps({**config, "block_size": 5}))
    with pytest.raises(CheckpointError, match="block_size, a divisor of model_length 16"):
        load(folder, device="cpu")


def test_frontier_sweeps_a_bd3lm_checkpoint(bd3lm_run, tmp_path):
    evaluator = untrained_run(tmp_path, "ar")[0]
    done = sweep(bd3lm_run, evaluator=str(evaluator), samplers=["cached", "first_hitting"], steps=[4], num_samples=2,
                 batch_size=2, length=24, device="cpu")
    assert [p.sampler for p in done.points] == ["cached", "first_hitting"] and done.length == 24
    assert all(p.num_calls >= 3 for p in done.points)  # at least one call per block


@pytest.mark.slow
def test_cli_train_eval_sample_export(tmp_path, corpus_file, tiny_overrides, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet", *tiny_overrides,
            "objective.name=bd3lm", "objective.block_size=8", "objective.mask_rate_range=[0.3,0.8]"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 4

    assert main(["eval", str(run), "--max-batches", "2", "--mask-rate-ranges", "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["objective"] == "bd3lm" and report["nelbo_per_token"] > 0
    assert len(report["block_variance"]) == 5 and "<- lowest" in capsys.readouterr().out
    assert main(["eval", str(run), "--max-batches", "1", "--mask-rate-ranges", "0.2:0.6",
                 "--json", str(tmp_path / "e2.json")]) == 0
    assert json.loads((tmp_path / "e2.json").read_text())["block_variance"][0]["mask_rate_range"] == [0.2, 0.6]

    assert main(["sample", str(run), "--num-samples", "2", "--steps", "8", "--length", "100", "--prompt", "it is a",
                 "--sampler", "first_hitting", "--stop-at-eos", "--json", str(tmp_path / "s.json")]) == 0
    samples = json.loads((tmp_path / "s.json").read_text())["samples"]
    assert all(s["text"].startswith("it is a") and len(s["tokens"]) <= 100 for s in samples)
    assert main(["sample", str(run), "--template", "a single [MASK:12] in possession", "--order", "margin",
                 "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["samples"][0]["text"].endswith(" in possession")

    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert load(tmp_path / "exported").block_size == 8


def _error(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit:  # refused by the option parser
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_cli_errors_are_one_line(bd3lm_run, tmp_path, capsys):
    mdlm = untrained_run(tmp_path, "mdlm")[0]
    assert "not block diffusion" in _error(capsys, ["eval", str(mdlm), "--mask-rate-ranges"])
    assert "LO:HI" in _error(capsys, ["eval", str(bd3lm_run), "--mask-rate-ranges", "0.3-0.8"])
    assert "0 <= LO < HI <= 1" in _error(capsys, ["eval", str(bd3lm_run), "--mask-rate-ranges", "0.8:0.3"])
    assert "--overlap" in _error(capsys, ["sample", str(bd3lm_run), "--length", "40", "--overlap", "8"])
