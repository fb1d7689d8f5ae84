"""lm-evaluation-harness on local tasks: MDLM, BD3-LM and AR trained with the demo's budget (CPU, offline).

    python benchmarks/harness_local.py [--minutes 3.5] [--out runs/harness-local] [--num-t 32] [--steps 64]
                                       [--docs 400] [--json benchmarks/results/harness-local.json]
                                       [--markdown benchmarks/results/harness-local.md] [--smoke] [key=value ...]

Trains the demo's model (the ``tiny`` preset on the embedded Shakespeare corpus, at the size the demo picks
for this machine) as MDLM, BD3-LM (blocks of 16) and AR, each for ``--minutes`` (the demo's 3.5), all with
the first run's tokenizer, as ``benchmarks/block_diffusion.py`` does. Then it writes four lm-eval tasks
(task YAML and JSON-lines documents) from the held-out plays (Julius Caesar and Twelfth Night, the
validation split none of the models trained on) and runs ``unmask lm-eval``'s code on each model:

- ``heldout_cloze`` (loglikelihood): the last word of a line given the lines of the speech before it, as
  LAMBADA; ``acc`` (greedy decoding gives the word) and ``perplexity`` (of the word);
- ``heldout_choice`` (multiple_choice): the line that follows, against a line from elsewhere in the plays;
  ``acc`` and ``acc_norm``;
- ``heldout_speaker`` (generate_until, stop at a newline): the name of the next speaker after two
  speeches; ``exact_match``;
- ``heldout_pages`` (loglikelihood_rolling): whole passages; ``word_perplexity`` and ``bits_per_byte``
  (upper bounds for the diffusion models).

``--num-t`` Monte Carlo samples per continuation (one where one is exact: a one-token continuation of MDLM
or BD3-LM, and AR everywhere), ``--steps`` sampling steps for generation (per block for BD3-LM), the
first ``--docs`` documents of each task. The table goes to stdout and ``--markdown``, every figure with
its standard error to ``--json``. ``--smoke`` runs it all at a toy size (one layer of 32, a few seconds
of training, 8 documents per task, K = 2) into a temporary folder: a check that the script works, not a
measurement. Extra ``key=value`` overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import torch

from unmask.data import iter_documents
from unmask.demo import choose_size, free_directory, train_for
from unmask.evaluate.harness import lm_class, run_tasks
from unmask.runtime import device_name
from unmask.sampling import SamplerConfig

MODELS = (("MDLM", ["objective.name=mdlm"]), ("BD3-LM 16", ["objective.name=bd3lm", "objective.block_size=16"]),
          ("AR", ["objective.name=ar"]))
SMOKE = ["model.n_layers=1", "model.hidden=32", "model.n_heads=2", "model.cond_dim=16", "data.vocab_size=512",
         "train.global_batch=8", "train.micro_batch=8", "train.eval_batches=1"]
# The metric of each task in the table, lm-eval's "<metric>,<filter>" key.
COLUMNS = (("heldout_cloze", "acc,none", "cloze acc"), ("heldout_cloze", "perplexity,none", "cloze PPL"),
           ("heldout_choice", "acc,none", "choice acc"), ("heldout_choice", "acc_norm,none", "choice acc_norm"),
           ("heldout_speaker", "exact_match,strip", "speaker EM"),
           ("heldout_pages", "word_perplexity,none", "pages word PPL"),
           ("heldout_pages", "bits_per_byte,none", "pages bits/byte"))
SPEAKER = re.compile(r"^[A-Z][A-Z .'-]+\.$")  # a speech prefix: "BRUTUS." or "FIRST CITIZEN."

TASKS = {
    "heldout_cloze": """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{' ' + word}}"
metric_list:
  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}
  - {metric: acc, aggregation: mean, higher_is_better: true}
""",
    "heldout_choice": """output_type: multiple_choice
doc_to_text: "{{line}}"
target_delimiter: "\\n"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
""",
    "heldout_speaker": """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{speaker}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 8, do_sample: false}
filter_list:
  - name: strip
    filter:
      - {function: regex, regex_pattern: "^\\\\s*(.*?)\\\\s*$"}
      - {function: take_first}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
""",
    "heldout_pages": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{page}}"
metric_list:
  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}
""",
}


