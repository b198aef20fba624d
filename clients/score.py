"""`twin score`: every stimulus of a library through a served clip model, into a Zarr store.

    STORE/responses    (stimuli, T', N) float32, one chunk per stimulus; NaN past a stimulus's end
    STORE/frames       (stimuli,) output frames of each stimulus (T - offset), 0 where not scored
    STORE/neuron_ids   (N,) the recording's unit ids
    STORE attributes   model, library, stimuli (names, in row order), receptive_field (null: unbounded)
    STORE/scored.txt   names whose rows are complete, appended after each row is written
    STORE/failed.txt   names that could not be scored, with the reason

Output frame j of a stimulus predicts its input frame j + offset (offset = R - 1 for a receptive
field of R frames, 0 for unbounded memory), so a stimulus needs at least offset + 1 frames; its
frames must have the served model's frame shape. Many requests are kept in flight so
the server's dynamic batcher fills. A stimulus is listed in `scored.txt` only after its row is
written, so a killed run, started again, skips what is done and redoes at most the rows in flight.

Requests carry no deadline, so none is cancelled while the server works on it (cancelling requests
in flight can crash the bundled Triton 2.51); only a server that answers nothing for `timeout`
seconds stops the run, and its requests then end with the connection.
"""

from __future__ import annotations

import functools
import queue
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

from twinserve.contract import (BEHAVIOR, PUPIL_CENTER, RESPONSES, VIDEO, VIDEO_UINT8, ModelParameters,
                                describe_memory)

from .connection import Connection, connection_lost, key_refused
from .library import Library, StimulusError

DONE, FAILED = "scored.txt", "failed.txt"


def model_parameters(url: str | Connection, model: str) -> ModelParameters:
    """The served model's parameters (receptive field, frame shape, unit ids, behaviour means), read
    from the server at `url` (a gRPC address or a `Connection`)."""
    connection = Connection.of(url)
    client = connection.client()
    try:
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as error:
        if key_refused(error):
            raise connection.refused() from None
        raise ValueError(f"model {model!r}: {connection.hint(error.message())}") from None
    finally:
        client.close()
    try:
        return ModelParameters.from_model_config(config)
    except ValueError as error:
        raise ValueError(f"model {model!r}: {error}") from None


class ScoreStore:
    """The Zarr store of one scoring run; reopening it for the same model and library resumes it."""

    def __init__(self, path: str | Path, model: str, library: Library, lengths: dict[str, int],
                 params: ModelParameters):
        import zarr

        self.path, self.names = Path(path), library.names
        unit_ids = np.array(params.unit_ids, dtype=np.int64)
        identity = {"model": model, "library": str(library.path.resolve()), "stimuli": self.names,
                    "receptive_field": params.receptive_field}
        if (self.path / "zarr.json").is_file():
            self.group = zarr.open_group(self.path, mode="r+")
            found = {k: self.group.attrs.get(k) for k in identity}
            if found != identity:
                changed = [k for k in identity if found[k] != identity[k]]
                raise ValueError(f"{self.path}: holds scores of a different run ({', '.join(changed)} differ); "
                                 "choose another --out")
        else:
            longest = max([n - params.offset for n in lengths.values()] + [1])
            self.group = zarr.open_group(self.path, mode="w-")
            self.group.create_array("responses", shape=(len(self.names), longest, len(unit_ids)),
                                    chunks=(1, longest, len(unit_ids)), dtype="float32", fill_value=np.nan)
            self.group.create_array("frames", shape=(len(self.names),), dtype="int32", fill_value=0)
            self.group.create_array("neuron_ids", data=unit_ids)
            self.group.attrs.update(identity)
        self.done = set(self._lines(DONE))

    def _lines(self, name: str) -> list[str]:
        path = self.path / name
        if not path.is_file():
            return []
        lines = path.read_text().split("\n")
        return [line for line in lines[:-1] if line]  # a torn last line (no newline yet) does not count

    def _append(self, name: str, line: str) -> None:
        with open(self.path / name, "a") as file:
            file.write(line + "\n")
            file.flush()

    def write(self, name: str, responses: np.ndarray) -> None:
        """Responses (T', N) of one stimulus; committed once `scored.txt` lists it."""
        row = self.names.index(name)
        self.group["responses"][row, :len(responses)] = responses
        self.group["frames"][row] = len(responses)
        self._append(DONE, name)
        self.done.add(name)

    def fail(self, name: str, reason: str) -> None:
        self._append(FAILED, f"{name}\t{reason}")


def _deliver(results: queue.Queue, name: str, result, error) -> None:
    results.put((name, result, error))


