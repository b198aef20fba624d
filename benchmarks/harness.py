"""The one timer and the one result writer of every `twin bench`.

Timing: each compared workload is called once or more to warm up, then measured in `repeats`
rounds; within a round the workloads take turns (round robin), so a burst of machine noise hits
all of them alike. A measurement calls its workload until at least `seconds` of timed calls have
passed (at least one call); an optional untimed `prepare` runs before each call. Reported: the
median rate over the rounds and its spread.

Results: `write_results` writes JSON atomically (a crash never leaves half a file), creating the
folder; `machine` records what the figures were measured on; `oracle_summary` picks a trained
run's oracle-tier scores out of its metrics.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = "benchmarks/results"  # where `twin bench` writes by default (relative to the working directory)


class Stopwatch:
    """Wall time of a `with` block: `.seconds` once it ends (`.elapsed` while it runs)."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = self.elapsed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class Workload:
    """One compared path: `run()` produces `units` (output frames, FLOPs, …) per call; `prepare()`,
    if given, runs untimed before every call (e.g. to give the call a fresh output folder)."""

    run: Callable[[], object]
    units: float = 1.0
    prepare: Callable[[], object] | None = None

    def call(self) -> float:
        """Prepare, then run once → seconds the run took."""
        if self.prepare is not None:
            self.prepare()
        with Stopwatch() as watch:
            self.run()
        return watch.seconds


@dataclass(frozen=True)
class Rate:
    """Units per second of one workload, one value per round."""

    rates: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """(highest − lowest) / median over the rounds: 0 when every round agreed."""
        return (max(self.rates) - min(self.rates)) / self.median if self.median else 0.0


def interleave(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Call every path once per round, in the given order, for `repeats` rounds → {name: [results]}."""
    results: dict[str, list] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, path in paths.items():
            results[name].append(path())
    return results


def _timed(workload: Workload, seconds: float) -> float:
    """Call `workload` until its timed calls add up to at least `seconds` → units per second."""
    calls, spent = 0, 0.0
    while calls == 0 or spent < seconds:
        spent += workload.call()
        calls += 1
    return workload.units * calls / spent


def measure(workloads: dict[str, Workload], seconds: float = 1.0, repeats: int = 3,
            warmup: int = 1) -> dict[str, Rate]:
    """Warm every workload up (`warmup` calls each), then measure all of them interleaved → {name: Rate}."""
    for workload in workloads.values():
        for _ in range(warmup):
            workload.call()
    rounds = interleave({name: (lambda w=w: _timed(w, seconds)) for name, w in workloads.items()}, repeats)
    return {name: Rate(tuple(rates)) for name, rates in rounds.items()}


def matmul_gflops(size: int = 2048, seconds: float = 0.5, repeats: int = 3) -> float:
    """This machine's fp32 matrix-product rate in GFLOP/s (PyTorch, its default threads)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return measure({"matmul": Workload(lambda: a @ b, 2 * size**3 / 1e9)}, seconds, repeats)["matmul"].median


def machine(matmul: bool = False) -> dict:
    """Facts about this machine: cores, processor, Python, torch/onnxruntime versions where they import,
    torch's thread count, and with `matmul` the fp32 matrix-product rate (`matmul_fp32_gflops`)."""
    facts = {"cpus": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version()}
    for name in ("torch", "onnxruntime"):
        try:
            facts[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    if "torch" in facts:
        import torch

        facts["torch_threads"] = torch.get_num_threads()
        if matmul:
            facts["matmul_fp32_gflops"] = matmul_gflops()
    return facts


ORACLE_KEYS = ("single_trial_correlation", "ceiling_single_trial_correlation", "fraction_of_ceiling")


def oracle_summary(metrics: dict) -> dict:
    """A run's metrics.json → per recording its oracle tier's `ORACLE_KEYS` (those it has)."""
    return {recording: {key: tiers["oracle"][key] for key in ORACLE_KEYS if key in tiers["oracle"]}
            for recording, tiers in metrics.items()}


def write_results(results: dict, out: str | Path) -> Path:
    """Write `results` as JSON to `out` atomically, creating its folder → the path written.

    The JSON is encoded before anything touches the disk, and lands under its name only complete."""
    out = Path(out)
    text = json.dumps(results, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text + "\n")
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out
