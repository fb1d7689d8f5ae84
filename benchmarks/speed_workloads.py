"""What ``benchmarks/speed.py`` measures: the shapes, and the workload behind each row of its table.

Shapes (``SHAPES``), each one model shape for both systems, named after its tokenizer, size and length:

- ``char-6x256-L256``: the text8 character tokenizer (30 ids + MASK), length 256, training batch 32;
- ``gpt2-6x256-L128``: GPT-2 BPE (50,257 ids + MASK), length 128, training batch 16;
- ``dit-small-L1024``: the paper's DiT small (12 x 768, 12 heads) with GPT-2 BPE at length 1024,
  training batch 32, sampled at T = 1000 (the reference code's default) and 128: for GPUs, so not in
  the default run (``--shape dit-small-L1024``; ``benchmarks/gpu.sh`` runs it);
- ``char-2x64-L64``: the smallest shape, which checks the plumbing in seconds on a CPU (the smoke
  mode of ``benchmarks/gpu.sh``): not a measurement.

unmask runs ``DiT`` with the shape's vocabulary plus MASK; the baseline is Hugging Face
``GPT2LMHeadModel`` over the same ids without MASK, with ``tie_word_embeddings=False`` (both have an
untied head) and its default attention (SDPA). Both keep their default dropout of 0.1.

Workloads (``WORKLOADS``; the ``what`` of a row):

- ``gemm``: this machine's matmul throughput (n x n @ n x n, n = 2048 on CPU, 8192 on CUDA, five
  products per repeat), the yardstick of the training rows' model FLOP utilisation (``mfu``).
- ``train``: tokens/s of a whole optimisation step on a fixed batch of random tokens. unmask:
  ``unmask.train.Trainer(...).train_step(batch)`` itself (forward, backward, clipping at 1.0, fused
  AdamW, float32 EMA), the trainer built in a temporary run directory on a small generated corpus
  with the shape's tokenizer, objective ``mdlm`` (log-linear) or ``ar`` (causal DiT). GPT-2
  (objective ``hf``): forward with labels, backward, clipping, fused AdamW, with the same settings.
- ``call``: one forward call on a full-length batch (1 and 16) in inference mode, logits everywhere.
  The DiT's weights are redrawn from N(0, 0.02) with zero biases (as GPT-2 initialises), since its
  zero-initialised adaLN and output layer would make every draw uniform; the same in ``sample``.
  ``unmask-static`` is the same call through ``unmask.static_shapes.StaticShapeDenoiser`` at the call's
  shape (a CUDA graph on GPUs; its logits are copied out of the graph's memory on every call).
- ``sample``: wall time to generate full-length sequences (batch 1 and 16). unmask:
  ``unmask.generate(model, SamplerConfig(sampler="cached", steps=T), ...)`` at the shape's two step
  counts (T = length and length / 8 but for ``dit-small-L1024``; ``model_calls`` is its
  ``num_calls``); ``unmask-static`` the same through one ``StaticShapeDenoiser`` of [batch, length]
  built (and, on CUDA, captured) in the warm-up, with ``--device cuda`` (or ``--static-shapes``).
  ``bd3lm-16``: the same DiT sampled block by block (block diffusion, blocks of 16,
  ``unmask.sampling.blocks.generate_blocks`` with its key/value cache) with the cached sampler at
  T = 16 steps per block (one token per step) and T = 4 (four tokens per step); ``steps`` is T per
  block. GPT-2: ``generate`` with the KV cache, ``do_sample=True, top_k=0``, length - 1 new tokens
  after a one-token prompt, so all produce ``length`` tokens per sequence.

FLOPs of a training step (``train_flops``; forward + backward = 3 x forward, 2 FLOPs per multiply-add):
6 * 12 * n_layers * d^2 * tokens for the blocks' matmuls, plus a * n_layers * L * d * tokens for
attention (a = 12 bidirectional, 6 causal: only the lower triangle is useful work), plus
6 * d * V_out * head_rows for the output head where it runs. head_rows is counted with a hook
(the masked positions for ``mdlm``, about half of the tokens; batch * (L - 1) for ``ar``;
batch * L for GPT-2). Embeddings, norms, activations, softmax, the loss and the DiT's adaLN
and time-embedding matmuls (under 0.1 %) are not counted.

Adding a workload: write a function ``(dev, shape, spec) -> Member`` (``Member.run`` is one timed
repeat and returns its model calls or None; ``warm`` warms it up; ``close`` releases what it
holds), register it in ``WORKLOADS`` under its ``what``, and give it rows in :func:`plan`: a group
is a list of rows timed in turns in one process, so rows compared with each other share a group.
A new system in an existing workload (e.g. another sampler beside ``unmask`` and ``hf-gpt2``) is one
more entry in ``SAMPLERS`` (how it samples) or ``TRAIN_STEPS`` (how it trains) and one more row in
its group (``unmask-static`` is such a sampler); a new objective of unmask's trainer is only a row
``("unmask", name)`` in ``TRAIN_ROWS``.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from generated_corpus import write_corpus
from speed_runner import Device, Member
from transformers import GPT2Config, GPT2LMHeadModel

from unmask import DiT, generate
from unmask.config import Config, apply_overrides
from unmask.sampling import SamplerConfig
from unmask.sampling.blocks import CachedContext, generate_blocks
from unmask.static_shapes import StaticShapeDenoiser
from unmask.train import Trainer

DTYPES = ("fp32", "bf16")
GEMM_BURST = 5  # matmuls per timed GEMM repeat


@dataclass(frozen=True)
class Shape:
    tokenizer: str  # the unmask tokenizer spec the trainer uses ("char", "gpt2")
    vocab: int  # ids besides MASK (GPT-2's vocabulary; unmask has one more)
    length: int
    n_layers: int
    hidden: int
    n_heads: int
    train_batch: int
    sample_steps: tuple[int, int]  # the step counts T of the sampling rows

    @property
    def mask_id(self) -> int:
        return self.vocab  # unmask's tokenizers put MASK last


SHAPES: dict[str, Shape] = {
    "char-6x256-L256": Shape("char", vocab=30, length=256, n_layers=6, hidden=256, n_heads=8, train_batch=32,
                             sample_steps=(256, 32)),
    "gpt2-6x256-L128": Shape("gpt2", vocab=50257, length=128, n_layers=6, hidden=256, n_heads=8, train_batch=16,
                             sample_steps=(128, 16)),
    "dit-small-L1024": Shape("gpt2", vocab=50257, length=1024, n_layers=12, hidden=768, n_heads=12, train_batch=32,
                             sample_steps=(1000, 128)),
    "char-2x64-L64": Shape("char", vocab=30, length=64, n_layers=2, hidden=64, n_heads=2, train_batch=4,
                           sample_steps=(64, 8)),
}
DEFAULT_SHAPES = ("char-6x256-L256", "gpt2-6x256-L128")

# Block diffusion's sampling rows: its block size, and (shape, batch) -> steps per block of its rows.
BD3LM_BLOCK = 16
BD3LM_ROWS = {("gpt2-6x256-L128", 1): (16, 4), ("gpt2-6x256-L128", 16): (16, 4), ("char-6x256-L256", 16): (16,)}

# The train group: (system, objective) for each row, timed in turns with the GEMM of their dtype.
TRAIN_ROWS = (("unmask", "mdlm"), ("unmask", "ar"), ("hf-gpt2", "hf"))
# Objectives whose attention is causal (their FLOPs count only the lower triangle of attention).
CAUSAL_OBJECTIVES = ("ar", "hf")


def train_flops(shape: Shape, batch: int, head_rows: float, vocab_out: int, causal: bool) -> float:
    """Model FLOPs of one training step (forward + backward); see the module docstring."""
    d, length, layers = shape.hidden, shape.length, shape.n_layers
    tokens = batch * length
    body = 6 * 12 * layers * d * d * tokens
    attention = (6 if causal else 12) * layers * length * d * tokens
    head = 6 * d * vocab_out * head_rows
    return float(body + attention + head)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def randomize(model: torch.nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every Linear and Embedding (as GPT-2 initialises)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def build_model(system: str, shape: Shape, device: torch.device) -> torch.nn.Module:
    """GPT-2 ("hf-gpt2") or, for every other system, unmask's DiT (random N(0, 0.02) weights) of ``shape``,
    on ``device``."""
    if system != "hf-gpt2":
        config = Config()
        apply_overrides(config, model_overrides(shape))
        model = DiT(config.model_config(shape.vocab + 1))
        randomize(model)
    else:
        last = shape.vocab - 1  # bos/eos/pad must be valid ids of the vocabulary
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=shape.vocab, n_positions=shape.length, n_embd=shape.hidden, n_layer=shape.n_layers,
            n_head=shape.n_heads, tie_word_embeddings=False, bos_token_id=last, eos_token_id=last, pad_token_id=last,
        ))
    return model.to(device)


def model_overrides(shape: Shape) -> list[str]:
    """The run-config overrides that give the DiT of ``shape`` (everything else at its default)."""
    return [f"model.n_layers={shape.n_layers}", f"model.hidden={shape.hidden}", f"model.n_heads={shape.n_heads}",
            f"data.length={shape.length}"]


def random_tokens(shape: Shape, batch: int, device: torch.device) -> torch.Tensor:
    """[batch, length] ids drawn uniformly from every id but MASK."""
    return torch.randint(0, shape.vocab, (batch, shape.length), device=device)


# ---------------------------------------------------------------------------------------------
# The trainer's own step
# ---------------------------------------------------------------------------------------------


def build_trainer(shape: Shape, folder: Path, *, objective: str, precision: str, device: str,
                  batch: int | None = None, overrides: tuple[str, ...] = ()) -> Trainer:
    """An ``unmask.train.Trainer`` for ``shape`` in ``folder``: the shape's model and tokenizer,
    ``objective`` ("mdlm" or "ar"), one micro-batch of ``batch`` (default ``shape.train_batch``) per
    step, the run config's defaults otherwise (dropout 0.1, AdamW, clipping 1.0, EMA 0.9999).
    Close it (``trainer.close()``) when done."""
    batch = batch or shape.train_batch
    config = Config()
    apply_overrides(config, [
        *model_overrides(shape), f"data.source={write_corpus(folder / 'corpus.txt', shape.length)}",
        f"data.tokenizer={shape.tokenizer}", f"data.cache_dir={folder / 'cache'}", f"objective.name={objective}",
        f"train.global_batch={batch}", f"train.micro_batch={batch}", f"train.precision={precision}",
        f"train.device={device}", "train.tensorboard=false", *overrides,
    ])
    trainer = Trainer(config, folder / "run", progress=False)
    if trainer.tokenizer.vocab_size != shape.vocab + 1:
        trainer.close()
        raise ValueError(f"tokenizer {shape.tokenizer!r} has {trainer.tokenizer.vocab_size} ids; the shape says "
                         f"{shape.vocab + 1} ({shape.vocab} and MASK)")
    trainer.model.train()
    return trainer


def trainer_step(trainer: Trainer, shape: Shape) -> Callable[[], float]:
    """One call of ``trainer.train_step`` on a fixed batch of random tokens (every position counts)."""
    batch = trainer.config.train.global_batch
    x0 = random_tokens(shape, batch, trainer.device)
    tokens = {"input_ids": x0, "loss_mask": torch.ones_like(x0, dtype=torch.bool)}
    return lambda: trainer.train_step(tokens)


def unmask_train_step(shape: Shape, dev: Device, objective: str, dtype: str
                      ) -> tuple[Callable[[], Any], torch.nn.Module, Callable[[], None]]:
    """The trainer's own step in a temporary run directory: (step, output layer, close)."""
    folder = tempfile.TemporaryDirectory(prefix="unmask-speed-")
    trainer = build_trainer(shape, Path(folder.name), objective=objective, precision=dtype, device=dev.name)

    def close() -> None:
        trainer.close()
        folder.cleanup()

    return trainer_step(trainer, shape), trainer.model.head, close


