"""`twin score` against the real server: resumable after a kill, bad stimuli reported by name."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from twinserve.clients.library import Library, StimulusError, save_library
from twinserve.clients.score import score
from twinserve.contract import CLIP_INPUTS, model_names
from twinserve.export.manifest import verified_path
from twinserve.export.onnx_export import cpu_session, relative_error
from twinserve.training.data import Recording


def _library(folder, default_mouse, count, frames=300):
    trials = Recording(default_mouse[0]).load("train")
    videos = {f"stim{i:03d}": np.roll(trials[i % len(trials)].video[:frames], 5 * i, axis=1).astype(np.uint8)
              for i in range(count)}
    return save_library(folder, videos), videos


def test_scores_match_the_clip_graph_and_bad_stimuli_are_named(served, default_mouse, tmp_path):
    server, artifacts, manifest = served
    recording = default_mouse[0].name
    library, videos = _library(tmp_path / "library", default_mouse, 4, frames=60)
    behavior = np.tile([[3.0, 1.0]], (40, 1)).astype(np.float32)
    np.savez(library / "with_behavior.npz", video=videos["stim000"][:40], behavior=behavior,
             pupil_center=np.zeros((40, 2), np.float32))
    (library / "broken.npy").write_bytes(b"not a numpy file")
    shortest = manifest.offset + 1  # a clip's first output needs offset + 1 frames
    np.save(library / "short.npy", videos["stim001"][:shortest - 1])
    np.save(library / "shortest.npy", videos["stim001"][:shortest])
    np.save(library / "narrow.npy", videos["stim001"][:, :, :-4])  # not the served frame shape
    model = model_names(recording)["clip"]
    summary = score(server.url, model, library, tmp_path / "scores.zarr", progress=False)
    assert set(summary["failed"]) == {"broken", "short", "narrow"} and "unreadable" in summary["failed"]["broken"]
    assert f"fewer than the {shortest}" in summary["failed"]["short"]
    height, width = manifest.frame_shape
    assert f"narrow: expected frames (T, {height}, {width})" in summary["failed"]["narrow"]
    assert summary["scored"] == 6
    store = zarr.open_group(tmp_path / "scores.zarr", mode="r")
    names = store.attrs["stimuli"]
    assert names == sorted(["stim000", "stim001", "stim002", "stim003", "with_behavior", "broken", "short", "shortest",
                            "narrow"])
    assert store.attrs["receptive_field"] == manifest.receptive_field
    entry = manifest.recording(recording)
    assert store["neuron_ids"][:].tolist() == entry.unit_ids
    assert store["frames"][names.index("shortest")] == 1
    session = cpu_session(verified_path(artifacts, recording, "clip"))
    row = names.index("stim002")
    video = videos["stim002"][None].astype(np.float32)
    means = [np.tile(m, (1, 60, 1)).astype(np.float32) for m in (entry.behavior_mean, entry.pupil_center_mean)]
    local = session.run(None, dict(zip(CLIP_INPUTS, [video, *means])))[0][0]
    assert store["frames"][row] == 60 - manifest.offset == len(local)
    assert relative_error(store["responses"][row, :len(local)], local) < 1e-5
    assert np.isnan(store["responses"][row, len(local):]).all()
    with pytest.raises(StimulusError, match="broken: unreadable"):
        score(server.url, model, library, tmp_path / "stop.zarr", on_error="stop", progress=False)
    with pytest.raises(ValueError, match="different run"):
        score(server.url, model_names(default_mouse[1].name)["clip"], library, tmp_path / "scores.zarr",
              progress=False)
    with pytest.raises(ValueError, match="no-such-model"):
        score(server.url, "no-such-model", library, tmp_path / "x.zarr", progress=False)


def test_a_killed_run_resumes_to_the_uninterrupted_result(served, default_mouse, tmp_path):
    server, _, _ = served
    model = model_names(default_mouse[0].name)["clip"]
    library, _ = _library(tmp_path / "library", default_mouse, 80)
    store = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "twinserve.cli", "score", "--url", server.url, "--model", model, "--library",
               str(library), "--out", str(store), "--in-flight", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        done = store / "scored.txt"
        if done.is_file() and done.read_text().count("\n") >= 5:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    written = (store / "scored.txt").read_text().count("\n")
    assert 5 <= written < 80
    resumed = score(server.url, model, library, store, progress=False)
    assert resumed["skipped_done"] == written and resumed["scored"] == 80 - written
    score(server.url, model, library, tmp_path / "whole.zarr", progress=False)
    killed, whole = (zarr.open_group(p, mode="r") for p in (store, tmp_path / "whole.zarr"))
    np.testing.assert_array_equal(killed["responses"][:], whole["responses"][:])
    np.testing.assert_array_equal(killed["frames"][:], whole["frames"][:])
    assert sorted((store / "scored.txt").read_text().split()) == Library(library).names


def test_a_server_lost_mid_run_stops_the_run_without_marking_stimuli_failed(tiny_artifacts, default_mouse, tmp_path):
    import threading

    from twinserve.serving.repository import write_repository
    from twinserve.serving.server import Ports, TritonServer

    artifacts, _ = tiny_artifacts
    write_repository(artifacts, tmp_path / "repository")
    server = TritonServer(tmp_path / "repository", Ports.free())
    library, _ = _library(tmp_path / "library", default_mouse, 60)
    store = tmp_path / "scores.zarr"

    def kill_after_a_few():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (store / "scored.txt").is_file() and (store / "scored.txt").read_text().count("\n") >= 3:
                break
            time.sleep(0.01)
        server.kill()

    watcher = threading.Thread(target=kill_after_a_few)
    watcher.start()
    try:
        with pytest.raises(ConnectionError, match="lost the server"):
            score(server.url, model_names(default_mouse[0].name)["clip"], library, store, in_flight=2, progress=False)
    finally:
        watcher.join()
        server.stop()
    assert not (store / "failed.txt").exists()
    assert 3 <= (store / "scored.txt").read_text().count("\n") < 60
