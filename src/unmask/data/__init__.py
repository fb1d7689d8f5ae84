"""Data for unmask: tokenizers, document sources, cached token blocks and batching.

text -> ``iter_documents`` -> ``Tokenizer`` -> ``TokenBlocks`` (cached on disk) ->
``batch_iterator`` / ``eval_batches`` -> the training loop and evaluation. Conversations (a chat file, for
supervised fine-tuning) become ``ChatExamples`` instead (:mod:`.chat`).
"""

from .batching import batch_iterator, corpus_entropy, eval_batches
from .blocks import TokenBlocks
from .chat import ChatExamples, is_chat_source
from .detokenizers import DETOKENIZERS, ZERO_SHOT_DETOKENIZER
from .errors import DataError
from .sources import KNOWN_DATASETS, iter_documents
from .tokenizer_base import Tokenizer
from .tokenizer_loading import get_tokenizer, load_tokenizer

__all__ = [
    "ChatExamples",
    "is_chat_source",
    "DETOKENIZERS",
    "ZERO_SHOT_DETOKENIZER",
    "KNOWN_DATASETS",
    "DataError",
    "TokenBlocks",
    "Tokenizer",
    "batch_iterator",
    "eval_batches",
    "get_tokenizer",
    "iter_documents",
    "load_tokenizer",
    "corpus_entropy",
]