def gpt2_train_step(shape: Shape, dev: Device, objective: str, dtype: str
                    ) -> tuple[Callable[[], Any], torch.nn.Module, Callable[[], None]]:
    """GPT-2's step as the trainer's (forward with labels, backward, clip 1.0, fused AdamW): (step, output
    layer, close)."""
    model = build_model("hf-gpt2", shape, dev.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device in this torch build
        optimizer = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.0)
    x0 = random_tokens(shape, shape.train_batch, dev.device)

    def step() -> None:
        with dev.autocast(dtype):
            loss = model(input_ids=x0, labels=x0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model.lm_head, lambda: None


# How each system trains: (shape, device, objective, dtype) -> (one step, its output layer, close).
TRAIN_STEPS: dict[str, Callable[..., tuple[Callable[[], Any], torch.nn.Module, Callable[[], None]]]] = {
    "unmask": unmask_train_step,
    "hf-gpt2": gpt2_train_step,
}


def train_member(dev: Device, shape: Shape, spec: dict[str, Any]) -> Member:
    objective, batch = spec["objective"], shape.train_batch
    step, head, close = TRAIN_STEPS[spec["system"]](shape, dev, objective, spec["dtype"])
    heads: list[tuple[int, int]] = []  # (rows, vocabulary) of every output-layer call: the head's FLOPs
    head.register_forward_hook(lambda module, args, out: heads.append((out.shape[:-1].numel(), out.shape[-1])))

    def run() -> None:  # a training step makes no sampling calls: nothing to return
        step()

    def warm() -> None:
        for _ in range(2):
            step()
        heads.clear()

    def extra() -> dict[str, Any]:
        rows = statistics.mean(rows for rows, _ in heads)
        flops = train_flops(shape, batch, rows, heads[0][1], causal=objective in CAUSAL_OBJECTIVES)
        return {"batch": batch, "flops": flops, "head_rows": rows}

    return Member(spec, run, warm, tokens=batch * shape.length, extra=extra, close=close)


# ---------------------------------------------------------------------------------------------
# GEMM, one call, sampling
# ---------------------------------------------------------------------------------------------


def gemm_member(dev: Device, shape: Shape, spec: dict[str, Any]) -> Member:
    n = 8192 if dev.name == "cuda" else 2048
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    a = torch.randn(n, n, device=dev.device, dtype=dtype)
    b = torch.randn(n, n, device=dev.device, dtype=dtype)

    def run() -> None:
        for _ in range(GEMM_BURST):
            a @ b

    return Member(spec, run, run, extra=lambda: {"flops": GEMM_BURST * 2.0 * n**3, "gemm_n": n})


def call_member(dev: Device, shape: Shape, spec: dict[str, Any]) -> Member:
    system, dtype, batch = spec["system"], spec["dtype"], spec["batch"]
    model = build_model(system, shape, dev.device).eval()
    if system == "unmask-static":
        model = StaticShapeDenoiser(model, batch_size=batch, length=shape.length)
    x = random_tokens(shape, batch, dev.device)
    t = torch.rand(batch, device=dev.device)

    def call() -> int:
        with torch.inference_mode(), dev.autocast(dtype):
            model(input_ids=x, use_cache=False) if system == "hf-gpt2" else model(x, t)
        return 1

    def warm() -> None:
        for _ in range(2):
            call()

    return Member(spec, call, warm, tokens=x.numel())


def unmask_sampling(model: torch.nn.Module, shape: Shape, dev: Device, dtype: str, batch: int
                    ) -> Callable[[int], int]:
    """Generation with the cached sampler at ``steps``; returns its network calls."""

    def run_steps(steps: int) -> int:
        with dev.autocast(dtype):
            out = generate(model, SamplerConfig(sampler="cached", steps=steps), batch_size=batch,
                           length=shape.length, mask_id=shape.mask_id)
        return out.num_calls

    return run_steps


def bd3lm_sampling(model: torch.nn.Module, shape: Shape, dev: Device, dtype: str, batch: int
                   ) -> Callable[[int], int]:
    """Block by block (blocks of ``BD3LM_BLOCK``, the key/value cache) with the cached sampler at ``steps``
    per block; returns its network calls."""

    def run_steps(steps: int) -> int:
        with dev.autocast(dtype):
            out = generate_blocks(CachedContext(model, BD3LM_BLOCK), SamplerConfig(sampler="cached", steps=steps),
                                  batch_size=batch, length=shape.length, block_size=BD3LM_BLOCK,
                                  mask_id=shape.mask_id)
        return out.num_calls

    return run_steps


def gpt2_sampling(model: torch.nn.Module, shape: Shape, dev: Device, dtype: str, batch: int
                  ) -> Callable[[int], int]:
    """GPT-2 ``generate`` with its KV cache, ``steps`` new tokens after a one-token prompt; returns its calls."""
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=dev.device)

    def run_steps(steps: int) -> int:
        calls[0] = 0
        with torch.no_grad(), dev.autocast(dtype):
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0,
                                 max_new_tokens=steps, min_new_tokens=steps, pad_token_id=shape.vocab - 1,
                                 use_cache=True)
        if out.shape != (batch, steps + 1):
            raise RuntimeError(f"GPT-2 generated {tuple(out.shape)}, expected {(batch, steps + 1)}")
        return calls[0]

    return run_steps


