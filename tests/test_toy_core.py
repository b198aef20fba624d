"""A core defined only in tests/ (`toy_core.py`, unbounded memory) goes through the whole path — train,
export, stream through the step graph, serve through Triton, recover after a server crash — with no
change to export/, serving/ or clients/."""

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

import toy_core
from twinserve.clients.stream import StreamClient
from twinserve.contract import model_names
from twinserve.export.onnx_export import cpu_session, export_run, relative_error, stream
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer
from twinserve.training.data import Recording
from twinserve.training.train import train

FRAMES = 120


@pytest.fixture(scope="module")
def toy_artifacts(small_mouse, tmp_path_factory):
    preset = toy_core.register()
    run = tmp_path_factory.mktemp("toy_run")
    metrics = train(small_mouse, run, preset=preset, progress=False)
    assert all(np.isfinite(t["oracle"]["single_trial_correlation"]) for t in metrics.values())
    artifacts = tmp_path_factory.mktemp("toy_artifacts")
    return artifacts, export_run(run, artifacts)


def _trial(small_mouse):
    trial = next(t for t in Recording(small_mouse[0]).load("oracle") if t.responses is not None)
    return trial.video[:FRAMES], trial.behavior[:FRAMES], trial.pupil_center[:FRAMES]


def _local(artifacts, manifest, recording, inputs):
    """The exported graphs on ONNX Runtime → (clip graph responses (T, N), step graph streamed (T, N))."""
    folder = artifacts / recording
    clip = cpu_session(folder / "clip.onnx").run(None, {"video": inputs[0][None], "behavior": inputs[1][None],
                                                        "pupil_center": inputs[2][None]})[0][0]
    shapes = [spec.fixed_shape for spec in manifest.graph(recording, "step").states]
    streamed = stream(cpu_session(folder / "step.onnx"), *(a[None] for a in inputs), shapes)[0]
    return clip, streamed


def test_the_manifest_says_the_memory_is_unbounded_and_the_step_graph_equals_the_clip_graph(toy_artifacts,
                                                                                              small_mouse):
    artifacts, manifest = toy_artifacts
    assert manifest.core == toy_core.NAME and manifest.receptive_field is None and manifest.offset == 0
    recording = small_mouse[0].name
    clip, streamed = _local(artifacts, manifest, recording, _trial(small_mouse))
    assert clip.shape == (FRAMES, manifest.recording(recording).neurons)  # every frame answered
    assert relative_error(streamed, clip) < 1e-4


def test_served_toy_twin_streams_recovers_and_refuses_clips_it_cannot_cut(toy_artifacts, small_mouse, tmp_path):
    artifacts, manifest = toy_artifacts
    recording = small_mouse[0].name
    inputs = _trial(small_mouse)
    clip, streamed = _local(artifacts, manifest, recording, inputs)
    repository = tmp_path / "repository"
    write_repository(artifacts, repository, max_clip_frames=64)
    ports = Ports.free()
    servers = [TritonServer(repository, ports)]
    try:
        client = grpc.InferenceServerClient(servers[0].url)
        names = model_names(recording)
        short = [grpc.InferInput(n, [1, 50, *a.shape[1:]], "FP32") for n, a in zip(("video", "behavior",
                                                                                  "pupil_center"), inputs)]
        for tensor, array in zip(short, inputs):
            tensor.set_data_from_numpy(np.ascontiguousarray(array[None, :50]))
        assert relative_error(client.infer(names["clip"], short).as_numpy("responses")[0], clip[:50]) < 1e-5
        long = [grpc.InferInput(n, [1, FRAMES, *a.shape[1:]], "FP32") for n, a in zip(("video", "behavior",
                                                                                     "pupil_center"), inputs)]
        for tensor, array in zip(long, inputs):
            tensor.set_data_from_numpy(np.ascontiguousarray(array[None]))
        with pytest.raises(InferenceServerException, match="max_clip_frames"):  # no pieces without a finite window
            client.infer(names["clip"], long)
        client.close()
        with StreamClient(servers[0].url, names["stream"], reconnect_timeout=120) as stream_client:
            outputs = []
            for t, responses in enumerate(stream_client.run(*inputs)):
                outputs.append(responses)
                if t == 80:  # the whole stream so far must be replayed: no window would do
                    servers[0].kill()
                    threading.Timer(1.0, lambda: servers.append(TritonServer(repository, ports))).start()
            assert stream_client.reconnects == 1
    finally:
        deadline = time.monotonic() + 60
        while len(servers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        for server in servers:
            server.stop()
    assert relative_error(np.stack(outputs), streamed) < 1e-5
