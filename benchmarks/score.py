"""`twin bench score`: `twin score` through the Triton server vs the clip graph run locally.

A twin of the given preset (random weights, 8,000 neurons) is exported and served (`ServedTwin`);
a library of natural-like stimuli is scored, the two paths taking turns, (1) locally with ONNX
Runtime on the clip graph, one stimulus per call, the responses written to a Zarr store the same
way, and (2) through the served clip model with `twin score`. Each pass writes a fresh store.
Throughput in input frames per second (median over the rounds) → benchmarks/results/score.json;
target: the server path keeps at least 70% of the local throughput.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import zarr

from twinserve.clients.library import Library, save_library
from twinserve.clients.score import score
from twinserve.contract import BEHAVIOR, CLIP_INPUTS, GREY, PIXEL_RANGE, PUPIL_CENTER, RESPONSES, VIDEO
from twinserve.export.manifest import verified_path

from .harness import RESULTS, Workload, machine, measure, write_results
from .served import ServedTwin
from .twins import RECORDING

TARGET = 0.7  # the served path should keep this fraction of the local throughput


def _library(folder: Path, frame_shape, stimuli: int, frames: int, seed: int = 0) -> Path:
    """Smooth random textures panning, as whole pixels: {name: (T, H, W)} saved as a library."""
    rng = np.random.default_rng(seed)
    height, width = frame_shape
    videos = {}
    for i in range(stimuli):
        smooth = np.cumsum(np.cumsum(rng.normal(size=(height + frames, width)), 0), 1)
        smooth = (smooth - smooth.mean()) / smooth.std()
        panned = np.stack([smooth[t:t + height] for t in range(frames)])
        videos[f"stim{i:04d}"] = np.clip(GREY + 50 * panned, *PIXEL_RANGE).round()
    return save_library(folder, videos)


def _local_scorer(served: ServedTwin, library: Path):
    """Score the library with ONNX Runtime in this process into a Zarr store at a given path."""
    session = onnxruntime.InferenceSession(str(verified_path(served.artifacts, RECORDING, "clip")),
                                           providers=["CPUExecutionProvider"])
    entry, stimuli = served.manifest.recording(RECORDING), Library(library)

    def run(out: Path) -> None:
        store, array = zarr.open_group(out, mode="w"), None
        for row, name in enumerate(stimuli.names):
            video = stimuli.load(name).video.astype(np.float32)[None]
            frames = video.shape[1]
            inputs = {VIDEO: video, BEHAVIOR: np.tile(entry.behavior_mean, (1, frames, 1)).astype(np.float32),
                      PUPIL_CENTER: np.tile(entry.pupil_center_mean, (1, frames, 1)).astype(np.float32)}
            responses = session.run([RESPONSES], {name: inputs[name] for name in CLIP_INPUTS})[0][0]
            if array is None:
                array = store.create_array(RESPONSES, shape=(len(stimuli.names), *responses.shape),
                                           chunks=(1, *responses.shape), dtype="float32", fill_value=np.nan)
            array[row] = responses
    return run


def _served_scorer(served: ServedTwin, library: Path, in_flight: int):
    """`twin score` through the served clip model into a Zarr store at a given path."""
    def run(out: Path) -> None:
        summary = score(served.url, served.model("clip"), library, out, in_flight=in_flight, progress=False)
        if summary["failed"]:
            raise RuntimeError(f"twin score failed stimuli: {summary['failed']}")
    return run


def _fresh_store(out: Path, scorer, frames: int) -> Workload:
    """A workload scoring `frames` input frames into the store `out`, removed (untimed) before each call."""
    return Workload(lambda: scorer(out), frames, prepare=lambda: shutil.rmtree(out, ignore_errors=True))


def run_bench(out: str | Path = f"{RESULTS}/score.json", preset: str = "small", neurons: int = 8000,
              stimuli: int = 24, frames: int = 300, in_flight: int = 4, repeats: int = 3) -> dict:
    """Both paths, `repeats` interleaved rounds of one library pass each → results (also written to `out`)."""
    with tempfile.TemporaryDirectory() as folder, ServedTwin(preset, neurons, Path(folder) / "twin") as served:
        folder = Path(folder)
        library = _library(folder / "library", served.manifest.frame_shape, stimuli, frames)
        total = stimuli * frames
        workloads = {"local_onnxruntime": _fresh_store(folder / "local.zarr", _local_scorer(served, library), total),
                     "twin_score_via_triton": _fresh_store(folder / "served.zarr",
                                                           _served_scorer(served, library, in_flight), total)}
        rates = measure(workloads, seconds=0.0, repeats=repeats)
    facts = machine()
    results = {"preset": preset, "neurons": neurons, "stimuli": stimuli, "frames_per_stimulus": frames,
               "in_flight": in_flight, "cpus": facts["cpus"], "machine": facts, "repeats": repeats}
    for name, rate in rates.items():
        results[name] = {"seconds": total / rate.median, "frames_per_s": rate.median, "spread": rate.spread}
    results["server_over_local"] = rates["twin_score_via_triton"].median / rates["local_onnxruntime"].median
    results["target"] = TARGET
    write_results(results, out)
    return results
