"""Every bad input the hardening probe found, and the ones before it: non-zero exit, one line on stderr
naming the fix, no traceback, and no file of an existing run changed."""

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from released import released_config, write_released_folder

from unmask.checkpoint import CheckpointNotice, resolve_checkpoint
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


def _damaged(root: Path, name: str, damage) -> str:
    """A copy of the MDLM run (its one checkpoint, step 2) with ``damage(checkpoint folder)`` done to it."""
    copy = root / "damaged" / name
    shutil.copytree(root / "mdlm", copy)
    damage(copy / "checkpoints" / "step_00000002")
    return str(copy)


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _as_sharded(checkpoint: Path, tensors: dict | None = None) -> Path:
    """The checkpoint's weights as DCP shards (what a multi-process run writes), or ``tensors`` instead."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    saved = {f"{part}.{k}": v for part in ("model", "ema") if (checkpoint / f"{part}.safetensors").is_file()
             for k, v in load_file(checkpoint / f"{part}.safetensors").items()}
    for part in ("model", "ema", "optimizer"):
        (checkpoint / f"{part}.safetensors").unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(tensors or saved, checkpoint_id=checkpoint / "dcp", no_dist=True)
    return checkpoint / "dcp"


def _truncate_shards(checkpoint: Path) -> None:
    for shard in _as_sharded(checkpoint).glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:64])


def _hf_tokenizer(checkpoint: Path, tokenizer_file: str) -> None:
    """The checkpoint's tokenizer said to be a Hugging Face one whose file is ``tokenizer_file``."""
    folder = checkpoint / "tokenizer"
    _edit_json(folder / "unmask_tokenizer.json", kind="hf", tokenizer_file=tokenizer_file)
    (folder / "tokenizer.json").write_text("this is not a tokenizer")


def _damaged_cases(root: Path) -> list[tuple[list[str], str]]:
    """Runs whose files were edited or damaged, and folders that only look like models."""
    if (root / "damaged").exists():
        shutil.rmtree(root / "damaged")

    def config(c):
        saved = c / "config.yaml"
        saved.write_text(saved.read_text().replace("hidden: 32", "hidden: -256"))

    def model_json(c):
        _edit_json(c / "model.json", hidden=-256)

    def foreign_dcp(c):
        _as_sharded(c, {"foo": torch.zeros(3), "bar.x": torch.ones(2)})

    (root / "damaged").mkdir()
    (root / "damaged" / "notes.txt").write_text("not a model")
    released = root / "damaged" / "released"
    char = get_tokenizer("char")
    write_released_folder(released, released_config(vocab_size=char.vocab_size), {"backbone.x": torch.zeros(1)})
    char.save(released)
    (released / "model.safetensors").write_bytes(b"\0garbage" * 20)
    outside = root / "damaged" / "sharded-index"
    shutil.copytree(released, outside)
    (outside / "model.safetensors").unlink()
    (outside / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../mdlm/x.safetensors"}}))
    return [
        (["sample", _damaged(root, "config", config)], "model.hidden must be >= 1, got -256"),
        (["sample", _damaged(root, "model-json", model_json)], "model.json is unreadable or not a model description"),
        (["train", "--out", _damaged(root, "foreign-dcp", foreign_dcp), "--quiet", "--resume"],
         "not an unmask checkpoint"),
        (["sample", _damaged(root, "truncated-shard", _truncate_shards)], "is corrupt, incomplete"),
        (["sample", _damaged(root, "bad-tokenizer", lambda c: _hf_tokenizer(c, "tokenizer.json"))],
         "the tokenizer in"),
        (["sample", _damaged(root, "tokenizer-outside", lambda c: _hf_tokenizer(c, "../../../../../../etc/passwd"))],
         "not a file inside the tokenizer folder"),
        (["sample", str(released)], "not a readable safetensors file"),
        (["sample", str(outside)], "outside"),
        (["eval", str(root / "mdlm"), "--gen-ppl", str(root / "damaged" / "notes.txt")], "is a file but not a .gguf"),
        (["sample", str(root / "damaged" / "notes.txt")], "is a file; pass a run directory or a checkpoint folder"),
        (["frontier", str(root / "mdlm"), "--evaluator", str(root / "damaged" / "notes.txt")],
         "is a file but not a .gguf"),
    ]


def _cases(root: Path, corpus: Path, base: list[str]) -> list[tuple[list[str], str]]:
    mdlm, ar = str(root / "mdlm"), str(root / "ar")
    missing_dir = str(root / "no" / "such" / "folder" / "out.json")
    (root / "wrong-field.jsonl").write_text('{"body": "hello"}\n{"body": "world"}\n')
    (root / "bad.yaml").write_text("model:\n  hidden: -256\n")
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
        (["sample", mdlm, "--template", "a [MASK:99999999999999999999] b"], "asks for more tokens than fit"),
        (["sample", mdlm, "--template", "a [MASK:" + "9" * 5000 + "]"], "asks for more tokens than fit"),
        (["sample", mdlm, "--prompt", "it \udcff is"], "--prompt is not valid UTF-8 text"),  # argv's undecodable byte
        (["sample", mdlm, "--template", "\ud800 [MASK]"], "--template is not valid UTF-8 text"),
        (["sample", mdlm, "--seed", str(2**64)], "--seed: a seed is a 64-bit integer"),
        # sizes no machine holds (tests/test_sizes.py: the issue's own sizes against a fixed free memory)
        (["sample", mdlm, "--num-samples", str(10**12)], "needs at least"),
        (["sample", mdlm, "--length", str(10**13), "--num-samples", "1"], "needs at least"),
        (["eval", mdlm, "--num-t", str(10**12)], "needs at least"),
        (["sample", ar, "--order", "confidence"], "an AR model decodes left to right"),
        (["sample", ar, "--template", "it is [MASK:3] acknowledged"], "never sees text after a [MASK]"),
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
        (["eval", mdlm, "--seed", str(-(2**63) - 1)], "--seed: a seed is a 64-bit integer"),
        # unmask train
        ([*train, "optim.lr=-1"], "optim.lr must be > 0"),
        ([*train, "optim.lr=nan"], "optim.lr must be > 0"),
        ([*train, "optim.lr=inf"], "optim.lr must be a finite number, got inf"),
        ([*train, "model.n_layers=10000000000"], "needs at least"),
        ([*train, "model.hidden=100000000"], "needs at least"),
        ([*train, "--nproc", "100000"], "is more processes than this machine has devices"),
        ([*train, "optim.grad_clip=inf"], "optim.grad_clip must be a finite number"),
        (["train", "--out", str(root / "new"), "--preset", str(root / "bad.yaml"), "--data", str(corpus)],
         "model.hidden must be >= 1, got -256"),
        (["train", "--out", "", "--quiet", "--data", str(corpus), *base], "an empty path would write into the current"),
        ([*train, "train.max_steps=-5"], "train.max_steps must be >= 1"),
        ([*train, "--max-steps", "0"], "--max-steps: must be at least 1"),
        ([*train, "--step", "2"], "give --resume with it"),
        (["train", "--out", mdlm, "--quiet", "--data", str(corpus), *base], "already holds a run"),
        (["train", "--out", mdlm, "--quiet", "--resume", "optim.lr=0.5"], "changed config (optim.lr"),
        (["train", "--out", mdlm, "--quiet", "--resume", "--step", "1"], "no complete checkpoint of step 1"),
        # unmask export, frontier
        (["export", mdlm, "--out", mdlm], "already exists"),
        (["export", mdlm, "--out", ""], "an empty path would write into the current"),
        (["frontier", mdlm, "--evaluator", ar, "--seed", str(2**64)], "--seed: a seed is a 64-bit integer"),
        (["frontier", mdlm, "--evaluator", ar, "--steps", "0"], "--steps: must be at least 1"),
        (["frontier", mdlm, "--evaluator", ar, "--samplers", "bogus"], "unknown sampler 'bogus'"),
    ]


