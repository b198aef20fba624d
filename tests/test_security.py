"""A server reachable beyond this machine: the API key guards gRPC and HTTP, shared memory is closed
to everyone, gRPC speaks TLS, and the clients pass the key and TLS or fail fast and clearly.

One real Triton server for the module: bound to 0.0.0.0 with a key and (where `openssl` is) TLS,
always called at 127.0.0.1: no traffic leaves this machine."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from twinserve.cli import main as twin
from twinserve.clients.connection import AccessRefused, Connection, key_refused
from twinserve.clients.experiments.common import ServedTwin
from twinserve.clients.stream import ServerGone, StreamClient
from twinserve.contract import API_KEY_ENV, API_KEY_HEADER, model_names
from twinserve.export.manifest import verified_path
from twinserve.export.onnx_export import cpu_session, relative_error, stream
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Access, Ports, TritonServer

from test_server_process import listening

KEY = "test-key-0123456789abcdef+/="  # base64 characters, padding included
OTHER_KEY = "not-the-key-0123456789abcdef"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1 → (cert, key) PEM paths, or None without openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    if shutil.which("openssl") is None:
        return None
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True)
    return (cert, key) if made.returncode == 0 else None


@pytest.fixture(scope="module")
def secured(tiny_artifacts, certificate, tmp_path_factory):
    """The tiny twin served on every interface with the key and, where openssl made a certificate, TLS
    → (server, manifest, the CA file or None)."""
    artifacts, manifest = tiny_artifacts
    repository = tmp_path_factory.mktemp("secured")
    write_repository(artifacts, repository)
    cert, key = certificate or (None, None)
    with TritonServer(repository, Ports.free(), host="0.0.0.0", access=Access(KEY, cert, key)) as server:
        yield server, manifest, cert


def _connection(secured, key=KEY) -> Connection:
    server, _, ca = secured
    return Connection(server.url, key, tls_ca=ca)


def _http(server, path: str, key: str | None = None, body: bytes | None = None) -> int:
    """HTTP status of GET (or POST with `body`) `path` at 127.0.0.1, with the key header if given."""
    headers = {API_KEY_HEADER: key} if key else {}
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def _local_stream(artifacts, manifest, recording, video, behavior, pupil):
    shapes = [spec.fixed_shape for spec in manifest.graph(recording, "step").states]
    session = cpu_session(verified_path(artifacts, recording, "step"))
    return stream(session, video[None], behavior[None], pupil[None], shapes)[0]


def _inputs(manifest, frames: int, seed: int = 0):
    """Random frames (T, H, W) and the recording's mean behaviour and pupil centre (T, 2)."""
    recording = next(iter(manifest.recordings.values()))
    video = np.random.default_rng(seed).uniform(0, 255, (frames, *manifest.frame_shape)).astype(np.float32)
    return (video, np.tile(np.float32(recording.behavior_mean), (frames, 1)),
            np.tile(np.float32(recording.pupil_center_mean), (frames, 1)))


def test_endpoints_listen_as_described_and_the_key_is_never_shown(secured):
    server, _, ca = secured
    described = server.describe()
    assert listening(server.ports.grpc) == {"0.0.0.0"}
    assert listening(server.ports.http) == ({"127.0.0.1"} if ca else {"0.0.0.0"})  # HTTP has no TLS
    assert listening(server.ports.metrics) == {"127.0.0.1"}  # metrics have no key
    assert described["listen"]["metrics"] == f"127.0.0.1:{server.ports.metrics}"
    assert described["api_key"]["grpc"] and described["tls"]["grpc"] == (ca is not None)
    assert described["shared_memory"] == "disabled"
    shown = [json.dumps(described), repr(server.access), server.log_path.read_text(), " ".join(server.process.args)]
    assert server.keys_hidden, "the keys are still in tritonserver's command line"
    shown.append((open(f"/proc/{server.process.pid}/cmdline", "rb").read().decode(errors="replace")))
    assert not any(KEY in text for text in shown)


