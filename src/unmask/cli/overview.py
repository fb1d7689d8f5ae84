"""What ``unmask --help`` shows: the commands, each in one line, and the parser that lists them.

It imports nothing but the standard library, so that ``unmask --help`` (and a mistyped command)
answers at once; a command's own options are built only when it runs (:mod:`unmask.cli.parser`).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

COMMANDS = {
    "train": "train a model (MDLM, block diffusion, SEDD, D3PM, Duo or the AR baseline), or adapt a pretrained LM",
    "eval": "likelihood bound (and generative perplexity) of a checkpoint, or of continuations given prompts",
    "lm-eval": "score a model on lm-evaluation-harness tasks (pip install \"unmask[eval]\")",
    "sample": "generate, continue a prompt, or fill in a template",
    "serve": "serve a model over HTTP, with a page that shows the text unmasking live",
    "frontier": "sweep samplers and step counts: gen. PPL, entropy, calls, time",
    "export": "write a checkpoint as a single-process safetensors folder, or in the released MDLM (Hugging Face) "
              "layout",
    "convert": "convert a reference MDLM Lightning checkpoint (.ckpt) to an unmask checkpoint",
    "demo": "train MDLM and the AR baseline on the embedded corpus, compare, sample",
    "study": "train every model kind (and the ablations) alike, evaluate, tabulate, plot",
    "distill": "distil a run into a few-step student: SDTT (MDLM) or DCD (Duo), round by round",
}
DESCRIPTION = "Masked diffusion language models (MDLM)."


class Parser(argparse.ArgumentParser):
    """argparse with errors in one line (``unmask sample: error: ...``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def overview() -> Parser:
    """The top-level parser: the command list, without any command's options."""
    parser = Parser(prog="unmask", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser
