"""Distillation: on the toy distribution a student after one round at T / 2 steps samples closer to its
teacher's T-step distribution than the teacher does at T / 2 (SDTT for MDLM, DCD for Duo); through the CLI a
student is an ordinary run that resumes exactly."""

import pytest
import torch
from safetensors.torch import load_file
from toy import ToyDistribution
from toy_chains import Table, kl, masked_chain, masked_states, uniform_chain
from toy_uniform import UniformExactDenoiser

from unmask.checkpoint import resolve_checkpoint
from unmask.cli import main
from unmask.distill.losses import dcd_loss, divergence_per_token, sdtt_loss
from unmask.schedules import get_schedule


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # many tiny ops: a thread pool costs more than it gives
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_round(student, loss, dist, steps=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(steps):
        losses, counts = loss(student, dist.draw(512, generator), generator)
        (losses.sum() / counts.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return student


@pytest.mark.parametrize("teacher_kind", ["exact", "imperfect"])
def test_one_sdtt_round_brings_t_over_2_steps_closer_to_the_teachers_t(teacher_kind):
    dist, schedule, steps = ToyDistribution(vocab=3, length=4, seed=1), get_schedule("loglinear"), 4
    states = masked_states(dist)
    if teacher_kind == "exact":
        logits = dist.denoiser()(states, torch.zeros(len(states)))
    else:  # a model that has not learnt the data: random logits
        logits = 1.5 * torch.randn(len(states), dist.length, dist.vocab + 1, generator=torch.Generator().manual_seed(2))
    teacher = Table(logits, dist.vocab + 1).requires_grad_(False)
    target = masked_chain(teacher, dist, schedule, steps)

    def loss(student, x0, generator):
        return sdtt_loss(student, teacher, x0, dt=1 / steps, schedule=schedule, mask_id=dist.mask_id,
                         generator=generator)

    student = _one_round(Table(logits, dist.vocab + 1), loss, dist)
    before = kl(target, masked_chain(teacher, dist, schedule, steps // 2))
    after = kl(target, masked_chain(student, dist, schedule, steps // 2))
    assert after < 0.95 * before, (before, after)


def test_one_dcd_round_brings_t_over_2_steps_closer_to_the_teachers_t():
    dist, schedule, steps = ToyDistribution(vocab=3, length=4, seed=1), get_schedule("loglinear"), 8
    exact = UniformExactDenoiser(dist, schedule)
    logits = torch.stack([exact(dist.sequences, torch.full((len(dist.sequences),), b / steps))
                          for b in range(steps + 1)])
    teacher = Table(logits, dist.vocab, timed=True).requires_grad_(False)
    target = uniform_chain(teacher, dist, schedule, steps)

    def loss(student, x0, generator):
        # On 3 states the Gaussian range that spans the sampler's alphas is wider than the reference's for 50k.
        return dcd_loss(student, teacher, x0, dt=1 / steps, schedule=schedule, mask_id=dist.mask_id,
                        vocab_size=dist.vocab + 1, gamma_min=-8.0, gamma_max=6.0, generator=generator)

    student = _one_round(Table(logits, dist.vocab, timed=True), loss, dist)
    before = kl(target, uniform_chain(teacher, dist, schedule, steps // 2))
    after = kl(target, uniform_chain(student, dist, schedule, steps // 2))
    assert after < 0.95 * before, (before, after)


def test_divergences_by_hand():
    student = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]]))
    teacher = torch.log(torch.tensor([[0.25, 0.75, 0.0], [0.2, 0.8, 0.0]]))
    bwd = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    fwd = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(0.75 / 0.5))
    assert torch.allclose(divergence_per_token(student, teacher, "kl-bwd"), torch.stack([bwd, torch.tensor(0.0)]))
    assert torch.allclose(divergence_per_token(student, teacher, "kl-fwd"), torch.stack([fwd, torch.tensor(0.0)]))
    mse = (student[0, :2] - teacher[0, :2]).pow(2).sum()
    assert torch.allclose(divergence_per_token(student, teacher, "mse"), torch.stack([mse, torch.tensor(0.0)]))
    student.requires_grad_(True)
    divergence_per_token(student, teacher, "kl-bwd").sum().backward()
    assert torch.isfinite(student.grad).all()  # MASK's -inf column gives no NaN gradient


@pytest.mark.slow
def test_a_student_is_a_run_that_resumes_exactly(tmp_path, corpus_file, tiny_overrides, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--preset", "tiny", "--data", str(corpus_file), "--out", str(teacher), "--quiet",
                 "--max-steps", "2", *tiny_overrides]) == 0
    common = ["distill", str(teacher), "--method", "sdtt", "--rounds", "2", "--round-steps", "2", "--steps-from",
              "16", "--quiet", *tiny_overrides]
    assert main([*common, "--out", str(tmp_path / "straight")]) == 0
    # Stopped at the end of round 1 (its checkpoint holds round 1's teacher), then continued: round 2 starts
    # with the student as teacher, as in the run that never stopped.
    assert main([*common, "--out", str(tmp_path / "resumed"), "train.max_steps=2"]) == 0
    assert main(["distill", str(teacher), "--out", str(tmp_path / "resumed"), "--resume", "--quiet",
                 "train.max_steps=4"]) == 0
    for part in ("model", "ema", "teacher"):
        straight = load_file(resolve_checkpoint(tmp_path / "straight") / f"{part}.safetensors")
        resumed = load_file(resolve_checkpoint(tmp_path / "resumed") / f"{part}.safetensors")
        assert all(torch.equal(straight[name], resumed[name]) for name in straight), part
    student = tmp_path / "straight"
    assert main(["sample", str(student), "--steps", "4", "--num-samples", "1"]) == 0
    assert main(["eval", str(student), "--max-batches", "1"]) == 0
    capsys.readouterr()
    assert main(["distill", str(teacher), "--out", str(tmp_path / "wrong"), "--method", "dcd", "--rounds", "1"]) == 2
    assert "does not distil a MDLM model" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()
