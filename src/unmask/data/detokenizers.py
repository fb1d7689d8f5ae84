"""The reference's zero-shot protocol: per-dataset detokenizers and which dataset takes which.

The MDLM paper's zero-shot table (a model trained on OpenWebText, evaluated on PTB, WikiText,
LM1B, LAMBADA, AG News, PubMed and arXiv) comes from the reference code's data pipeline: every row
of the dataset, as published, is detokenized by the rule of its dataset, followed by EOS, and the
stream is wrapped into blocks ``[BOS] + L-2 tokens + [EOS]`` of the model's length, the last
partial block dropped. The rules below restate the reference's string rewrites (punctuation
spacing, ``@-@`` number separators, PTB's ``N`` and ``<unk>``, ...): they undo the tokenization
these corpora were published with, so that the GPT-2 tokenizer sees ordinary text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import DataError

# (pattern, replacement, is_regex), applied in order.
Rule = tuple[str, str, bool]

# The reference also rewrites the literal text "/' D/" (D a digit), a pattern with stray slashes
# that ordinary text never contains; it is left out.
_WIKITEXT: list[Rule] = [
    ("s '", "s'", False),
    (" @-@ ", "-", False), (" @,@ ", ",", False), (" @.@ ", ".", False),
    *((f" {mark} ", f"{mark} ", False) for mark in (":", ";", ".", "!", "?", ",")),
    # Spaces just inside brackets and quotes.
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    # Section markers "= = =" -> "===" (longest first).
    ("= = = =", "====", False), ("= = =", "===", False), ("= =", "==", False),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}", False),
    (" \n", "\n", False), ("\n ", "\n", False),
    (" N ", " 1 ", False),
    (" 's", "'s", False),
]

_PTB: list[Rule] = [
    (" 's", "'s", False), ("s ' ", "s' ", False), (" n't", "n't", False), (" \n ", "\n", False),
    ("\\/", "/", False),
    (r"(?<= )N(?= )", "1", True),  # every number token N between spaces (runs included) reads as 1
    ("$ 1", "$1", False), ("# 1", "#1", False),
    ("<unk>", "?", False),
]

_LM1B: list[Rule] = [
    ("http : / / ", "http://", False), ("https : / / ", "https://", False),
    (r" '(\w+)", r"'\1", True),
    (r" (\w+) \. ", r" \1. ", True), (r" (\w+) \.$", r" \1.", True),
    (" ? ", "? ", False), (r" \?$", "?", True),
    (" ! ", "! ", False), (r" \!$", "!", True),
    (" , ", ", ", False), (" : ", ": ", False), (" ; ", "; ", False), (" / ", "/", False),
    (r"\" ([^\"]+) \"", r'"\1"', True),
    (r"' ([^']+) '", r"'\1'", True),
    (r"\( ([^\(\)]+) \)", r"(\1)", True),
    (r"\[ ([^\[\]]+) \]", r"[\1]", True),
    ("$ ", "$", False), ("\N{POUND SIGN} ", "\N{POUND SIGN}", False),
]


def _apply(rules: list[Rule], text: str) -> str:
    for pattern, replacement, is_regex in rules:
        text = re.sub(pattern, replacement, text) if is_regex else text.replace(pattern, replacement)
    return text


def wikitext(text: str) -> str:
    return _apply(_WIKITEXT, text)


def ptb(text: str) -> str:
    return _apply(_PTB, text)


def lm1b(text: str) -> str:
    return _apply(_LM1B, text)


def lambada(text: str) -> str:
    """Curly double quotes made straight; each passage starts on a new line."""
    return "\n" + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace(
        "\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()


def scientific_papers(text: str) -> str:
    return lm1b(wikitext(text))


def unchanged(text: str) -> str:
    return text


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "none": unchanged, "wikitext": wikitext, "ptb": ptb, "lm1b": lm1b, "lambada": lambada,
    "scientific_papers": scientific_papers,
}

# The zero-shot datasets of the paper (and OpenWebText itself) and the rule the reference applies.
ZERO_SHOT_DETOKENIZER: dict[str, str] = {
    "openwebtext": "none", "ptb": "ptb", "wikitext-2": "wikitext", "wikitext-103": "wikitext", "lm1b": "lm1b",
    "lambada": "lambada", "ag_news": "none", "pubmed": "scientific_papers", "arxiv": "scientific_papers",
}


def get_detokenizer(name: str) -> Callable[[str], str]:
    if name not in DETOKENIZERS:
        raise DataError(f"unknown detokenizer {name!r}; choose one of {', '.join(DETOKENIZERS)}")
    return DETOKENIZERS[name]
