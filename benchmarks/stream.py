"""`twin bench stream`: per-frame latency of twins streamed through Triton, in one run on this machine.

For each preset (random weights, 8,000 neurons: speed does not depend on the weights) the twin is
exported and served (`ServedTwin`) twice in one server: the stream model with its state pool, and
the copying model from before it (`benchmarks.copying_stream`), so both paths are measured side by
side in one run. At C concurrent streams (1, 4, 16), taking turns at each C:
- the project's client on both paths: each stream sends its next frame as soon as the previous
  answer is back → per-frame round-trip latency p50/p99 and frames/s over all streams;
- `perf_analyzer` (Triton's load generator, `--streaming --sequence-length`) on the pool;
then the real-time capacity of each path: N streams paced at the frame rate, started out of phase
like independent cameras; the largest N whose p99 latency stays under one frame, by doubling then
bisection, searched twice per path (taking turns) and the lower result kept.
→ benchmarks/results/stream.json
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from twinserve.clients.stream import StreamClient
from twinserve.contract import BEHAVIOR, FPS, FRAME_UINT8, PUPIL_CENTER
from twinserve.export.onnx_export import random_inputs

from .harness import RESULTS, Stopwatch, interleave, machine, write_results
from .served import SUFFIX, ServedTwin
from .twins import RECORDING

CONCURRENCY = (1, 4, 16)
COPYING = "stream" + SUFFIX  # the stream model before the state pool (`benchmarks.copying_stream`)
NOTE = "server and clients share this machine's cores; latency is the client's round trip per frame"


def raw_frames(frame_shape, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stream's raw inputs: frames (T, H, W) uint8, behavior (T, 2), pupil_center (T, 2)."""
    video, behavior, pupil = (a[0] for a in random_inputs(1, count, frame_shape, seed))
    return np.rint(video).astype(np.uint8), behavior, pupil


def _streams(served: ServedTwin, count: int, frames: int, fps: float | None, model: str = "stream") -> dict:
    """`count` concurrent streams of `frames` frames to `model` ("stream", or "stream_copying": the
    path before the state pool); paced at `fps` or closed-loop (fps None)."""
    latencies, errors = [[] for _ in range(count)], []
    barrier = threading.Barrier(count + 1)
    url, model = served.url, served.model(model)

    def run(i):
        try:
            with StreamClient(url, model) as client:
                video, behavior, pupil = raw_frames(served.manifest.frame_shape, frames, seed=i)
                barrier.wait()
                start = time.perf_counter() + (i / count / fps if fps else 0)  # out of phase
                for t in range(frames):
                    if fps:
                        time.sleep(max(0.0, start + t / fps - time.perf_counter()))
                    client.send(video[t], behavior[t], pupil[t])
                latencies[i] = client.latencies
        except Exception as error:  # noqa: BLE001 — reported in the results
            errors.append(repr(error))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait(120)
    except threading.BrokenBarrierError:
        pass
    with Stopwatch() as watch:
        for thread in threads:
            thread.join()
    if errors:
        return {"streams": count, "error": errors[0]}
    ms = np.concatenate(latencies) * 1e3
    return {"streams": count, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "frames": int(len(ms)), "frames_per_s": float(len(ms) / watch.seconds)}


