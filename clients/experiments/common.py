"""What every experiment does: show stimuli to the served twin and read responses lined up with them.

Every stimulus is shown after a grey lead-in, so the twin starts from a settled state:
- a finite receptive field of R frames: R - 1 grey frames, exactly what the clip graph consumes
  before its first output, so output frame j is movie frame j;
- unbounded memory (a recurrent twin): `UNBOUNDED_LEAD_IN_S` seconds of grey, a fixed choice long
  enough for the state to settle from zeros on grey; its outputs (one per input frame, offset 0)
  are dropped, so again output frame j is movie frame j.
`ServedTwin` does both and checks that the served model's frame shape is the stimuli's.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinserve.contract import FPS, GREY, RESPONSES, ModelParameters

from ..connection import Connection, connection_lost, key_refused
from ..library import Stimulus, save_library
from ..score import clip_inputs, model_parameters, score
from ..stimuli import HEIGHT, WIDTH

UNBOUNDED_LEAD_IN_S = 2.0  # grey before every stimulus for a twin with unbounded memory
CLIPS_IN_FLIGHT = 16  # clip requests on the wire at once: batches fill, the server's queue does not overflow


def lead_in_frames(receptive_field: int | None) -> int:
    """Grey frames before every stimulus: R - 1, or `UNBOUNDED_LEAD_IN_S` seconds for unbounded memory."""
    return round(UNBOUNDED_LEAD_IN_S * FPS) if receptive_field is None else receptive_field - 1


@dataclass(frozen=True)
class ServedTwin:
    """The clip model an experiment queries at `url` (a gRPC address or a `Connection`: API key, TLS),
    with its `contract.ModelParameters`."""

    url: str | Connection
    model: str
    parameters: ModelParameters

    @classmethod
    def connect(cls, url: str | Connection, model: str) -> ServedTwin:
        """Read the model's parameters; refuses a model whose frame shape is not the stimuli's (H, W)."""
        parameters = model_parameters(url, model)
        if tuple(parameters.frame_shape) != (HEIGHT, WIDTH):
            raise ValueError(f"model {model!r} takes frames {tuple(parameters.frame_shape)}, but the experiments' "
                             f"stimuli are {(HEIGHT, WIDTH)} (contract.DEFAULT_FRAME_SHAPE): run the experiments on "
                             f"a twin trained at that frame shape")
        return cls(url, model, parameters)

    @property
    def lead_in(self) -> int:
        """Grey frames shown before every stimulus."""
        return lead_in_frames(self.parameters.receptive_field)

    def clip(self, movie: np.ndarray) -> np.ndarray:
        """The clip sent for a movie (T, H, W): grey lead-in, then the movie → (lead_in + T, H, W)."""
        return np.concatenate([np.full((self.lead_in, *movie.shape[1:]), GREY, np.float32), movie])

    def aligned(self, responses: np.ndarray) -> np.ndarray:
        """Responses (..., lead_in + T - offset, N) to `clip(movie)` → (..., T, N): frame j is movie frame j."""
        return responses[..., self.lead_in - self.parameters.offset:, :]

    def responses_to(self, stimuli: dict[str, np.ndarray], parameters: dict, out: Path,
                     progress: bool = True) -> tuple[list[str], np.ndarray]:
        """Score movies {name: (T, H, W)} through the clip model, each after the lead-in (library and
        Zarr store kept under `out`, so a rerun resumes) → (names, responses (S, T_max, N), NaN past
        each movie's end)."""
        import zarr

        clips = {name: self.clip(movie) for name, movie in stimuli.items()}
        parameters = {name: {**parameters[name], "lead_in": self.lead_in} for name in stimuli}
        library = save_library(out / "library", clips, parameters)
        score(self.url, self.model, library, out / "responses.zarr", progress=progress, on_error="stop")
        store = zarr.open_group(out / "responses.zarr", mode="r")
        return list(store.attrs["stimuli"]), self.aligned(store["responses"][:])

    def clip_responses(self, movies: list[np.ndarray], timeout: float = 600.0,
                       in_flight: int = CLIPS_IN_FLIGHT) -> list[np.ndarray]:
        """Many movies (T, H, W) through the clip model, each after the lead-in, `in_flight` requests at
        a time (enough for the server to batch them, few enough for its queue; the recording's mean
        behaviour) → responses (T, N) per movie, in order. A refused clip raises `ValueError` naming
        it. Requests carry no deadline (none is cancelled while the server works on it); no answer for
        `timeout` seconds raises `ConnectionError`."""
        connection = Connection.of(self.url)
        client, results = connection.client(), queue.Queue()
        answers, errors = [None] * len(movies), {}

        def send(i: int) -> None:
            inputs = clip_inputs(Stimulus(str(i), self.clip(movies[i])), self.parameters)
            client.async_infer(self.model, inputs, callback=lambda result, error: results.put((i, result, error)))

        for i in range(min(in_flight, len(movies))):
            send(i)
        for answered in range(len(movies)):
            try:
                i, result, error = results.get(timeout=timeout)
            except queue.Empty:  # the server is stuck: its requests end with the connection
                raise ConnectionError(f"no answer from {connection.url} within {timeout:.0f} s") from None
            if error is not None:
                errors[i] = error
            else:
                answers[i] = self.aligned(result.as_numpy(RESPONSES)[0])
            if answered + in_flight < len(movies):
                send(answered + in_flight)
        client.close()  # every request answered: closing cancels nothing
        if any(key_refused(error) for error in errors.values()):
            raise connection.refused()
        lost = [error for error in errors.values() if connection_lost(error)]
        if lost:
            raise ConnectionError(f"lost the server at {connection.url}: {lost[0].message()}")
        errors = {i: error.message() for i, error in errors.items()}
        if errors:
            first = min(errors)
            raise ValueError(f"clip {first} refused: {errors[first]}")
        return answers


def load_truth(recording: str | Path) -> dict[str, np.ndarray]:
    """The virtual mouse's per-neuron ground truth (`<recording>/truth/neurons/*.npy`)."""
    folder = Path(recording) / "truth" / "neurons"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no ground truth (only virtual-mouse recordings have it)")
    return {p.stem: np.load(p) for p in folder.glob("*.npy")}


def median_where(values: np.ndarray, chosen: np.ndarray) -> float | None:
    """Median of values (N,) where the mask chosen (N,) holds; None where it holds nowhere."""
    return float(np.median(values[chosen])) if chosen.any() else None
