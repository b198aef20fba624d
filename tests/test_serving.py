"""Serving against the real Triton server over gRPC: parity, batching across streams, bad input,
recovery after a server crash, bounded shutdown; the model repository's configs and its marker."""

import json
import queue
import re
import sys
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
import tritonclient.grpc as grpc

from twinserve.clients.stream import ServerGone, StreamClient, StreamError
from twinserve.contract import CLIP_INPUTS, STEP_INPUTS, ModelParameters, file_sha256, model_names
from twinserve.export.manifest import GraphEntry, Manifest, RecordingEntry, verified_path
from twinserve.export.onnx_export import cpu_session, relative_error, stream
from twinserve.serving.limits import Limits
from twinserve.serving.repository import MARKER, write_repository
from twinserve.serving.server import Ports
from twinserve.training.data import Recording

from conftest import IDLE_TIMEOUT_S, backend_resident_mb
from crash import stream_through_a_crash


def _trials(recording_path, count):
    trials = [t for t in Recording(recording_path).load("oracle") if t.frames == 300][:count]
    return [(t.video, t.behavior, t.pupil_center) for t in trials]


def _local_stream(artifacts, manifest, recording, trial):
    """The step graph streamed locally (ONNX Runtime) over one trial → (T, N)."""
    shapes = [spec.fixed_shape for spec in manifest.graph(recording, "step").states]
    session = cpu_session(verified_path(artifacts, recording, "step"))
    return stream(session, *(a[None] for a in trial), shapes)[0]


def test_streamed_trial_equals_local_step_and_clip_graphs(served, default_mouse):
    server, artifacts, manifest = served
    recording = default_mouse[0].name
    trial = _trials(default_mouse[0], 1)[0]
    with StreamClient(server.url, model_names(recording)["stream"]) as client:
        streamed = np.stack(list(client.run(*trial)))
        as_bytes = np.stack(list(client.run(trial[0].astype(np.uint8), *trial[1:])))  # UINT8 on the wire
        assert client.latency_summary()["frames"] == 600
    local = _local_stream(artifacts, manifest, recording, trial)
    assert streamed.shape == (300, manifest.recording(recording).neurons)
    assert relative_error(streamed, local) < 1e-5
    clip = cpu_session(verified_path(artifacts, recording, "clip")).run(
        None, dict(zip(CLIP_INPUTS, (a[None] for a in trial))))[0][0]
    warmup = manifest.offset
    assert relative_error(streamed[warmup:], clip) < 1e-4
    # The second pass continued the same sequence: after its own warm-up it equals the first.
    assert relative_error(as_bytes[warmup:], streamed[warmup:]) < 1e-5


def test_clip_model_scores_a_batch_of_clips(served, default_mouse):
    server, artifacts, _ = served
    recording = default_mouse[1].name
    trials = _trials(default_mouse[1], 3)
    inputs = [np.stack(parts)[:, :100] for parts in zip(*trials)]
    client = grpc.InferenceServerClient(server.url)
    tensors = []
    for name, array in zip(CLIP_INPUTS, inputs):
        tensors.append(grpc.InferInput(name, list(array.shape), "FP32"))
        tensors[-1].set_data_from_numpy(array)
    served_out = client.infer(model_names(recording)["clip"], tensors).as_numpy("responses")
    local = cpu_session(verified_path(artifacts, recording, "clip")).run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
    assert served_out.shape == local.shape and relative_error(served_out, local) < 1e-5


