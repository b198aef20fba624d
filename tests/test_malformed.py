"""Malformed and abusive requests against the real Triton server, over gRPC and HTTP: each gets a
clear error (naming the limit and its flag where one applies), memory stays bounded, the server
stays up and keeps answering good requests."""

import re
import time

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from conftest import backend_resident_mb
from twinserve.contract import (BEHAVIOR, BEHAVIOR_CHANNELS, FRAME_UINT8, PUPIL_CENTER, PUPIL_CHANNELS, RESPONSES, VIDEO,
                                VIDEO_UINT8, model_names)
from twinserve.serving.limits import Limits
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer

LIMITS = Limits(max_streams=4, max_request_frames=120, max_request_bytes=2**20, max_queue=1, idle_timeout_s=30.0)


@pytest.fixture(scope="module")
def limited(tiny_artifacts, tmp_path_factory):
    """The tiny twin served with small limits → (server, manifest, {"stream": name, "clip": name})."""
    artifacts, manifest = tiny_artifacts
    repository = tmp_path_factory.mktemp("limited_repository")
    write_repository(artifacts, repository, LIMITS)
    with TritonServer(repository, Ports.free()) as server:
        yield server, manifest, model_names(next(iter(manifest.recordings)))


def _arrays(manifest, batch: int, frames: int | None, dtype=np.uint8, seed: int = 0) -> list[np.ndarray]:
    """Raw inputs: pixels (batch, [frames,] H, W), behavior and pupil_center (batch, [frames,] 2)."""
    rng, time_axis = np.random.default_rng(seed), () if frames is None else (frames,)
    pixels = rng.integers(0, 256, (batch, *time_axis, *manifest.frame_shape)).astype(dtype)
    return [pixels, rng.normal(size=(batch, *time_axis, BEHAVIOR_CHANNELS)).astype(np.float32),
            rng.normal(size=(batch, *time_axis, PUPIL_CHANNELS)).astype(np.float32)]


def _inputs(module, names: list[str], arrays: list[np.ndarray], dtypes: list[str] | None = None) -> list:
    dtypes = dtypes or [{np.uint8: "UINT8", np.float32: "FP32", np.float64: "FP64"}[a.dtype.type] for a in arrays]
    tensors = []
    for name, array, dtype in zip(names, arrays, dtypes):
        tensors.append(module.InferInput(name, list(array.shape), dtype))
        tensors[-1].set_data_from_numpy(array)
    return tensors


def _clip(manifest, batch=1, frames=30, dtype=np.uint8, **changes):
    """Names and arrays of a clip request; `changes` maps an input name to a replacement (None drops it)."""
    arrays = _arrays(manifest, batch, frames, dtype)
    named = dict(zip((VIDEO_UINT8 if dtype == np.uint8 else VIDEO, BEHAVIOR, PUPIL_CENTER), arrays))
    named.update(changes)
    named = {k: v for k, v in named.items() if v is not None}
    return list(named), list(named.values())


