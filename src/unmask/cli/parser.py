"""The ``unmask`` commands' options: every one with help, every value checked here.

An option's default lives in one place, where the library defines it (:class:`SamplerConfig`,
:class:`EvalConfig`, a function's signature): here options default to None, meaning "the library's
default", and the help shows that default read from its owner (:func:`default`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

from unmask.cli.options import (
    at_least,
    comma_list,
    float_in,
    folder,
    names_from,
    output_file,
    port,
    rate_range,
    seed,
    step_counts,
)
from unmask.cli.overview import COMMANDS, DESCRIPTION, Parser
from unmask.config import DistillConfig
from unmask.configs import preset_names
from unmask.data import DETOKENIZERS
from unmask.demo import run_demo
from unmask.evaluate.config import SPLITS, EvalConfig
from unmask.evaluate.frontier import sweep
from unmask.evaluate.harness import HarnessModel, run_tasks
from unmask.generation import CHAT_TOKENS, generate_text
from unmask.kinds import KINDS
from unmask.runtime import PRECISIONS
from unmask.sampling import ORDERS, REMASKING, SAMPLERS, DrawConfig, Remasking, SamplerConfig
from unmask.sampling.config import FINAL_STEPS
from unmask.serve import serve
from unmask.study import STUDY_EVALUATION, plan_study

DEFAULT_PRESET = "tiny"
ADAPT_PRESET = "adapt"  # the preset of `unmask train --init` (fine-tuning sizes, no DiT section)
GEN_PPL_SAMPLES = 8  # samples `unmask eval --gen-ppl` scores unless --num-samples says otherwise


def default(owner: Any, name: str) -> str:
    """" (default: X)", X being the default of ``name`` in ``owner``: a dataclass (its field), an instance
    of one (its value) or a function (its parameter)."""
    if isinstance(owner, type) and dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    elif dataclasses.is_dataclass(owner):
        value = getattr(owner, name)
    else:
        value = inspect.signature(owner).parameters[name].default
    if value is None or value == ():
        return ""
    shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return f" (default: {shown})"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's argparse default, unless it has none (None, or a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        no_default = any(action.default is none for none in (None, False, argparse.SUPPRESS))
        if no_default or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run directory (its latest checkpoint), checkpoint folder, released MDLM or "
                                      "Hugging Face masked-LM folder, or its hub name (online)")
    p.add_argument("--step", type=at_least(0), help="use this step's checkpoint of the run instead of the latest")


def _trust_remote_code(p: argparse.ArgumentParser, what: str = "the model") -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help=f"let a Hugging Face folder of {what} run the Python code it ships (an auto_map in its "
                        "config): only for folders from a source you trust; without it such a folder is refused")


def _sampling_arguments(p: argparse.ArgumentParser, temperature: str = default(DrawConfig, "temperature")) -> None:
    """The options of a :class:`SamplerConfig` (``temperature``: how the help names its default)."""
    p.add_argument("--steps", type=at_least(1),
                   help="sampling steps T (per window; per block for bd3lm)" + default(SamplerConfig, "steps"))
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="cached: exact, skips idle steps; ancestral: calls at every step; first_hitting: exact, "
                        "one token per call; analytic: SEDD's Tweedie tau-leaping (any masked diffusion model); psi: "
                        "a Psi-sampler (uniform-state models)"
                        + default(SamplerConfig, "sampler"))
    p.add_argument("--temperature", type=float_in(0.0, None),
                   help="divide the logits by this (0: always the most likely token)" + temperature)
    p.add_argument("--top-k", type=at_least(1), help="draw only among the k most likely tokens")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), help="nucleus: the smallest set with this mass")
    p.add_argument("--order", choices=ORDERS,
                   help="which positions unmask first: random (exact) or most certain (confidence/margin/entropy)"
                        + default(SamplerConfig, "order"))
    p.add_argument("--threshold", type=float_in(0.0, 1.0),
                   help="parallel decoding: also unmask every position whose confidence exceeds this (e.g. 0.9)")
    p.add_argument("--remask", choices=REMASKING, help="ReMDM remasking strategy")
    p.add_argument("--eta", type=float_in(0.0, 1.0),
                   help="ReMDM remasking rate (with --remask; with --sampler psi: its corrector's rate)"
                        + default(Remasking, "eta"))
    p.add_argument("--final-step", choices=FINAL_STEPS,
                   help="the last step: sample, or argmax (the reference's noise removal; for a uniform-state model "
                        "Duo's greedy tail)" + default(SamplerConfig, "final_step"))


def _train(sub) -> None:
    p = sub.add_parser("train", help=COMMANDS["train"], formatter_class=_Help)
    p.add_argument("--preset", help=f"one of {', '.join(preset_names())} or a .yaml file (default: {DEFAULT_PRESET}; "
                                    "with --resume: the saved run's config)")
    p.add_argument("--data", help="corpus: 'default' (embedded), a file or folder, or a dataset name")
    p.add_argument("--out", type=folder, required=True, help="run directory (config, tokenizer, checkpoints, metrics)")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this pretrained causal LM (a hub name, a model folder or a .gguf file), adapted "
                        "into a diffusion LM (objective.name mdlm or bd3lm): sets adapt.init and data.tokenizer; "
                        f"the preset then defaults to {ADAPT_PRESET}")
    p.add_argument("--max-steps", type=at_least(1), help="stop after this many steps (train.max_steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, with its saved config")
    p.add_argument("--step", type=at_least(0), help="with --resume: continue from this step's checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=at_least(1), metavar="N",
                   help="train in N processes on this machine (one per GPU), as torchrun --nproc-per-node N does")
    _trust_remote_code(p, "the tokenizer (data.tokenizer)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")


def _eval(sub) -> None:
    p = sub.add_parser("eval", help=COMMANDS["eval"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--data", help="evaluate zero-shot on this file, folder or dataset name (ptb, wikitext-2, "
                                  "lambada, lm1b, ag_news, pubmed, arxiv: the paper's protocol)")
    p.add_argument("--detokenizer", choices=list(DETOKENIZERS),
                   help="the reference's zero-shot reading with this detokenizer (default: the dataset's own for "
                        "the paper's datasets; use it for a local copy of one)")
    p.add_argument("--text-field", help="the field of .jsonl / column of .parquet files that holds the text "
                                        "(default: the run's data.text_field)")
    p.add_argument("--split", choices=SPLITS,
                   help="split of --data (default: validation for the training corpus, all for a file)")
    p.add_argument("--num-t", type=at_least(1), help="time samples per sequence (K)" + default(EvalConfig, "num_t"))
    p.add_argument("--discrete-steps", type=at_least(1), nargs="*", metavar="T",
                   help="also the discrete-time bound at each T")
    p.add_argument("--batch-size", type=at_least(1),
                   help="sequences per forward pass" + default(EvalConfig, "batch_size"))
    p.add_argument("--max-batches", type=at_least(1), help="evaluate only the first batches")
    p.add_argument("--mask-rate-ranges", type=rate_range, nargs="*", metavar="LO:HI",
                   help="bd3lm: also the variance of the per-block loss with masking rates drawn from each range, "
                        "to choose objective.mask_rate_range (no value: a few candidates)")
    p.add_argument("--gen-ppl", metavar="EVALUATOR",
                   help="also sample and score under a causal LM (HF path/name, 'smollm2', or an unmask AR run)")
    p.add_argument("--num-samples", type=at_least(1), help=f"samples for --gen-ppl (default: {GEN_PPL_SAMPLES})")
    p.add_argument("--steps", type=at_least(1), help="sampling steps for --gen-ppl" + default(SamplerConfig, "steps"))
    p.add_argument("--prompt-file", metavar="PAIRS.jsonl",
                   help='prompted evaluation instead: one {"context": ..., "continuation": ...} per line, each '
                        "continuation bounded given its context (per continuation token)")
    p.add_argument("--seed", type=seed, help="seed of the noise and the samples" + default(EvalConfig, "seed"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _trust_remote_code(p, "the model or the --gen-ppl evaluator")
    p.add_argument("--json", type=output_file, help="also write the results to this JSON file")


def _lm_eval(sub) -> None:
    p = sub.add_parser("lm-eval", help=COMMANDS["lm-eval"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--tasks", required=True, type=comma_list,
                   help="comma-separated lm-eval tasks: lm-eval's own (lambada_openai, hellaswag, wikitext, ...) or "
                        "those of --include-path")
    p.add_argument("--include-path", metavar="DIR", help="a folder of lm-eval task YAML files (local tasks)")
    p.add_argument("--num-fewshot", type=at_least(0), help="examples before each question (default: the task's)")
    p.add_argument("--limit", type=float_in(0.0, None, low_open=True),
                   help="only the first N documents of each task (below 1: that fraction of them)")
    p.add_argument("--batch-size", type=at_least(1),
                   help="rows per denoiser call (Monte Carlo samples for likelihoods, requests for generation)"
                        + default(HarnessModel, "batch_size"))
    p.add_argument("--num-t", type=at_least(1),
                   help="Monte Carlo samples per continuation (K; one where one is exact)"
                        + default(HarnessModel, "num_t"))
    p.add_argument("--rolling-num-t", type=at_least(1),
                   help="time samples per window of a rolling-likelihood text" + default(HarnessModel, "rolling_num_t"))
    p.add_argument("--no-greedy", action="store_true",
                   help="skip is_greedy (greedy decoding of every continuation): always False, which only "
                        "lambada-style acc reads")
    _sampling_arguments(p, temperature=" (default: the task's, 0 unless it samples)")
    p.add_argument("--output-path", metavar="DIR", help="write results.json there (and samples_TASK.jsonl with "
                                                        "--log-samples)")
    p.add_argument("--log-samples", action="store_true", help="with --output-path: every document's requests and "
                                                              "answers")
    p.add_argument("--bootstrap-iters", type=at_least(0),
                   help="bootstrap resamples for the standard errors of non-mean metrics (0: none)"
                        + default(run_tasks, "bootstrap_iters"))
    p.add_argument("--seed", type=seed, help="seed of every answer's noise and of lm-eval's few-shot draws"
                                            + default(HarnessModel, "seed"))
    p.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 where the CPU or GPU has it natively"
                                                           + default(HarnessModel, "precision"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _trust_remote_code(p, "the model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _sample(sub) -> None:
    p = sub.add_parser("sample", help=COMMANDS["sample"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--num-samples", type=at_least(1), help="how many texts" + default(generate_text, "num_samples"))
    _sampling_arguments(p)
    p.add_argument("--length", type=at_least(2),
                   help="tokens per sample, BOS included (default: the model's; longer runs semi-autoregressively, "
                        "or block by block for bd3lm)")
    p.add_argument("--overlap", type=at_least(0), help="semi-AR: tokens of the previous window kept (default: half)")
    p.add_argument("--stop-at-eos", action="store_true", help="end each sample at its first EOS")
    p.add_argument("--prompt", help="text the samples start with")
    p.add_argument("--template", help="text with [MASK] (one token) or [MASK:N] (N tokens) where to generate")
    p.add_argument("--chat", metavar="QUESTION",
                   help="ask this as a chat: rendered with the tokenizer's chat template, answered up to its end of "
                        "turn (a model fine-tuned on conversations answers best)")
    p.add_argument("--max-tokens", type=at_least(1),
                   help=f"with --chat: tokens of the answer (default: {CHAT_TOKENS})")
    p.add_argument("--seed", type=seed,
                   help="seed of the sampler: the same seed gives the same texts" + default(generate_text, "seed"))
    p.add_argument("--show-steps", action="store_true", help="print the first sample as it unmasks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _trust_remote_code(p, "the model")
    p.add_argument("--static-shapes", action="store_true",
                   help="run every denoiser call at one fixed shape, replayed from a CUDA graph on a GPU (far less "
                        "launch overhead at small batches; the same samples)")
    p.add_argument("--json", type=output_file, help="also write the samples to this JSON file")


def _serve(sub) -> None:
    p = sub.add_parser("serve", help=COMMANDS["serve"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--host", help="address to listen on (0.0.0.0: every interface; anyone who reaches it can "
                                  "generate)" + default(serve, "host"))
    p.add_argument("--port", type=port, help="port to listen on (0: any free one)" + default(serve, "port"))
    p.add_argument("--allowed-hosts", type=lambda text: [item.strip() for item in text.split(",") if item.strip()],
                   metavar="NAME,...",
                   help="host names requests may address the server by, besides localhost and --host (a name "
                        "clients use for this machine, or a proxy's); * answers any: only behind a proxy that "
                        "checks them")
    p.add_argument("--max-batch", type=at_least(1), metavar="N",
                   help="rows per denoiser call (sequences from all requests); also the most samples per request"
                        + default(serve, "max_batch"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _trust_remote_code(p, "the model")


def _frontier(sub) -> None:
    p = sub.add_parser("frontier", help=COMMANDS["frontier"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--evaluator", required=True,
                   help="AR scorer: an unmask AR run, 'smollm2', a Hugging Face folder or .gguf file")
    p.add_argument("--samplers", type=lambda text: [item for item in text.split(",") if item.strip()],
                   help="comma-separated: ancestral, cached, first_hitting, analytic, confidence, margin, entropy, "
                        "threshold-TAU, remdm-STRATEGY[-ETA] (cap, rescale, conf, loop), psi, psi-ETA, greedy "
                        "(default: the model kind's own)")
    p.add_argument("--steps", type=step_counts, help="comma-separated step counts" + default(sweep, "steps"))
    p.add_argument("--num-samples", type=at_least(1), help="samples per point" + default(sweep, "num_samples"))
    p.add_argument("--batch-size", type=at_least(1), help="samples per generation call" + default(sweep, "batch_size"))
    p.add_argument("--length", type=at_least(2), help="tokens per sample, BOS included (default: the model's)")
    p.add_argument("--out", type=folder, default="frontier", help="folder for frontier.md, frontier.json, frontier.png")
    p.add_argument("--seed", type=seed, help="seed of every point's samples" + default(sweep, "seed"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _trust_remote_code(p, "the model or the evaluator")


def _export(sub) -> None:
    p = sub.add_parser("export", help=COMMANDS["export"], formatter_class=_Help)
    _checkpoint_arguments(p)
    p.add_argument("--out", type=folder, required=True, help="new folder for the exported model")
    p.add_argument("--format", choices=("unmask", "hf"), default="unmask",
                   help="unmask: model/ema safetensors, config, tokenizer, state (resumes training); hf: the released "
                        "MDLM or Duo layout (config.json, model.safetensors, tokenizer files) for the reference code "
                        "and transformers")
    p.add_argument("--allow-approximate-gelu", action="store_true",
                   help="with --format hf: export a model trained with the exact (erf) GELU although the reference "
                        "computes the tanh approximation (its logits then differ slightly there)")
    p.add_argument("--merge-lora", action="store_true",
                   help="fold the LoRA adapters of an adapted model into its weights (its EMA weights where saved): "
                        "the same logits, without peft")


def _convert(sub) -> None:
    p = sub.add_parser("convert", help=COMMANDS["convert"], formatter_class=_Help)
    p.add_argument("ckpt", metavar="CHECKPOINT.ckpt", help="the reference code's PyTorch Lightning checkpoint")
    p.add_argument("--out", type=folder, required=True, help="new folder for the unmask checkpoint")
    p.add_argument("--no-ema", action="store_true", help="convert the trained weights instead of their EMA")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read the .ckpt although it is a pickle, which runs any code it contains: only for files "
                        "from a source you trust")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"], formatter_class=_Help)
    p.add_argument("--out", type=folder, default="runs/demo",
                   help="folder for the two runs (a new one if it holds runs)")
    p.add_argument("--minutes", type=float_in(0.0, None, low_open=True),
                   help="training budget per model" + default(run_demo, "minutes"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="training precision (auto: bf16 where the CPU or GPU has it natively)"
                        + default(run_demo, "precision"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _study(sub) -> None:
    p = sub.add_parser("study", help=COMMANDS["study"], formatter_class=_Help)
    p.add_argument("preset", help=f"one of {', '.join(preset_names())} or a .yaml file: the backbone and data "
                                  "settings every model shares")
    p.add_argument("--data", help="corpus: 'default' (embedded), a file or folder, or a dataset name "
                                  "(default: the preset's)")
    p.add_argument("--out", type=folder, required=True,
                   help="study folder: one run per model, the shared tokenizer, study.md/json/png; run the same "
                        "command again to continue an interrupted study")
    p.add_argument("--budget", type=float_in(0.0, None, low_open=True), metavar="MINUTES",
                   help="training time per model (train.max_minutes); or give --budget-tokens")
    p.add_argument("--budget-tokens", type=at_least(1), metavar="N",
                   help="training tokens per model instead (train.max_steps = N / (global batch x length), no "
                        "time limit): the paper's comparison")
    p.add_argument("--seeds", type=at_least(1),
                   help="train every model this many times (train.seed = the base seed + 0, 1, ...) and report "
                        "the mean, the spread between seeds and z-scores that include it"
                        + default(plan_study, "seeds"))
    p.add_argument("--objectives", type=names_from(tuple(KINDS)),
                   help=f"comma-separated, from {','.join(KINDS)} (default: every one this unmask can train)")
    p.add_argument("--ablations", action="store_true",
                   help="also the paper's ablations of MDLM: T = 1000/100/10, w/o carry-over, w/o zero masking, "
                        "time conditioning")
    p.add_argument("--num-t", type=at_least(1),
                   help="time samples per sequence (K)" + default(STUDY_EVALUATION, "num_t"))
    p.add_argument("--eval-batches", type=at_least(1), help="evaluate on the first batches only (default: all)")
    p.add_argument("--eval-batch-size", type=at_least(1),
                   help="sequences per evaluation pass" + default(STUDY_EVALUATION, "batch_size"))
    p.add_argument("--seed", type=seed, help="seed of the evaluation's noise" + default(STUDY_EVALUATION, "seed"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every model, e.g. train.device=cuda model.n_layers=8")


def _distill(sub) -> None:
    p = sub.add_parser("distill", help=COMMANDS["distill"], formatter_class=_Help)
    p.add_argument("teacher", help="the teacher: a run directory or checkpoint folder (an MDLM run for sdtt, a Duo run "
                                   "for dcd), or a released model")
    p.add_argument("--out", type=folder, required=True, help="new run directory for the student (an ordinary run)")
    p.add_argument("--method", choices=("sdtt", "dcd"),
                   help="sdtt: self-distillation through time (MDLM); dcd: discrete consistency distillation (Duo)")
    p.add_argument("--rounds", type=at_least(1), help="rounds K: each halves the student's steps")
    p.add_argument("--steps-from", type=at_least(2), metavar="T",
                   help="the teacher's steps in the first round (default: 1024 for sdtt, 512 for dcd)")
    p.add_argument("--round-steps", type=at_least(1), help="optimizer steps per round" + default(DistillConfig,
                                                                                                  "round_steps"))
    p.add_argument("--data", help="corpus the student trains on (default: the teacher's)")
    p.add_argument("--resume", action="store_true", help="continue the student in --out from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.global_batch=64 distill.divergence=kl-fwd")


def build_parser() -> Parser:
    parser = Parser(prog="unmask", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_train, _eval, _lm_eval, _sample, _serve, _frontier, _export, _convert, _demo, _study, _distill):
        add(sub)
    return parser