def test_sixteen_concurrent_streams_are_batched_and_kept_apart(served, default_mouse):
    server, artifacts, manifest = served
    recording = default_mouse[0].name
    model = model_names(recording)["stream"]
    trials = _trials(default_mouse[0], 6)
    # 16 streams over 6 distinct trials, each shifted by its own offset so no two streams are alike.
    inputs = [tuple(np.roll(a, 7 * i, axis=0) for a in trials[i % len(trials)]) for i in range(16)]
    stats_before = _stats(server, model)
    results, errors = [None] * 16, []

    def run(i):
        try:
            with StreamClient(server.url, model) as client:
                results[i] = np.stack(list(client.run(*inputs[i])))
        except Exception as error:  # noqa: BLE001 — reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    for i in range(16):
        assert results[i].shape[0] == 300
        assert relative_error(results[i], _local_stream(artifacts, manifest, recording, inputs[i])) < 1e-5
    stats = _stats(server, model)
    inferences = stats["inference_count"] - stats_before["inference_count"]
    executions = stats["execution_count"] - stats_before["execution_count"]
    assert inferences >= 16 * 300 and executions < inferences  # frames of several streams ran together


def _stats(server, model):
    url = f"http://localhost:{server.ports.http}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())["model_stats"][0]


def test_bad_input_gets_a_clear_error_and_the_stream_goes_on(served, default_mouse):
    server, artifacts, manifest = served
    recording = default_mouse[0].name
    model = model_names(recording)["stream"]
    video, behavior, pupil = _trials(default_mouse[0], 1)[0]
    local = _local_stream(artifacts, manifest, recording, (video[:60], behavior[:60], pupil[:60]))
    with StreamClient(server.url, model) as client:
        first = np.stack(list(client.run(video[:30], behavior[:30], pupil[:30])))
        bad_frames = {
            "unexpected shape": (video[0, :30], behavior[0], pupil[0]),
            "uint8 or floating point": (video[0].astype(np.int16), behavior[0], pupil[0]),
            "NaN or Inf": (np.where(np.arange(video.shape[2]) == 3, np.nan, video[0]), behavior[0], pupil[0]),
            "pupil_center contains NaN or Inf": (video[0], behavior[0], np.array([np.inf, 0.0])),
        }
        for message, frame in bad_frames.items():
            with pytest.raises(StreamError, match=message):
                client.send(*frame)
        rest = np.stack(list(client.run(video[30:60], behavior[30:60], pupil[30:60])))
    assert relative_error(np.concatenate([first, rest]), local) < 1e-5
    assert grpc.InferenceServerClient(server.url).is_server_live()


def test_unknown_model_unstarted_and_idle_streams_are_refused(served, default_mouse):
    server, _, _ = served
    model = model_names(default_mouse[0].name)["stream"]
    with pytest.raises(StreamError, match="not served"):
        StreamClient(server.url, "no-such-model")
    with pytest.raises(ServerGone, match="no Triton server ready"):
        StreamClient(f"localhost:{Ports.free().grpc}", model)
    video, behavior, pupil = _trials(default_mouse[0], 1)[0]
    client = grpc.InferenceServerClient(server.url)
    answers = []
    client.start_stream(callback=lambda result, error: answers.append(error))
    tensors = []
    for name, array in zip(STEP_INPUTS, (video[:1], behavior[:1], pupil[:1])):
        tensors.append(grpc.InferInput(name, list(array.shape), "FP32"))
        tensors[-1].set_data_from_numpy(array)
    client.async_stream_infer(model, tensors, sequence_id=987654, sequence_start=False)
    wrong_dtype = grpc.InferInput(STEP_INPUTS[0], [1, *video.shape[1:]], "FP64")
    wrong_dtype.set_data_from_numpy(video[:1].astype(np.float64))
    client.async_stream_infer(model, [wrong_dtype, *tensors[1:]], sequence_id=987655, sequence_start=True)
    deadline = time.monotonic() + 10
    while len(answers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    assert len(answers) == 2 and "START" in str(answers[0]) and "FP64" in str(answers[1])
    with StreamClient(server.url, model) as idle:
        idle.send(video[0], behavior[0], pupil[0])
        time.sleep(IDLE_TIMEOUT_S * 2)
        with pytest.raises(StreamError, match="START"):
            idle.send(video[1], behavior[1], pupil[1])
    assert client.is_server_live()


def test_end_frees_a_stream_even_with_a_refused_frame(served, default_mouse):
    """START with a valid frame, END with a NaN frame, many times: the refused END still frees the state."""
    server, _, manifest = served
    recording = default_mouse[0].name
    model = model_names(recording)["stream"]
    video, behavior, pupil = _trials(default_mouse[0], 1)[0]
    client = grpc.InferenceServerClient(server.url)
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error))

    def send(sequence, frame, **flags):
        tensors = []
        for name, array in zip(STEP_INPUTS, (frame, behavior[:1], pupil[:1])):
            tensors.append(grpc.InferInput(name, list(array.shape), "FP32"))
            tensors[-1].set_data_from_numpy(np.ascontiguousarray(array))
        client.async_stream_infer(model, tensors, sequence_id=sequence, **flags)
        return answers.get(timeout=30)

    def open_and_end_badly(sequences):
        for sequence in sequences:
            assert send(sequence, video[:1], sequence_start=True) is None
            assert "NaN" in str(send(sequence, bad, sequence_end=True))

    bad, streams = np.full_like(video[:1], np.nan), 400
    open_and_end_badly(range(1, 51))  # warm-up: the allocator's own growth is not a leak
    before = backend_resident_mb(server, model)
    open_and_end_badly(range(51, 51 + streams))
    grown = backend_resident_mb(server, model) - before
    print(f"backend memory grew {grown:.1f} MB")
    client.stop_stream()
    state_mb = manifest.graph(recording, "step").details["state_bytes_per_stream"] / 2**20
    assert grown < 0.3 * streams * state_mb, f"{grown:.1f} MB kept after {streams} ended streams"


