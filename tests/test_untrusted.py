"""Folders from elsewhere run no code: a model, evaluator or tokenizer folder whose config names Python code of
its own (an ``auto_map``) is refused in one line naming --trust-remote-code, whatever standard input says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

# The planted module: importing it is running it.
PLANTED = """
from pathlib import Path
Path({target!r}).write_text("the folder's code ran")
"""


def _plant(folder: Path, target: Path, *, tokenizer: bool = False) -> Path:
    """A folder whose config asks transformers to import ``planted.py``, which would create ``target``."""
    folder.mkdir(parents=True)
    (folder / "planted.py").write_text(PLANTED.format(target=str(target)))
    if tokenizer:
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"auto_map": {"AutoTokenizer": ["planted.Tokenizer", None]}, "tokenizer_class": "Tokenizer"}))
    else:
        auto_map = {name: f"planted.{name}" for name in ("AutoConfig", "AutoModelForMaskedLM", "AutoModelForCausalLM")}
        (folder / "config.json").write_text(json.dumps({"model_type": "planted-lm", "auto_map": auto_map}))
    return folder


def _unmask(argv: list[str], tmp_path: Path, stdin: str | None) -> subprocess.CompletedProcess:
    # transformers copies a trusted folder's module into its modules cache: kept inside tmp_path.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unmask", *argv], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_a_folder_asking_to_run_its_code_is_refused_whatever_stdin_says(tmp_path):
    target = tmp_path / "ran"
    model = _plant(tmp_path / "model", target)
    tokenizer = _plant(tmp_path / "tokenizer", target, tokenizer=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words of text\n\n" * 50)
    commands = [
        ["sample", str(model)],  # a masked LM
        ["frontier", str(model), "--evaluator", "smollm2"],
        ["eval", str(model)],
        ["train", "--out", str(tmp_path / "run"), "--data", str(corpus), f"data.tokenizer={tokenizer}"],
    ]
    for argv in commands:
        # "yes | unmask ...", and for one command no input at all (each run is a process: a few seconds)
        for stdin in ("y\n" * 20, None) if argv[0] == "sample" else ("y\n" * 20,):
            done = _unmask(argv, tmp_path, stdin)
            err = done.stderr.strip()
            assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert "asks to run Python code of its own" in err and "--trust-remote-code" in err, err
            assert "[y/N]" not in done.stdout + err
            assert not target.exists(), argv
    assert not (tmp_path / "run" / "config.yaml").exists()  # a refused train leaves no half-made run


def test_an_evaluator_asking_to_run_its_code_is_refused(tmp_path):
    from unmask.errors import RemoteCodeRefused
    from unmask.evaluate import load_evaluator

    target = tmp_path / "ran"
    folder = _plant(tmp_path / "evaluator", target)
    with pytest.raises(RemoteCodeRefused, match="pass trust_remote_code only if you trust"):
        load_evaluator(str(folder))
    assert not target.exists()


def test_trust_remote_code_is_what_lets_the_code_run(tmp_path):
    """The explicit opt-in reaches transformers: the folder's module is imported (and its file appears). The
    planted module defines no tokenizer, so the command then fails, in one line."""
    target = tmp_path / "ran"
    tokenizer = _plant(tmp_path / "tokenizer", target, tokenizer=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words of text\n\n" * 50)
    done = _unmask(["train", "--out", str(tmp_path / "run"), "--data", str(corpus), f"data.tokenizer={tokenizer}",
                    "--trust-remote-code"], tmp_path, None)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert target.read_text() == "the folder's code ran"
