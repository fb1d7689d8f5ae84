"""The one base class of the errors a user can cause and fix.

Every module raises its own subclass (``ConfigError``, ``DataError``, ``CheckpointError``,
``PromptError``, ``SamplingError``); the command line catches ``UserError`` and prints its message
as one line. Each message names the fix. ``UserError`` is a ``ValueError`` so that callers of the
Python API that already catch bad values keep working. :func:`require` turns a missing optional
package into such an error, naming the extra to install.
"""

import importlib.util


class UserError(ValueError):
    """A mistake in what the user asked for or gave us; the message names the fix."""


# The extra of ``pip install "unmask[EXTRA]"`` that brings each optional package.
EXTRAS = {
    "transformers": "hf", "datasets": "hf", "pyarrow": "hf", "gguf": "hf", "accelerate": "hf",
    "huggingface_hub": "hf", "matplotlib": "plot", "tensorboard": "logging", "fastapi": "serve", "uvicorn": "serve",
}


def install_hint(package: str) -> str:
    """How to install the optional ``package``: the unmask extra that has it, or pip itself."""
    root = package.split(".")[0]
    return f'pip install "unmask[{EXTRAS[root]}]"' if root in EXTRAS else f"pip install {root}"


def require(package: str, purpose: str) -> None:
    """Raise a UserError naming the install command when the optional ``package`` is missing."""
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{purpose} needs the optional package {package}: {install_hint(package)}")
