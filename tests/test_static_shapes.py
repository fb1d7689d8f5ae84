"""The static-shape path (``unmask.static_shapes.StaticShapeDenoiser``): the plain path's logits and samples.

Each body runs on the CPU (the plain call at a fixed shape) and, where there is a GPU, on CUDA
(a CUDA graph replayed per call).
"""

import json

import pytest
import torch
from devices import DEVICES, generator
from one_line import one_line_error
from runs import untrained_run

from unmask import DiT, DiTConfig, generate
from unmask.cli import main
from unmask.sampling import SamplerConfig
from unmask.static_shapes import StaticShapeDenoiser

MASK = 19


def _random_dit(device: str) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=20, length=12, n_layers=2, hidden=32, n_heads=4, cond_dim=16)).eval()
    for p in model.parameters():  # random outputs, so that a wrong row or position shows
        torch.nn.init.normal_(p, std=0.3)
    return model.to(device)


def _samples(denoiser, device: str, sampler: str, **kwargs):
    return generate(denoiser, SamplerConfig(sampler=sampler, steps=16), batch_size=5, length=12, mask_id=MASK,
                    generator=generator(device, 3), **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["ancestral", "cached", "first_hitting", "analytic"])
def test_static_shapes_give_the_same_samples(sampler, device):
    model = _random_dit(device)
    plain = _samples(model, device, sampler)
    static = _samples(model, device, sampler, static_shapes=True)
    assert torch.equal(static.tokens, plain.tokens)
    assert static.num_calls == plain.num_calls
    assert not (static.tokens == MASK).any()


@pytest.mark.parametrize("device", DEVICES)
def test_rows_and_positions_of_a_call_are_the_plain_calls_and_stay_after_the_next(device):
    model = _random_dit(device)
    static = StaticShapeDenoiser(model, batch_size=4, length=12)
    g = torch.Generator().manual_seed(0)
    calls = [(torch.randint(0, MASK, (rows, 12), generator=g).to(device), torch.rand(rows, generator=g).to(device),
              (torch.rand(rows, 12, generator=g) < 0.3).to(device)) for rows in (3, 4, 1)]
    answers = [(static(x, t), static(x, t, where=where)) for x, t, where in calls]
    # Compared only now: an answer that were the graph's output itself would hold the last call's logits.
    for (x, t, where), (full, at_where) in zip(calls, answers):
        expected = model(x, t)
        torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(at_where, expected[where], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_each_autocast_setting_gets_its_own_run(device):
    model = _random_dit(device)
    static = StaticShapeDenoiser(model, batch_size=2, length=12)
    x, t = torch.randint(0, MASK, (2, 12), device=device), torch.zeros(2, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        low = static(x, t)
        expected_low = model(x, t)
    full = static(x, t)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(full, model(x, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(low.float(), expected_low.float(), rtol=0.05, atol=0.05)


def test_calls_that_do_not_fit_the_shape_are_refused():
    static = StaticShapeDenoiser(_random_dit("cpu"), batch_size=2, length=12)
    for rows, length in ((3, 12), (1, 10)):
        with pytest.raises(ValueError, match=r"static shape \[2, 12\]"):
            static(torch.zeros(rows, length, dtype=torch.long), torch.zeros(rows))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_static_shapes_give_the_same_samples(device):
    model = _random_dit(device)
    compiled = StaticShapeDenoiser(model, batch_size=5, length=12, compile=True)
    plain = _samples(model, device, "cached")
    static = _samples(compiled, device, "cached")
    assert torch.equal(static.tokens, plain.tokens)


def _sample_json(run, tmp_path, name, *options):
    out = tmp_path / f"{name}.json"
    assert main(["sample", str(run), "--num-samples", "3", "--steps", "8", "--seed", "1", "--device", "cpu",
                 "--json", str(out), *options]) == 0
    return [sample["tokens"] for sample in json.loads(out.read_text())["samples"]]


def test_sample_with_static_shapes_gives_the_same_texts(tmp_path, capsys):
    run, _ = untrained_run(tmp_path, "mdlm", scrambled=True)
    assert _sample_json(run, tmp_path, "static", "--static-shapes") == _sample_json(run, tmp_path, "plain")
    # Beyond the model's length (32) every window runs at its own shape.
    longer = ("--length", "56")
    assert _sample_json(run, tmp_path, "long-static", *longer, "--static-shapes") == \
        _sample_json(run, tmp_path, "long-plain", *longer)
    capsys.readouterr()
    ar_run, _ = untrained_run(tmp_path, "ar")
    assert "drop --static-shapes" in one_line_error(capsys, ["sample", str(ar_run), "--static-shapes",
                                                             "--device", "cpu"])
