"""A model changed in Python and written with ``Pipeline.save`` is a folder every command takes."""

import dataclasses
import json

import pytest
import torch
from runs import untrained_run

from unmask import DiT, Pipeline, SamplerConfig, generate_text, load
from unmask.checkpoint import CheckpointError
from unmask.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run's pipeline whose model was replaced in Python by a deeper one, saved; and that pipeline."""
    root = tmp_path_factory.mktemp("save")
    run, _ = untrained_run(root, "mdlm", length=32, scrambled=True)
    original = load(run)
    torch.manual_seed(1)
    deeper = DiT(dataclasses.replace(original.model.config, n_layers=2, gelu="tanh", dropout=0.0))
    with torch.no_grad():
        for parameter in deeper.parameters():
            parameter.normal_(0.0, 0.3)
    pipeline = Pipeline(model=deeper.eval(), tokenizer=original.tokenizer, config=original.config,
                        checkpoint=original.checkpoint)
    return pipeline.save(root / "saved"), pipeline, run


def test_load_gives_the_saved_model(saved):
    folder, pipeline, _ = saved
    loaded = load(folder)
    assert loaded.model.config == pipeline.model.config and loaded.config.model.n_layers == 2
    x = torch.randint(0, pipeline.tokenizer.vocab_size - 1, (2, 32))
    assert torch.equal(loaded.model(x, torch.zeros(2)), pipeline.model(x, torch.zeros(2)))
    assert json.loads((folder / "model.json").read_text())["n_layers"] == 2


def test_every_command_takes_the_folder(saved, tmp_path, corpus_file):
    folder, pipeline, run = saved
    assert main(["sample", str(folder), "--num-samples", "2", "--steps", "4", "--seed", "5",
                 "--json", str(tmp_path / "samples.json")]) == 0
    tokens = [s["tokens"] for s in json.loads((tmp_path / "samples.json").read_text())["samples"]]
    assert tokens == generate_text(pipeline, SamplerConfig(steps=4), num_samples=2, seed=5).tokens.tolist()
    assert main(["eval", str(folder), "--data", str(corpus_file), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["tokens"] > 0
    x = torch.randint(0, pipeline.tokenizer.vocab_size - 1, (2, 32))
    expected = pipeline.model(x, torch.zeros(2))
    for name, extra in (("copy", []), ("hf", ["--format", "hf"])):
        assert main(["export", str(folder), "--out", str(tmp_path / name), *extra]) == 0
        assert torch.allclose(load(tmp_path / name).model(x, torch.zeros(2)), expected, atol=1e-5), name
    ar_run, _ = untrained_run(tmp_path, "ar", length=32)
    assert main(["frontier", str(folder), "--evaluator", str(ar_run), "--samplers", "cached", "--steps", "2",
                 "--num-samples", "2", "--out", str(tmp_path / "frontier")]) == 0
    assert (tmp_path / "frontier" / "frontier.json").is_file()


def test_the_server_takes_the_folder(saved):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unmask.serve import create_app

    folder, pipeline, _ = saved
    with TestClient(create_app(load(folder)), base_url="http://localhost") as client:
        answer = client.post("/v1/generate", json={"steps": 4, "seed": 5, "num_samples": 1}).json()
    expected = generate_text(pipeline, SamplerConfig(steps=4), num_samples=1, seed=5).tokens
    assert answer["samples"][0]["tokens"] == expected[0].tolist()


def test_save_refuses_what_it_cannot_write(saved, tmp_path):
    folder, pipeline, _ = saved
    with pytest.raises(CheckpointError, match="already exists"):
        pipeline.save(folder)
    mismatched = Pipeline(model=pipeline.model, tokenizer=pipeline.tokenizer,
                          config=dataclasses.replace(pipeline.config,
                                                     objective=dataclasses.replace(pipeline.config.objective,
                                                                                   name="ar")),
                          checkpoint=pipeline.checkpoint)
    with pytest.raises(CheckpointError, match="causal"):
        mismatched.save(tmp_path / "ar")
    assert not (tmp_path / "ar").exists()
