"""The models Triton runs (Python backend): ONNX Runtime sessions on the exported graphs.

`StreamModel` keeps every stream's state (the step graph's `state_*` tensors, shapes from the
manifest) keyed by its sequence id, runs the frames of all streams in one execution as one batched
step-graph call, and frees a stream's state on END or after the sequence batcher's idle timeout.
`ClipModel` concatenates clips of equal length into one clip-graph call: clips (B, T, H, W) →
responses (B, T - offset, N). A bad request (NaN/Inf, a stream that was never started, an
inconsistent or too short clip) gets an error response and changes nothing else: the stream's state
is kept. Both read their `contract.ModelParameters` from the model config.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

from twinserve.contract import (CLIP_INPUTS, RESPONSES, STEP_INPUTS, UINT8_SUFFIX, ModelParameters, describe_memory,
                                state_names)
from twinserve.export.manifest import read_manifest, verified_path

from .repository import CORRID, END, START


class BadRequest(ValueError):
    pass


def _configure(args) -> tuple[dict, ModelParameters]:
    config = json.loads(args["model_config"])
    return config, ModelParameters.from_model_config(config)


def _session(params: ModelParameters, graph: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    if params.threads:
        options.intra_op_num_threads = params.threads
    path = verified_path(params.artifacts, params.recording, graph)  # refuses a tampered file
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _pixels(request, name: str) -> np.ndarray:
    """The FP32 or the UINT8 variant of a video input, as float32."""
    as_float, as_bytes = _input(request, name), _input(request, name + UINT8_SUFFIX)
    if (as_float is None) == (as_bytes is None):
        raise BadRequest(f"send exactly one of {name!r} (FP32) and '{name}{UINT8_SUFFIX}' (UINT8)")
    return as_bytes.astype(np.float32) if as_float is None else as_float


def _checked(request, names: tuple[str, ...]) -> list[np.ndarray]:
    """The inputs `names` of a request (the first one pixels, FP32 or UINT8), all finite."""
    arrays = [_pixels(request, names[0])] + [_input(request, n) for n in names[1:]]
    for name, array in zip(names, arrays):
        if not np.isfinite(array).all():
            raise BadRequest(f"{name} contains NaN or Inf")
    return arrays


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _responses(values: np.ndarray):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(RESPONSES, values.astype(np.float32))])


class StreamModel:
    def initialize(self, args) -> None:
        config, params = _configure(args)
        self.idle_timeout = int(config["sequence_batching"]["max_sequence_idle_microseconds"]) / 1e6
        specs = read_manifest(params.artifacts).graph(params.recording, "step").states
        self.session = _session(params, "step")
        self.state_names = [s.name for s in specs]
        self.state_shapes = [s.fixed_shape for s in specs]
        self.outputs = [RESPONSES, *state_names(len(specs))[1]]  # responses (B, N), then the next states
        self.states: dict[int, list[np.ndarray]] = {}  # sequence id → state tensors (1, ...)
        self.last_seen: dict[int, float] = {}

    def execute(self, requests):
        self._forget_idle()
        responses = [None] * len(requests)
        pending = list(range(len(requests)))
        while pending:  # rounds of at most one frame per stream, in arrival order
            batch, later, streams = [], [], set()
            for i in pending:
                sequence = int(_input(requests[i], CORRID).flat[0])
                (later if sequence in streams else batch).append(i)
                streams.add(sequence)
            self._step(requests, batch, responses)
            pending = later
        return responses

    def _step(self, requests, indices: list[int], responses: list) -> None:
        frames, sequences, ends = [], [], []
        for i in indices:
            request = requests[i]
            sequence = int(_input(request, CORRID).flat[0])
            if _input(request, START).flat[0]:
                self.states[sequence] = [np.zeros((1, *s), np.float32) for s in self.state_shapes]
            self.last_seen[sequence] = time.monotonic()
            try:
                if sequence not in self.states:
                    raise BadRequest(f"sequence {sequence} was never started, or it ended or idled out; "
                                     "open it with sequence_start=True")
                frames.append(_checked(request, STEP_INPUTS))
            except BadRequest as error:
                responses[i] = _error(str(error))
                if _input(request, END).flat[0]:  # END frees the stream even when its frame is refused
                    self._forget(sequence)
                continue
            sequences.append((i, sequence))
            ends.append(bool(_input(request, END).flat[0]))
        if not sequences:
            return
        feeds = {name: np.concatenate(parts) for name, parts in zip(STEP_INPUTS, zip(*frames))}
        for layer, name in enumerate(self.state_names):
            feeds[name] = np.concatenate([self.states[s][layer] for _, s in sequences])
        results = self.session.run(self.outputs, feeds)
        for row, ((i, sequence), end) in enumerate(zip(sequences, ends)):
            responses[i] = _responses(results[0][row:row + 1])
            if end:
                self._forget(sequence)
            else:
                # A copy, not a view: a stalled stream must not pin the whole batch's arrays.
                self.states[sequence] = [r[row:row + 1].copy() for r in results[1:]]

    def _forget(self, sequence: int) -> None:
        self.states.pop(sequence, None)
        self.last_seen.pop(sequence, None)

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for sequence in [s for s, seen in self.last_seen.items() if now - seen > self.idle_timeout]:
            self._forget(sequence)

    def finalize(self) -> None:
        self.states.clear()


class ClipModel:
    """Clips of equal length run together, up to `max_frames` input frames per graph call. With a
    finite receptive field R a longer clip runs in overlapping pieces (exact: each piece starts R - 1
    frames before the last one ended); with unbounded memory a clip cannot be cut, so one longer than
    `max_clip_frames` is refused and a shorter one runs in one call. Beyond a few hundred frames per
    call memory grows (quadratically in time for the transformer's banded attention) and throughput
    does not: hence the cap (`ModelParameters.max_clip_frames`, `twin serve --max-clip-frames`)."""

    def initialize(self, args) -> None:
        _, self.params = _configure(args)
        self.session = _session(self.params, "clip")
        receptive_field, self.max_frames = self.params.receptive_field, self.params.max_clip_frames
        if receptive_field is not None:  # a piece must be longer than the R - 1 frames it overlaps
            self.max_frames = max(self.max_frames, 2 * receptive_field)

    def execute(self, requests):
        responses, groups = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                clip = _checked(request, CLIP_INPUTS)
                groups.setdefault(self._frames(clip), []).append((i, clip))
            except BadRequest as error:
                responses[i] = _error(str(error))
        for frames, members in groups.items():
            part, batched = [], 0  # long clips gain nothing from batching on CPU: cap the frames per call
            for member in members:
                size = len(member[1][0]) * frames
                if part and batched + size > self.max_frames:
                    self._run(part, responses)
                    part, batched = [], 0
                part.append(member)
                batched += size
            self._run(part, responses)
        return responses

    def _frames(self, clip: list[np.ndarray]) -> int:
        """The length T of a clip [video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2)], checked."""
        video, behavior, pupil = clip
        frames, shortest = video.shape[1], self.params.offset + 1
        if behavior.shape[1] != frames or pupil.shape[1] != frames:
            raise BadRequest(f"video has {frames} frames but behavior {behavior.shape[1]} and "
                             f"pupil_center {pupil.shape[1]}")
        if frames < shortest:
            raise BadRequest(f"a clip needs at least {shortest} frames (receptive field "
                             f"{describe_memory(self.params.receptive_field)}), got {frames}")
        if self.params.receptive_field is None and frames > self.params.max_clip_frames:
            raise BadRequest(f"a clip of {frames} frames is longer than max_clip_frames = "
                             f"{self.params.max_clip_frames}, and a twin with unbounded memory cannot run a clip "
                             f"in pieces: send shorter clips, or serve with `twin serve --max-clip-frames {frames}`")
        return frames

    def _run(self, members: list, responses: list) -> None:
        """One clip-graph call for requests [(index, [video, behavior, pupil_center])] of equal length."""
        feeds = {name: np.concatenate(arrays) for name, arrays in
                 zip(CLIP_INPUTS, zip(*(clip for _, clip in members)))}
        output = self._pieces(feeds)
        start = 0
        for i, (video, _, _) in members:
            responses[i] = _responses(output[start:start + len(video)])
            start += len(video)

    def _pieces(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The clip graph over clips (B, T, ...) → (B, T - offset, N). With a finite receptive field in
        pieces of at most `max_frames` input frames, each starting offset = R - 1 frames before the
        last one ended: the same outputs as one call, with bounded memory. With unbounded memory in
        one call (`_frames` has checked T ≤ max_clip_frames)."""
        if self.params.receptive_field is None:
            return self.session.run([RESPONSES], feeds)[0]
        frames, overlap = feeds[CLIP_INPUTS[0]].shape[1], self.params.offset
        outputs, start = [], 0
        while start + overlap < frames:
            end = min(start + self.max_frames, frames)
            piece = {name: array[:, start:end] for name, array in feeds.items()}
            outputs.append(self.session.run([RESPONSES], piece)[0])
            start = end - overlap
        return np.concatenate(outputs, 1)