def _refused(call, *patterns: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    message = str(caught.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


def test_bad_clip_requests_get_clear_errors_over_grpc_and_http(limited):
    server, manifest, models = limited
    clients = {"grpc": (grpc, grpc.InferenceServerClient(server.url)),
               "http": (http, http.InferenceServerClient(f"{server.local_host}:{server.ports.http}"))}
    model = models["clip"]
    for protocol, (module, client) in clients.items():
        def infer(names, arrays, dtypes=None, target=model):
            return client.infer(target, _inputs(module, names, arrays, dtypes))

        frames = LIMITS.max_request_frames
        _refused(lambda: infer(*_clip(manifest, frames=frames + 1)), "max_request_frames", "--max-request-frames")
        _refused(lambda: infer(*_clip(manifest, batch=3, frames=frames // 2)), "3 clips × 60 frames")
        # 120 FP32 frames are over the byte limit; the same frames as UINT8 are answered
        _refused(lambda: infer(*_clip(manifest, frames=frames, dtype=np.float32)), "--max-request-bytes")
        assert infer(*_clip(manifest, frames=frames)).as_numpy(RESPONSES).shape[1] == frames - manifest.offset
        video = _arrays(manifest, 1, 10)[0]
        _refused(lambda: infer(*_clip(manifest, **{VIDEO: video.astype(np.float32)})), "exactly one of")
        _refused(lambda: infer(*_clip(manifest, **{VIDEO_UINT8: None})), "exactly one of")
        _refused(lambda: infer(*_clip(manifest, **{BEHAVIOR: None})), BEHAVIOR)
        nan = _arrays(manifest, 1, 30)[2]
        nan[0, 3, 1] = np.inf
        _refused(lambda: infer(*_clip(manifest, **{PUPIL_CENTER: nan})), "pupil_center contains NaN or Inf")
        huge = np.zeros((1, 2, 400, 400), np.uint8)  # not the model's frame shape
        _refused(lambda: infer(*_clip(manifest, **{VIDEO_UINT8: huge})), "shape")
        names, arrays = _clip(manifest, dtype=np.float32)
        _refused(lambda: infer(names, [arrays[0].astype(np.float64), *arrays[1:]], ["FP64", "FP32", "FP32"]),
                 "FP64")
        _refused(lambda: infer(*_clip(manifest), target="no_such_model"), "no_such_model")
        assert client.is_server_live(), protocol


def test_a_flood_of_clips_gets_fast_refusals_not_an_endless_queue(limited):
    server, manifest, models = limited
    client = grpc.InferenceServerClient(server.url)
    names, arrays = _clip(manifest, frames=LIMITS.max_request_frames)
    answers = []
    for _ in range(40):
        client.async_infer(models["clip"], _inputs(grpc, names, arrays),
                           callback=lambda result, error: answers.append(error))
    deadline = time.monotonic() + 60
    while len(answers) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = [str(e) for e in answers if e is not None]
    assert len(answers) == 40 and refused, "40 requests at once with max_queue 1: some must be refused"
    assert all("queue" in message for message in refused), refused[:3]
    assert len(refused) < 40  # and the rest were answered


def test_stream_misuse_and_a_flood_of_starts_are_refused_and_the_pool_stays_bounded(limited):
    server, manifest, models = limited
    client, model = grpc.InferenceServerClient(server.url), models["stream"]
    names = [FRAME_UINT8, BEHAVIOR, PUPIL_CENTER]

    def step(sequence, seed=0, nan=False, **flags):
        arrays = _arrays(manifest, 1, None, seed=seed)
        if nan:
            arrays[1][:] = np.nan
        return client.infer(model, _inputs(grpc, names, arrays), sequence_id=sequence, **flags)

    _refused(lambda: step(6, nan=True, sequence_start=True), "NaN")  # a refused first frame still opens the stream
    step(6)
    step(6, sequence_end=True)

    _refused(lambda: step(5), "START")  # Triton's batcher or the model: a stream needs START first
    _refused(lambda: step(5, sequence_end=True), "START")
    neurons = len(manifest.recording(next(iter(manifest.recordings))).unit_ids)
    assert step(5, sequence_start=True).as_numpy(RESPONSES).shape == (1, neurons)
    _refused(lambda: step(5, sequence_start=True), "already open: END it")
    step(5, sequence_end=True)
    _refused(lambda: step(5), "START")  # END freed it
    before = backend_resident_mb(server, model)
    started = time.monotonic()
    for round_ in range(3):  # three floods of 12 STARTs on 4 slots
        ids = range(100 * (round_ + 1), 100 * (round_ + 1) + 12)
        outcomes = []
        for sequence in ids:
            try:
                step(sequence, sequence_start=True)
                outcomes.append("open")
            except InferenceServerException as error:
                assert "all 4 stream slots are in use" in str(error) and "--max-streams" in str(error)
                outcomes.append("refused")
        assert outcomes == ["open"] * 4 + ["refused"] * 8
        for sequence in ids[:4]:
            step(sequence, sequence_end=True)
    assert time.monotonic() - started < 30  # refusals are immediate, not queued until an idle timeout
    assert backend_resident_mb(server, model) - before < 20
    wide = _arrays(manifest, 2, None)  # two frames in one stream request
    _refused(lambda: client.infer(model, _inputs(grpc, names, wide), sequence_id=7, sequence_start=True), "")
    assert step(8, sequence_start=True, sequence_end=True) is not None
    assert client.is_server_live() and client.is_model_ready(model)
