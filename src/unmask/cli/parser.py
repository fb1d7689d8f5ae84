"""The ``unmask`` command's options: every one with help and its default, every value checked here."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from unmask.cli.options import at_least, float_in, names_from, output_file, port, rate_range, step_counts
from unmask.config import preset_names
from unmask.data import DETOKENIZERS
from unmask.evaluate.frontier import DEFAULT_SAMPLERS, DEFAULT_STEPS
from unmask.sampling import ORDERS, REMASKING, SAMPLERS
from unmask.study import OBJECTIVES, EvalSettings


class Parser(argparse.ArgumentParser):
    """argparse with errors in one line (``unmask sample: error: ...``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none (None, or a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        no_default = any(action.default is none for none in (None, False, argparse.SUPPRESS))
        if no_default or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory (its latest checkpoint), checkpoint folder, released MDLM or "
                                      "Hugging Face masked-LM folder, or its hub name (online)")
    p.add_argument("--step", type=at_least(0), help="use this step's checkpoint of the run instead of the latest")


def _train(sub) -> None:
    p = sub.add_parser("train", help="train a model (MDLM, block diffusion or the AR baseline)", formatter_class=_Help)
    p.add_argument("--preset", help=f"one of {', '.join(preset_names())} or a .yaml file (default: tiny; with "
                                    "--resume: the saved run's config)")
    p.add_argument("--data", help="corpus: 'default' (embedded), a file or folder, or a dataset name")
    p.add_argument("--out", required=True, help="run directory (config, tokenizer, checkpoints, metrics)")
    p.add_argument("--max-steps", type=at_least(1), help="stop after this many steps (train.max_steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, with its saved config")
    p.add_argument("--step", type=at_least(0), help="with --resume: continue from this step's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=at_least(1), metavar="N",
                   help="train in N processes on this machine (one per GPU), as torchrun --nproc-per-node N does")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")


def _eval(sub) -> None:
    p = sub.add_parser("eval", help="likelihood bound (and generative perplexity) of a checkpoint",
                       formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--data", help="evaluate zero-shot on this file, folder or dataset name (ptb, wikitext-2, "
                                  "lambada, lm1b, ag_news, pubmed, arxiv: the paper's protocol)")
    p.add_argument("--detokenizer", choices=list(DETOKENIZERS),
                   help="the reference's zero-shot reading with this detokenizer (default: the dataset's own for "
                        "the paper's datasets; use it for a local copy of one)")
    p.add_argument("--text-field", help="the field of .jsonl / column of .parquet files that holds the text "
                                        "(default: the run's data.text_field)")
    p.add_argument("--split", choices=("train", "validation", "test", "all"),
                   help="split of --data (default: validation for the training corpus, all for a file)")
    p.add_argument("--num-t", type=at_least(1), default=1, help="time samples per sequence (K)")
    p.add_argument("--discrete-steps", type=at_least(1), nargs="*", default=[], metavar="T",
                   help="also the discrete-time bound at each T")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="sequences per forward pass")
    p.add_argument("--max-batches", type=at_least(1), help="evaluate only the first batches")
    p.add_argument("--mask-rate-ranges", type=rate_range, nargs="*", metavar="LO:HI",
                   help="bd3lm: also the variance of the per-block loss with masking rates drawn from each range, "
                        "to choose objective.mask_rate_range (no value: a few candidates)")
    p.add_argument("--gen-ppl", metavar="EVALUATOR",
                   help="also sample and score under a causal LM (HF path/name, 'smollm2', or an unmask AR run)")
    p.add_argument("--num-samples", type=at_least(1), default=8, help="samples for --gen-ppl")
    p.add_argument("--steps", type=at_least(1), default=128, help="sampling steps for --gen-ppl")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", type=output_file, help="also write the results to this JSON file")


def _sample(sub) -> None:
    p = sub.add_parser("sample", help="generate, continue a prompt, or fill in a template", formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--num-samples", type=at_least(1), default=4, help="how many texts")
    p.add_argument("--steps", type=at_least(1), default=128, help="sampling steps T (per window; per block for bd3lm)")
    p.add_argument("--sampler", default="cached", choices=SAMPLERS,
                   help="cached: exact, skips idle steps; ancestral: calls at every step; first_hitting: exact, "
                        "one token per call; analytic: SEDD's Tweedie tau-leaping (any diffusion model)")
    p.add_argument("--length", type=at_least(2),
                   help="tokens per sample, BOS included (default: the model's; longer runs semi-autoregressively, "
                        "or block by block for bd3lm)")
    p.add_argument("--overlap", type=at_least(0), help="semi-AR: tokens of the previous window kept (default: half)")
    p.add_argument("--stop-at-eos", action="store_true", help="end each sample at its first EOS")
    p.add_argument("--prompt", help="text the samples start with")
    p.add_argument("--template", help="text with [MASK] (one token) or [MASK:N] (N tokens) where to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler: the same seed gives the same texts")
    p.add_argument("--temperature", type=float_in(0.0, None), default=1.0,
                   help="divide the logits by this (0: always the most likely token)")
    p.add_argument("--top-k", type=at_least(1), help="draw only among the k most likely tokens")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), help="nucleus: the smallest set with this mass")
    p.add_argument("--order", default="random", choices=ORDERS,
                   help="which positions unmask first: random (exact) or most certain (confidence/margin/entropy)")
    p.add_argument("--threshold", type=float_in(0.0, 1.0),
                   help="parallel decoding: also unmask every position whose confidence exceeds this (e.g. 0.9)")
    p.add_argument("--remask", choices=REMASKING, help="ReMDM remasking strategy")
    p.add_argument("--eta", type=float_in(0.0, 1.0), help="ReMDM remasking rate (with --remask; default 0.02)")
    p.add_argument("--show-steps", action="store_true", help="print the first sample as it unmasks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--static-shapes", action="store_true",
                   help="run every denoiser call at one fixed shape, replayed from a CUDA graph on a GPU (far less "
                        "launch overhead at small batches; the same samples)")
    p.add_argument("--json", type=output_file, help="also write the samples to this JSON file")


