"""unmask train --init MODEL and every command on the run it makes; bad pretrained models and chat files refused in
one line with nothing written."""

import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
from one_line import one_line_error  # noqa: E402
from tiny_lm import chats, tiny_causal_lm, write_chats  # noqa: E402

from unmask.cli import main  # noqa: E402
from unmask.pipeline import load  # noqa: E402

SMALL = ["--quiet", "train.global_batch=4", "train.micro_batch=2", "train.eval_batches=1", "train.precision=fp32",
         "train.tensorboard=false", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt-cli")
    tiny_causal_lm(root / "lm")
    (root / "corpus.txt").write_text("\n\n".join(["It is a truth universally acknowledged, that a single man in "
                                                  "possession of a good fortune, must be in want of a wife."] * 40))
    write_chats(root / "chats.jsonl", chats(40))
    return root


def _train(root, out, *extra, data="corpus.txt"):
    return main(["train", "--init", str(root / "lm"), "--data", str(root / data), "--out", str(root / out),
                 f"data.cache_dir={root / 'cache'}", *SMALL, *extra])


@pytest.mark.slow
def test_every_command_takes_an_adapted_lora_bd3lm_run(root, capsys):
    assert _train(root, "bd3", "--max-steps", "2", "data.length=32", "objective.name=bd3lm",
                  "objective.block_size=4", "adapt.lora_rank=4", "adapt.anneal_steps=4") == 0
    run = root / "bd3"
    checkpoint = run / "checkpoints" / "step_00000002"
    model_json = json.loads((checkpoint / "model.json").read_text())
    assert model_json["architecture"] == "causal_lm" and model_json["lora_rank"] == 4
    from safetensors import safe_open

    with safe_open(checkpoint / "ema.safetensors", "pt") as ema, safe_open(checkpoint / "model.safetensors", "pt") as m:
        assert set(ema.keys()) and all("lora_" in name for name in ema.keys())  # noqa: SIM118 - safe_open has no __iter__
        assert set(ema.keys()) < set(m.keys())  # the checkpoint holds the frozen base too: self-contained
    capsys.readouterr()
    # The original model is not needed any more: every command reads the run alone, resuming included.
    shutil.move(root / "lm", root / "lm-away")
    try:
        assert main(["sample", str(run), "--prompt", "It is", "--length", "40", "--steps", "4", "--num-samples",
                     "2", "--stop-at-eos", "--seed", "1"]) == 0
        assert main(["sample", str(run), "--chat", "What is the capital of France?", "--max-tokens", "6",
                     "--steps", "4"]) == 0
        assert "--- answer 0 ---" in capsys.readouterr().out
        assert main(["eval", str(run), "--num-t", "2", "--json", str(root / "eval.json")]) == 0
        assert json.loads((root / "eval.json").read_text())["objective"] == "bd3lm"
        assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--quiet"]) == 0
        assert main(["export", str(run), "--out", str(root / "bd3-merged"), "--merge-lora"]) == 0
        assert main(["export", str(run), "--out", str(root / "bd3-copy")]) == 0
        assert "drop --format hf" in one_line_error(capsys, ["export", str(run), "--out", str(root / "hf"),
                                                             "--format", "hf"])
    finally:
        shutil.move(root / "lm-away", root / "lm")
    adapted, merged = load(run, device="cpu"), load(root / "bd3-merged", device="cpu")
    assert merged.model.config.lora_rank == 0 and merged.config.adapt.lora_rank == 0
    x_t = torch.full((2, 32), adapted.mask_id)
    x_t[:, :5] = torch.tensor([adapted.tokenizer.bos_id, 10, 11, 12, 13])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x_t, block_size=4), adapted.model(x_t, block_size=4),
                                   rtol=1e-5, atol=1e-4)
    assert main(["frontier", str(run), "--evaluator", str(root / "lm"), "--samplers", "cached", "--steps", "2",
                 "--num-samples", "2", "--length", "16", "--out", str(root / "frontier")]) == 0