def test_a_stream_survives_a_server_crash_and_restart(tiny_artifacts, default_mouse, tmp_path):
    artifacts, manifest = tiny_artifacts
    recording = default_mouse[0].name
    repository = tmp_path / "repository"
    write_repository(artifacts, repository)
    trial = _trials(default_mouse[0], 1)[0]
    outputs, reconnects = stream_through_a_crash(repository, model_names(recording)["stream"], trial, crash_at=100)
    assert reconnects == 1
    assert relative_error(outputs, _local_stream(artifacts, manifest, recording, trial)) < 1e-5


def test_tampered_artifacts_are_refused_before_serving(tiny_artifacts, tmp_path):
    import shutil

    artifacts, manifest = tiny_artifacts
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    step = next(iter(manifest.recordings.values())).graphs["step"].file
    (copy / step).write_bytes((copy / step).read_bytes()[:-10])
    with pytest.raises(ValueError, match="step.onnx: sha256"):
        write_repository(copy, tmp_path / "repository")


def test_async_client_streams_like_the_sync_one(served, default_mouse):
    import asyncio

    from twinserve.clients.stream import AsyncStreamClient

    server, artifacts, manifest = served
    recording = default_mouse[0].name
    video, behavior, pupil = (a[:40] for a in _trials(default_mouse[0], 1)[0])

    async def two_streams():
        async def one():
            async with await AsyncStreamClient.open(server.url, model_names(recording)["stream"]) as client:
                return np.stack([r async for r in client.run(video, behavior, pupil)])
        return await asyncio.gather(one(), one())

    local = _local_stream(artifacts, manifest, recording, (video, behavior, pupil))
    for outputs in asyncio.run(two_streams()):
        assert relative_error(outputs, local) < 1e-5