def realtime_capacity(served: ServedTwin, frames: int, limit: int, budget_ms: float = 1e3 / FPS,
                      model: str = "stream") -> dict:
    """Largest number of streams at the frame rate with p99 under `budget_ms` (≤ limit), and every probe made."""
    probes = {}

    def passes(n: int) -> bool:
        probes[n] = _streams(served, n, frames, FPS, model)
        return "error" not in probes[n] and probes[n]["p99_ms"] < budget_ms

    good, n = 0, 1
    while n <= limit and passes(n):
        good, n = n, n * 2
    bad = min(n, limit + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if passes(middle) else (good, middle)
    return {"max_streams_at_30fps": good, "p99_budget_ms": budget_ms, "probes": [probes[k] for k in sorted(probes)]}


def perf_analyzer_env(workdir: Path) -> dict[str, str]:
    """perf_analyzer links libb64.so.0d and libcudart.so.12: point them at the copies the
    nvidia-pytriton wheel ships (renamed by auditwheel), so no system package is needed."""
    import pytriton

    libs, target = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs", workdir / "lib"
    target.mkdir(exist_ok=True)
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        found = sorted(libs.glob(pattern))
        if found and not (target / name).exists():
            (target / name).symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(target), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def perf_analyzer(served: ServedTwin, concurrency: int, workdir: Path, sequence_length: int = 300) -> dict:
    """perf_analyzer over gRPC streaming with sequences → throughput and client latency percentiles."""
    binary, model = Path(sys.executable).parent / "perf_analyzer", served.model("stream")
    data, report = workdir / "input.json", workdir / f"perf_{model}_{concurrency}.csv"
    frame, behavior, pupil = raw_frames(served.manifest.frame_shape, 1, seed=0)
    data.write_text(json.dumps({"data": [{FRAME_UINT8: {"content": frame[0].ravel().tolist(),
                                                        "shape": list(frame[0].shape)},
                                          BEHAVIOR: behavior[0].tolist(), PUPIL_CENTER: pupil[0].tolist()}]}))
    command = [str(binary), "-m", model, "-u", served.url, "-i", "grpc", "--streaming", "--sequence-length",
               str(sequence_length), "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", str(data),
               "--measurement-interval", "4000", "--stability-percentage", "50", "--max-trials", "5",
               "--percentile", "99", "-f", str(report)]
    try:
        result = subprocess.run(command, env=perf_analyzer_env(workdir), capture_output=True, text=True, timeout=150)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"streams": concurrency, "error": repr(error)}
    if result.returncode != 0 or not report.is_file():
        return {"streams": concurrency, "error": (result.stdout + result.stderr)[-800:]}
    row = next(csv.DictReader(report.open()))
    return {"streams": concurrency, "frames_per_s": float(row["Inferences/Second"]),
            **{f"{p}_ms": float(row[f"{p} latency"]) / 1e3 for p in ("p50", "p90", "p99")}}


def _surviving(served: ServedTwin, what, crashes: list, measure):
    """`measure()`; if the server died under it, record that (`what`: the load it was under), restart
    the server and measure again.

    The bundled tritonserver has aborted under many streams (a glibc assertion in
    TRITONBACKEND_ResponseSend, twice in ~8 runs under perf_analyzer; once in a real-time search)."""
    row = measure()
    if served.crashed():
        crashes.append({"streams": what, "log": served.restart()})
        row = measure()
    return row


def bench_preset(preset: str, neurons: int, frames: int, workdir: Path, realtime_limit: int = 64,
                 realtime_frames: int = 90) -> dict:
    """One preset served with both stream paths (the state pool, and the copying model before it):
    both paths with the project's client and the pool with perf_analyzer at every concurrency, taking
    turns; then the real-time capacity of each path, twice, taking turns."""
    result = {"preset": preset, "neurons": neurons, "client": [], "client_copying": [], "perf_analyzer": [],
              "server_crashes": []}
    with ServedTwin(preset, neurons, workdir / preset, copying_stream=True) as served:
        result["receptive_field"] = served.manifest.receptive_field
        step = served.manifest.graph(RECORDING, "step")
        result["state_bytes_per_stream"] = step.details["state_bytes_per_stream"]
        for concurrency in CONCURRENCY:
            rows = interleave({
                "client": lambda: _streams(served, concurrency, frames, None),
                "client_copying": lambda: _streams(served, concurrency, frames, None, COPYING),
                "perf_analyzer": lambda: _surviving(served, concurrency, result["server_crashes"],
                                                    lambda: perf_analyzer(served, concurrency, workdir))}, repeats=1)
            for source, (row,) in rows.items():
                result[source].append(row)
        capacity = interleave({path: lambda path=path, model=model: _surviving(
                                   served, path, result["server_crashes"],
                                   lambda: realtime_capacity(served, realtime_frames, realtime_limit, model=model))
                               for path, model in (("realtime", "stream"), ("realtime_copying", COPYING))},
                              repeats=2)
        for path, runs in capacity.items():  # the lower of two searches: a lucky one does not count
            result[path] = {**min(runs, key=lambda run: run["max_streams_at_30fps"]), "runs": runs}
    return result


def run_bench(out: str | Path = f"{RESULTS}/stream.json", presets=("small", "base"), neurons: int = 8000,
              frames: int = 150, **options) -> dict:
    """Every preset, one after the other → results (also written to `out`).
    options: `bench_preset`'s realtime_limit and realtime_frames."""
    results = {"machine": machine(), "note": NOTE, "presets": {}}
    with tempfile.TemporaryDirectory() as folder:
        for preset in presets:
            results["presets"][preset] = bench_preset(preset, neurons, frames, Path(folder), **options)
    write_results(results, out)
    return results
