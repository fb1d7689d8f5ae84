"""Released Duo checkpoints (the reference DiT saved with PyTorchModelHubMixin) load exactly; a duo run
exports back into that layout."""

import json

import pytest
import torch
from released import random_released_weights, reference_logits, released_config
from safetensors.torch import load_file, save_file

import unmask
from unmask.checkpoint import CheckpointError
from unmask.cli import main
from unmask.data import get_tokenizer
from unmask.interop import export_hf
from unmask.interop.duo import duo_model_config

SHAPE = dict(vocab_size=31, length=16, hidden=32, n_heads=4, cond_dim=16, n_blocks=2)


def _mixin_config(shape: dict) -> dict:
    """config.json as the PyTorchModelHubMixin writes the reference DIT's constructor arguments."""
    model = {"hidden_size": shape["hidden"], "cond_dim": shape["cond_dim"], "length": shape["length"],
             "n_blocks": shape["n_blocks"], "n_heads": shape["n_heads"], "scale_by_sigma": True, "dropout": 0.1,
             "tie_word_embeddings": False, "vocab_lookup": True}
    algo = {"name": "duo", "backbone": "dit", "parameterization": "mean", "time_conditioning": True,
            "causal_attention": False}
    return {"config": {"algo": algo, "model": model, "noise": {"type": "log-linear", "eps": 1e-3}},
            "vocab_size": shape["vocab_size"]}


@pytest.fixture()
def released_duo(tmp_path):
    """A tiny Duo folder in the mixin's layout with random non-zero weights and the char tokenizer (31 ids)."""
    tensors = random_released_weights(released_config(**SHAPE), seed=3)
    folder = tmp_path / "duo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_mixin_config(SHAPE)))
    save_file({name: value.contiguous() for name, value in tensors.items()}, folder / "model.safetensors")
    get_tokenizer("char").save(folder)
    return folder, tensors


def test_released_duo_logits_equal_the_reference_forward_pass(released_duo):
    folder, tensors = released_duo
    pipeline = unmask.load(folder, device="cpu")
    assert pipeline.kind.name == "duo" and pipeline.model.config.time_input == "sigma"
    ids = torch.randint(0, 30, (3, SHAPE["length"]), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.4, 0.01])
    sigma = -torch.log1p(-(1 - 1e-3) * t.double())  # the reference's log-linear sigma_t
    with torch.no_grad():
        ours = pipeline.model(ids, t)
    reference = reference_logits(tensors, released_config(**SHAPE), ids, sigma)
    assert reference.abs().max() > 1
    assert float((ours.double() - reference).abs().max() / reference.abs().max()) < 1e-4
    # The time matters: another t gives other logits (time conditioning is on).
    assert not torch.allclose(pipeline.model(ids, t.flip(0)), ours, atol=1e-3)


def test_the_transformers_form_loads_alike(released_duo, tmp_path):
    folder, tensors = released_duo
    other = tmp_path / "hf"
    other.mkdir()
    config = {"model_type": "duo", "vocab_size": 31, "model_length": 16, "hidden_dim": 32, "cond_dim": 16,
              "n_blocks": 2, "n_heads": 4, "dropout": 0.1, "causal": False}
    (other / "config.json").write_text(json.dumps(config))
    save_file({f"backbone.{n}": v.contiguous() for n, v in tensors.items()}, other / "model.safetensors")
    get_tokenizer("char").save(other)
    ids = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(2))
    t = torch.rand(2)
    assert torch.equal(unmask.load(other).model(ids, t), unmask.load(folder).model(ids, t))


def test_the_released_shape_maps_onto_the_dit():
    big = dict(vocab_size=50258, length=1024, hidden=768, n_heads=12, cond_dim=128, n_blocks=12)
    model = duo_model_config(_mixin_config(big), "config.json")
    assert (model.hidden, model.n_layers, model.length, model.vocab_size) == (768, 12, 1024, 50258)
    assert model.time_conditioning and model.time_input == "sigma" and model.gelu == "tanh"
    with torch.device("meta"):
        assert unmask.DiT(model).num_parameters() > 160e6


@pytest.mark.parametrize("change, match", [
    (lambda c: c["config"]["algo"].update(causal_attention=True), "causal"),
    (lambda c: c["config"]["model"].update(n_heads=5), "heads of even size"),
    (lambda c: c.update(vocab_size=0), "vocab_size"),
])
def test_bad_duo_configs_are_named(released_duo, change, match):
    folder, _ = released_duo
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        unmask.load(folder)


def test_a_duo_run_exports_to_the_released_layout_and_back(tmp_path, corpus_file, tiny_overrides, released_duo):
    run = tmp_path / "run"
    args = [*tiny_overrides, "objective.name=duo", "model.time_conditioning=true", "model.gelu=tanh",
            "model.time_input=sigma", "objective.curriculum_end=0"]
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet",
                 "--max-steps", "2", *args]) == 0
    exported = export_hf(run, tmp_path / "hf").out
    config = json.loads((exported / "config.json").read_text())
    assert config["vocab_size"] == 31 and config["config"]["algo"]["causal_attention"] is False
    assert not any(name.startswith("backbone.") for name in load_file(exported / "model.safetensors"))
    ids = torch.randint(0, 30, (2, 32), generator=torch.Generator().manual_seed(4))
    t = torch.rand(2)
    assert torch.allclose(unmask.load(exported).model(ids, t), unmask.load(run).model(ids, t), atol=1e-6)
    # A duo run conditioned on 1000 t (the default) cannot be expressed in the reference's sigma conditioning.
    plain = tmp_path / "plain"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(plain), "--quiet",
                 "--max-steps", "1", *args[:-3], "objective.curriculum_end=0"]) == 0
    with pytest.raises(CheckpointError, match="time_input=sigma"):
        export_hf(plain, tmp_path / "no")
