"""The one base class of the errors a user can cause and fix.

Every module raises its own subclass (``ConfigError`` here, ``DataError``, ``CheckpointError``,
``PromptError``, ``SamplingError``); the command line catches ``UserError`` and prints its message
as one line. Each message names the fix. ``UserError`` is a ``ValueError`` so that callers of the
Python API that already catch bad values keep working. :func:`require` turns a missing optional
package into such an error, naming the extra to install.
"""

import importlib.util
from collections.abc import Callable


class UserError(ValueError):
    """A mistake in what the user asked for or gave us; the message names the fix."""


class OptionError(UserError):
    """A mistake about named options, said in the asker's own names for them.

    ``message`` writes the n-th of ``options`` (Python names: ``top_k``) as ``{n}``. ``str()`` names them as
    the Python API does; :meth:`naming` as another front end does: ``--top-k`` on the command line
    (:func:`option_flag`), ``top_k`` or ``n`` in a server's requests.
    """

    def __init__(self, message: str, *options: str) -> None:
        self.message, self.options = message, options
        super().__init__(self.naming(str))

    def naming(self, name: Callable[[str], str]) -> str:
        """The message with each option named by ``name``."""
        text = self.message
        for index, option in enumerate(self.options):
            text = text.replace(f"{{{index}}}", name(option))
        return text


def option_flag(option: str) -> str:
    """The command line's name of an option: ``top_k`` is ``--top-k``."""
    return "--" + option.replace("_", "-")


class RemoteCodeRefused(OptionError):
    """A model or tokenizer that loads only by running Python code shipped with it (an ``auto_map``)."""

    def __init__(self, source: str) -> None:
        super().__init__(f"{source} asks to run Python code of its own (an auto_map in its config); unmask runs no "
                         "code from a model folder unless told to: pass {0} only if you trust where it came from",
                         "trust_remote_code")


def asks_for_remote_code(error: BaseException) -> bool:
    """True for transformers' refusal of a folder whose custom code was not trusted (``trust_remote_code=False``)."""
    return isinstance(error, ValueError) and "trust_remote_code" in str(error)


class ConfigError(UserError):
    """A user-facing configuration mistake; the message names the fix."""


# The extra of ``pip install "unmask[EXTRA]"`` that brings each optional package.
EXTRAS = {
    "transformers": "hf", "datasets": "hf", "pyarrow": "hf", "gguf": "hf", "accelerate": "hf",
    "huggingface_hub": "hf", "jinja2": "hf", "matplotlib": "plot", "tensorboard": "logging", "fastapi": "serve",
    "uvicorn": "serve", "peft": "lora", "lm_eval": "eval",
}


def install_hint(package: str) -> str:
    """How to install the optional ``package``: the unmask extra that has it, or pip itself."""
    root = package.split(".")[0]
    return f'pip install "unmask[{EXTRAS[root]}]"' if root in EXTRAS else f"pip install {root}"


def require(package: str, purpose: str) -> None:
    """Raise a UserError naming the install command when the optional ``package`` is missing."""
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{purpose} needs the optional package {package}: {install_hint(package)}")
