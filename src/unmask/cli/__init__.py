"""The ``unmask`` command: argument parsing (:mod:`.parser`), the commands (:mod:`.commands`), and here
the one place where errors become one line on stderr.

    unmask train --preset tiny --data PATH_OR_NAME --out RUN_DIR [--max-steps N] [--resume] [--nproc N] [key=value ...]
    unmask eval MODEL [--data PATH_OR_NAME] [--detokenizer NAME] [--num-t K] [--discrete-steps T ...]
              [--mask-rate-ranges LO:HI ...]
    unmask sample MODEL [--num-samples N] [--steps T] [--sampler NAME] [--prompt TEXT]
    unmask serve MODEL [--host 127.0.0.1] [--port 8000] [--max-batch N]
    unmask frontier MODEL --evaluator SPEC [--samplers a,b] [--steps 16,32] [--out DIR]
    unmask export RUN_DIR_OR_CHECKPOINT --out FOLDER [--format unmask|hf] [--allow-approximate-gelu]
    unmask convert CHECKPOINT.ckpt --out FOLDER [--no-ema] [--trust-pickle]
    unmask demo [--out DIR] [--minutes M]
    unmask study PRESET --out DIR --budget MINUTES [--data D] [--objectives ar,mdlm,sedd,d3pm] [--ablations]

MODEL is an unmask run directory or checkpoint folder, a released MDLM folder (Hugging Face layout),
a Hugging Face masked-LM folder, or the hub name of either (online, or in the hub cache).

Under ``torchrun --nproc-per-node N -m unmask train|eval ...`` every process runs the same command;
rank 0 alone prints. An error the user can fix (a bad option, file, checkpoint or config, a missing
optional package, a full or read-only disk) is one line and exit status 2; a worker of a
multi-process job records any other failure for torchrun (see :mod:`unmask.distributed.launch`).
"""

from __future__ import annotations

import sys
import warnings

from unmask.cli.commands import COMMANDS
from unmask.cli.parser import build_parser
from unmask.distributed.launch import launch, launched, record_failure
from unmask.distributed.process import exit_process, is_main_process, shutdown
from unmask.errors import UserError, install_hint


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere among the options, not only at the end.
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
        if stray:
            parser.error(f"unrecognized arguments: {' '.join(stray)}")
    except SystemExit as done:  # --help, or a bad option (already said in one line)
        return int(done.code or 0)
    if extra:
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "nproc", None) is not None:
        return launch(args.nproc, _without_nproc(argv), args.command)
    prefix = f"unmask {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_: _say(f"{prefix}: warning: {message}")
        try:
            status = COMMANDS[args.command](args)
            if shutdown():  # a worker of a multi-process job: done, every file written
                exit_process(status)
            return status
        except UserError as err:
            _say(f"{prefix}: error: {err}")
            return 2
        except ModuleNotFoundError as err:
            _say(f"{prefix}: error: this needs the optional package {err.name}: {install_hint(err.name or '')}")
            return 2
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            _say(f"{prefix}: error: {err.strerror or err}{where}; check the path, its permissions and the free space")
            return 2
        except KeyboardInterrupt:
            _say(f"{prefix}: interrupted")
            return 130
        except BaseException as err:  # a bug, or a lost peer in a multi-process job
            if isinstance(err, SystemExit):
                raise
            record_failure(err)  # into torchrun's error file, as its @record does
            if launched():
                return 1  # the launcher reports it in one line, naming the error file
            raise
        finally:
            shutdown()


def _say(line: str) -> None:
    """One line on stderr, from rank 0 only (under torchrun every rank fails alike)."""
    if is_main_process():
        print(line.splitlines()[0] if line.strip() else line, file=sys.stderr)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out
