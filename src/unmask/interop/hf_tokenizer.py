"""A model folder's tokenizer files for both readers: unmask's own and transformers' ``AutoTokenizer``.

unmask writes its tokenizer as it always does (``unmask_tokenizer.json`` and its data), which
unmask reads back exactly. Beside it go ``tokenizer.json`` and ``tokenizer_config.json`` for
transformers: a Hugging Face tokenizer is written as it is; GPT-2's tiktoken ranks become the
equivalent byte-level BPE (each merge recovered from the ranks: the token of rank r is the merge
of the two pieces that byte-pair merging with the ranks below r leaves of it). The text8
character tokenizer has no transformers equivalent: it gets unmask's files only.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from unmask.data import Tokenizer
from unmask.data.subword_tokenizers import (
    HF_TOKENIZER_FILE,
    HFTokenizer,
    TiktokenTokenizer,
    parse_ranks,
)
from unmask.data.tokenizer_base import MASK_TEXT

TOKENIZER_CONFIG = "tokenizer_config.json"


def byte_characters() -> list[str]:
    """GPT-2's byte-level alphabet: the character standing for each byte 0..255. Printable Latin-1
    bytes stand for themselves; the others take the characters from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
                 *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[byte] for byte in range(256)]


def merge_pieces(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """Byte-pair merging of ``token`` with the ranks below ``below``: lowest rank first."""
    pieces = [token[i : i + 1] for i in range(len(token))]
    while len(pieces) > 1:
        candidates = [(ranks.get(pieces[i] + pieces[i + 1], below), i) for i in range(len(pieces) - 1)]
        rank, i = min(candidates)
        if rank >= below:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def tiktoken_backend(tokenizer: TiktokenTokenizer) -> tokenizers.Tokenizer:
    """The byte-level BPE that encodes as ``tokenizer`` does, with its special tokens and MASK."""
    ranks = parse_ranks(tokenizer.ranks_data)
    alphabet = byte_characters()

    def text(piece: bytes) -> str:
        return "".join(alphabet[byte] for byte in piece)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = merge_pieces(token, ranks, rank)  # exactly two pieces in a consistent ranks file
            merges.append((text(left), text(right)))
    backend = tokenizers.Tokenizer(models.BPE({text(token): rank for token, rank in ranks.items()}, merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(tokenizer.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    backend.add_special_tokens([tokenizers.AddedToken(name, special=True) for name, _ in specials])
    backend.add_special_tokens([tokenizers.AddedToken(MASK_TEXT, special=True)])
    return backend


def write_tokenizer_files(tokenizer: Tokenizer, folder: Path, *, model_length: int) -> bool:
    """unmask's tokenizer files, and transformers' where there is an equivalent (then True)."""
    tokenizer.save(folder)
    if isinstance(tokenizer, HFTokenizer):
        backend = tokenizer.backend  # its tokenizer.json is already written by save()
    elif isinstance(tokenizer, TiktokenTokenizer):
        backend = tiktoken_backend(tokenizer)
        backend.save(str(folder / HF_TOKENIZER_FILE))
    else:
        return False
    roles = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id,
             "mask_token": tokenizer.mask_id}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_length,
              "clean_up_tokenization_spaces": False,
              **{role: backend.id_to_token(token_id) for role, token_id in roles.items()}}
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return True
