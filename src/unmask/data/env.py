"""Where optional packages keep their files, and whether the user asked for offline mode."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline() -> bool:
    """True when any Hugging Face offline variable is set; we then fail fast with a clear
    message instead of letting a hub lookup hang until it times out."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in OFFLINE_VARIABLES)


def package_path(package: str, *parts: str) -> Path | None:
    """A path inside an installed package, found without importing it (importing whisper pulls
    in numba); None if the package or the path is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None
