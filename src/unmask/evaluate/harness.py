"""EleutherAI's lm-evaluation-harness through unmask: ``unmask lm-eval`` (:func:`run_tasks`) and ``UnmaskLM``,
the model ``lm_eval.simple_evaluate`` takes.

lm-eval is the optional extra ``unmask[eval]``; it is imported only when an evaluation runs or ``UnmaskLM``
is first used (this module's other names work without it). :class:`HarnessModel` answers lm-eval's three
request types for a loaded model of every kind (``docs/harness.md``):

- ``loglikelihood(context, continuation)``: minus the kind's bound on -log p(continuation | context)
  (:mod:`unmask.evaluate.conditional`; exact for the AR baseline), from ``num_t`` samples, and
  ``is_greedy``: greedy decoding of the continuation gives it (the kind's ``greedy_matches``).
- ``loglikelihood_rolling(text)``: minus the NELBO (or exact NLL) of the whole text: the text and EOS cut
  into the model's ``[BOS] ... [EOS]`` windows and bounded with ``rolling_num_t`` samples by the code
  ``unmask eval`` runs, so it is the sum ``unmask eval --data FILE --num-t K --seed S`` reports for a file
  whose one document is the text, S being the text's own seed (:func:`unmask.evaluate.conditional.content_seed`
  of the seed and the text, purpose "rolling").
- ``generate_until(context, gen_kwargs)``: the run ``unmask sample --prompt`` makes with the model's
  ``SamplerConfig`` (a masked diffusion model fills its window, and semi-autoregressive windows go past it;
  block diffusion goes block by block; AR left to right), seeded by the seed and the context, cut at the
  first EOS, after ``max_gen_toks`` tokens and at the first of the stop sequences. The request's temperature
  (0 for ``do_sample: false``) applies unless the model's arguments set one.

Every answer depends on its request alone, never on the batch it was computed in (tested at batch sizes 1
and 16), so a seed reproduces an evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from unmask.data.blocks import wrapped_blocks
from unmask.errors import UserError, require
from unmask.evaluate.conditional import DEFAULT_ROWS, DEFAULT_SAMPLES, content_seed, encode_pair, score_continuations
from unmask.evaluate.config import EvalConfig
from unmask.evaluate.likelihood import dataset_losses
from unmask.generation import prepare, start_run
from unmask.kinds.base import SLIDING, WITHIN
from unmask.pipeline import Pipeline, load
from unmask.runtime import autocast
from unmask.sampling import SamplerConfig
from unmask.sampling.run import Run, RunGroup, answer_with, drive

NAME = "unmask"  # the model's name in lm-eval's registry: simple_evaluate(model="unmask", model_args=...)
PURPOSE = "unmask lm-eval"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task gives none
# The names lm-eval tasks give the number of tokens to generate, the first found wins (as lm-eval's own).
MAX_TOKENS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
SAMPLER_OPTIONS = ("sampler", "steps", "order", "threshold", "remask", "eta", "temperature", "top_k", "top_p")


class HarnessModel:
    """lm-eval's three request types (any object whose ``args`` is the request's arguments) answered by
    ``pretrained``: a loaded :class:`unmask.Pipeline` or anything :func:`unmask.load` reads.

    ``num_t`` Monte Carlo samples per continuation and ``rolling_num_t`` per window of a rolling text;
    ``batch_size`` rows per denoiser call (sample rows for likelihoods, requests for generation); ``seed``
    of every answer's noise; ``greedy``: compute ``is_greedy`` (otherwise always False, which only
    lambada-style ``acc`` reads); ``sampling`` (or its options by name: sampler, steps, order, threshold,
    remask, eta, temperature, top_k, top_p) for generation. lm-eval's ``max_batch_size`` is accepted and
    not used; ``batch_size="auto"`` takes the default. ``trust_remote_code`` lets a Hugging Face model folder
    run the Python code it ships (lm-eval's argument of that name).
    """

    def __init__(self, pretrained: str | Path | Pipeline, *, num_t: int = DEFAULT_SAMPLES,
                 rolling_num_t: int = EvalConfig.num_t, seed: int = 0, batch_size: int | str = DEFAULT_ROWS,
                 precision: str = "auto", device: str | None = None, step: int | None = None, greedy: bool = True,
                 sampling: SamplerConfig | None = None, progress: bool = True, max_batch_size: int | None = None,
                 trust_remote_code: bool = False, **sampler_options: Any) -> None:
        super().__init__()  # lm-eval's LM, when this is UnmaskLM
        unknown = sorted(set(sampler_options) - set(SAMPLER_OPTIONS))
        if unknown:
            raise UserError(f"unknown model argument {unknown[0]!r}; unmask takes num_t, rolling_num_t, seed, "
                            "batch_size, precision, device, step, greedy, trust_remote_code and "
                            f"{', '.join(SAMPLER_OPTIONS)}")
        if sampling is not None and sampler_options:
            raise UserError(f"give either sampling or its options ({', '.join(sampler_options)}), not both")
        for name, value in (("num_t", num_t), ("rolling_num_t", rolling_num_t)):
            if value < 1:
                raise UserError(f"{name} is a number of Monte Carlo samples: at least 1, got {value}")
        self.pipeline = (pretrained if isinstance(pretrained, Pipeline) else
                         load(pretrained, step=step, device=device or "auto", trust_remote_code=trust_remote_code))
        self.num_t, self.rolling_num_t, self.seed = int(num_t), int(rolling_num_t), int(seed)
        self.batch_size = DEFAULT_ROWS if str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        self.precision, self.greedy, self.progress = precision, bool(greedy), progress
        self.sampling = sampling or SamplerConfig.from_options(**sampler_options)
        self.pipeline.kind.check_sampling(self.sampling)
        # The model's arguments decide the temperature when they name one; otherwise each request does.
        self.own_temperature = sampling is not None or "temperature" in sampler_options

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per (context, continuation) request: minus the kind's
        conditional bound (the exact log-likelihood for the AR baseline)."""
        pairs = [encode_pair(self.pipeline.tokenizer, *request.args) for request in requests]
        scores = score_continuations(self.pipeline, pairs, num_t=self.num_t, seed=self.seed,
                                     batch_size=self.batch_size, precision=self.precision, greedy=self.greedy,
                                     progress=self.progress)
        return [(-score.nelbo, bool(score.greedy)) for score in scores]

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        """log p(text) per (text,) request: minus :meth:`rolling_nelbo`."""
        return [-self.rolling_nelbo(request.args[0])
                for request in tqdm(requests, desc="loglikelihood_rolling", disable=not self.progress, leave=False)]

    def rolling_nelbo(self, text: str) -> float:
        """The NELBO (or exact NLL) in nats of ``text`` followed by EOS, in wrapped windows of the model's
        length, as ``unmask eval`` computes a file holding the text (module docstring)."""
        pipeline = self.pipeline
        blocks = wrapped_blocks([*pipeline.tokenizer.encode(text), pipeline.tokenizer.eos_id],
                                pipeline.config.data.length, pipeline.tokenizer)
        # unmask eval's own batches (its default size): a batch's noise depends on its rows, so the same
        # batches give the same figure.
        losses, _ = dataset_losses(pipeline.model, blocks, pipeline.config.objective, pipeline.mask_id,
                                   batch_size=EvalConfig.batch_size, num_t=self.rolling_num_t,
                                   seed=content_seed(self.seed, "rolling", text), device=pipeline.device,
                                   precision=self.precision)
        return float(losses.double().sum())

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """The text generated after each (context, gen_kwargs) request's context, up to its stop sequences."""
        plans = [self._plan(*request.args) for request in requests]
        answers = []
        bar = tqdm(total=len(plans), desc="generate_until", disable=not self.progress, leave=False)
        for start in range(0, len(plans), self.batch_size):
            chunk = plans[start:start + self.batch_size]
            runs = [plan.run for plan in chunk]
            with autocast(self.precision, self.pipeline.device):
                drive(RunGroup(runs, max_rows=self.batch_size), answer_with(self.pipeline.model))
            answers += [plan.text(self.pipeline) for plan in chunk]
            bar.update(len(chunk))
        bar.close()
        return answers

    def _plan(self, context: str, options: dict[str, Any]) -> Generation:
        """The sampling run of one generate_until request and where its answer lies in the run's tokens."""
        pipeline, window = self.pipeline, self.pipeline.config.data.length
        until, new, temperature = generation_options(options)
        sampling = self.sampling
        if not self.own_temperature:
            sampling = dataclasses.replace(sampling, draw=dataclasses.replace(sampling.draw, temperature=temperature))
        # The prompt keeps room for min(new, half a window) tokens in the model's first window.
        ids = pipeline.tokenizer.encode(context) if context else []
        kept = ids[max(0, len(ids) - (window - 1 - min(new, window // 2))):]
        prefix = 1 + len(kept)
        beyond = pipeline.kind.beyond_window
        if beyond == WITHIN:  # the AR baseline generates within its window
            new = min(new, window - prefix)
            length = prefix + new
        elif beyond == SLIDING or prefix + new > window:
            length = prefix + new  # block by block, or semi-autoregressive windows
        else:
            length = None  # the model's whole window, as unmask sample --prompt
        fixed = prepare(pipeline, sampling, num_samples=1, length=length, prompt=kept)
        run = start_run(pipeline, sampling, fixed, num_samples=1, seed=content_seed(self.seed, "generate", kept),
                        length=length, stop_at_eos=True)
        return Generation(run, prefix, new, until)


@dataclasses.dataclass
class Generation:
    """One generate_until request: its ``run``, where the answer starts (``prefix`` tokens), how many tokens
    it may have (``new``) and its stop sequences (``until``)."""

    run: Run
    prefix: int
    new: int
    until: list[str]

    def text(self, pipeline: Pipeline) -> str:
        tokens = self.run.output().tokens[0].tolist()
        return continuation_text(pipeline, tokens[self.prefix:self.prefix + self.new], self.until)


def continuation_text(pipeline: Pipeline, tokens: Sequence[int], until: Sequence[str]) -> str:
    """The text of generated ``tokens`` up to their first EOS, cut before the first of the ``until`` strings."""
    tokens = list(tokens)
    eos = pipeline.tokenizer.eos_id
    text = pipeline.tokenizer.decode(tokens[:tokens.index(eos)] if eos in tokens else tokens)
    cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
    return text[:cut]


def generation_options(options: dict[str, Any]) -> tuple[list[str], int, float]:
    """(stop sequences, tokens to generate, temperature) of a generate_until request's gen_kwargs, read as
    lm-eval reads them: ``until`` a string or a list, the first of ``MAX_TOKENS_KEYS`` given, and temperature
    0 unless ``do_sample`` (1 when sampling without a temperature)."""
    until = options.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    new = next((int(options[key]) for key in MAX_TOKENS_KEYS if options.get(key) is not None), DEFAULT_MAX_GEN_TOKS)
    if new < 1:
        raise UserError(f"a generation request asks for {new} tokens; max_gen_toks must be at least 1")
    sampled = bool(options.get("do_sample", False))
    temperature = float(options.get("temperature", 1.0)) if sampled else 0.0
    return until, new, temperature


@functools.cache
def lm_class() -> type:
    """``UnmaskLM``: :class:`HarnessModel` as an lm-eval ``LM``, registered in lm-eval as "unmask" (the first
    call imports lm_eval)."""
    require("lm_eval", PURPOSE)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    class UnmaskLM(HarnessModel, LM):
        """An unmask model for ``lm_eval.simple_evaluate(model=UnmaskLM("runs/x"), tasks=[...])``, or by name
        after this class exists: ``simple_evaluate(model="unmask", model_args="pretrained=runs/x,num_t=64")``.
        Arguments: :class:`unmask.evaluate.harness.HarnessModel`'s."""

    return register_model(NAME)(UnmaskLM)


def __getattr__(name: str) -> Any:
    # UnmaskLM subclasses lm-eval's LM: it is made (and lm_eval imported) on first use.
    if name == "UnmaskLM":
        return lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_tasks(model: HarnessModel, tasks: Sequence[str], *, include_path: str | Path | None = None,
              num_fewshot: int | None = None, limit: float | None = None, output_path: str | Path | None = None,
              log_samples: bool = False, bootstrap_iters: int = 100_000, seed: int = 0) -> dict[str, Any]:
    """Evaluate ``model`` (an ``UnmaskLM``: :func:`lm_class`) on lm-eval ``tasks`` (names of lm-eval's tasks or
    of tasks in ``include_path``, a folder of task YAML files) and return lm-eval's results; ``limit`` (a
    count, or a fraction below 1) takes the first documents of each task; ``seed`` seeds lm-eval's own draws
    (few-shot examples). With ``output_path`` the results go to ``results.json`` there, and with
    ``log_samples`` every document's requests and answers to ``samples_TASK.jsonl``."""
    require("lm_eval", PURPOSE)
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    manager = task_manager(tasks, include_path)
    results = lm_eval.simple_evaluate(
        model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
        log_samples=log_samples or output_path is not None, bootstrap_iters=bootstrap_iters, random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if output_path is not None:
        out = Path(output_path)
        out.mkdir(parents=True, exist_ok=True)
        summary = {key: value for key, value in results.items() if key != "samples"}
        (out / "results.json").write_text(json.dumps(summary, indent=2, default=handle_non_serializable) + "\n")
        for task, samples in (results.get("samples") or {}).items() if log_samples else ():
            lines = [json.dumps(sample, default=handle_non_serializable) for sample in samples]
            (out / f"samples_{task}.jsonl").write_text("\n".join(lines) + "\n")
    return results


def task_manager(tasks: Sequence[str], include_path: str | Path | None) -> Any:
    """lm-eval's TaskManager for ``tasks``: the folder's tasks alone when they are all there (indexing lm-eval's
    own hundreds of tasks takes seconds), with lm-eval's own otherwise; a UserError names a task found nowhere."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise UserError(f"--include-path {include_path} is not a folder; give the folder of the task YAML files")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    missing = [task for task in tasks if task not in manager.all_tasks]
    if missing:
        where = f" nor in {include_path}" if include_path is not None else ""
        raise UserError(f"unknown lm-eval task {missing[0]!r}: not one of lm-eval's{where}; list them with "
                        "`lm-eval ls tasks`, or give the folder of its YAML file with --include-path")
    return manager


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own table of the results (Markdown)."""
    from lm_eval.utils import make_table

    return make_table(results)
