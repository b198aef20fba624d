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