def _serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP, with a page that shows the text unmasking live",
                       formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface; anyone who reaches it can generate)")
    p.add_argument("--port", type=port, default=8000, help="port to listen on (0: any free one)")
    p.add_argument("--max-batch", type=at_least(1), default=64, metavar="N",
                   help="rows per denoiser call (sequences from all requests); also the most samples per request")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _frontier(sub) -> None:
    p = sub.add_parser("frontier", help="sweep samplers and step counts: gen. PPL, entropy, calls, time",
                       formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--evaluator", required=True,
                   help="AR scorer: an unmask AR run, 'smollm2', a Hugging Face folder or .gguf file")
    p.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS),
                   help="comma-separated: ancestral, cached, first_hitting, analytic, confidence, margin, entropy, "
                        "threshold-TAU, remdm-STRATEGY[-ETA] (cap, rescale, conf, loop)")
    p.add_argument("--steps", type=step_counts, default=list(DEFAULT_STEPS), help="comma-separated step counts")
    p.add_argument("--num-samples", type=at_least(1), default=16, help="samples per point")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="samples per generation call")
    p.add_argument("--length", type=at_least(2), help="tokens per sample, BOS included (default: the model's)")
    p.add_argument("--out", default="frontier", help="folder for frontier.md, frontier.json, frontier.png")
    p.add_argument("--seed", type=int, default=0, help="seed of every point's samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a single-process safetensors folder, or in the "
                                      "released MDLM (Hugging Face) layout", formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--out", required=True, help="new folder for the exported model")
    p.add_argument("--format", choices=("unmask", "hf"), default="unmask",
                   help="unmask: model/ema safetensors, config, tokenizer, state (resumes training); hf: the released "
                        "MDLM layout (config.json, model.safetensors, tokenizer files) for the reference code and "
                        "transformers")
    p.add_argument("--allow-approximate-gelu", action="store_true",
                   help="with --format hf: export a model trained with the exact (erf) GELU although the reference "
                        "computes the tanh approximation (its logits then differ slightly there)")


def _convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a reference MDLM Lightning checkpoint (.ckpt) to an unmask checkpoint",
                       formatter_class=_Help)
    p.add_argument("ckpt", metavar="CHECKPOINT.ckpt", help="the reference code's PyTorch Lightning checkpoint")
    p.add_argument("--out", required=True, help="new folder for the unmask checkpoint")
    p.add_argument("--no-ema", action="store_true", help="convert the trained weights instead of their EMA")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read the .ckpt although it is a pickle, which runs any code it contains: only for files "
                        "from a source you trust")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="train MDLM and the AR baseline on the embedded corpus, compare, sample",
                       formatter_class=_Help)
    p.add_argument("--out", default="runs/demo", help="folder for the two runs (a new one if it holds runs)")
    p.add_argument("--minutes", type=float_in(0.0, None, low_open=True), default=3.5,
                   help="training budget per model")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training precision (auto: bf16 where the CPU or GPU has it natively)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _study(sub) -> None:
    p = sub.add_parser("study", help="train AR, MDLM, SEDD, D3PM (and ablations) alike, evaluate, tabulate, plot",
                       formatter_class=_Help)
    p.add_argument("preset", help=f"one of {', '.join(preset_names())} or a .yaml file: the backbone and data "
                                  "settings every model shares")
    p.add_argument("--data", help="corpus: 'default' (embedded), a file or folder, or a dataset name "
                                  "(default: the preset's)")
    p.add_argument("--out", required=True,
                   help="study folder: one run per model, the shared tokenizer, study.md/json/png; run the same "
                        "command again to continue an interrupted study")
    p.add_argument("--budget", type=float_in(0.0, None, low_open=True), required=True, metavar="MINUTES",
                   help="training time per model (train.max_minutes)")
    p.add_argument("--objectives", type=names_from(tuple(OBJECTIVES)),
                   help=f"comma-separated, from {','.join(OBJECTIVES)} (default: every one this unmask can train)")
    p.add_argument("--ablations", action="store_true",
                   help="also the paper's ablations of MDLM: T = 1000/100/10, w/o carry-over, w/o zero masking, "
                        "time conditioning")
    p.add_argument("--num-t", type=at_least(1), default=EvalSettings.num_t, help="time samples per sequence (K)")
    p.add_argument("--eval-batches", type=at_least(1), help="evaluate on the first batches only (default: all)")
    p.add_argument("--eval-batch-size", type=at_least(1), default=EvalSettings.batch_size,
                   help="sequences per evaluation pass")
    p.add_argument("--seed", type=int, default=EvalSettings.seed, help="seed of the evaluation's noise")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every model, e.g. train.device=cuda model.n_layers=8")


def build_parser() -> Parser:
    parser = Parser(prog="unmask", description="Masked diffusion language models (MDLM).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_train, _eval, _sample, _serve, _frontier, _export, _convert, _demo, _study):
        add(sub)
    return parser