def test_every_bad_input_is_refused_in_one_line(runs, capsys):
    root, corpus, base = runs
    before = {name: _snapshot(root / name) for name in ("mdlm", "ar")}
    failures = []
    for argv, expected in [*_cases(root, corpus, base), *_damaged_cases(root)]:
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


def test_a_latest_pointer_out_of_the_run_is_not_followed(runs, tmp_path):
    """checkpoints/latest naming another run's checkpoint (../ or absolute): the run's own newest checkpoint is
    used, with a warning."""
    root, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / "mdlm", run)
    own = shutil.move(run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000001")
    (run / "checkpoints" / "latest").write_text(f"../../{root.name}/mdlm/checkpoints/step_00000002")
    for pointer in (f"{root / 'mdlm' / 'checkpoints' / 'step_00000002'}",
                    f"../../{root.name}/mdlm/checkpoints/step_00000002"):
        (run / "checkpoints" / "latest").write_text(pointer)
        with pytest.warns(CheckpointNotice, match="outside the run's checkpoints folder"):
            assert resolve_checkpoint(run) == Path(own)


def test_an_unwritable_frontier_folder_is_said_before_any_sampling(runs, tmp_path, capsys, monkeypatch):
    import unmask.evaluate.frontier as frontier

    root, _, _ = runs
    locked = _read_only_folder(tmp_path)
    if locked is None:
        pytest.skip("no folder here that this process cannot write into")

    def no_sweep(*args, **kwargs):
        raise AssertionError("the samplers ran before the output folder was checked")

    monkeypatch.setattr(frontier, "sweep", no_sweep)
    try:
        err = _refused(capsys, ["frontier", str(root / "mdlm"), "--evaluator", str(root / "ar"),
                                "--out", str(locked / "frontier")])
        assert any(word in err.lower() for word in ("permission denied", "not permitted", "read-only")), err
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o700)


def test_one_validation_sequence_has_no_standard_error_rather_than_nan(runs, tmp_path, capsys):
    root, _, _ = runs
    one = tmp_path / "one.txt"
    one.write_text("it is a truth")  # under one block of 32 tokens
    assert main(["eval", str(root / "mdlm"), "--data", str(one)]) == 0
    out = capsys.readouterr().out
    assert "1 sequences" in out and "one sequence: no standard error" in out and "nan" not in out
