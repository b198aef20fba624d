"""What every experiment does: show a stimulus set to the served twin and read mean responses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..library import save_library
from ..score import score


def responses_to(url: str, model: str, stimuli: dict[str, np.ndarray], parameters: dict, out: Path,
                 progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Score a stimulus set through the clip model (library and Zarr store kept under `out`, so a
    rerun resumes) → (names, responses (S, T', N) with NaN past each stimulus's end)."""
    import zarr

    library = save_library(out / "library", stimuli, parameters)
    score(url, model, library, out / "responses.zarr", progress=progress, on_error="stop")
    store = zarr.open_group(out / "responses.zarr", mode="r")
    return list(store.attrs["stimuli"]), store["responses"][:]


def load_truth(recording: str | Path) -> dict[str, np.ndarray]:
    """The virtual mouse's per-neuron ground truth (`<recording>/truth/neurons/*.npy`)."""
    folder = Path(recording) / "truth" / "neurons"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no ground truth (only virtual-mouse recordings have it)")
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def clip_responses(url: str, model: str, videos: list[np.ndarray], behavior=None, pupil_center=None,
                   timeout: float = 600.0) -> list[np.ndarray]:
    """Many clips (T, H, W) through the clip model at once (all requests in flight, so the server
    batches them) → responses (T', N) per clip, in order. Raises on the first refused clip."""
    import queue

    import tritonclient.grpc as grpc

    from ..library import Stimulus
    from ..score import clip_inputs, model_parameters

    client = grpc.InferenceServerClient(url)
    params = model_parameters(client, model)
    results: queue.Queue = queue.Queue()
    for i, video in enumerate(videos):
        stimulus = Stimulus(str(i), video, behavior, pupil_center)
        client.async_infer(model, clip_inputs(stimulus, params), client_timeout=timeout,
                           callback=lambda result, error, i=i: results.put((i, result, error)))
    answers = [None] * len(videos)
    for _ in videos:
        i, result, error = results.get()
        if error is not None:
            raise ValueError(f"clip {i} refused: {error.message()}")
        answers[i] = result.as_numpy("responses")[0]
    client.close()
    return answers


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (experiments run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
