"""Few-step generation on a CPU: MDLM, Duo and their distilled students (SDTT, DCD), and the released shape.

    python benchmarks/few_step.py [--train-steps 1500] [--rounds 4] [--round-steps 300] [--num-samples 64]
                                  [--out runs/few-step] [--json benchmarks/results/few-step.json] [--released]
                                  [--smoke]

1. Trains MDLM and Duo on the embedded corpus (the ``tiny`` preset, bf16 where the CPU has it) for the same
   number of steps (so the same tokens), one tokenizer for both. Duo spends the first half in its curriculum.
2. Distils each with the same budget: ``--rounds`` rounds of ``--round-steps`` steps, from 128 teacher steps
   (SDTT for MDLM, DCD for Duo): after 4 rounds the students are meant for 8 steps.
3. Samples ``--num-samples`` texts of the model's length at 4, 8, 16, 32, 64 and 128 steps from each
   (MDLM: the cached sampler; Duo: ancestral, and its greedy tail), scores them under SmolLM2-135M-Instruct
   (generative perplexity) beside their unigram entropy, and times the generation per sample.
4. ``--released``: the released shape (12 x 768, L = 1024, GPT-2's 50,258 ids) with random weights, one
   1024-token sample at 8 steps as Duo (ancestral) and MDLM (cached), bf16 and fp32, beside MDLM at T = 128.

The table goes to stdout with the machine, the command and the date; ``--json`` writes every figure. Time
figures need a quiet machine. ``--smoke`` runs every part at a toy size in about a minute (no figure of it
means anything).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from unmask.config import apply_overrides, load_preset, set_value
from unmask.distill.trainer import distill
from unmask.evaluate.generative import generative_perplexity, load_evaluator
from unmask.generation import generate_text
from unmask.kinds import get_kind
from unmask.models import DiT, DiTConfig
from unmask.pipeline import load
from unmask.runtime import autocast, device_name
from unmask.sampling import Process, SamplerConfig
from unmask.sampling.run import initial_state, run_to_end
from unmask.train import train

STEPS = (4, 8, 16, 32, 64, 128)
DUO = ("objective.name=duo", "model.time_conditioning=true", "objective.curriculum_start=0")
SMOKE = ("model.n_layers=1", "model.hidden=32", "model.n_heads=2", "data.vocab_size=300", "data.length=32",
         "train.global_batch=8", "train.micro_batch=8")


def train_teachers(out: Path, steps: int, overrides: list[str], progress: bool) -> dict[str, Path]:
    runs = {}
    for name, extra in (("mdlm", ["objective.name=mdlm"]), ("duo", [*DUO, f"objective.curriculum_end={steps // 2}"])):
        config = apply_overrides(load_preset("tiny"), [*overrides, *extra])
        for key, value in (("train.max_steps", steps), ("train.eval_every", steps), ("train.save_every", steps)):
            set_value(config, key, value)
        run = out / name
        if runs:  # one tokenization for every figure
            shutil.copytree(runs["mdlm"] / "tokenizer", run / "tokenizer")
        print(f"== training {name} for {steps} steps -> {run}", flush=True)
        train(config, run, progress=progress)
        runs[name] = run
    return runs


def distil(teachers: dict[str, Path], out: Path, rounds: int, round_steps: int, overrides: list[str],
           progress: bool) -> dict[str, Path]:
    students = {}
    for name, method in (("mdlm", "sdtt"), ("duo", "dcd")):
        student = out / f"{name}-{method}"
        print(f"== distilling {name} with {method}: {rounds} rounds of {round_steps} steps -> {student}", flush=True)
        distill(teachers[name], student, method=method, rounds=rounds, steps_from=128, round_steps=round_steps,
                overrides=overrides, progress=progress)
        students[f"{name}-{method}"] = student
    return students


def sampling_points(runs: dict[str, Path], num_samples: int, evaluator, steps: tuple[int, ...]) -> list[dict]:
    points = []
    for name, run in runs.items():
        pipeline = load(run)
        uniform = pipeline.kind.name == "duo"
        variants = [("ancestral", {}), ("greedy tail", {"final_step": "argmax"})] if uniform else [("cached", {})]
        for label, options in variants:
            for count in steps:
                sampling = SamplerConfig(sampler="ancestral" if uniform else "cached", steps=count, **options)
                generate_text(pipeline, sampling, num_samples=1, seed=1)  # warm-up: one-time costs out of the time
                samples = generate_text(pipeline, sampling, num_samples=num_samples, seed=0)
                generated = samples.tokens[:, 1:]  # BOS is fixed
                scored = generative_perplexity(samples.texts, evaluator, sample_token_ids=generated)
                point = {"model": name, "sampler": label, "steps": count, "gen_ppl": scored.gen_ppl,
                         "entropy": scored.entropy, "seconds_per_sample": samples.seconds / num_samples,
                         "denoiser_calls": samples.num_calls}
                print(json.dumps(point), flush=True)
                points.append(point)
    return points


def released_shape(smoke: bool) -> list[dict]:
    """Seconds for one 1024-token sample of the released shape (random weights) at 8 steps (and MDLM at 128)."""
    shape = dict(vocab_size=50258, length=1024, n_layers=12, hidden=768, n_heads=12, cond_dim=128, dropout=0.0,
                 gelu="tanh")
    if smoke:
        shape.update(length=64, n_layers=1, hidden=32, n_heads=2, cond_dim=8)
    rows = []
    for kind, sampler, count in (("duo", "ancestral", 8), ("mdlm", "cached", 8), ("mdlm", "cached", 128)):
        torch.manual_seed(0)
        model = DiT(DiTConfig(**shape, time_conditioning=kind == "duo", time_input="sigma")).eval()
        with torch.no_grad():  # random non-zero outputs: every draw depends on the logits
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.02)
        process = Process(mask_id=50257, schedule="loglinear", parameterization="mean" if kind == "duo" else "subs",
                          vocab_size=50258)
        for precision in ("bf16", "fp32"):
            run = _run(kind, SamplerConfig(sampler=sampler, steps=count), shape["length"], process)
            started = time.perf_counter()
            with autocast(precision, torch.device("cpu")):
                out = run_to_end(model, run)
            row = {"kind": kind, "sampler": sampler, "steps": count, "precision": precision,
                   "seconds": time.perf_counter() - started, "denoiser_calls": out.num_calls}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _run(kind: str, sampling: SamplerConfig, length: int, process: Process):
    x = initial_state(batch_size=1, length=length, mask_id=process.mask_id, template=None, device="cpu")
    return get_kind(kind).window_run(sampling, x, process=process, generator=torch.Generator().manual_seed(0))


def table(points: list[dict]) -> str:
    lines = ["| model | sampler | steps | gen. PPL | entropy | s / sample | calls |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['model']} | {p['sampler']} | {p['steps']} | {p['gen_ppl']:.1f} | {p['entropy']:.3f} | "
              f"{p['seconds_per_sample']:.3f} | {p['denoiser_calls']} |" for p in points]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=1500, help="training steps of each teacher")
    parser.add_argument("--rounds", type=int, default=4, help="distillation rounds (128 -> 8 steps in 4)")
    parser.add_argument("--round-steps", type=int, default=300, help="student steps per round")
    parser.add_argument("--num-samples", type=int, default=64, help="samples per point")
    parser.add_argument("--out", default="runs/few-step", help="folder for the runs (must not hold runs)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--released", action="store_true", help="also time the released shape at 8 steps")
    parser.add_argument("--smoke", action="store_true", help="every part at a toy size: checks the script")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    out = Path(args.out)
    overrides = [*(SMOKE if args.smoke else ()), *args.overrides]
    steps, rounds, round_steps = (4, 2, 2) if args.smoke else (args.train_steps, args.rounds, args.round_steps)
    teachers = train_teachers(out, steps, overrides, not args.quiet)
    students = distil(teachers, out, rounds, round_steps, ["optim.lr=1e-4", "optim.warmup_steps=20", *overrides],
                      not args.quiet)
    evaluator = load_evaluator("smollm2")
    points = sampling_points({**teachers, **students}, 2 if args.smoke else args.num_samples, evaluator,
                             (4, 8) if args.smoke else STEPS)
    released = released_shape(args.smoke) if args.released else []
    command = shlex.join(["python", "benchmarks/few_step.py", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{device_name('cpu')}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"\n{started} | {machine}\n{command}\n\n{table(points)}")
    for row in released:
        print(f"released shape, {row['kind']} {row['sampler']} T={row['steps']} {row['precision']}: "
              f"{row['seconds']:.2f} s ({row['denoiser_calls']} calls)")
    record = {"date": started, "machine": machine, "command": command, "train_steps": steps, "rounds": rounds,
              "round_steps": round_steps, "evaluator": evaluator.name, "points": points, "released": released}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