def test_stream_cli_saves_responses_and_prints_latency(served, default_mouse, tmp_path, capsys):
    from twinserve.cli import main as twin

    server, artifacts, manifest = served
    recording = default_mouse[0].name
    video = _trials(default_mouse[0], 1)[0][0][:50]
    np.save(tmp_path / "video.npy", np.moveaxis(video, 0, -1))  # SENSORIUM's (H, W, T) layout is read too
    out = tmp_path / "responses.npy"
    assert twin(["stream", "--url", server.url, "--model", model_names(recording)["stream"], "--video",
                 str(tmp_path / "video.npy"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout holds the JSON only
    assert summary["frames"] == 50 and summary["latency"]["p99_ms"] > 0
    assert np.load(out).shape == (50, manifest.recording(recording).neurons)
    assert twin(["stream", "--url", server.url, "--model", "nope", "--video", str(tmp_path / "video.npy")]) == 2


def _fake_artifacts(folder, recording):
    """A manifest with unbounded memory and a non-default frame shape, and one placeholder graph file:
    all that `write_repository` reads (it checks the hashes, it loads no graph)."""
    folder.mkdir()
    (folder / "graph.onnx").write_bytes(b"not a graph")
    graph = GraphEntry("graph.onnx", file_sha256(folder / "graph.onnx"), inputs=[], outputs=[], parity={},
                       parity_against="")
    entry = RecordingEntry(neurons=3, unit_ids=[5, 6, 7], behavior_mean=[1.5, 2.5], pupil_center_mean=[0.0, -1.0],
                           graphs={"step": graph, "clip": graph})
    Manifest(preset="tiny", core="factorized", receptive_field=None, frame_shape=[20, 30], opset=17,
             parity_tolerance=1e-4, versions={}, recordings={recording: entry}).write(folder)
    return folder


def test_configs_parse_and_carry_the_model_parameters_whatever_the_names(tmp_path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    recording = 'mouse "7" \\ day\t2'  # quotes, a backslash and a tab must be escaped in config.pbtxt
    artifacts = _fake_artifacts(tmp_path / 'arte"facts', recording)
    models = write_repository(artifacts, tmp_path / "repository", Limits(max_clip_frames=99), threads=3)
    assert models == {name: {"recording": recording, "kind": kind} for kind, name in model_names(recording).items()}
    for name in models:
        text = (tmp_path / "repository" / name / "config.pbtxt").read_text()
        config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()),
                                           preserving_proto_field_name=True)
        assert config["name"] == name
        clip = models[name]["kind"] == "clip"
        frames, pixels = ([-1], "video") if clip else ([], "frame")
        dims = {spec["name"]: [int(d) for d in spec["dims"]] for spec in config["input"] + config["output"]}
        assert dims == {pixels: frames + [20, 30], f"{pixels}_uint8": frames + [20, 30], "behavior": frames + [2],
                        "pupil_center": frames + [2], "responses": frames + [3]}
        parameters = ModelParameters.from_model_config(config)
        assert replace(parameters, extra={}) == ModelParameters(
            recording=recording, receptive_field=None, frame_shape=(20, 30), unit_ids=(5, 6, 7),
            behavior_mean=(1.5, 2.5), pupil_center_mean=(0.0, -1.0), artifacts=artifacts.resolve().as_posix(),
            threads=3, max_clip_frames=99)
        assert parameters.extra == ({"EXECUTION_ENV_PATH": sys.prefix} if sys.prefix != sys.base_prefix else {})


def test_a_repository_folder_is_replaced_only_if_twinserve_wrote_it(tmp_path, monkeypatch):
    from twinserve.cli import main as twin

    artifacts = _fake_artifacts(tmp_path / "artifacts", "mouse")
    ours = tmp_path / "ours"
    write_repository(artifacts, ours)
    (ours / "stale_stream").mkdir()
    monkeypatch.chdir(ours)
    write_repository(artifacts, ".")  # `twin serve --repository .` inside a repository: replaced, folder kept
    assert ours.is_dir() and (ours / MARKER).is_file() and not (ours / "stale_stream").exists()
    assert sorted(p.name for p in ours.iterdir()) == sorted([MARKER, *model_names("mouse").values()])
    theirs = tmp_path / "theirs"
    (theirs / "notes").mkdir(parents=True)
    (theirs / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(f"{theirs}: not empty and not a model repository")):
        write_repository(artifacts, theirs)
    monkeypatch.chdir(theirs)
    assert twin(["serve", "--artifacts", str(artifacts), "--repository", "."]) == 2  # refused, nothing deleted
    assert [p.relative_to(theirs).as_posix() for p in sorted(theirs.rglob("*"))] == ["notes", "notes/keep.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a folder"):
        write_repository(artifacts, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert len(write_repository(artifacts, tmp_path / "empty")) == 2  # an empty folder is used
