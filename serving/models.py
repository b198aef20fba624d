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
import threading
import time

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

from twinserve.contract import (CLIP_INPUTS, RESPONSES, STEP_INPUTS, UINT8_SUFFIX, ModelParameters, describe_memory,
                                state_names)
from twinserve.export.manifest import read_manifest, verified_bytes

from .limits import Limits
from .repository import CORRID, END, START
from .state_pool import PoolError, StatePool


class BadRequest(ValueError):
    pass


def _configure(args) -> tuple[dict, ModelParameters]:
    config = json.loads(args["model_config"])
    return config, ModelParameters.from_model_config(config)


def _session(params: ModelParameters, graph: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    if params.threads:
        options.intra_op_num_threads = params.threads
    graph_bytes = verified_bytes(params.artifacts, params.recording, graph)  # the bytes hashed, not a path reopened
    return onnxruntime.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _received(request, names: tuple[str, ...], max_bytes: int) -> list[np.ndarray]:
    """The inputs `names` of a request as sent: the first one pixels, its FP32 or its UINT8 variant
    (exactly one of them); together at most `max_bytes`."""
    as_float, as_bytes, *rest = (_input(request, n) for n in (names[0], names[0] + UINT8_SUFFIX, *names[1:]))
    if (as_float is None) == (as_bytes is None):
        raise BadRequest(f"send exactly one of {names[0]!r} (FP32) and '{names[0]}{UINT8_SUFFIX}' (UINT8)")
    missing = [name for name, array in zip(names[1:], rest) if array is None]
    if missing:
        raise BadRequest(f"missing input {', '.join(map(repr, missing))}: send {', '.join(names[1:])} with the pixels")
    arrays = [as_float if as_bytes is None else as_bytes, *rest]
    size = sum(array.nbytes for array in arrays)
    if size > max_bytes:
        raise BadRequest(f"a request of {size} bytes is larger than max_request_bytes = {max_bytes}: send less per "
                         "request, or serve with a larger --max-request-bytes")
    return arrays


def _finite(arrays: list[np.ndarray], names: tuple[str, ...]) -> list[np.ndarray]:
    """`_received` arrays as float32, refused if any value is NaN or Inf."""
    arrays = [array.astype(np.float32, copy=False) for array in arrays]
    for name, array in zip(names, arrays):
        if not np.isfinite(array).all():
            raise BadRequest(f"{name} contains NaN or Inf")
    return arrays


def _bind_output(binding, name: str, array: np.ndarray) -> None:
    """Have the graph write output `name` into `array` (float32, C-contiguous) in place."""
    binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _responses(values: np.ndarray):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(RESPONSES, values.astype(np.float32))])


class StreamModel:
    """Streams batched into one step-graph call per round, their states in a `StatePool` of
    `max_batch_size` slots that the graph reads in place and writes into preallocated memory (ONNX
    Runtime I/O binding), nothing allocated per frame.
    A timer frees streams idle for the sequence batcher's idle timeout (by the arrival of their
    last frame: the time `execute` received it)."""

    def initialize(self, args) -> None:
        config, params = _configure(args)
        self.idle_timeout = int(config["sequence_batching"]["max_sequence_idle_microseconds"]) / 1e6
        self.max_request_bytes = params.max_request_bytes
        specs = read_manifest(params.artifacts).graph(params.recording, "step").states
        self.session = _session(params, "step")
        self.state_inputs, self.state_outputs = state_names(len(specs))
        shapes, slots = [s.fixed_shape for s in specs], int(config["max_batch_size"])
        Limits(max_streams=slots, max_state_bytes=params.max_state_bytes).check_pool(StatePool.nbytes(shapes, 1))
        self.pool = StatePool(shapes, slots)
        self.responses = np.zeros((slots, params.neurons), np.float32)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.evictor = threading.Thread(target=self._evict_idle, name="evict-idle-streams", daemon=True)
        self.evictor.start()

    def execute(self, requests):
        now = time.monotonic()
        responses = [None] * len(requests)
        pending = list(range(len(requests)))
        with self.lock:
            while pending:  # rounds of at most one frame per stream, in arrival order
                batch, later, streams = [], [], set()
                for i in pending:
                    sequence = int(_input(requests[i], CORRID).flat[0])
                    (later if sequence in streams else batch).append(i)
                    streams.add(sequence)
                self._step(requests, batch, responses, now)
                pending = later
        return responses

    def _step(self, requests, indices: list[int], responses: list, now: float) -> None:
        members = []  # (slot, request index, inputs, end, sequence)
        for i in indices:
            request = requests[i]
            sequence, end = int(_input(request, CORRID).flat[0]), bool(_input(request, END).flat[0])
            try:
                if _input(request, START).flat[0]:  # opened even if its frame is refused: the stream goes on
                    self.pool.open(sequence, now)
                inputs = _finite(_received(request, STEP_INPUTS, self.max_request_bytes), STEP_INPUTS)
                members.append((self.pool.slot(sequence), i, inputs, end, sequence))
                self.pool.last_seen[sequence] = now
            except (BadRequest, PoolError) as error:
                responses[i] = _error(str(error))
                if end:  # END frees the stream even when its frame is refused
                    self.pool.close(sequence)
        if not members:
            return
        members.sort(key=lambda member: member[0])
        buffers = self.pool.step_buffers([slot for slot, *_ in members])
        count = len(members)
        binding = self.session.io_binding()
        for name, parts in zip(STEP_INPUTS, zip(*(inputs for _, _, inputs, _, _ in members))):
            binding.bind_cpu_input(name, np.concatenate(parts))  # float32 (`_finite`), contiguous
        _bind_output(binding, RESPONSES, self.responses[:count])
        for name, array in zip(self.state_inputs, buffers.inputs):
            binding.bind_input(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        for name, array in zip(self.state_outputs, buffers.outputs):
            _bind_output(binding, name, array)
        self.session.run_with_iobinding(binding)
        buffers.finish()
        for row, (_, i, _, end, sequence) in enumerate(members):
            responses[i] = _responses(self.responses[row:row + 1].copy())  # the buffer is reused next round
            if end:
                self.pool.close(sequence)

    def _evict_idle(self) -> None:
        period = min(1.0, self.idle_timeout / 4)
        while not self.stopping.wait(period):
            with self.lock:
                for sequence in self.pool.idle(time.monotonic(), self.idle_timeout):
                    self.pool.close(sequence)

    def finalize(self) -> None:
        self.stopping.set()


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
                clip = _received(request, CLIP_INPUTS, self.params.max_request_bytes)
                frames, clip = self._frames(clip), _finite(clip, CLIP_INPUTS)
                groups.setdefault(frames, []).append((i, clip))
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
        if video.shape[0] * frames > self.params.max_request_frames:
            raise BadRequest(f"a request of {video.shape[0]} clips × {frames} frames is more than max_request_frames "
                             f"= {self.params.max_request_frames}: send shorter clips or fewer per request, or serve "
                             f"with a larger --max-request-frames")
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