@pytest.mark.slow
def test_supervised_fine_tuning_on_a_chat_file_then_chat(root, capsys):
    assert _train(root, "sft", "--max-steps", "2", "data.length=160", data="chats.jsonl") == 0
    pipeline = load(root / "sft", device="cpu")
    assert pipeline.config.data.format == "auto" and pipeline.kind.prompted
    capsys.readouterr()
    assert main(["sample", str(root / "sft"), "--chat", "Hello!", "--max-tokens", "8", "--steps", "8",
                 "--num-samples", "2", "--json", str(root / "answers.json")]) == 0
    answers = json.loads((root / "answers.json").read_text())["samples"]
    assert len(answers) == 2 and all("<|im_start|>" not in answer["text"] for answer in answers)
    assert main(["eval", str(root / "sft")]) == 0
    assert "chats.jsonl (validation)" in capsys.readouterr().out


def _bert_folder(folder):
    from transformers import BertConfig, BertForMaskedLM

    shutil.copytree(tiny_causal_lm(folder.parent / "for-bert"), folder)
    BertForMaskedLM(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(folder)
    return folder


def test_bad_pretrained_models_and_chat_files_are_one_line_and_write_nothing(root, tmp_path, capsys):
    bad_gguf = tmp_path / "model.gguf"
    bad_gguf.write_bytes(b"GGUF" + bytes(range(200)))
    no_answers = write_chats(tmp_path / "questions.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}] * 4)
    no_template = tiny_causal_lm(tmp_path / "no-template", chat_template=None)
    bert = _bert_folder(tmp_path / "bert")
    chat_file = str(root / "chats.jsonl")
    cases = [
        (["--init", str(bert)], "is not a causal language model (BertForMaskedLM)"),
        (["--init", str(bad_gguf)], "is not a GGUF file transformers can read"),
        (["--init", str(root / "lm"), "--data", str(no_answers)], "no assistant turns"),
        (["--init", str(no_template), "--data", chat_file], "has no chat template"),
        (["--init", str(tmp_path / "nowhere")], "does not exist"),
        (["--init", str(root / "lm"), "objective.name=ar"], "objective.name must be one of mdlm, bd3lm"),
        (["--init", str(root / "lm"), "--preset", "tiny"], "model.n_layers shapes unmask's DiT"),
        ([f"adapt.init={root / 'lm'}", "--preset", "adapt"], "data.tokenizer must be the model's own"),
        (["adapt.lora_rank=4"], "set adapt.init"),
        (["--init", str(root / "lm"), "adapt.lora_rank=2", "adapt.lora_targets=nothing_here"],
         "adapt.lora_targets='nothing_here' does not fit"),
        (["--init", str(root / "lm"), "--data", chat_file, "objective.name=bd3lm", "objective.block_size=7",
          "data.length=160"], "objective.block_size (7) must divide data.length"),
        (["--init", str(root / "lm"), "--resume"], "drop --init"),
    ]
    capsys.readouterr()  # what building the models printed
    failures = []
    for index, (argv, expected) in enumerate(cases):
        out = tmp_path / f"run{index}"
        argv = ["train", "--out", str(out), "--quiet", "--max-steps", "1", f"data.cache_dir={tmp_path / 'cache'}",
                *(["--data", str(root / "corpus.txt")] if "--data" not in argv else []), *argv]
        err = one_line_error(capsys, argv)
        if expected is not None and expected not in err or out.exists():
            failures.append(f"{argv[7:]}: {err} (run folder left: {out.exists()})")
    assert failures == []


def test_activation_checkpointing_trains_the_same_weights(root):
    common = ("--max-steps", "2", "data.length=32", "objective.name=bd3lm", "objective.block_size=4")
    assert _train(root, "plain", *common) == 0
    assert _train(root, "recomputed", *common, "parallel.activation_checkpointing=true") == 0
    plain, recomputed = (load(root / name, weights="model", device="cpu").model.state_dict()
                         for name in ("plain", "recomputed"))
    assert plain.keys() == recomputed.keys()
    for name, value in plain.items():
        torch.testing.assert_close(recomputed[name], value, rtol=1e-5, atol=1e-6, msg=name)
