"""Several processes on CPU (gloo): DDP and FSDP match one process, a killed run resumes, eval splits.
With two GPUs, the DDP and FSDP runs are also made with one process per GPU (NCCL).

Each test starts real worker processes (torchrun, or ``unmask train --nproc``) on a very small
model; dropout is off so that runs with different numbers of processes can be compared.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from devices import TWO_GPUS
from safetensors.torch import load_file

from unmask.checkpoint import export_checkpoint, is_sharded, resolve_checkpoint
from unmask.cli import main
from unmask.config import apply_overrides, load_preset
from unmask.train import Trainer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="needs torch.distributed with the gloo backend"),
]

TOLERANCE = dict(rtol=1e-4, atol=1e-6)


@pytest.fixture()
def overrides(tiny_overrides, corpus_file):
    # Four micro-batches of 2 per step: with 2 processes each accumulates 2 (DDP no_sync / FSDP). On the CPU
    # even where GPUs are (the default "auto" would put two processes on cuda:0 and cuda:1).
    return [*tiny_overrides, "model.dropout=0.0", "train.micro_batch=2", f"data.source={corpus_file}",
            "train.device=cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unmask",
               *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _unmask(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "unmask", *args], capture_output=True, text=True, timeout=timeout,
                            env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _single(overrides, run_dir, *extra, max_steps, resume=False):
    config = load_preset("tiny")
    apply_overrides(config, [*overrides, *extra])
    return Trainer(config, run_dir, resume=resume, progress=False).run(max_steps=max_steps)


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _weights(checkpoint: Path, tmp_path: Path) -> dict[str, dict[str, torch.Tensor]]:
    if is_sharded(checkpoint):
        out = tmp_path / f"export-{checkpoint.parent.parent.name}-{checkpoint.name}"
        checkpoint = export_checkpoint(checkpoint, out)
    return {name: load_file(checkpoint / f"{name}.safetensors") for name in ("model", "ema")}


def _assert_same_weights(a, b):
    for kind in a:
        assert a[kind].keys() == b[kind].keys()
        for name in a[kind]:
            torch.testing.assert_close(a[kind][name], b[kind][name], **TOLERANCE, msg=f"{kind} {name}")


@pytest.mark.parametrize("device", ["cpu", TWO_GPUS])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, overrides, strategy, device):
    args = [*overrides, f"parallel.strategy={strategy}", f"train.device={device}"]  # cuda: NCCL, a GPU each
    _single(args, tmp_path / "one", max_steps=4)
    train = ["train", "--out", str(tmp_path / "two"), "--max-steps", "4", "--quiet", *args]
    if strategy == "ddp":
        _torchrun(*train)
    else:
        _unmask(*train[:1], "--nproc", "2", *train[1:])  # the convenience launcher

    checkpoint = resolve_checkpoint(tmp_path / "two")
    assert is_sharded(checkpoint) and len(list((checkpoint / "dcp").glob("*.distcp"))) == 2
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert list(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
    _assert_same_weights(_weights(resolve_checkpoint(tmp_path / "one"), tmp_path), _weights(checkpoint, tmp_path))
    # Only rank 0 logged (one record per step) and printed the summary.
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 4 + 2  # + 2 validations


def _children(pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes started by process ``pid``."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and "RANK" in environ:
            workers[int(environ["RANK"])] = int(entry.name)
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes through /proc")
def test_killed_run_resumes_with_one_or_two_processes(tmp_path, overrides):
    args = [*overrides, "parallel.strategy=fsdp", "train.keep_checkpoints=50"]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "unmask", "train", "--nproc", "2", "--out", str(run), "--max-steps", "100000",
               "--quiet", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                               start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "latest").exists():
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.05)
        workers = _children(process.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode != 0
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == ["unmask train: error: a worker process died (rank 1, signal SIGKILL); "
                      "continue from the last complete checkpoint with --resume"], stderr
    assert "Traceback" not in stderr
    # Every checkpoint under a real name is complete; a save cut short is only a hidden folder.
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert saved
    for checkpoint in saved:
        assert is_sharded(checkpoint) and (checkpoint / "state.json").is_file() and (checkpoint / "tokenizer").is_dir()
        assert sorted(p.name for p in (checkpoint / "rng").iterdir()) == ["rank_00000.safetensors",
                                                                          "rank_00001.safetensors"]
    last = resolve_checkpoint(run)  # latest: the last one published (a kill may fall between rename and pointer)
    assert last in saved[-2:]
    step = json.loads((last / "state.json").read_text())["step"]
    target = step + 2

    # The uninterrupted run, in one process.
    _single(args, tmp_path / "straight", max_steps=target + 2)
    straight = tmp_path / "straight" / "checkpoints"

    # Resume with one process (from the sharded checkpoint) ...
    shutil.copytree(run, tmp_path / "copy")
    _single(args, tmp_path / "copy", max_steps=target, resume=True)
    resumed_one = resolve_checkpoint(tmp_path / "copy")
    assert not is_sharded(resumed_one) and resumed_one.name == f"step_{target:08d}"
    _assert_same_weights(_weights(straight / resumed_one.name, tmp_path), _weights(resumed_one, tmp_path))
    # ... and with two, from the sharded checkpoint and from that single-process one (with DDP).
    _unmask("train", "--nproc", "2", "--out", str(run), "--max-steps", str(target), "--resume", "--quiet", *args)
    resumed_two = resolve_checkpoint(run)
    assert resumed_two.name == f"step_{target:08d}"
    _assert_same_weights(_weights(straight / resumed_two.name, tmp_path), _weights(resumed_two, tmp_path))
    _torchrun("train", "--out", str(tmp_path / "copy"), "--max-steps", str(target + 2), "--resume", "--quiet",
              *args, "parallel.strategy=ddp")
    final = resolve_checkpoint(tmp_path / "copy")
    assert final.name == f"step_{target + 2:08d}"
    _assert_same_weights(_weights(straight / final.name, tmp_path), _weights(final, tmp_path))


def test_distributed_eval_equals_single_process(tmp_path, overrides, capsys):
    _single(overrides, tmp_path / "run", max_steps=2)
    # 5 batches of 4: the two processes take 3 and 2; the discrete bound goes through the same path.
    common = ["eval", str(tmp_path / "run"), "--batch-size", "4", "--max-batches", "5", "--discrete-steps", "10",
              "--num-t", "2", "--device", "cpu"]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    result = _torchrun(*common, "--json", str(tmp_path / "two.json"))
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["sequences"] == 20 and one == two
    assert result.stdout.count("NELBO / token") == 1  # rank 0 alone reports


def test_the_launcher_names_the_cause_from_torchruns_error_records(tmp_path, monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from unmask.distributed.launch import describe_failure, record_failure

    def recorded(rank, error):
        path = tmp_path / f"error_{rank}.json"
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
        try:
            raise error
        except type(error) as caught:
            record_failure(caught)
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=1, error_file=str(path))

    lost = recorded(0, RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    killed = ProcessFailure(local_rank=1, pid=101, exitcode=-signal.SIGKILL, error_file="<N/A>")
    # A worker killed by a signal the launcher did not send is the cause; the lost peer a consequence.
    assert describe_failure(ChildFailedError("unmask", {0: lost, 1: killed})) == (
        1, "a worker process died (rank 1, signal SIGKILL); continue from the last complete checkpoint with --resume")
    # No kill: the first recorded failure is named with its error file (the traceback).
    bug = recorded(1, ZeroDivisionError("division by zero"))
    stopped = ProcessFailure(local_rank=0, pid=100, exitcode=-signal.SIGTERM, error_file="<N/A>")
    status, line = describe_failure(ChildFailedError("unmask", {0: stopped, 1: bug}))
    assert status == 1 and line.startswith("rank 1 failed: ZeroDivisionError: division by zero (traceback in ")
    record = json.loads((tmp_path / "error_1.json").read_text())["message"]
    assert record["message"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in record["extraInfo"]["py_callstack"]
    # A worker that stopped on a user error has said so itself: its status is passed on, nothing printed.
    user = ProcessFailure(local_rank=0, pid=100, exitcode=2, error_file="<N/A>")
    assert describe_failure(ChildFailedError("unmask", {0: user, 1: stopped})) == (2, None)