def clip_inputs(stimulus, params: ModelParameters) -> list[grpc.InferInput]:
    """One clip request: video (1, T, H, W) as UINT8 or FP32, behavior and pupil_center (1, T, 2), the
    recording's means where the stimulus has none."""
    video = stimulus.video
    frames = len(video)
    as_bytes = video.dtype == np.uint8
    arrays = [(VIDEO_UINT8, video, "UINT8") if as_bytes else (VIDEO, video.astype(np.float32), "FP32")]
    for name, value, mean in ((BEHAVIOR, stimulus.behavior, params.behavior_mean),
                              (PUPIL_CENTER, stimulus.pupil_center, params.pupil_center_mean)):
        arrays.append((name, np.tile(np.array(mean, np.float32), (frames, 1)) if value is None
                       else value.astype(np.float32), "FP32"))
    tensors = []
    for name, array, dtype in arrays:
        tensors.append(grpc.InferInput(name, [1, *array.shape], dtype))
        tensors[-1].set_data_from_numpy(np.ascontiguousarray(array[None]))
    return tensors


def score(url: str | Connection, model: str, library: str | Path, out: str | Path, in_flight: int = 4,
          on_error: str = "skip", progress: bool = True, timeout: float = 600.0) -> dict:
    """Score every stimulus not yet in the store → summary {scored, skipped, failed: {name: reason}, ...}.

    url: the server's gRPC address or a `Connection` (API key, TLS).
    on_error: "skip" records an unreadable or refused stimulus in failed.txt and goes on; "stop"
    finishes the requests in flight, writes them, then raises `StimulusError`.
    timeout: seconds to wait for the next answer before giving up (`ConnectionError`).
    """
    from tqdm import tqdm

    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', not {on_error!r}")
    connection = Connection.of(url)
    params = model_parameters(connection, model)
    library = Library(library, params.frame_shape)  # stimuli are checked against the served frame shape
    shortest = params.offset + 1
    failed: dict[str, str] = {}
    lengths = {}
    for name in library.names:  # lengths first: the store's time axis fits the longest stimulus
        try:
            lengths[name] = library.frames(name)
            if lengths[name] < shortest:
                raise StimulusError(f"{name}: {lengths[name]} frames, fewer than the {shortest} the model needs "
                                    f"(receptive field {describe_memory(params.receptive_field)})")
        except StimulusError as error:
            failed[name] = str(error)
    store = ScoreStore(out, model, library, lengths, params)
    todo = [n for n in library.names if n not in store.done and n not in failed]
    skipped = len(library.names) - len(todo) - len(failed)
    for name, reason in failed.items():
        store.fail(name, reason)
    if failed and on_error == "stop":
        raise StimulusError(f"stopping before scoring: {'; '.join(failed.values())}")
    results: queue.Queue = queue.Queue()
    client = connection.client()
    bar = tqdm(total=len(todo), unit="stimulus", disable=not progress, desc=f"scoring with {model}")
    pending, frames, started, stop, lost, refused = 0, 0, time.perf_counter(), None, None, None
    remaining = iter(todo)
    while True:
        while pending < in_flight and stop is None and (name := next(remaining, None)) is not None:
            try:
                stimulus = library.load(name)
            except StimulusError as error:
                failed[name] = str(error)
                store.fail(name, failed[name])
                stop = failed[name] if on_error == "stop" else None
                bar.update()
                continue
            client.async_infer(model, clip_inputs(stimulus, params),
                               callback=functools.partial(_deliver, results, name))
            pending += 1
        if pending == 0:
            break
        try:
            name, result, error = results.get(timeout=timeout)
        except queue.Empty:  # the server is stuck: its requests end with the connection
            bar.close()
            raise ConnectionError(f"no answer from {connection.url} within {timeout:.0f} s; the rows written so "
                                  f"far are kept: run again to resume") from None
        pending -= 1
        if error is not None and key_refused(error):
            stop = refused = connection.refused()
        elif error is not None and connection_lost(error):
            stop = lost = f"lost the server at {connection.url}: {error.message()}"
        elif error is not None:
            failed[name] = f"{name}: refused by the server: {error.message()}"
            store.fail(name, failed[name])
            stop = stop or (failed[name] if on_error == "stop" else None)
        else:
            responses = result.as_numpy(RESPONSES)[0]
            store.write(name, responses)
            frames += lengths[name]
        bar.update()
        elapsed = time.perf_counter() - started
        bar.set_postfix(frames_per_s=f"{frames / elapsed:.0f}", refresh=False)
    bar.close()
    client.close()  # nothing in flight: closing cancels nothing
    if refused:
        raise refused
    if lost:
        raise ConnectionError(f"{lost}; the rows written so far are kept: run again to resume")
    if stop:
        raise StimulusError(f"stopped: {stop} (rows written so far are kept; run again to resume)")
    elapsed = time.perf_counter() - started
    return {"store": str(out), "scored": len(todo) - sum(n in failed for n in todo), "skipped_done": skipped,
            "failed": failed, "input_frames": frames, "seconds": elapsed,
            "frames_per_s": frames / elapsed if elapsed else 0.0}
