"""`twin bench score`: `twin score` through the Triton server vs the clip graph run locally, one run.

A twin of the given preset (random weights, 8,000 neurons) is exported; a library of natural-like
stimuli is scored (1) locally with ONNX Runtime on the clip graph, one stimulus per call, the
responses written to a Zarr store the same way, and (2) through the served clip model with
`twin score`. Throughput in input frames per second → benchmarks/results/score.json; target: the
server path keeps at least 70% of the local throughput.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .library import Library, save_library
from .score import score


def _library(folder: Path, stimuli: int, frames: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    videos = {}
    for i in range(stimuli):  # smooth random textures panning, as whole pixels
        base = rng.normal(size=(36 + frames, 64))
        smooth = np.cumsum(np.cumsum(base, 0), 1)
        smooth = (smooth - smooth.mean()) / smooth.std()
        videos[f"stim{i:04d}"] = np.clip(128 + 50 * np.stack([smooth[t:t + 36] for t in range(frames)]), 0, 255).round()
    return save_library(folder, videos)


def local_scores(clip_path: Path, library: Path, out: Path, behavior_mean, pupil_mean) -> float:
    """Score the library with ONNX Runtime in this process into a Zarr store → seconds taken."""
    import onnxruntime
    import zarr

    session = onnxruntime.InferenceSession(str(clip_path), providers=["CPUExecutionProvider"])
    stimuli = Library(library)
    store = zarr.open_group(out, mode="w")
    started = time.perf_counter()
    array = None
    for row, name in enumerate(stimuli.names):
        video = stimuli.load(name).video.astype(np.float32)[None]
        frames = video.shape[1]
        responses = session.run(None, {"video": video,
                                       "behavior": np.tile(behavior_mean, (1, frames, 1)).astype(np.float32),
                                       "pupil_center": np.tile(pupil_mean, (1, frames, 1)).astype(np.float32)})[0][0]
        if array is None:
            array = store.create_array("responses", shape=(len(stimuli.names), *responses.shape),
                                       chunks=(1, *responses.shape), dtype="float32", fill_value=np.nan)
        array[row] = responses
    return time.perf_counter() - started


def run_bench(out: str | Path = "benchmarks/results/score.json", preset: str = "small", neurons: int = 8000,
              stimuli: int = 24, frames: int = 300, in_flight: int = 4) -> dict:
    import torch

    from twinserve.export.onnx_export import export_twin
    from twinserve.serving.repository import model_names, write_repository
    from twinserve.serving.server import Ports, TritonServer
    from twinserve.training.model import Twin
    from twinserve.training.presets import PRESETS

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        twin = Twin(PRESETS[preset], {"bench": neurons}).eval()
        manifest = export_twin(twin, preset, {"bench": {"neurons": neurons, "unit_ids": list(range(neurons))}},
                               folder / "artifacts")
        entry = manifest["recordings"]["bench"]
        library = _library(folder / "library", stimuli, frames)
        local_seconds = local_scores(folder / "artifacts" / "bench" / "clip.onnx", library, folder / "local.zarr",
                                     np.array(entry["behavior_mean"]), np.array(entry["pupil_center_mean"]))
        write_repository(folder / "artifacts", folder / "models")
        with TritonServer(folder / "models", Ports.free()) as server:
            served = score(server.url, model_names("bench")["clip"], library, folder / "served.zarr",
                           in_flight=in_flight, progress=False)
    total = stimuli * frames
    results = {"preset": preset, "neurons": neurons, "stimuli": stimuli, "frames_per_stimulus": frames,
               "in_flight": in_flight, "cpus": os.cpu_count(),
               "local_onnxruntime": {"seconds": local_seconds, "frames_per_s": total / local_seconds},
               "twin_score_via_triton": {"seconds": served["seconds"], "frames_per_s": served["frames_per_s"]},
               "server_over_local": served["frames_per_s"] / (total / local_seconds), "target": 0.7}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2))
    return results
