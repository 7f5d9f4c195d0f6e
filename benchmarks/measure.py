"""Measurements: step times (back-to-back and cold-cache), in-place memory bandwidth, import times, machine facts."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

MIB = 1 << 20


@dataclass(frozen=True)
class Timing:
    """Seconds per step over the timed repetitions."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), max(seconds))


class CacheSweeper:
    """Reads a buffer larger than the last-level cache, evicting what the previous step left there."""

    def __init__(self, nbytes: int) -> None:
        self.words = np.ones(max(1, nbytes // 8), dtype=np.uint64)

    def __call__(self) -> None:
        self.words.max()


# ------------------------------------------------------------------------------------------------
# bandwidth


@dataclass(frozen=True)
class Bandwidth:
    """In-place read-modify-write bandwidth in bytes per second: the best method and every method's."""

    best: float
    method: str
    methods: dict[str, float]
    buffer_bytes: int


def measure_bandwidth(nbytes: int, repeats: int = 7) -> Bandwidth:
    """Scale a float32 buffer of ``nbytes`` in place (2 * nbytes moved) with each available method; each
    method's bandwidth is from its median over ``repeats`` passes after one warm-up pass."""
    buffer = np.ones(max(1, nbytes // 4), dtype=np.float32)
    scale = np.float32(1.0)  # a run-time argument: no compiler can drop the multiplication
    methods = {name: make(buffer) for name, make in _bandwidth_methods().items()}
    rates = {}
    for name, run in methods.items():
        run(scale)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(scale)
            seconds.append(time.perf_counter() - start)
        rates[name] = 2 * buffer.nbytes / statistics.median(seconds)
    method = max(rates, key=rates.get)
    return Bandwidth(rates[method], method, rates, buffer.nbytes)


class ProbeRunner:
    """The bandwidth probe as a runner: one step scales a float32 buffer in place that moves ``traffic``
    bytes (half read, half written), with the method ``measure_bandwidth`` found fastest."""

    def __init__(self, method: str, traffic: int) -> None:
        self.buffer = np.ones(max(1, traffic // 8), dtype=np.float32)
        self._run = _bandwidth_methods()[method](self.buffer)
        self._scale = np.float32(1.0)

    def step(self) -> None:
        self._run(self._scale)


def _bandwidth_methods() -> dict[str, Callable[[np.ndarray], Callable[[np.float32], None]]]:
    """name -> (buffer -> in-place scale(s)); torch and Numba where they are installed."""
    methods = {"numpy multiply (1 thread)": lambda a: lambda s: np.multiply(a, s, out=a)}
    if importlib.util.find_spec("torch") is not None:
        import torch

        methods[f"torch mul_ ({torch.get_num_threads()} threads)"] = _torch_scale
    if importlib.util.find_spec("numba") is not None:
        import numba

        methods[f"numba prange ({numba.get_num_threads()} threads)"] = _numba_scale
    return methods


def _torch_scale(buffer: np.ndarray) -> Callable[[np.float32], None]:
    import torch

    tensor = torch.from_numpy(buffer)
    return lambda s: tensor.mul_(float(s))


@functools.cache
def _numba_kernel():
    import numba

    @numba.njit(parallel=True)
    def scale(a, s):
        for i in numba.prange(a.size):
            a[i] *= s

    return scale


def _numba_scale(buffer: np.ndarray) -> Callable[[np.float32], None]:
    kernel = _numba_kernel()
    return lambda s: kernel(buffer, s)


# ------------------------------------------------------------------------------------------------
# import time

#: backend -> (the framework module, a class or function of ours to import)
IMPORTS = {"numpy": ("numpy", "SGD"), "torch": ("torch", "SGD"), "jax": ("jax", "sgd")}

_IMPORT_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import {framework}
bare = time.perf_counter()
from optforge.generated.{backend} import {name}
done = time.perf_counter()
print(json.dumps({{"bare": bare - start, "generated": done - bare,
                  "loaded": sorted(m for m in ("sympy", "jinja2") if m in sys.modules)}}))
"""


def import_times(backends: list[str], repeats: int = 3) -> dict[str, dict]:
    """Per backend, in fresh interpreters: the bare framework import and what importing our generated
    package on top of it costs (medians, ms), and whether SymPy or jinja2 got imported."""
    out = {}
    for backend in backends:
        framework, name = IMPORTS[backend]
        script = _IMPORT_SCRIPT.format(framework=framework, backend=backend, name=name)
        runs = [_run_python(script) for _ in range(repeats)]
        out[backend] = {
            "framework_ms": 1e3 * statistics.median(r["bare"] for r in runs),
            "overhead_ms": 1e3 * statistics.median(r["generated"] for r in runs),
            "imports_sympy_or_jinja2": sorted({m for r in runs for m in r["loaded"]}),
        }
    return out


def _run_python(script: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"timing an import failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# machine


class CpuMonitor:
    """How busy the machine was with other work during the run (Linux ``/proc/stat``; None elsewhere):
    the CPU time of other processes and the time the hypervisor stole, in cores on average."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        """(wall, busy, steal, own) in seconds; busy and steal summed over every CPU."""
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        import resource  # Unix only, like /proc/stat

        ticks = [int(x) / os.sysconf("SC_CLK_TCK") for x in fields]
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
        own = sum(
            r.ru_utime + r.ru_stime
            for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        )
        return time.perf_counter(), user + nice + system + irq + softirq, steal, own

    def report(self) -> dict[str, float] | None:
        """Since construction: ``other_processes_cores`` and ``stolen_cores`` (averages over the wall time)."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall, busy, steal, own = (b - a for a, b in zip(self.start, end))
        return {"other_processes_cores": max(0.0, (busy - own) / wall), "stolen_cores": steal / wall}


def machine_facts() -> dict:
    """CPU, cache, thread counts and library versions of this run."""
    facts = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "l3_cache_bytes": _l3_bytes(),
        "python": platform.python_version(),
        "versions": {},
    }
    for package in ("numpy", "torch", "jax", "jaxlib", "optax", "numba"):
        try:
            facts["versions"][package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts["versions"][package] = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        facts["torch_threads"] = torch.get_num_threads()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _l3_bytes() -> int | None:
    """The L3 size from sysfs (Linux), or None."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
