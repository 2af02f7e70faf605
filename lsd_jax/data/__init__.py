"""Data: a public-domain English corpus from package registries, and tokenisers.

``load_corpus(tokenizer, seq_len)`` gives packed int32 rows [N, seq_len] of a
deterministic train / validation split; ``get_tokenizer(name)`` gives "char", "text8",
"gpt2" or "gpt2-top<K>". See ``lsd_jax.data.corpus`` for sources, cache and split rule.
"""

from lsd_jax.data.corpus import (
    DEFAULT_SOURCES,
    SOURCES,
    Corpus,
    Document,
    cache_root,
    fetch_source,
    load_corpus,
    load_documents,
    pack,
    split_documents,
)
from lsd_jax.data.tokenizers import (
    CharTokenizer,
    GPT2BPETokenizer,
    RestrictedVocabTokenizer,
    Tokenizer,
    get_tokenizer,
)

__all__ = [
    "DEFAULT_SOURCES",
    "SOURCES",
    "CharTokenizer",
    "Corpus",
    "Document",
    "GPT2BPETokenizer",
    "RestrictedVocabTokenizer",
    "Tokenizer",
    "cache_root",
    "fetch_source",
    "get_tokenizer",
    "load_corpus",
    "load_documents",
    "pack",
    "split_documents",
]
