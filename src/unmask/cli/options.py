"""Checked option types: a bad value is refused where it is parsed, in one line naming the fix."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from unmask.runtime import SEED_RANGE


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def at_least(low: int):
    """An integer >= ``low``."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def seed(text: str) -> int:
    """A seed torch takes: a 64-bit integer, signed or not."""
    value = _number(text, int)
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"a seed is a 64-bit integer ({SEED_RANGE[0]} to {SEED_RANGE[1]}), got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535 (0: any free one), got {value}")
    return value


def float_in(low: float, high: float | None, *, low_open: bool = False):
    """A float in [low, high] ((low, high] with ``low_open``; no upper bound when ``high`` is None)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            left = "(" if low_open else "["
            right = f"{high}]" if high is not None else "inf)"
            raise argparse.ArgumentTypeError(f"must be in {left}{low}, {right}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


def output_file(text: str) -> Path:
    """A file to write later: its folder must exist and be writable now (checked before the work)."""
    path = Path(text).expanduser()
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist; create it first")
    try:  # a real write: permission bits say nothing for root, a read-only mount or a full disk
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"folder {folder} is not writable ({err.strerror}); "
                                         "choose another path") from None
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    return path


def folder(text: str) -> Path:
    """A folder to write (a run, an export): a name is needed, since an empty one would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path would write into the current folder; give a folder name")
    return Path(text)


def step_counts(text: str) -> list[int]:
    """Comma-separated step counts, each >= 1."""
    parse = at_least(1)
    return [parse(item) for item in text.split(",") if item.strip()]


def comma_list(text: str) -> list[str]:
    """Comma-separated names (at least one)."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def names_from(choices: tuple[str, ...] | list[str]):
    """Comma-separated names, each one of ``choices`` (in the order given, once each)."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {', '.join(choices)}, got {text!r}")
        return names

    parse.__name__ = "names"
    return parse


def rate_range(text: str) -> tuple[float, float]:
    """A masking-rate range ``LO:HI`` with 0 <= LO < HI <= 1."""
    low, sep, high = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected LO:HI (e.g. 0.3:0.8), got {text!r}")
    low, high = float(_number(low, float)), float(_number(high, float))
    if not 0 <= low < high <= 1:
        raise argparse.ArgumentTypeError(f"needs 0 <= LO < HI <= 1, got {text!r}")
    return low, high
