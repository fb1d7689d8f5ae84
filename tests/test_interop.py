"""Released MDLM checkpoints load exactly; bad folders get one clear error; unmask models export and come back."""

import json

import pytest
import torch
from released import random_released_weights, reference_logits, released_config, write_released_folder
from runs import save_checkpoint, untrained_run
from safetensors.torch import load_file

import unmask
from unmask.checkpoint import CheckpointError
from unmask.config import Config
from unmask.data import get_tokenizer
from unmask.interop import export_hf, is_hub_name
from unmask.interop.reference import AUTO_MAP, config_from_json, expected_shapes, name_pairs
from unmask.models import DiT
from unmask.models.dit import timestep_embedding


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference).abs().max() / reference.abs().max())


@pytest.fixture()
def released(tmp_path):
    """A tiny released-layout folder with random non-zero weights and the char tokenizer (31 ids)."""
    config = released_config(vocab_size=31)
    tensors = random_released_weights(config)
    folder = write_released_folder(tmp_path / "mdlm", config, tensors)
    get_tokenizer("char").save(folder)
    return folder, config, tensors


def test_released_logits_equal_the_reference_forward_pass(released):
    folder, config, tensors = released
    pipeline = unmask.load(folder, device="cpu")
    ids = torch.randint(0, 31, (3, config["model_length"]), generator=torch.Generator().manual_seed(1))
    ids[:, ::3] = pipeline.mask_id
    t = torch.rand(3)  # ignored: without time conditioning the conditioning vector is a constant
    with torch.no_grad():
        ours = pipeline.model(ids, t)
    reference = reference_logits(tensors, config, ids)
    assert reference.abs().max() > 1  # the random weights make the output far from uniform
    assert _relative_error(ours, reference) < 1e-4
    assert pipeline.model.config.gelu == "tanh" and not pipeline.model.config.time_conditioning
    assert pipeline.config.data.length == config["model_length"]


def test_time_zero_embeds_as_sigma_zero():
    features = timestep_embedding(torch.zeros(2), 256)
    assert torch.equal(features, torch.cat([torch.ones(2, 128), torch.zeros(2, 128)], dim=-1))


def test_the_released_170m_shape_maps_onto_the_dit_on_the_meta_device():
    hub_config = {**released_config(vocab_size=50258, length=1024, hidden=768, n_heads=12, cond_dim=128,
                                    n_blocks=12)}
    model_config, schedule = config_from_json(hub_config, "config.json")
    shapes = expected_shapes(model_config)
    assert {unmask_name for _, unmask_name in name_pairs(12)} == set(shapes)
    assert abs(sum(torch.Size(s).numel() for s in shapes.values()) - 169.6e6) < 0.1e6
    assert schedule == "loglinear" and model_config.cond_dim == 128


def _refused(load_target, match):
    with pytest.raises(CheckpointError, match=match) as info:
        unmask.load(load_target, device="cpu")
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize(("change", "match"), [
    (lambda c: c.pop("cond_dim"), "lacks the field 'cond_dim'"),
    (lambda c: c.update(hidden_dim=30), "contradict"),
    (lambda c: c.update(time_conditioning=True), "time-conditioned"),
    (lambda c: c.update(vocab_size=40), "40"),
    (lambda c: c.update(n_heads=8), "inv_freq"),
    (lambda c: c.update(n_blocks=1), r"holds backbone\.blocks\.1\.\S+, which the MDLM layout with 1 blocks"),
])
def test_bad_config_fields_are_named(released, change, match):
    folder, config, _ = released
    config = dict(config)
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    _refused(folder, match)


def test_a_tensor_of_the_wrong_shape_is_named(released):
    folder, config, tensors = released
    tensors = {**tensors, "blocks.1.mlp.0.bias": torch.zeros(7)}
    write_released_folder(folder, config, tensors)
    _refused(folder, r"backbone\.blocks\.1\.mlp\.0\.bias has shape \(7,\)")


