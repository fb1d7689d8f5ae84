"""Whether ``benchmarks/gpu.sh`` can run here: one line on stderr and exit status 2 if not.

    python benchmarks/gpu_preflight.py [--smoke]

Checked before any part starts, so that a run that cannot work stops at once: a CUDA device
(unless ``--smoke``: the CPU check of the script itself), the packages the parts import, and the
GPT-2 tokenizer (the paper's shape and owt-small use it; offline it comes from openai-whisper).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

from unmask.data import get_tokenizer

PACKAGES = {"transformers": "GPT-2, the baseline", "pytest": "the CUDA tests"}


def problem(smoke: bool) -> str | None:
    """What stops the run here, in words, or None."""
    if not smoke and not torch.cuda.is_available():
        return (f"torch {torch.__version__} sees no CUDA device; run it where an NVIDIA GPU is, or set "
                "UNMASK_GPU_SMOKE=1 for the CPU check of the script itself")
    for package, purpose in PACKAGES.items():
        if importlib.util.find_spec(package) is None:
            return f"{package} is missing ({purpose}): pip install -e '.[test]'"
    try:
        get_tokenizer("gpt2")
    except Exception as error:  # noqa: BLE001 - whatever stops it, the run cannot start
        return (f"the GPT-2 tokenizer is not available here ({error}); pip install --no-deps openai-whisper (it "
                "ships gpt2.tiktoken), or let the machine reach the Hugging Face hub")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="no CUDA needed (the CPU check of the script)")
    found = problem(parser.parse_args().smoke)
    if found:
        print(f"gpu.sh: {found}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
