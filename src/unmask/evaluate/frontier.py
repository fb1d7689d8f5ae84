"""The sampler frontier: quality against cost for every sampler and step count of one checkpoint.

For each (sampler, steps) the checkpoint generates ``num_samples`` texts from the same seed; the
texts are scored under one AR evaluator (generative perplexity) beside their unigram entropy, and
the cost is counted twice: network calls (per batch, averaged over batches) and wall time of the
generation alone. A sampler is worth choosing where no other one reaches a lower perplexity at
the same cost without collapsing the entropy (repetitive text also scores a low perplexity).
Wall time is measured after a one-call warm-up; on a shared machine it is noisy, the call
count is not.

Sampler labels (see :mod:`unmask.sampling.loop` and :mod:`unmask.sampling.strategies`):

- ``ancestral``: random order, the network called at every step.
- ``cached``: the same distribution, no call (and no work) at a step where nothing unmasks.
- ``first_hitting``: one position per call, exact; the step count does not apply (one point).
- ``analytic``: SEDD's Tweedie tau-leaping (for a SEDD checkpoint, its own sampler).
- ``confidence``, ``margin``, ``entropy``: ordered decoding, the most certain positions first.
- ``threshold-TAU``: confidence order, and every position with confidence above TAU unmasks.
- ``remdm-STRATEGY`` or ``remdm-STRATEGY-ETA``: ReMDM remasking (cap, rescale, conf, loop),
  eta ``Remasking``'s default (0.02) unless given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from unmask.errors import install_hint
from unmask.evaluate.generative import Evaluator, generative_perplexity, load_evaluator
from unmask.evaluate.plotting import MARKERS, has_matplotlib, pyplot
from unmask.generation import build_template, check_sampling_size, sample_tokens
from unmask.kinds.base import SLIDING
from unmask.pipeline import load
from unmask.runtime import autocast
from unmask.sampling import ORDERS, REMASKING, SAMPLERS, Remasking, SamplerConfig, SamplingError

DEFAULT_STEPS = (16, 32, 64, 128)
LABEL_FORMS = (
    *SAMPLERS, *[o for o in ORDERS if o != "random"], "threshold-TAU (0 < TAU < 1)",
    *[f"remdm-{s}[-ETA]" for s in REMASKING], "psi-ETA", "greedy",
)


@dataclass
class FrontierPoint:
    """One sampler at one step count: its cost (calls per batch, seconds) and quality (PPL, entropy)."""

    sampler: str
    steps: int
    num_calls: float
    seconds: float
    gen_ppl: float
    entropy: float
    num_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def _bad_label(label: str, why: str = "") -> SamplingError:
    reason = f" ({why})" if why else ""
    return SamplingError(f"unknown sampler {label!r}{reason}; valid forms: {', '.join(LABEL_FORMS)}")


def parse_sampler(label: str) -> SamplerConfig:
    """The sampler configuration a label stands for; SamplingError listing the valid forms otherwise."""
    name = label.strip()
    if name in SAMPLERS:
        return SamplerConfig(sampler=name)
    if name in ORDERS and name != "random":
        return SamplerConfig(order=name)
    if name.startswith("threshold-"):
        try:
            tau = float(name.removeprefix("threshold-"))
        except ValueError:
            raise _bad_label(label, "TAU must be a number") from None
        if not 0 < tau < 1:
            raise _bad_label(label, "TAU must be in (0, 1)")
        return SamplerConfig(order="confidence", threshold=tau)
    if name == "greedy":
        return SamplerConfig(sampler="ancestral", final_step="argmax")
    if name.startswith("psi-"):
        try:
            return SamplerConfig(sampler="psi", remasking=Remasking("cap", eta=float(name.removeprefix("psi-"))))
        except ValueError as err:
            raise _bad_label(label, str(err).splitlines()[0]) from None
    if name.startswith("remdm-"):
        strategy, _, eta_text = name.removeprefix("remdm-").partition("-")
        if strategy not in REMASKING:
            raise _bad_label(label, f"remasking must be one of {', '.join(REMASKING)}")
        try:
            eta = {"eta": float(eta_text)} if eta_text else {}
            remasking = Remasking(strategy=strategy, **eta)
        except ValueError as err:
            raise _bad_label(label, str(err).splitlines()[0]) from None
        return SamplerConfig(remasking=remasking)
    raise _bad_label(label)


def _unique(items: Sequence) -> list:
    return list(dict.fromkeys(items))


@dataclass
class Sweep:
    """The points of a sweep, the evaluator that scored them, and how they were made."""

    points: list[FrontierPoint]
    evaluator: Evaluator
    length: int
    num_samples: int
    batch_size: int
    seed: int


def sweep(
    checkpoint: str | Path,
    *,
    step: int | None = None,
    evaluator: str | Evaluator,
    samplers: Sequence[str] | None = None,
    steps: Sequence[int] = DEFAULT_STEPS,
    num_samples: int = 16,
    batch_size: int = 16,
    length: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    on_point: Callable[[FrontierPoint], None] | None = None,
    trust_remote_code: bool = False,
) -> Sweep:
    """Generate and score ``num_samples`` texts for every sampler label and step count.

    Every point starts from the same seed, with BOS fixed at position 0 and ``length`` positions
    in all (default: the model's). A block diffusion (bd3lm) checkpoint samples block by block with
    its key/value cache, ``steps`` per block. ``evaluator`` is an :class:`Evaluator` or a spec for
    :func:`load_evaluator`, loaded once. ``first_hitting`` gives one point, whatever ``steps``;
    its ``steps`` is the number of unmasking steps it took. ``on_point`` sees each point as it is done.
    ``trust_remote_code`` lets a Hugging Face model or evaluator run code of its own.
    """
    pipeline = load(checkpoint, step=step, device=device, trust_remote_code=trust_remote_code)
    samplers = pipeline.kind.frontier_samplers if samplers is None else samplers
    options = {label.strip(): parse_sampler(label) for label in samplers}  # in order, once each
    for option in options.values():  # a sampler the model's kind cannot use is refused before any sampling
        pipeline.kind.check_sampling(option)
    step_counts = _unique(int(s) for s in steps)
    if not options:
        raise SamplingError("give at least one sampler with {0}", "samplers")
    if not step_counts and any(o.sampler != "first_hitting" for o in options.values()):
        raise SamplingError("give at least one step count with {0}", "steps")
    if any(s < 1 for s in step_counts):
        raise SamplingError(f"step counts ({{0}}) must all be >= 1, got {step_counts}", "steps")
    if num_samples < 1 or batch_size < 1:
        raise SamplingError(f"{{0}} and {{1}} must be >= 1, got {num_samples} and {batch_size}", "num_samples",
                            "batch_size")

    if pipeline.is_autoregressive:
        raise SamplingError(f"{checkpoint} is an AR checkpoint; the frontier sweeps the samplers of an MDLM checkpoint")
    tokenizer = pipeline.tokenizer
    window = pipeline.config.data.length
    if pipeline.kind.beyond_window == SLIDING:  # block diffusion samples any length
        window = max(window, length or 0)
    check_sampling_size(pipeline, batch_size, length or window)
    template = build_template(tokenizer, model_length=window, length=length)
    template = template.to(pipeline.device)
    generated = template == tokenizer.mask_id  # the positions the samplers fill (not the BOS)
    scorer = (load_evaluator(evaluator, device=str(pipeline.device), trust_remote_code=trust_remote_code)
              if isinstance(evaluator, str) else evaluator)

    def run(option: SamplerConfig, count: int) -> tuple[torch.Tensor, float, int, float]:
        """Tokens, mean calls per batch, steps taken and generation seconds of ``count`` samples."""
        generator = torch.Generator(pipeline.device).manual_seed(seed)
        rows, calls, steps_taken, seconds = [], [], 0, 0.0
        for start in range(0, count, batch_size):
            size = min(batch_size, count - start)
            started = time.perf_counter()
            with autocast(precision, pipeline.device):
                out = sample_tokens(pipeline, option, batch_size=size, template=template, generator=generator)
            if pipeline.device.type == "cuda":
                torch.cuda.synchronize(pipeline.device)
            seconds += time.perf_counter() - started
            rows.append(out.tokens)
            calls.append(out.num_calls)
            steps_taken = max(steps_taken, out.num_steps)
        return torch.cat(rows), sum(calls) / len(calls), steps_taken, seconds

    # Warm up (one network call): one-time costs stay out of the first point's time.
    run(SamplerConfig(steps=1), min(batch_size, num_samples))

    points = []
    for label, option in options.items():
        uses_steps = option.sampler != "first_hitting"  # first_hitting ignores the step count: one point
        for num_steps in step_counts if uses_steps else [1]:
            tokens, calls, steps_taken, seconds = run(dataclasses.replace(option, steps=num_steps), num_samples)
            texts = [tokenizer.decode(row.tolist()) for row in tokens]
            sample_ids = [[i for i in row[generated].tolist() if i not in tokenizer.special_ids] for row in tokens]
            result = generative_perplexity(texts, scorer, sample_token_ids=sample_ids)
            point = FrontierPoint(sampler=label, steps=num_steps if uses_steps else steps_taken,
                                  num_calls=calls, seconds=seconds, gen_ppl=result.gen_ppl,
                                  entropy=result.entropy, num_samples=len(texts))
            points.append(point)
            if on_point is not None:
                on_point(point)
    return Sweep(points=points, evaluator=scorer, length=len(template), num_samples=num_samples,
                 batch_size=batch_size, seed=seed)


def _sorted(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    return sorted(points, key=lambda p: (p.sampler, p.steps))


COLUMNS = ("sampler", "steps", "calls", "seconds", "gen PPL", "entropy")


def _row(point: FrontierPoint) -> list[str]:
    return [point.sampler, str(point.steps), f"{point.num_calls:.1f}", f"{point.seconds:.3f}",
            f"{point.gen_ppl:.2f}", f"{point.entropy:.3f}"]


def format_table(points: Sequence[FrontierPoint]) -> str:
    """A markdown table, sorted by sampler then steps (calls per batch, seconds for all samples)."""
    rows = [list(COLUMNS), *(_row(p) for p in _sorted(points))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def write_table(points: Sequence[FrontierPoint], path: str | Path) -> Path:
    """Write the table as markdown."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_table(points) + "\n")
    return path


def plot(points: Sequence[FrontierPoint], path: str | Path, *, title: str | None = None) -> Path:
    """A PNG with two panels, gen. PPL against network calls and against wall time (log2 x),
    one line per sampler across its step counts, each point labelled with its unigram entropy."""
    plt = pyplot("the frontier plot")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    by_sampler: dict[str, list[FrontierPoint]] = {}
    for point in _sorted(points):
        by_sampler.setdefault(point.sampler, []).append(point)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    panels = ((axes[0], "num_calls", "network calls per batch"), (axes[1], "seconds", "wall time of generation (s)"))
    ppls = [p.gen_ppl for p in points if math.isfinite(p.gen_ppl) and p.gen_ppl > 0]
    for ax, field, xlabel in panels:
        for i, (label, series) in enumerate(by_sampler.items()):
            xs = [max(getattr(p, field), 1e-6) for p in series]
            ys = [p.gen_ppl for p in series]
            # Distinct, hollow markers keep samplers that coincide (same samples) apart.
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], markersize=7, markerfacecolor="none", label=label)
            for x, y, p in zip(xs, ys, series):
                ax.annotate(f"{p.entropy:.2f}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xscale("log", base=2)  # step counts double: evenly spaced points
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if ppls and max(ppls) / min(ppls) > 10:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("generative perplexity (lower is better)")
    axes[0].legend(title="sampler (labels: unigram entropy, nats)", fontsize=8, title_fontsize=8, loc="best")
    fig.suptitle(title or "sampler frontier", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_frontier(checkpoint: str | Path, *, out_dir: str | Path, **options: object
                 ) -> tuple[list[FrontierPoint], list[Path]]:
    """:func:`sweep` with ``options``, then frontier.json, frontier.md and frontier.png in ``out_dir``:
    the points and the files written.

    Without matplotlib the table and the JSON are still written; a warning says what the plot needs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):  # a folder that cannot be written is said before the sampling, not after
        pass
    done = sweep(checkpoint, **options)
    points, name = done.points, done.evaluator.name
    record = {"checkpoint": str(checkpoint), "evaluator": name, "num_samples": done.num_samples,
              "batch_size": done.batch_size, "length": done.length, "seed": done.seed,
              "points": [p.to_dict() for p in _sorted(points)]}
    (out / "frontier.json").write_text(json.dumps(record, indent=2) + "\n")
    written = [out / "frontier.json", write_table(points, out / "frontier.md")]
    if not has_matplotlib():
        warnings.warn(f"no plot written: it needs matplotlib ({install_hint('matplotlib')})", stacklevel=2)
    else:
        written.append(plot(points, out / "frontier.png", title=f"{checkpoint}: gen. PPL under {name}"))
    return points, written
