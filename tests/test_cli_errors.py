"""Every bad input the hardening probe found, and the ones before it: non-zero exit, one line on stderr
naming the fix, no traceback, and no file of an existing run changed."""

import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unmask.cli import main
from unmask.data import get_tokenizer


def _train(tmp_path, corpus_file, overrides, *extra, out="run"):
    return main(["train", "--data", str(corpus_file), "--out", str(tmp_path / out), "--quiet", *overrides, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MDLM run and a tiny AR run (character level, length 32), trained two steps each."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join("it is a truth universally acknowledged that a single man " * 3 for _ in range(40)))
    base = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.cond_dim=16", "data.tokenizer=char",
            "data.length=32", "train.global_batch=4", "train.micro_batch=4", "train.eval_batches=1",
            "train.precision=fp32", "train.tensorboard=false", "optim.warmup_steps=1", f"data.cache_dir={root / 'c'}"]
    for name, objective in (("mdlm", "mdlm"), ("ar", "ar")):
        assert main(["train", "--data", str(corpus), "--out", str(root / name), "--quiet", "--max-steps", "2",
                     f"objective.name={objective}", *base]) == 0
    return root, corpus, base


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _cases(root: Path, corpus: Path, base: list[str]) -> list[tuple[list[str], str]]:
    mdlm, ar = str(root / "mdlm"), str(root / "ar")
    missing_dir = str(root / "no" / "such" / "folder" / "out.json")
    (root / "wrong-field.jsonl").write_text('{"body": "hello"}\n{"body": "world"}\n')
    train = ["train", "--out", str(root / "new"), "--quiet", "--data", str(corpus), *base]
    return [
        # unmask sample
        (["sample", mdlm, "--steps", "0"], "--steps: must be at least 1"),
        (["sample", mdlm, "--top-k", "0"], "--top-k: must be at least 1"),
        (["sample", mdlm, "--top-k", "-3"], "--top-k: must be at least 1"),
        (["sample", mdlm, "--num-samples", "-2"], "--num-samples: must be at least 1"),
        (["sample", mdlm, "--num-samples", "0"], "--num-samples: must be at least 1"),
        (["sample", mdlm, "--length", "200", "--overlap", "999"], "--overlap must be in [0, 32)"),
        (["sample", mdlm, "--remask", "loop", "--eta", "5"], "--eta: must be in [0.0, 1.0]"),
        (["sample", mdlm, "--device", "foo"], "unknown device 'foo'"),
        (["sample", mdlm, "--sampler", "first_hitting", "--order", "confidence"], "drop --order"),
        (["sample", mdlm, "--sampler", "first_hitting", "--threshold", "0.9"], "drop --order, --threshold"),
        (["sample", mdlm, "--sampler", "first_hitting", "--remask", "cap"], "--remask"),
        (["sample", mdlm, "--temperature", "-1"], "--temperature: must be in [0.0, inf)"),
        (["sample", mdlm, "--top-p", "2"], "--top-p: must be in (0.0, 1.0]"),
        (["sample", mdlm, "--threshold", "5"], "--threshold: must be in [0.0, 1.0]"),
        (["sample", mdlm, "--eta", "0.1"], "give --remask STRATEGY with it"),
        (["sample", mdlm, "--length", "0"], "--length: must be at least 2"),
        (["sample", mdlm, "--length", "-5"], "--length: must be at least 2"),
        (["sample", mdlm, "--prompt", "word " * 40], "only 31 fit"),
        (["sample", mdlm, "--template", "no placeholder here"], "[MASK]"),
        (["sample", ar, "--order", "confidence"], "an AR model decodes left to right"),
        (["sample", mdlm, "--json", missing_dir], "does not exist; create it first"),
        (["sample", mdlm, "--step", "7"], "no complete checkpoint of step 7; steps saved: 2"),
        (["sample", str(root / "nowhere")], "does not exist"),
        # unmask eval
        (["eval", mdlm, "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["eval", mdlm, "--max-batches", "0"], "--max-batches: must be at least 1"),
        (["eval", mdlm, "--num-t", "-3"], "--num-t: must be at least 1"),
        (["eval", mdlm, "--num-t", "0"], "--num-t: must be at least 1"),
        (["eval", mdlm, "--discrete-steps", "0"], "--discrete-steps: must be at least 1"),
        (["eval", mdlm, "--discrete-steps", "-5"], "--discrete-steps: must be at least 1"),
        (["eval", mdlm, "--gen-ppl", mdlm], "not AR"),
        (["eval", mdlm, "--gen-ppl", str(root / "ar-typo")], "does not exist"),
        (["eval", mdlm, "--json", missing_dir], "does not exist; create it first"),
        (["eval", mdlm, "--data", str(root / "wrong-field.jsonl")], "--text-field NAME"),
        # unmask train
        ([*train, "optim.lr=-1"], "optim.lr must be > 0"),
        ([*train, "optim.lr=nan"], "optim.lr must be > 0"),
        ([*train, "train.max_steps=-5"], "train.max_steps must be >= 1"),
        ([*train, "--max-steps", "0"], "--max-steps: must be at least 1"),
        ([*train, "--step", "2"], "give --resume with it"),
        (["train", "--out", mdlm, "--quiet", "--data", str(corpus), *base], "already holds a run"),
        (["train", "--out", mdlm, "--quiet", "--resume", "optim.lr=0.5"], "changed config (optim.lr"),
        (["train", "--out", mdlm, "--quiet", "--resume", "--step", "1"], "no complete checkpoint of step 1"),
        # unmask export, frontier
        (["export", mdlm, "--out", mdlm], "already exists"),
        (["frontier", mdlm, "--evaluator", ar, "--steps", "0"], "--steps: must be at least 1"),
        (["frontier", mdlm, "--evaluator", ar, "--samplers", "bogus"], "unknown sampler 'bogus'"),
    ]


def test_every_bad_input_is_refused_in_one_line(runs, capsys):
    root, corpus, base = runs
    before = {name: _snapshot(root / name) for name in ("mdlm", "ar")}
    failures = []
    for argv, expected in _cases(root, corpus, base):
        err = _refused(capsys, argv)
        if expected not in err:
            failures.append(f"{' '.join(argv[:4])}...: {err}")
    assert failures == []
    assert {name: _snapshot(root / name) for name in ("mdlm", "ar")} == before


def test_missing_optional_packages_name_the_extra(runs, tmp_path, capsys, monkeypatch):
    root, corpus, base = runs
    real = importlib.util.find_spec
    hidden: set[str] = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    parquet = tmp_path / "docs.parquet"
    parquet.write_bytes(b"PAR1")
    hidden.add("pyarrow")
    err = _refused(capsys, ["eval", str(root / "mdlm"), "--data", str(parquet)])
    assert 'pip install "unmask[hf]"' in err and "pyarrow" in err
    hidden.add("datasets")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    err = _refused(capsys, ["eval", str(root / "mdlm"), "--data", "wikitext-2"])
    assert 'pip install "unmask[hf]"' in err and "datasets" in err
    hidden.update({"whisper", "transformers"})
    err = _refused(capsys, ["train", "--out", str(tmp_path / "g"), "--data", str(corpus), "--quiet", *base,
                            "data.tokenizer=gpt2"])
    assert "openai-whisper" in err and 'pip install "unmask[hf]"' in err


def _plant(folder: Path, target: Path) -> None:
    """A folder that looks like a sharded checkpoint whose DCP index would create ``target`` when unpickled."""

    class Exploit:
        def __reduce__(self):
            return (open, (str(target), "w"))

    (folder / "dcp").mkdir(parents=True)
    (folder / "dcp" / ".metadata").write_bytes(pickle.dumps(Exploit()))
    (folder / "config.yaml").write_text("objective:\n  name: mdlm\ndata:\n  tokenizer: char\n  length: 32\n")
    get_tokenizer("char").save(folder / "tokenizer")
    (folder / "state.json").write_text(json.dumps({"step": 1, "world_size": 2}))


def test_a_crafted_checkpoint_runs_no_code(tmp_path, capsys):
    folder, target = tmp_path / "crafted", tmp_path / "pwned"
    _plant(folder, target)
    for argv in (["sample", str(folder)], ["eval", str(folder)], ["export", str(folder), "--out", str(tmp_path / "x")]):
        err = _refused(capsys, argv)
        assert "not written by unmask" in err and "could run code" in err
        assert not target.exists()


def test_a_second_training_process_on_one_folder_is_refused(runs, tmp_path):
    root, corpus, base = runs
    run = tmp_path / "busy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "unmask", "train", "--out", str(run), "--quiet", "--data",
                              str(corpus), *base, "train.max_steps=100000", "train.save_every=100000",
                              "train.eval_every=100000"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file():
            assert first.poll() is None and time.time() < deadline, first.communicate()[1]
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "unmask", "train", "--out", str(run), "--quiet", "--data",
                                 str(corpus), *base], env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"unmask train: error: {run} is in use by another unmask process (pid "
                                     f"{first.pid}); wait for it to finish or choose another --out")


def _read_only_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot write into: a chmod-ed one, or for root (who ignores modes) /sys."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked
    try:
        (Path("/sys") / "unmask-probe").mkdir()
    except OSError:
        return Path("/sys")
    return None


def test_a_read_only_output_folder_is_one_line(runs, tmp_path, capsys):
    root, corpus, base = runs
    locked = _read_only_folder(tmp_path)
    if locked is None:
        pytest.skip("no folder here that this process cannot write into")
    refused = ("permission denied", "not permitted", "not writable")
    try:
        for argv in (["train", "--out", str(locked / "run"), "--quiet", "--data", str(corpus), *base],
                     ["sample", str(root / "mdlm"), "--num-samples", "1", "--steps", "2",
                      "--json", str(locked / "s.json")],
                     ["export", str(root / "mdlm"), "--out", str(locked / "e")]):
            err = _refused(capsys, argv).lower()
            assert any(reason in err for reason in refused), err
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o700)
