"""What the hardening probe found besides bad options: a full disk, leftovers, a dangling pointer,
resuming the README's way, a damaged export source, file modes, the progress bar, help texts."""

import os
import stat
import sys

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
        MetricsLogger(tmp_path).close()
