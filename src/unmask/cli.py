"""The ``unmask`` command: argument parsing only; every command calls the library.

    unmask train --preset tiny --data PATH_OR_NAME --out RUN_DIR [--max-steps N] [--resume] [--nproc N] [key=value ...]
    unmask eval RUN_DIR_OR_CHECKPOINT [--data PATH_OR_NAME] [--num-t K] [--discrete-steps T ...]
    unmask sample RUN_DIR_OR_CHECKPOINT [--num-samples N] [--steps T] [--sampler NAME] [--prompt TEXT]
    unmask frontier RUN_DIR_OR_CHECKPOINT --evaluator SPEC [--samplers a,b] [--steps 16,32] [--out DIR]
    unmask export RUN_DIR_OR_CHECKPOINT --out FOLDER
    unmask demo [--out DIR] [--minutes M]

Under ``torchrun --nproc-per-node N -m unmask train|eval ...`` every process runs the same command;
rank 0 alone prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unmask.checkpoint import CheckpointError
from unmask.config import ConfigError, apply_overrides, load_preset, preset_names, set_value
from unmask.data import DataError
from unmask.distributed import is_main_process, is_peer_failure, report_peer_failure, shutdown
from unmask.generation import PromptError
from unmask.sampling import ORDERS, REMASKING, SAMPLERS

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
    if not is_main_process():
        return 130 if result.interrupted else 0
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
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
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
    from unmask.sampling import DrawConfig, Remasking

    pipeline = load(args.checkpoint, device=args.device)
    remasking = Remasking(args.remask, eta=args.eta) if args.remask else None
    on_step = None
    if args.show_steps:
        def on_step(x):
            print(pipeline.tokenizer.decode(x[0].tolist(), skip_special=False), flush=True)

    samples = generate_text(
        pipeline, num_samples=args.num_samples, steps=args.steps, sampler=args.sampler, length=args.length,
        prompt=args.prompt, template=args.template, seed=args.seed,
        draw=DrawConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p),
        order=args.order, threshold=args.threshold, remasking=remasking, overlap=args.overlap,
        stop_at_eos=args.stop_at_eos, on_step=on_step,
    )
    for i, text in enumerate(samples.texts):
        print(f"--- sample {i} ---\n{text}")
    print(f"({samples.num_calls} network calls, {samples.seconds:.2f} s)", file=sys.stderr)
    if args.json:
        records = [{"text": t, "tokens": ids.tolist()} for t, ids in zip(samples.texts, samples.tokens)]
        Path(args.json).write_text(json.dumps({"samples": records, "num_calls": samples.num_calls,
                                               "seconds": samples.seconds}, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from unmask.checkpoint_dist import export_checkpoint

    print(f"wrote {export_checkpoint(args.checkpoint, args.out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from unmask.demo import run_demo

    run_demo(Path(args.out), minutes=args.minutes, progress=not args.quiet)
    return 0


def _frontier(args: argparse.Namespace) -> int:
    from unmask.evaluate.frontier import format_table, run_frontier

    def on_point(point):
        print(f"{point.sampler} steps={point.steps}: {point.num_calls:.1f} calls, {point.seconds:.2f} s, "
              f"gen. PPL {point.gen_ppl:.2f}, entropy {point.entropy:.3f}", file=sys.stderr, flush=True)

    out = Path(args.out)
    try:
        points = run_frontier(
            args.checkpoint, out_dir=out, evaluator=args.evaluator, samplers=args.samplers.split(","),
            steps=[int(s) for s in args.steps.split(",")], num_samples=args.num_samples,
            batch_size=args.batch_size, length=args.length, seed=args.seed, device=args.device, on_point=on_point,
        )
    except (ValueError, ModuleNotFoundError) as err:
        print(f"unmask frontier: error: {err}", file=sys.stderr)
        return 2
    print(format_table(points))
    for name in ("frontier.md", "frontier.json", "frontier.png"):
        print(f"wrote {out / name}")
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
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train in N processes on this machine (one per GPU), as torchrun --nproc-per-node N does")
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
    p.add_argument("--length", type=int,
                   help="tokens to generate (default: the model's length; longer runs semi-autoregressively)")
    p.add_argument("--overlap", type=int, help="semi-AR: tokens of the previous window kept (default: half)")
    p.add_argument("--stop-at-eos", action="store_true", help="end each sample at its first EOS")
    p.add_argument("--prompt", help="text the samples start with")
    p.add_argument("--template", help="text with [MASK] (one token) or [MASK:N] (N tokens) where to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--order", default="random", choices=ORDERS,
                   help="which positions unmask first: random (exact) or most certain (confidence/margin/entropy)")
    p.add_argument("--threshold", type=float,
                   help="parallel decoding: also unmask every position whose confidence exceeds this (e.g. 0.9)")
    p.add_argument("--remask", choices=REMASKING, help="ReMDM remasking strategy")
    p.add_argument("--eta", type=float, default=0.02, help="ReMDM remasking rate")
    p.add_argument("--show-steps", action="store_true", help="print the first sample as it unmasks")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the samples to this JSON file")
    p.set_defaults(func=_sample)

    from unmask.evaluate.frontier import DEFAULT_SAMPLERS, DEFAULT_STEPS

    p = sub.add_parser("frontier", help="sweep samplers and step counts: gen. PPL, entropy, calls, time")
    p.add_argument("checkpoint", help="MDLM run directory or checkpoint folder")
    p.add_argument("--evaluator", required=True,
                   help="AR scorer: an unmask AR run, 'smollm2', a Hugging Face folder or .gguf file")
    p.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS),
                   help="comma-separated: ancestral, cached, first_hitting, confidence, margin, entropy, "
                        "threshold-TAU, remdm-STRATEGY[-ETA] (cap, rescale, conf, loop)")
    p.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="comma-separated step counts")
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, help="tokens per sample, BOS included (default: the model's length)")
    p.add_argument("--out", default="frontier", help="folder for frontier.md, frontier.json, frontier.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_frontier)

    p = sub.add_parser("export", help="write a multi-process run's checkpoint as a single-process one")
    p.add_argument("checkpoint", help="run directory (its latest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, help="new folder for model/ema safetensors, config, tokenizer, state")
    p.set_defaults(func=_export)

    p = sub.add_parser("demo", help="train MDLM and the AR baseline on the embedded corpus, compare, sample")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=3.5, help="training budget per model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere among the options, not only at the end.
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or args.command != "train"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "nproc", None) is not None:
        from unmask.distributed import launch

        return launch(args.nproc, _without_nproc(argv))
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if is_main_process():  # under torchrun every rank fails alike; one says so
            print(f"unmask {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if is_main_process():
            print(f"unmask {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseException as err:  # torch.distributed.checkpoint wraps a lost peer in a BaseException
        if not is_peer_failure(err):
            raise
        return report_peer_failure(args.command, err)
    finally:
        shutdown()


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
