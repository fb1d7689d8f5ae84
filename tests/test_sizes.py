"""Sizes are checked before memory is spent: the estimates match what is built, and what cannot fit is
refused in one line with its estimate, without building it (the builders are replaced by ones that fail)."""

import pytest
import torch
from one_line import one_line_error
from runs import untrained_run

import unmask.generation
import unmask.pipeline
import unmask.sizes
import unmask.train.loop
from unmask.models import DiT, DiTConfig
from unmask.sizes import activation_bytes, model_bytes, parameter_count

FREE = 16 << 30  # what every test here says the machine has free: the refusals do not depend on this one


@pytest.fixture(autouse=True)
def sixteen_gib_free(monkeypatch):
    monkeypatch.setattr(unmask.sizes, "available_bytes", lambda device: FREE)


@pytest.fixture()
def nothing_built(monkeypatch):
    """Building a model fails the test: a refusal must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built although its size could not fit")

    monkeypatch.setattr(unmask.train.loop, "DiT", refuse)
    monkeypatch.setattr(unmask.pipeline, "build_model", refuse)


@pytest.mark.parametrize("config", [
    DiTConfig(vocab_size=50258),  # the paper's small model: 169.6M parameters
    DiTConfig(vocab_size=97, length=64, n_layers=3, hidden=48, n_heads=4, cond_dim=16, mlp_ratio=2),
])
def test_the_estimates_count_what_the_model_holds(config):
    model = DiT(config) if config.n_layers < 12 else None
    if model is None:
        with torch.device("meta"):
            model = DiT(config)
    assert parameter_count(config) == model.num_parameters()
    buffers = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name != "rotary.inv_freq")
    assert model_bytes(config) == 4 * model.num_parameters() + buffers
    assert activation_bytes(config, 2, 16, element=4) < activation_bytes(config, 2, 16, element=4, training=True)


def test_a_model_too_large_to_train_is_refused_before_it_is_built(tmp_path, corpus_file, tiny_overrides, capsys,
                                                                  nothing_built):
    base = ["train", "--data", str(corpus_file), "--quiet", *tiny_overrides]
    for i, override in enumerate(["model.n_layers=100000", "model.hidden=100000000"]):
        err = one_line_error(capsys, [*base, "--out", str(tmp_path / f"run{i}"), override])
        assert "needs at least" in err and "more than the 16.0 GiB free" in err and "lower model.n_layers" in err
        assert not (tmp_path / f"run{i}").exists()  # nothing left behind either
    preset = tmp_path / "huge.yaml"
    preset.write_text("model:\n  n_layers: 100000\n")
    err = one_line_error(capsys, ["train", "--preset", str(preset), "--data", str(corpus_file), "--out",
                                  str(tmp_path / "run"), "--quiet", f"data.cache_dir={tmp_path / 'cache'}"])
    assert "a 100000 x 768 model" in err and "parameters" in err


def test_a_checkpoint_describing_a_huge_model_is_refused_before_it_is_built(tmp_path, capsys, nothing_built):
    import json

    run, _ = untrained_run(tmp_path, "mdlm")
    model_json = run / "checkpoints" / "step_00000001" / "model.json"
    model_json.write_text(json.dumps({**json.loads(model_json.read_text()), "n_layers": 1_000_000}))
    err = one_line_error(capsys, ["sample", str(run)])
    assert "loading a 1000000 x 32 model" in err and "needs at least" in err


def test_batches_too_large_are_refused_before_they_are_made(tmp_path, capsys, monkeypatch):
    run, _ = untrained_run(tmp_path, "mdlm")

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started although the batch could not fit")

    monkeypatch.setattr(unmask.generation, "start_run", no_sampling)
    err = one_line_error(capsys, ["sample", str(run), "--num-samples", "100000000"])
    assert "sampling 100,000,000 texts of 32 tokens needs at least" in err and "--num-samples" in err
    err = one_line_error(capsys, ["sample", str(run), "--length", "1000000000", "--num-samples", "4"])
    assert "texts of 1,000,000,000 tokens" in err and "--length" in err
    err = one_line_error(capsys, ["eval", str(run), "--num-t", "100000000"])
    assert "x 100,000,000 time samples" in err and "lower --num-t or --batch-size" in err


def test_the_server_refuses_a_batch_too_large_in_its_own_words(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unmask.pipeline import load
    from unmask.serve import Limits, create_app

    run, _ = untrained_run(tmp_path, "mdlm")
    limits = Limits(max_num_samples=10**9, max_length=10**10)
    app = create_app(load(run, device="cpu"), max_batch=10**9, limits=limits)
    with TestClient(app, base_url="http://localhost") as client:
        response = client.post("/v1/completions", json={"prompt": "it", "n": 100_000_000, "max_tokens": 8})
        assert response.status_code == 400
        assert "needs at least" in response.json()["error"]["message"]
        assert "(n)" in response.json()["error"]["message"]
        assert client.get("/health").status_code == 200


def test_nproc_is_capped_by_the_devices_present(capsys):
    err = one_line_error(capsys, ["train", "--out", "x", "--nproc", "100000"])
    assert "--nproc 100000 is more processes than this machine has devices" in err and "give at most --nproc" in err
