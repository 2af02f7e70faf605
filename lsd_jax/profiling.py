"""Profiling of a run: JAX compile seconds (a jax.monitoring listener), peak memory, and a
phase timer splitting each phase's wall-clock into compile and run. `distill.fit` reports
its phases with it (history[0]["timing"]); the speed benchmarks read the same clock.
"""

from __future__ import annotations

import time

import jax

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_total = [0.0, False]


def compile_clock() -> float:
    """Seconds this process has spent so far tracing, lowering and compiling with JAX
    (from jax.monitoring events; the listener is registered on the first call)."""
    if not _compile_total[1]:
        def listen(event, duration, **_):
            if event in _COMPILE_EVENTS:
                _compile_total[0] += duration

        jax.monitoring.register_event_duration_secs_listener(listen)
        _compile_total[1] = True
    return _compile_total[0]


def memory_report() -> dict:
    """Peak resident memory of this process (MiB; Linux VmHWM, which unlike ru_maxrss is
    not inherited from a parent across fork + exec) and, where the backend reports it, the
    peak device memory in use (MiB, device 0)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
        out["peak_rss_mib"] = round(int(hwm[0]) / 1024, 1)
    except (OSError, IndexError, ValueError):
        try:
            import resource
            import sys

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["peak_rss_mib"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
        except (ImportError, OSError):
            pass
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_device_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    except Exception:  # noqa: BLE001 - not every backend has memory stats
        pass
    return out


class Phase:
    """Accumulates wall-clock and JAX compile seconds of a phase over several entries."""

    def __init__(self):
        self.wall = self.compile = 0.0
        self.count = 0

    def __enter__(self):
        self._t, self._c = time.perf_counter(), compile_clock()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t
        self.compile += compile_clock() - self._c
        self.count += 1

    def report(self) -> dict:
        return {"wall_s": round(self.wall, 3), "compile_s": round(self.compile, 3),
                "run_s": round(self.wall - self.compile, 3), "calls": self.count}