def test_other_model_types_and_pickles_and_offline_names_are_refused(released, tmp_path):
    folder, config, _ = released
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    _refused(folder, "'gpt2' model, which has no masked-LM form")
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    _refused(folder, "'no-such-model'")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    _refused(folder, "pickle")
    _refused("kuleshov-group/no-such-model", "network")
    assert is_hub_name("kuleshov-group/mdlm-owt") and is_hub_name("bert-base-uncased")
    assert not is_hub_name("./run") and not is_hub_name("a/b/c") and not is_hub_name("model.ckpt")


def test_a_hub_name_is_read_from_the_hub_cache(released, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    folder, _, _ = released
    snapshot = tmp_path / "hub" / "models--org--mdlm" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    snapshot.parent.parent.joinpath("refs").mkdir()
    snapshot.parent.parent.joinpath("refs", "main").write_text("abc123")
    folder.rename(snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipeline = unmask.load("org/mdlm", device="cpu")
    assert pipeline.checkpoint == snapshot and pipeline.model.config.n_layers == 2


def _randomize(model: DiT, seed: int = 0) -> DiT:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / 4)
    return model


def _run(tmp_path, **model_fields):
    """A one-checkpoint run of a tiny MDLM with random non-zero weights (char tokenizer, length 16)."""
    run, _ = untrained_run(tmp_path, "mdlm", length=16)
    config = Config.load(run / "checkpoints" / "step_00000001" / "config.yaml")
    for key, value in model_fields.items():
        setattr(config.model, key, value)
    model = _randomize(DiT(config.model_config(31)))
    save_checkpoint(run, config, model, 2)
    return run, model


def test_export_round_trip_gives_the_same_logits(tmp_path):
    run, model = _run(tmp_path, gelu="tanh")
    exported = export_hf(run, tmp_path / "hf")
    config = json.loads((exported.out / "config.json").read_text())
    assert config["model_type"] == "mdlm" and config["auto_map"] == AUTO_MAP and config["cond_dim"] == 16
    tensors = load_file(exported.out / "model.safetensors")
    assert all(name.startswith("backbone.") for name in tensors) and "backbone.rotary_emb.inv_freq" in tensors
    ids = torch.randint(0, 31, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(ids)
        back = unmask.load(exported.out, device="cpu").model(ids, torch.rand(2))
    assert torch.allclose(back, expected, rtol=0, atol=1e-6)
    # The exported tensors under the reference's own forward pass give the same logits too.
    reference = reference_logits({k.removeprefix("backbone."): v for k, v in tensors.items()}, config, ids)
    assert _relative_error(expected, reference) < 1e-4


def test_export_refuses_what_the_layout_cannot_express(tmp_path):
    run, model = _run(tmp_path)  # unmask's default: the exact (erf) GELU
    with pytest.raises(CheckpointError, match="--allow-approximate-gelu"):
        export_hf(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    exported = export_hf(run, tmp_path / "hf", allow_approximate_gelu=True)
    assert json.loads((exported.out / "config.json").read_text())["unmask"]["gelu"] == "erf"
    ids = torch.randint(0, 31, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(unmask.load(exported.out, device="cpu").model(ids), model.eval()(ids), atol=1e-6)
    ar_run, _ = untrained_run(tmp_path / "ar", "ar")
    with pytest.raises(CheckpointError, match="AR model"):
        export_hf(ar_run, tmp_path / "hf-ar")
    timed, _ = _run(tmp_path / "timed", gelu="tanh", time_conditioning=True)
    with pytest.raises(CheckpointError, match="time-conditioned"):
        export_hf(timed, tmp_path / "hf-timed")


@pytest.mark.slow
def test_exported_gpt2_tokenizer_loads_in_transformers_and_encodes_alike(tmp_path):
    transformers = pytest.importorskip("transformers")
    from unmask.interop.hf_tokenizer import write_tokenizer_files

    tokenizer = get_tokenizer("gpt2")
    assert write_tokenizer_files(tokenizer, tmp_path, model_length=1024)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Robert Boulter is an English film, television and theatre actor.\n\n  Héllo 12345 <tag>!?"
    assert loaded(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert loaded.mask_token_id == tokenizer.mask_id == 50257 and loaded.eos_token_id == tokenizer.eos_id
    assert unmask.interop.released.released_tokenizer(tmp_path, 50258)[0].encode(text) == tokenizer.encode(text)
