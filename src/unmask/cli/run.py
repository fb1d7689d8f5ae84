"""Running one ``unmask`` command: its options parsed, the command called, and the one place where
errors become one line on stderr (see :mod:`unmask.cli` for the commands and the rules)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

from unmask.cli.commands import COMMANDS
from unmask.cli.parser import build_parser
from unmask.distributed.launch import launch, launched, record_failure
from unmask.distributed.process import exit_process, is_main_process, shutdown
from unmask.errors import OptionError, UserError, install_hint, option_flag


def run(argv: list[str]) -> int:
    """Parse ``argv`` (a command and its options) and run the command; the exit status."""
    parser = build_parser()
    # key=value overrides may stand anywhere among the options, not only at the end.
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
    with warnings.catch_warnings(), _no_input():
        warnings.showwarning = lambda message, *_: _say(f"{prefix}: warning: {message}")
        try:
            status = COMMANDS[args.command](args)
            if shutdown():  # a worker of a multi-process job: done, every file written
                exit_process(status)
            return status
        except UserError as err:
            _say(f"{prefix}: error: {err.naming(option_flag) if isinstance(err, OptionError) else err}")
            return 2
        except ModuleNotFoundError as err:
            _say(f"{prefix}: error: this needs the optional package {err.name}: {install_hint(err.name or '')}")
            return 2
        except OSError as err:
            where = f" ({err.filename})" if err.filename else ""
            _say(f"{prefix}: error: {err.strerror or err}{where}; check the path, its permissions and the free space")
            return 2
        except KeyboardInterrupt as stop:  # Ctrl-C, or a stop signal while training (unmask.train.signals)
            _say(f"{prefix}: interrupted")
            return 128 + stop.signum if hasattr(stop, "signum") else 130
        except BaseException as err:  # a bug, or a lost peer in a multi-process job
            if isinstance(err, SystemExit):
                raise
            record_failure(err)  # into torchrun's error file, as its @record does
            if launched():
                return 1  # the launcher reports it in one line, naming the error file
            raise
        finally:
            shutdown()


@contextlib.contextmanager
def _no_input() -> Iterator[None]:
    """Standard input at its end while a command runs: unmask reads nothing there, so a library that asks
    there (transformers' "Do you wish to run the custom code? [y/N]") gets no answer at once, instead of
    waiting for one or taking a piped "y"."""
    saved = sys.stdin
    with open(os.devnull) as nothing:
        sys.stdin = nothing
        try:
            yield
        finally:
            sys.stdin = saved


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