def test_grpc_calls_need_the_key(secured, default_mouse):
    server, manifest, _ = secured
    clip = model_names(default_mouse[0].name)["clip"]
    for key in (None, OTHER_KEY):
        client = _connection(secured, key).client()
        for call in (client.is_server_live, client.get_server_metadata, lambda: client.get_model_config(clip),
                     client.get_model_repository_index, lambda: client.get_inference_statistics(clip)):
            with pytest.raises(InferenceServerException, match="restricted") as refused:
                call()
            assert key_refused(refused.value)
        client.close()
        with pytest.raises(AccessRefused, match="API key"):
            ServedTwin.connect(_connection(secured, key), clip)
    client = _connection(secured).client()
    assert client.is_server_live() and client.get_model_config(clip)
    twin = ServedTwin.connect(_connection(secured), clip)  # inference with the key: answered
    responses = twin.clip_responses([np.full((12, *manifest.frame_shape), 100.0, np.float32)])
    assert responses[0].shape == (12, manifest.recording(default_mouse[0].name).neurons)
    client.close()


def test_http_calls_need_the_key_and_metrics_need_none(secured, default_mouse):
    server, _, _ = secured
    clip = model_names(default_mouse[0].name)["clip"]
    for path, body in (("/v2/health/ready", None), ("/v2", None), (f"/v2/models/{clip}/config", None),
                       (f"/v2/models/{clip}/stats", None), ("/v2/repository/index", b"{}"),
                       (f"/v2/models/{clip}/infer", b"{}"), ("/v2/logging", None)):
        assert _http(server, path, None, body) == 403, path
        assert _http(server, path, OTHER_KEY, body) == 403, path
    for path, body in (("/v2/health/ready", None), ("/v2", None), (f"/v2/models/{clip}/config", None),
                       ("/v2/repository/index", b"{}")):
        assert _http(server, path, KEY, body) == 200, path
    with urllib.request.urlopen(f"http://{server.metrics_url}", timeout=10) as reply:
        assert b"nv_inference_count" in reply.read()


def test_shared_memory_and_model_control_are_closed_even_with_the_key(secured, default_mouse):
    server, _, _ = secured
    client = _connection(secured).client()
    with pytest.raises(InferenceServerException, match="restricted"):
        client.register_system_shared_memory("region", "/twinserve-test", 64)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_system_shared_memory_status()
    with pytest.raises(InferenceServerException, match="(?i)not allowed|explicit"):
        client.unload_model(model_names(default_mouse[0].name)["clip"])
    assert client.is_model_ready(model_names(default_mouse[0].name)["clip"])
    client.close()
    body = json.dumps({"key": "/twinserve-test", "offset": 0, "byte_size": 64}).encode()
    assert _http(server, "/v2/systemsharedmemory/region/region/register", KEY, body) == 403
    assert _http(server, "/v2/systemsharedmemory/status", KEY) == 403


def test_tls_client_is_answered_and_a_plaintext_one_is_not(secured, default_mouse):
    server, _, ca = secured
    if ca is None:
        pytest.skip("no openssl to make a certificate")
    plain = Connection(server.url, KEY).client()
    with pytest.raises(InferenceServerException) as failed:
        plain.is_server_live()
    assert not key_refused(failed.value)
    plain.close()
    with pytest.raises(ServerGone, match="TLS"):
        StreamClient(Connection(server.url, KEY), model_names(default_mouse[0].name)["stream"])
    assert _connection(secured).client().is_server_live()