def static_sampling(model: torch.nn.Module, shape: Shape, dev: Device, dtype: str, batch: int
                    ) -> Callable[[int], int]:
    """:func:`unmask_sampling` through one static-shape denoiser of [batch, length] (captured on its first call)."""
    return unmask_sampling(StaticShapeDenoiser(model, batch_size=batch, length=shape.length), shape, dev, dtype, batch)


# How each system samples: (model, shape, device, dtype, batch) -> run(steps) -> network calls.
SAMPLERS: dict[str, Callable[..., Callable[[int], int]]] = {
    "unmask": unmask_sampling,
    "unmask-static": static_sampling,
    f"bd3lm-{BD3LM_BLOCK}": bd3lm_sampling,
    "hf-gpt2": gpt2_sampling,
}


def sample_member(dev: Device, shape: Shape, spec: dict[str, Any]) -> Member:
    system, batch, steps = spec["system"], spec["batch"], spec["steps"]
    model = build_model(system, shape, dev.device).eval()
    run_steps = SAMPLERS[system](model, shape, dev, spec["dtype"], batch)
    return Member(spec, lambda: run_steps(steps), lambda: run_steps(max(1, steps // 8)),
                  tokens=batch * shape.length, budget_s=spec["budget_s"])


WORKLOADS: dict[str, Callable[[Device, Shape, dict[str, Any]], Member]] = {
    "gemm": gemm_member,
    "train": train_member,
    "call": call_member,
    "sample": sample_member,
}


def build_member(dev: Device, spec: dict[str, Any]) -> Member:
    return WORKLOADS[spec["what"]](dev, SHAPES[spec["shape"]], spec)


def plan(shape_name: str, *, dtypes: list[str], whats: list[str], quick: bool, budget_s: float,
         static: bool = False) -> list[list[dict[str, Any]]]:
    """The groups of one shape, in the order they run; each group is a list of row specs. ``static``
    adds the ``unmask-static`` rows beside the ``unmask`` ones."""
    shape = SHAPES[shape_name]
    base = {"shape": shape_name}
    unmask_systems = ("unmask", "unmask-static") if static else ("unmask",)

    def gemm(dtype: str) -> list[dict[str, Any]]:
        return [{**base, "system": "torch", "what": "gemm", "dtype": dtype}] if "gemm" in whats else []

    groups: list[list[dict[str, Any]]] = []
    if "gemm" in whats and "train" not in whats:
        groups.append([row for dtype in dtypes for row in gemm(dtype)])
    for dtype in dtypes:
        if "train" in whats:  # the GEMM yardstick of the mfu takes its turns among the steps it divides
            groups.append(gemm(dtype) + [{**base, "system": system, "what": "train", "dtype": dtype,
                                          "objective": objective} for system, objective in TRAIN_ROWS])
        for batch in (1, 16) if "call" in whats else ():
            groups.append([{**base, "system": system, "what": "call", "dtype": dtype, "batch": batch}
                           for system in (*unmask_systems, "hf-gpt2")])
        for batch in ((1,) if quick else (1, 16)) if "sample" in whats else ():
            sample = {**base, "what": "sample", "dtype": dtype, "batch": batch, "budget_s": budget_s}
            groups.append([
                {**sample, "system": "hf-gpt2", "steps": shape.length - 1},
                *({**sample, "system": system, "steps": steps} for system in unmask_systems
                  for steps in shape.sample_steps),
                *({**sample, "system": f"bd3lm-{BD3LM_BLOCK}", "steps": steps}
                  for steps in BD3LM_ROWS.get((shape_name, batch), ())),
            ])
    return groups
