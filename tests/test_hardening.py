"""What the hardening probe found besides bad options: a full disk, leftovers, a dangling pointer,
resuming the README's way, a damaged export source, file modes, the progress bar, help texts."""

import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings

import pytest
from safetensors import SafetensorError

from unmask import fileio
from unmask.checkpoint import resolve_checkpoint
from unmask.cli import main


def _train(tmp_path, corpus_file, overrides, *extra, out="run"):
    return main(["train", "--data", str(corpus_file), "--out", str(tmp_path / out), "--quiet", *overrides, *extra])


def _one_error_line(capsys, code, expected):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1 and expected in err, err


@pytest.fixture()
def run(tmp_path, corpus_file, tiny_overrides):
    assert _train(tmp_path, corpus_file, tiny_overrides, "--max-steps", "2") == 0
    return tmp_path / "run"


def test_a_full_disk_keeps_the_earlier_checkpoint_and_leaves_nothing_behind(run, tiny_overrides, capsys, monkeypatch):
    capsys.readouterr()
    checkpoints = run / "checkpoints"
    before = sorted(p.name for p in checkpoints.iterdir())

    def full(tensors, path):
        path.write_bytes(b"\0" * 10)  # a partial file, as a full disk leaves one
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(fileio, "save_file", full)
    code = main(["train", "--out", str(run), "--quiet", "--resume", "--max-steps", "4"])
    _one_error_line(capsys, code, "could not write checkpoint")
    assert sorted(p.name for p in checkpoints.iterdir()) == before  # no hidden staging folder left
    assert resolve_checkpoint(run).name == "step_00000002"


def test_leftovers_of_a_killed_save_are_cleaned_on_the_next_start(run, tiny_overrides):
    checkpoints = run / "checkpoints"
    (checkpoints / ".step_00000001.old").mkdir()  # a kill during pruning (the earlier naming, too)
    (checkpoints / ".step_00000002.9f8e7d6c.old").mkdir()
    dead_pid = 2**22 + 12345  # above pid_max: no such process
    (checkpoints / f".step_00000004~tmp~{os.uname().nodename}~{dead_pid}~abcd1234").mkdir()
    assert main(["train", "--out", str(run), "--quiet", "--resume", "--max-steps", "4"]) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002", "step_00000004"]


def test_a_dangling_latest_pointer_falls_back_to_the_newest_complete_step(run, capsys):
    capsys.readouterr()
    (run / "checkpoints" / "latest").write_text("step_00000009")
    assert main(["sample", str(run), "--num-samples", "1", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoints/latest names step_00000009, which is incomplete; using step_00000002" in err
    assert main(["train", "--out", str(run), "--quiet", "--resume", "--max-steps", "4"]) == 0
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"


def test_the_readme_resume_command_continues_the_saved_config(run, capsys):
    """train --data FILE --out RUN, then `unmask train --preset tiny --out RUN --resume` (no --data)."""
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "--resume", "--max-steps", "3"]) == 0
    captured = capsys.readouterr()
    assert '"step": 3' in captured.out and "--preset is not used" in captured.err
    assert main(["train", "--out", str(run), "--quiet", "--resume", "train.max_steps=4"]) == 0


def test_export_refuses_a_damaged_checkpoint_and_keeps_the_umask(run, tmp_path, capsys):
    checkpoint = resolve_checkpoint(run)
    exported = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(exported)]) == 0
    mode = stat.S_IMODE((exported / "model.safetensors").stat().st_mode)
    assert mode == fileio.FILE_MODE == stat.S_IMODE((exported / "state.json").stat().st_mode)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    capsys.readouterr()
    code = main(["export", str(run), "--out", str(tmp_path / "copy")])
    _one_error_line(capsys, code, "corrupt or incomplete")
    assert not (tmp_path / "copy").exists()


def test_a_time_budget_shows_progress_against_the_budget(tmp_path, corpus_file, tiny_overrides, capsys):
    assert main(["train", "--data", str(corpus_file), "--out", str(tmp_path / "t"), *tiny_overrides,
                 "train.max_minutes=0.01", "train.max_steps=100000"]) == 0
    err = capsys.readouterr().err
    assert "s of the time budget" in err and "/100000" not in err


def test_every_option_has_help_with_its_default(capsys):
    assert main(["sample", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("sampling steps T (per window; per block for bd3lm) (default: 128)", "(default: 4)", "(default: 0)",
                 "(default: 1.0)", "draw only among the k most likely tokens", "nucleus"):
        assert text in out, text
    assert main(["train", "--help"]) == 0
    assert "stop after this many steps" in capsys.readouterr().out


def test_missing_tensorboard_is_said_once(tmp_path, monkeypatch):
    from unmask.train.metrics import MetricsLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.warns(UserWarning, match="TensorBoard logging is skipped: tensorboard is not installed"):
        MetricsLogger(tmp_path, tensorboard=True).close()  # asked for (train.tensorboard=true)
    # The default (train.tensorboard unset) follows what is installed: nothing to say where it is not.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricsLogger(tmp_path).close()
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.slow
def test_sigterm_saves_the_step_and_the_resume_logs_every_step_once(tmp_path, corpus_file, tiny_overrides):
    """kill, timeout, a scheduler's preemption: SIGTERM through the CLI saves as Ctrl-C does; resuming logs
    each step once in metrics.jsonl."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "unmask", "train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(run),
           "--quiet", *tiny_overrides, "train.max_steps=100000", "train.save_every=100000", "train.eval_every=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "--resume" in err and "Traceback" not in err, err
    step = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert step >= 3
    # A session that logged past its last checkpoint (killed with SIGKILL, say): those lines go on resume.
    with metrics.open("a") as file:
        file.write(json.dumps({"step": step + 1, "loss": 9.9}) + "\n" + '{"step": ' + str(step + 2))
    assert main(["train", "--out", str(run), "--quiet", "--resume", "--max-steps", str(step + 2)]) == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, step + 3)) and 9.9 not in [json.loads(x).get("loss") for x in metrics.read_text()
                                                               .splitlines()]


def test_stop_signals_interrupt_as_ctrl_c_does():
    from unmask.train.signals import Stopped, stop_signals

    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Stopped) as stopped, stop_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(5)  # the handler runs at the next bytecode: never reached
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_resuming_a_finished_run_says_so(run, capsys):
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--quiet", "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "is finished: it is at step 2" in captured.err and "--max-steps 4" in captured.err


def test_a_start_says_what_takes_its_time(tmp_path, corpus_file, tiny_overrides, capsys):
    """Training a BPE tokenizer and tokenizing a corpus take seconds per 10 MB: each is a line, not silence."""
    assert _train(tmp_path, corpus_file, [], *tiny_overrides, "data.tokenizer=bpe", "data.vocab_size=300",
                  "--max-steps", "1") == 0
    quiet = capsys.readouterr().err
    assert "tokenizing" not in quiet  # --quiet: nothing
    assert main(["train", "--data", str(corpus_file), "--out", str(tmp_path / "loud"), *tiny_overrides,
                 "data.tokenizer=bpe", "data.vocab_size=300", "--max-steps", "1",
                 f"data.cache_dir={tmp_path / 'other-cache'}"]) == 0
    err = capsys.readouterr().err
    assert "unmask train: training a BPE tokenizer of 300 ids on" in err
    assert f"unmask train: tokenizing {corpus_file} (train split)" in err
