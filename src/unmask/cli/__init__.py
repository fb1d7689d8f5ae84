"""The ``unmask`` command: argument parsing (:mod:`.parser`), the commands (:mod:`.commands`), and here
the one place where errors become one line on stderr.

    unmask train --preset tiny --data PATH_OR_NAME --out RUN_DIR [--init MODEL] [--max-steps N] [--resume] [--nproc N]
              [key=value ...]
    unmask eval MODEL [--data PATH_OR_NAME] [--detokenizer NAME] [--num-t K] [--discrete-steps T ...]
              [--mask-rate-ranges LO:HI ...] [--prompt-file PAIRS.jsonl]
    unmask lm-eval MODEL --tasks T1,T2 [--include-path DIR] [--num-fewshot N] [--limit N] [--batch-size B]
              [--output-path DIR] [--num-t K] [sampling options]
    unmask sample MODEL [--num-samples N] [--steps T] [--sampler NAME] [--prompt TEXT | --chat QUESTION]
    unmask serve MODEL [--host 127.0.0.1] [--port 8000] [--max-batch N]
    unmask frontier MODEL --evaluator SPEC [--samplers a,b] [--steps 16,32] [--out DIR]
    unmask export RUN_DIR_OR_CHECKPOINT --out FOLDER [--format unmask|hf] [--allow-approximate-gelu] [--merge-lora]
    unmask convert CHECKPOINT.ckpt --out FOLDER [--no-ema] [--trust-pickle]
    unmask demo [--out DIR] [--minutes M]
    unmask study PRESET --out DIR (--budget MINUTES | --budget-tokens N) [--seeds N] [--data D]
              [--objectives ar,mdlm,sedd,d3pm] [--ablations]

MODEL is an unmask run directory or checkpoint folder, a released MDLM folder (Hugging Face layout),
a Hugging Face masked-LM folder, or the hub name of either (online, or in the hub cache).

Under ``torchrun --nproc-per-node N -m unmask train|eval ...`` every process runs the same command;
rank 0 alone prints. An error the user can fix (a bad option, file, checkpoint or config, a missing
optional package, a full or read-only disk) is one line and exit status 2; a worker of a
multi-process job records any other failure for torchrun (see :mod:`unmask.distributed.launch`).
"""

from __future__ import annotations

import importlib
import sys

from unmask.cli.overview import COMMANDS, overview


def main(argv: list[str] | None = None) -> int:
    """The ``unmask`` command. Help and a mistyped command are answered from the command list alone; only a
    command that runs loads the rest of unmask (and torch)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        try:
            overview().parse_args(argv)
        except SystemExit as done:  # --help, or no/unknown command (already said in one line)
            return int(done.code or 0)
    return importlib.import_module("unmask.cli.run").run(argv)
