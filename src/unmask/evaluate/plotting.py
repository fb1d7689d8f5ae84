"""matplotlib, optional: the one place that loads it for the plots of ``unmask frontier`` and ``unmask study``."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from unmask.errors import require

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")  # distinct markers for lines that may coincide


def has_matplotlib() -> bool:
    """True when the plots can be drawn (tables and JSON never need matplotlib)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot(purpose: str) -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display needed), or a clear error naming the install."""
    require("matplotlib", purpose)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
