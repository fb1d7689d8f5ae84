"""What the released MDLM (kuleshov-group/mdlm-owt's shape) costs on this machine's CPU.

Usage::

    python benchmarks/released_cpu.py [--json OUT.json] [--repeats N] [--dtypes bf16,fp32] [--steps 128]
                                      [--layers 12 --hidden 768 --heads 12 --length 1024 --vocab 50258]

The model is the released shape loaded the way ``unmask.load`` loads a released folder: the DiT
with 12 blocks of width 768, 12 heads, conditioning size 128, the tanh GELU, length 1024 and the
GPT-2 vocabulary with MASK (50,258 ids), 169.6M parameters, in eval mode. Its weights are random
(every weight drawn from N(0, 0.02), biases zero, norm weights one: the DiT zero-initialises its
adaLN and output layer, and a model that is the identity would not show the real cost). The
smaller ``--layers/--hidden/...`` sizes are for trying the script, not for figures.

Rows (in ``--dtypes``: fp32, and bf16 autocast):

- ``call``: seconds per denoiser call ``model(x_t, t)`` on a batch of 1 and of 16 full-length
  sequences, logits at every position, in inference mode (what one step of a sampler without the
  positions shortcut costs);
- ``sample``: seconds to generate one sequence of ``--length`` tokens (BOS, then all MASK) with
  the cached sampler at T = ``--steps`` (``unmask.sampling.generate``, which runs the output head
  only where tokens unmask), and its number of denoiser calls.

Timing: each group (the dtypes' calls at one batch size; the dtypes' sampling runs) is warmed up
(two calls, or one sampling run of T / 8 steps), then its members take turns, one timed repeat
each per turn, so that load from other processes falls on all of them alike. ``seconds`` is the
median of the repeats (``seconds_min`` and ``seconds_max`` beside it). The JSON names the
machine, the torch version and threads, the command and the date. At the released shape a full run
is long (each call at batch 16 runs the 50,258-way head over 16,384 positions): tens of minutes
on a few cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import torch

from unmask.models import DiT, DiTConfig
from unmask.runtime import autocast, device_name
from unmask.sampling import SamplerConfig, generate

DTYPES = ("fp32", "bf16")
CPU = torch.device("cpu")


def released_model(args: argparse.Namespace) -> DiT:
    config = DiTConfig(vocab_size=args.vocab, length=args.length, n_layers=args.layers, hidden=args.hidden,
                       n_heads=args.heads, cond_dim=args.cond, gelu="tanh", time_conditioning=False)
    torch.manual_seed(0)
    model = DiT(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.normal_(0.0, 0.02)
    return model.eval()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def in_turns(members: dict[str, Callable[[], Any]], warmups: dict[str, Callable[[], Any]], repeats: int
             ) -> dict[str, dict[str, Any]]:
    """Warm every member up, then time one repeat of each per turn; the median and spread of each."""
    for warm in warmups.values():
        warm()
    times: dict[str, list[float]] = {name: [] for name in members}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in members.items():
            seconds, results[name] = _timed(fn)
            times[name].append(seconds)
    return {name: {"seconds": statistics.median(values), "seconds_min": min(values), "seconds_max": max(values),
                   "repeats": len(values), "result": results[name]} for name, values in times.items()}


def call_rows(model: DiT, args: argparse.Namespace, dtypes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for batch in (1, 16):
        x = torch.randint(0, args.vocab - 1, (batch, args.length))
        x[:, ::2] = args.vocab - 1  # half the positions masked, as midway through sampling
        t = torch.full((batch,), 0.5)

        def call(dtype: str, x=x, t=t) -> None:
            with torch.inference_mode(), autocast(dtype, CPU):
                model(x, t)

        members = {dtype: (lambda dtype=dtype: call(dtype)) for dtype in dtypes}
        warmups = {dtype: (lambda dtype=dtype: [call(dtype) for _ in range(2)]) for dtype in dtypes}
        for dtype, timing in in_turns(members, warmups, args.repeats).items():
            timing.pop("result")
            rows.append({"row": "call", "dtype": dtype, "batch": batch, "length": args.length, **timing})
    return rows


def sample_rows(model: DiT, args: argparse.Namespace, dtypes: list[str]) -> list[dict[str, Any]]:
    mask_id = args.vocab - 1
    template = torch.full((args.length,), mask_id)
    template[0] = args.vocab - 2  # a BOS-like fixed first token

    def sample(dtype: str, steps: int) -> int:
        generator = torch.Generator().manual_seed(0)
        with autocast(dtype, CPU):
            out = generate(model, SamplerConfig(sampler="cached", steps=steps), batch_size=1, length=args.length,
                           mask_id=mask_id, template=template, generator=generator)
        return out.num_calls

    members = {dtype: (lambda dtype=dtype: sample(dtype, args.steps)) for dtype in dtypes}
    warmups = {dtype: (lambda dtype=dtype: sample(dtype, max(1, args.steps // 8))) for dtype in dtypes}
    rows = []
    for dtype, timing in in_turns(members, warmups, args.sample_repeats).items():
        calls = timing.pop("result")
        rows.append({"row": "sample", "dtype": dtype, "batch": 1, "length": args.length, "steps": args.steps,
                     "sampler": "cached", "model_calls": calls, **timing})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per call row")
    parser.add_argument("--sample-repeats", type=int, default=2, help="timed repeats per sampling row")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--steps", type=int, default=128, help="sampling steps T")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--cond", type=int, default=128)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50258, help="ids, MASK included")
    args = parser.parse_args()
    dtypes = [dtype for dtype in args.dtypes.split(",") if dtype]
    if not dtypes or any(dtype not in DTYPES for dtype in dtypes):
        parser.error(f"--dtypes must list some of {', '.join(DTYPES)}")
    model = released_model(args)
    rows = call_rows(model, args, dtypes) + sample_rows(model, args, dtypes)
    released = (args.layers, args.hidden, args.heads, args.length, args.vocab) == (12, 768, 12, 1024, 50258)
    report = {
        "benchmark": "released MDLM shape on CPU",
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "cond_dim": args.cond,
                  "length": args.length, "vocab": args.vocab, "parameters": model.num_parameters(),
                  "released_shape": released},
        "machine": {"platform": platform.platform(), "processor": device_name("cpu"),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    print(f"{report['benchmark']}: {model.num_parameters() / 1e6:.1f}M parameters"
          f"{'' if released else ' (NOT the released shape: a trial size)'}, {torch.get_num_threads()} threads")
    print(f"{'row':<8}{'dtype':<7}{'batch':>6}  {'seconds':>10}  {'min':>9}  {'max':>9}  calls")
    for row in rows:
        calls = row.get("model_calls", "")
        print(f"{row['row']:<8}{row['dtype']:<7}{row['batch']:>6}  {row['seconds']:>10.4f}  {row['seconds_min']:>9.4f}"
              f"  {row['seconds_max']:>9.4f}  {calls}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
