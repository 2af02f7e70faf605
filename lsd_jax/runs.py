"""Runs that cannot be lost or mixed: the --out lock, atomic writes, the resume check of the
saved configuration, and step-numbered orbax checkpoints that skip incomplete saves.

- `RunLock(dir)`: an exclusive `fcntl.flock` on `dir/.lsd-jax.lock` holding the pid, host
  and command. The kernel drops the lock when its process dies, so a lock file left by a
  killed run is stale by construction and is taken over; a live holder is named in the
  error. Re-entrant within one process (the CLI and `distill.fit` both take it).
- `write_json`, `write_text`, `save_figure`: write `path.tmp-PID`, then `os.replace`.
- `check_config(dir, config, resume=...)`: on --resume compares with `dir/run_config.json`
  and names every field that differs; then records the configuration.
- `Checkpoints(dir, prefix)`: `<prefix><step:04d>` orbax directories with a JSON sidecar
  `<name>.history.json`. Only a directory with the final name (orbax renames its
  `*.orbax-checkpoint-tmp*` directory when a save commits) and its sidecar is complete;
  `latest()` ignores the rest and `clean()` removes it, so a kill during a save resumes
  from the last complete step. Shared by distill (epochs) and train-teacher (steps).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Any, Iterable, Optional

from lsd_jax.validate import LOCK_NAME, InputError

RUN_CONFIG = "run_config.json"
SIDECAR = ".history.json"


# ----------------------------------------------------------------------- atomic writes
def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (a reader sees the old file or the new one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any, indent: Optional[int] = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def save_figure(fig, path: str, **kwargs) -> None:
    """matplotlib `fig.savefig` to `path` atomically (format from the extension)."""
    tmp = _tmp(path)
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    try:
        fig.savefig(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------- lock
_HELD: dict = {}  # realpath of a lock file -> [fd, depth] held by this process


class RunLock:
    """Exclusive use of an output directory by one live run (see the module docstring).

    enabled False (e.g. a non-primary host of a multi-host run) makes it a no-op."""

    def __init__(self, directory: str, flag: str = "--out", enabled: bool = True):
        self.path = os.path.realpath(os.path.join(directory, LOCK_NAME))
        self.directory, self.flag, self.enabled = directory, flag, enabled

    def __enter__(self) -> "RunLock":
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.release()

    def acquire(self) -> None:
        import fcntl

        if self.path in _HELD:
            _HELD[self.path][1] += 1
            return
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise InputError(
                    f"{self.flag} {self.directory} is in use by another live run ({holder}); wait for it to end "
                    f"or choose another {self.flag}") from None
            # the holder may have removed the file between our open and flock: lock the file on disk
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InputError(f"{self.flag} {self.directory}: could not take the lock {self.path}")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        _HELD[self.path] = [fd, 1]

    def release(self) -> None:
        import fcntl

        held = _HELD.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self.path]
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(held[0], fcntl.LOCK_UN)
        os.close(held[0])


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, 0)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
    except (OSError, ValueError):
        return "holder unknown"


# ------------------------------------------------------------------ configuration check
def _flat(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(saved: dict, now: dict, may_change: Iterable[str] = ()) -> list:
    """'field (saved X, now Y)' for every (dotted, nested) field that differs, except `may_change`."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(now)))  # JSON-normalised
    skip = set(may_change)
    return [f"{k} (saved {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r})"
            for k in sorted(set(a) | set(b)) if k not in skip and a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_config(directory: str, config: dict, *, resume: bool, may_change: Iterable[str] = (),
                 write: bool = True) -> None:
    """--resume: refuse a configuration that differs from `directory/run_config.json`
    (naming every field); then record `config` there (atomically; `write` False: not)."""
    path = os.path.join(directory, RUN_CONFIG)
    if resume and os.path.isfile(path):
        with open(path) as f:
            try:
                saved = json.load(f)
            except json.JSONDecodeError:
                raise InputError(f"--resume: {path} is not JSON; it records the run's configuration") from None
        diff = config_diff(saved, config, may_change)
        if diff:
            raise InputError(f"--resume: the configuration differs from the run saved in {directory} "
                             f"({RUN_CONFIG}): " + "; ".join(diff) + ". Resume with the saved values or use a new --out")
    if write:
        write_json(path, config)


# ------------------------------------------------------------------------ checkpoints
class Checkpoints:
    """Step-numbered orbax (StandardCheckpointer) saves of a pytree + a JSON sidecar."""

    def __init__(self, directory: str, prefix: str = "epoch_", keep: int = 2):
        self.directory, self.prefix, self.keep = os.path.abspath(directory), prefix, keep
        self._name = re.compile(rf"^{re.escape(prefix)}(\d+)$")

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}{step:04d}")

    def steps(self) -> list:
        """Complete steps, ascending: the final directory name and the sidecar both present."""
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in os.listdir(self.directory):
            m = self._name.match(name)
            if m and os.path.isdir(os.path.join(self.directory, name)) and \
                    os.path.isfile(os.path.join(self.directory, name + SIDECAR)):
                out.append(int(m.group(1)))
        return sorted(out)

    def latest(self) -> Optional[int]:
        s = self.steps()
        return s[-1] if s else None

    def incomplete(self) -> list:
        """Names left by interrupted saves: orbax tmp directories, step directories without
        a sidecar, sidecars without a directory, and our own atomic-write temporaries."""
        if not os.path.isdir(self.directory):
            return []
        done = {f"{self.prefix}{s:04d}" for s in self.steps()}
        bad = []
        for name in os.listdir(self.directory):
            if not name.startswith(self.prefix):
                continue
            base = name[: -len(SIDECAR)] if name.endswith(SIDECAR) else name
            if base not in done:
                bad.append(name)
        return sorted(bad)

    def clean(self) -> list:
        """Removes `incomplete()` entries; returns their names."""
        bad = self.incomplete()
        for name in bad:
            p = os.path.join(self.directory, name)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else _remove(p)
        return bad

    def save(self, step: int, tree: Any, sidecar: Any, primary: bool = True) -> None:
        """Saves `tree` (every host, global arrays) then, on the primary host, the sidecar
        (atomically; it marks the step complete) and prunes to the `keep` newest steps."""
        import orbax.checkpoint as ocp

        path = self.path(step)
        if primary:
            _remove(path + SIDECAR)
            if os.path.exists(path):
                shutil.rmtree(path)
        os.makedirs(self.directory, exist_ok=True)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(path, tree)
            ckpt.wait_until_finished()
        if not primary:
            return
        write_json(path + SIDECAR, sidecar, indent=None)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)
            _remove(self.path(old) + SIDECAR)

    def restore(self, step: int, like: Any) -> tuple:
        """(tree shaped like `like`, sidecar) of a complete step."""
        import jax
        import orbax.checkpoint as ocp

        path = self.path(step)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            with ocp.StandardCheckpointer() as ckpt:
                tree = ckpt.restore(path, abstract)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise InputError(f"checkpoint {path} does not match this run's state ({str(e).splitlines()[0]}); "
                             "resume with the configuration it was saved with") from None
        with open(path + SIDECAR) as f:
            return tree, json.load(f)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