def speeches(documents: list[str]) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of every speech of the plays, in order (stage directions dropped)."""
    found = []
    for document in documents:
        for block in document.split("\n\n"):
            lines = [line.strip() for line in block.splitlines() if line.strip()]
            if len(lines) >= 2 and SPEAKER.match(lines[0]):
                found.append((lines[0], [line for line in lines[1:] if not line.startswith("[")]))
    return [(speaker, lines) for speaker, lines in found if lines]


def documents_of_tasks(documents: list[str], count: int, seed: int = 0) -> dict[str, list[dict]]:
    """The documents of the four tasks (the first ``count`` of each), from the held-out plays."""
    rng = random.Random(seed)
    spoken = speeches(documents)
    every_line = [line for _, lines in spoken for line in lines]
    cloze, choice, speaker = [], [], []
    for index, (name, lines) in enumerate(spoken):
        for i, line in enumerate(lines):
            words = line.split()
            if len(words) >= 5:
                before = " ".join([*lines[max(0, i - 2):i], " ".join(words[:-1])])
                cloze.append({"context": before, "word": words[-1].strip(".,;:!?-'")})
            if i + 1 < len(lines):
                other = rng.choice(every_line)
                pair = [lines[i + 1], other]
                rng.shuffle(pair)
                choice.append({"line": line, "choices": pair, "label": pair.index(lines[i + 1])})
        if index >= 2:
            context = "\n\n".join(f"{who}\n" + "\n".join(said[-3:]) for who, said in spoken[index - 2:index])
            speaker.append({"context": context + "\n\n", "speaker": name})
    cloze = [doc for doc in cloze if doc["word"]]
    pages = [{"page": document} for document in documents]
    return {"heldout_cloze": cloze[:count], "heldout_choice": choice[:count], "heldout_speaker": speaker[:count],
            "heldout_pages": pages[:max(1, count // 10)]}


def write_tasks(folder: Path, documents: dict[str, list[dict]]) -> Path:
    """One task YAML and one JSON-lines file of documents per task in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(document) + "\n" for document in documents[name]))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {folder / 'hf-cache'}\ntest_split: test\n{body}metadata:\n  version: 1.0\n")
    return folder


def figures(results: dict) -> dict[str, dict[str, float]]:
    """Each task's metrics and their standard errors, as lm-eval reports them."""
    return {task: {key: value for key, value in metrics.items() if "," in key}
            for task, metrics in results["results"].items()}


def table(rows: dict[str, dict]) -> str:
    lines = ["| model | training steps | " + " | ".join(label for _, _, label in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for label, row in rows.items():
        cells = []
        for task, key, _ in COLUMNS:
            value = row["tasks"][task][key]
            error = row["tasks"][task].get(key.replace(",", "_stderr,"))
            cells.append(f"{value:.3f}" + (f" +- {error:.3f}" if isinstance(error, float) else ""))
        lines.append(f"| {label} | {row['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.5, help="training budget per model (the demo's)")
    parser.add_argument("--out", default="runs/harness-local", help="folder for the runs and tasks (a new one if "
                                                                    "taken)")
    parser.add_argument("--num-t", type=int, default=32, help="Monte Carlo samples per continuation")
    parser.add_argument("--steps", type=int, default=64, help="sampling steps of generation (per block for BD3-LM)")
    parser.add_argument("--docs", type=int, default=400, help="documents per task (passages: a tenth of it)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--markdown", help="write the table to this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="a toy-sized run into a temporary folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.num_t, args.steps, args.docs = 0.03, 2, 4, 8
        args.out = tempfile.mkdtemp(prefix="harness-local-smoke-")

    out = free_directory(Path(args.out))
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    if args.smoke:
        size_label, size_overrides = "smoke: 1 layer of 32", SMOKE
    else:
        size, notes = choose_size(args.minutes, args.overrides)
        size_label, size_overrides = size.label, list(size.overrides)
        print(f"== demo size: {size.label} (training speed here: {'; '.join(notes)})", flush=True)
    tasks = write_tasks(out / "tasks", documents_of_tasks(list(iter_documents("default", "validation")), args.docs))
    rows: dict[str, dict] = {}
    first: Path | None = None
    for label, overrides in MODELS:
        run_dir = out / label.lower().replace(" ", "-")
        print(f"== {label}: {args.minutes:g} min -> {run_dir}", flush=True)
        trained = train_for(run_dir, [*size_overrides, *args.overrides, *overrides], minutes=args.minutes,
                            progress=not args.quiet, eval_batches=4 if args.smoke else 16, tokenizer_from=first)
        first = first or run_dir
        model = lm_class()(run_dir, num_t=args.num_t, sampling=SamplerConfig(steps=args.steps),
                           progress=not args.quiet)
        results = run_tasks(model, list(TASKS), include_path=tasks, bootstrap_iters=1000)
        rows[label] = {"steps": trained["steps"], "validation_nats_per_token": trained["nelbo_per_token"],
                       "tasks": figures(results)}

    command = shlex.join(["python", "benchmarks/harness_local.py", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{device_name('cpu')}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    counts = {name: len(Path(tasks / f"{name}.jsonl").read_text().splitlines()) for name in TASKS}
    header = (f"{started} | {machine}\n{command}\n\nlm-eval tasks from the held-out plays "
              f"({', '.join(f'{name}: {n} documents' for name, n in counts.items())}), K = {args.num_t} samples per "
              f"continuation, {args.steps} sampling steps; models of {size_label}, {args.minutes:g} min of "
              "training each; +- lm-eval's standard error. The diffusion models' perplexities and bits per byte "
              "are upper bounds.\n")
    markdown = header + "\n" + table(rows) + "\n"
    print("\n" + markdown)
    record = {"date": started, "machine": machine, "command": command, "minutes": args.minutes, "size": size_label,
              "num_t": args.num_t, "steps": args.steps, "documents": counts, "models": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    return record


if __name__ == "__main__":
    main()