def test_stream_client_with_the_key_streams_and_recovers_without_cancelling(secured, tiny_artifacts, default_mouse,
                                                                             monkeypatch):
    """Through key and TLS; a server stopped for 3 s makes the client time out: it ENDs the old
    sequence, reconnects, replays, and the outputs equal an uninterrupted local run."""
    server, manifest, _ = secured
    recording = default_mouse[0].name
    inputs = _inputs(manifest, 60)
    sent = []  # (sequence id, end) of every request
    original = StreamClient._send

    def recording_send(self, frame, end=False):
        sent.append((self._sequence, end))
        return original(self, frame, end)

    monkeypatch.setattr(StreamClient, "_send", recording_send)
    outputs = []
    try:
        with StreamClient(_connection(secured), model_names(recording)["stream"], response_timeout=1.0) as client:
            for t, responses in enumerate(client.run(*inputs)):
                outputs.append(responses)
                if t == 20:
                    os.kill(server.process.pid, signal.SIGSTOP)
                    threading.Timer(3.0, os.kill, (server.process.pid, signal.SIGCONT)).start()
            assert client.reconnects == 1
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    local = _local_stream(tiny_artifacts[0], manifest, recording, *inputs)
    assert relative_error(np.stack(outputs), local) < 1e-5
    first, last = sent[0][0], sent[-1][0]
    assert first != last and (first, True) in sent  # the old sequence got its END …
    assert sent.index((first, True)) < next(i for i, (sequence, _) in enumerate(sent) if sequence != first)
    assert (last, True) == sent[-1]  # … before the new one opened; close() ENDs the new one
    assert server.process.poll() is None


def test_stream_client_without_the_key_fails_fast_and_clearly(secured, default_mouse, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    model = model_names(default_mouse[0].name)["stream"]
    started = time.monotonic()
    with pytest.raises(AccessRefused, match=f"requires an API key.*--api-key-file.*{API_KEY_ENV}"):
        StreamClient(_connection(secured, None), model)
    with pytest.raises(AccessRefused, match="refused the API key"):
        StreamClient(_connection(secured, OTHER_KEY), model)
    assert time.monotonic() - started < 5


def test_client_commands_take_the_key_file_and_tls(secured, default_mouse, tmp_path, monkeypatch, capsys):
    server, manifest, ca = secured
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    (tmp_path / "key").write_text(KEY + "\n")
    np.save(tmp_path / "video.npy", _inputs(manifest, 20)[0])
    tls = ["--tls-ca", str(ca)] if ca else []
    stream_args = ["stream", "--url", server.url, *tls, "--model", model_names(default_mouse[0].name)["stream"],
                   "--video", str(tmp_path / "video.npy"), "--out", str(tmp_path / "r.npy"), "--quiet"]
    assert twin(stream_args) == 2
    assert "requires an API key" in capsys.readouterr().err
    assert twin([*stream_args, "--api-key-file", str(tmp_path / "key")]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 20
    score_args = ["score", "--url", server.url, *tls, "--model", model_names(default_mouse[0].name)["clip"],
                  "--library", str(tmp_path), "--out", str(tmp_path / "s.zarr"), "--quiet"]
    assert twin(score_args) == 2
    assert "requires an API key" in capsys.readouterr().err
    monkeypatch.setenv(API_KEY_ENV, OTHER_KEY)
    assert twin(["experiment", "tuning", "--url", server.url, *tls, "--model", model_names(default_mouse[0].name)[
        "clip"], "--out", str(tmp_path / "tuning"), "--quiet"]) == 2
    assert "refused the API key" in capsys.readouterr().err


def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tiny_artifacts, tmp_path, monkeypatch, capsys):
    artifacts, _ = tiny_artifacts
    serve = ["serve", "--artifacts", str(artifacts), "--repository", str(tmp_path / "models")]
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert twin([*serve, "--host", "0.0.0.0"]) == 2
    error = capsys.readouterr().err
    assert "API key is required" in error and "--api-key-file" in error and API_KEY_ENV in error
    assert twin([*serve, "--http-host", "0.0.0.0"]) == 2
    monkeypatch.setenv(API_KEY_ENV, "short")
    assert twin([*serve, "--host", "0.0.0.0"]) == 2
    assert "fewer than 16" in capsys.readouterr().err
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert twin([*serve, "--host", "0.0.0.0", "--tls-cert", str(tmp_path / "cert.pem")]) == 2
    assert "--tls-key" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # refused before any work
