"""The training loop: exact resume, atomic checkpoints, config checks."""

import json

import pytest
import torch
from safetensors.torch import load_file

from unmask.checkpoint import CheckpointError, resolve_checkpoint
from unmask.config import Config, ConfigError, ObjectiveConfig, apply_overrides, load_preset
from unmask.evaluate.likelihood import evaluate_dataset
from unmask.pipeline import load
from unmask.train import Trainer


def _config(corpus_file, overrides, *extra):
    config = load_preset("tiny")
    apply_overrides(config, [*overrides, f"data.source={corpus_file}", "train.max_steps=6", *extra])
    return config


def _weights(run_dir):
    return load_file(resolve_checkpoint(run_dir) / "model.safetensors")


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, corpus_file, tiny_overrides, objective):
    config = _config(corpus_file, tiny_overrides, f"objective.name={objective}", "optim.decay=cosine")
    Trainer(config, tmp_path / "straight", progress=False).run()
    Trainer(config, tmp_path / "resumed", progress=False).run(max_steps=3)
    assert resolve_checkpoint(tmp_path / "resumed").name == "step_00000003"
    Trainer(config, tmp_path / "resumed", resume=True, progress=False).run()
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_resume_with_changed_config_is_refused(tmp_path, corpus_file, tiny_overrides):
    config = _config(corpus_file, tiny_overrides)
    Trainer(config, tmp_path / "run", progress=False).run(max_steps=2)
    changed = _config(corpus_file, tiny_overrides, "optim.lr=1e-2")
    with pytest.raises(ConfigError, match=r"changed config \(optim.lr: 0.001 -> 0.01\)"):
        Trainer(changed, tmp_path / "run", resume=True)
    # Changing only how long to train is allowed.
    longer = _config(corpus_file, tiny_overrides, "train.max_steps=8")
    Trainer(longer, tmp_path / "run", resume=True, progress=False)


def test_an_existing_run_is_never_overwritten(tmp_path, corpus_file, tiny_overrides):
    config = _config(corpus_file, tiny_overrides)
    Trainer(config, tmp_path / "run", progress=False).run(max_steps=2)
    before = _weights(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(config, tmp_path / "run", progress=False)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        Trainer(config, tmp_path / "empty", resume=True)


def test_checkpoints_are_self_contained_and_pruned(tmp_path, corpus_file, tiny_overrides):
    config = _config(corpus_file, tiny_overrides)
    Trainer(config, tmp_path / "run", progress=False).run()
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert steps == ["step_00000004", "step_00000006"]  # keep_checkpoints = 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))
    checkpoint = resolve_checkpoint(tmp_path / "run")
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json", "config.yaml"):
        assert (checkpoint / name).is_file()
    pipeline = load(checkpoint)  # needs nothing from the run directory
    assert pipeline.tokenizer.name == "char" and not pipeline.model.training


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, corpus_file, tiny_overrides):
    config = _config(corpus_file, tiny_overrides)
    Trainer(config, tmp_path / "run", progress=False).run(max_steps=2)
    checkpoint = resolve_checkpoint(tmp_path / "run")
    (checkpoint / "ema.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        load(checkpoint)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_checkpoint_of_another_model_size_is_refused(tmp_path, corpus_file, tiny_overrides):
    config = _config(corpus_file, tiny_overrides)
    Trainer(config, tmp_path / "run", progress=False).run(max_steps=2)
    checkpoint = resolve_checkpoint(tmp_path / "run")
    described = json.loads((checkpoint / "model.json").read_text())  # the model's own description, edited
    (checkpoint / "model.json").write_text(json.dumps({**described, "hidden": 64}))
    with pytest.raises(CheckpointError, match="another model size"):
        load(checkpoint)


def test_config_errors_name_the_fix():
    config = Config()
    with pytest.raises(ConfigError, match="did you mean optim.warmup_steps"):
        apply_overrides(config, ["optim.warmup_step=10"])
    with pytest.raises(ConfigError, match="must be int"):
        apply_overrides(config, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(config, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown preset 'tinny'; did you mean tiny"):
        load_preset("tinny")
    apply_overrides(config, ["optim.lr=1e-4", "data.max_documents=null", "objective.carry_over=false"])
    assert config.optim.lr == 1e-4 and config.data.max_documents is None and not config.objective.carry_over


@pytest.mark.parametrize("ablation", [["objective.discrete_steps=10"], ["objective.carry_over=false"],
                                      ["objective.discrete_steps=10", "objective.zero_masking=false"]])
def test_ablations_train_with_their_own_objective(tmp_path, corpus_file, tiny_overrides, ablation):
    """The loop validates with the ablation's bound (recomputed here), which differs from the MDLM bound."""
    config = _config(corpus_file, tiny_overrides, *ablation)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    result = trainer.run(max_steps=2)
    common = dict(batch_size=config.train.micro_batch, max_batches=config.train.eval_batches, seed=config.train.seed)
    pipeline = load(tmp_path / "run")
    ablated = evaluate_dataset(pipeline.model, trainer.valid_set, config.objective, pipeline.mask_id, **common)
    mdlm = evaluate_dataset(pipeline.model, trainer.valid_set, ObjectiveConfig(), pipeline.mask_id, **common)
    assert result.validation["val_nelbo"] == pytest.approx(ablated.nelbo_per_token, rel=1e-6)
    assert abs(ablated.nelbo_per_token - mdlm.nelbo_per_token) > 1e-3


def test_bf16_training_stays_close_to_fp32(tmp_path, corpus_file, tiny_overrides):
    runs = {}
    for precision in ("fp32", "bf16"):
        config = _config(corpus_file, tiny_overrides, f"train.precision={precision}", "optim.ema=0")
        runs[precision] = Trainer(config, tmp_path / precision, progress=False).run(max_steps=4).validation
    assert abs(runs["fp32"]["val_nelbo"] - runs["bf16"]["val_nelbo"]) < 0.05 * runs["fp32"]["val_nelbo"]
