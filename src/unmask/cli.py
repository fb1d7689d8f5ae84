"""The ``unmask`` command: argument parsing only; every command calls the library.

    unmask train --preset tiny --data PATH_OR_NAME --out RUN_DIR [--max-steps N] [--resume] [key=value ...]
    unmask eval RUN_DIR_OR_CHECKPOINT [--data PATH_OR_NAME] [--num-t K] [--discrete-steps T ...]
    unmask sample RUN_DIR_OR_CHECKPOINT [--num-samples N] [--steps T] [--sampler NAME] [--prompt TEXT]
    unmask demo [--out DIR] [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unmask.checkpoint import CheckpointError
from unmask.config import ConfigError, apply_overrides, load_preset, preset_names, set_value
from unmask.data import DataError
from unmask.generation import PromptError
from unmask.sampling import SAMPLERS

USER_ERRORS = (ConfigError, DataError, CheckpointError, PromptError)


def _train(args: argparse.Namespace) -> int:
    from unmask.train import train

    config = load_preset(args.preset)
    if args.data is not None:
        set_value(config, "data.source", args.data)
    apply_overrides(config, args.overrides)
    if args.max_steps is not None:
        set_value(config, "train.max_steps", args.max_steps)
    result = train(config, args.out, resume=args.resume, progress=not args.quiet)
    if result.interrupted:
        print(f"interrupted at step {result.step}; continue with: unmask train ... --out {args.out} --resume",
              file=sys.stderr)
        return 130
    summary = {"step": result.step, "checkpoint": str(result.checkpoint), "tokens_per_s": round(result.tokens_per_s),
               **result.validation}
    print(json.dumps(summary))
    return 0


def _format_report(report: dict) -> str:
    unit = "BPC" if report["character_level"] else "PPL bound" if report["objective"] == "mdlm" else "PPL"
    figure = report["bits_per_token"] if report["character_level"] else report["perplexity"]
    rows = [
        ("checkpoint", report["checkpoint"]),
        ("data", f"{report['data']} ({report['split']}), {report['tokens']:,} tokens, {report['sequences']} sequences"),
        ("NELBO / token" if report["objective"] == "mdlm" else "NLL / token",
         f"{report['nelbo_per_token']:.4f} nats +- {report['stderr']:.4f} (K={report['num_t']})"),
        (unit, f"{figure:.3f}"),
    ]
    for steps, result in report["discrete"].items():
        bound = f"{result['nelbo_per_token']:.4f} nats, PPL bound {result['perplexity']:.3f}"
        rows.append((f"discrete T={steps}", bound))
    if "generative" in report:
        gen = report["generative"]
        rows.append(("gen. PPL", f"{gen['gen_ppl']:.2f} under {gen['evaluator']} ({gen['num_samples']} samples)"))
        rows.append(("entropy", f"{gen['entropy']:.3f} nats (unigram, per sample)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _eval(args: argparse.Namespace) -> int:
    from unmask.evaluate.checkpoint import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, num_t=args.num_t, discrete_steps=args.discrete_steps,
        batch_size=args.batch_size, max_batches=args.max_batches, seed=args.seed, device=args.device,
    )
    if args.gen_ppl:
        from unmask.evaluate.generative import generative_perplexity
        from unmask.generation import generate_text
        from unmask.pipeline import load

        samples = generate_text(load(args.checkpoint, device=args.device), num_samples=args.num_samples,
                                steps=args.steps, seed=args.seed)
        report["generative"] = generative_perplexity(
            samples.texts, args.gen_ppl, sample_token_ids=samples.tokens, device=args.device
        ).to_dict()
    print(_format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from unmask.generation import generate_text
    from unmask.pipeline import load
    from unmask.sampling import DrawConfig

    pipeline = load(args.checkpoint, device=args.device)
    on_step = None
    if args.show_steps:
        def on_step(x):
            print(pipeline.tokenizer.decode(x[0].tolist(), skip_special=False), flush=True)

    samples = generate_text(
        pipeline, num_samples=args.num_samples, steps=args.steps, sampler=args.sampler, length=args.length,
        prompt=args.prompt, template=args.template, seed=args.seed,
        draw=DrawConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p), on_step=on_step,
    )
    for i, text in enumerate(samples.texts):
        print(f"--- sample {i} ---\n{text}")
    print(f"({samples.num_calls} network calls, {samples.seconds:.2f} s)", file=sys.stderr)
    if args.json:
        records = [{"text": t, "tokens": ids.tolist()} for t, ids in zip(samples.texts, samples.tokens)]
        Path(args.json).write_text(json.dumps({"samples": records, "num_calls": samples.num_calls,
                                               "seconds": samples.seconds}, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from unmask.demo import run_demo

    run_demo(Path(args.out), minutes=args.minutes, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unmask", description="Masked diffusion language models (MDLM).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (MDLM or the AR baseline)")
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(preset_names())} or a .yaml file")
    p.add_argument("--data", help="corpus: 'default' (embedded), a file or folder, or a dataset name")
    p.add_argument("--out", required=True, help="run directory (config, tokenizer, checkpoints, metrics)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="likelihood bound (and generative perplexity) of a checkpoint")
    p.add_argument("checkpoint", help="run directory or checkpoint folder")
    p.add_argument("--data", help="evaluate zero-shot on this file, folder or dataset name")
    p.add_argument("--split", help="validation (default for the training corpus), test, or all")
    p.add_argument("--num-t", type=int, default=1, help="time samples per sequence (K)")
    p.add_argument("--discrete-steps", type=int, nargs="*", default=[], help="also the discrete-time bound at T")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-batches", type=int)
    p.add_argument("--gen-ppl", metavar="EVALUATOR",
                   help="also sample and score under a causal LM (HF path/name, 'smollm2', or an unmask AR run)")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=_eval)

    p = sub.add_parser("sample", help="generate, continue a prompt, or fill in a template")
    p.add_argument("checkpoint", help="run directory or checkpoint folder")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=128, help="sampling steps T")
    p.add_argument("--sampler", default="cached", choices=SAMPLERS)
    p.add_argument("--length", type=int, help="tokens to generate (default: the model's length)")
    p.add_argument("--prompt", help="text the samples start with")
    p.add_argument("--template", help="text with [MASK] (one token) or [MASK:N] (N tokens) where to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--show-steps", action="store_true", help="print the first sample as it unmasks")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the samples to this JSON file")
    p.set_defaults(func=_sample)

    p = sub.add_parser("demo", help="train MDLM and the AR baseline on the embedded corpus, compare, sample")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=2.5, help="training budget per model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere among the options, not only at the end.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or args.command != "train"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unmask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
