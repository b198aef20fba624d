"""A core defined only in tests/ (`toy_core.py`, unbounded memory) goes through the whole path — train,
export, stream through the step graph, serve through Triton, recover after a server crash — with no
change to export/, serving/ or clients/."""

import numpy as np
import pytest
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

import toy_core
from crash import stream_through_a_crash
from twinserve.contract import CLIP_INPUTS, model_names
from twinserve.export.onnx_export import cpu_session, export_run, relative_error, stream
from twinserve.serving.limits import Limits
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer
from twinserve.training.data import Recording
from twinserve.training.train import train

FRAMES = 120


@pytest.fixture(scope="module")
def toy_artifacts(mini_mouse, tmp_path_factory):
    preset = toy_core.register()
    run = tmp_path_factory.mktemp("toy_run")
    metrics = train(mini_mouse, run, preset=preset, progress=False)
    assert all(np.isfinite(t["oracle"]["single_trial_correlation"]) for t in metrics.values())
    artifacts = tmp_path_factory.mktemp("toy_artifacts")
    return artifacts, export_run(run, artifacts)


def _trial(mini_mouse):
    trial = next(t for t in Recording(mini_mouse[0]).load("oracle") if t.responses is not None)
    return trial.video[:FRAMES], trial.behavior[:FRAMES], trial.pupil_center[:FRAMES]


def _clip_request(inputs, frames: int) -> list:
    """The first `frames` frames of the inputs as one clip request."""
    tensors = []
    for name, array in zip(CLIP_INPUTS, inputs):
        tensors.append(grpc.InferInput(name, [1, frames, *array.shape[1:]], "FP32"))
        tensors[-1].set_data_from_numpy(np.ascontiguousarray(array[None, :frames]))
    return tensors


def _local(artifacts, manifest, recording, inputs):
    """The exported graphs on ONNX Runtime → (clip graph responses (T, N), step graph streamed (T, N))."""
    folder = artifacts / recording
    clip = cpu_session(folder / "clip.onnx").run(None, {n: a[None] for n, a in zip(CLIP_INPUTS, inputs)})[0][0]
    shapes = [spec.fixed_shape for spec in manifest.graph(recording, "step").states]
    streamed = stream(cpu_session(folder / "step.onnx"), *(a[None] for a in inputs), shapes)[0]
    return clip, streamed


def test_the_manifest_says_the_memory_is_unbounded_and_the_step_graph_equals_the_clip_graph(toy_artifacts,
                                                                                              mini_mouse):
    artifacts, manifest = toy_artifacts
    assert manifest.core == toy_core.NAME and manifest.receptive_field is None and manifest.offset == 0
    recording = mini_mouse[0].name
    clip, streamed = _local(artifacts, manifest, recording, _trial(mini_mouse))
    assert clip.shape == (FRAMES, manifest.recording(recording).neurons)  # every frame answered
    assert relative_error(streamed, clip) < 1e-4


def test_served_toy_twin_streams_recovers_and_refuses_clips_it_cannot_cut(toy_artifacts, mini_mouse, tmp_path):
    artifacts, manifest = toy_artifacts
    recording = mini_mouse[0].name
    inputs = _trial(mini_mouse)
    clip, streamed = _local(artifacts, manifest, recording, inputs)
    repository = tmp_path / "repository"
    write_repository(artifacts, repository, Limits(max_clip_frames=64))
    with TritonServer(repository, Ports.free()) as server:
        client = grpc.InferenceServerClient(server.url)
        names = model_names(recording)
        assert relative_error(client.infer(names["clip"], _clip_request(inputs, 50)).as_numpy("responses")[0],
                              clip[:50]) < 1e-5
        with pytest.raises(InferenceServerException, match="max_clip_frames"):  # no pieces without a finite window
            client.infer(names["clip"], _clip_request(inputs, FRAMES))
        client.close()
    # The whole stream so far must be replayed after the crash: no window of frames would do.
    outputs, reconnects = stream_through_a_crash(repository, names["stream"], inputs, crash_at=80)
    assert reconnects == 1
    assert relative_error(outputs, streamed) < 1e-5
