"""Shared fixtures: a small virtual mouse, written once per test session."""

import re
from pathlib import Path

import pytest

from twinserve.cli import main as twin
from twinserve.training.virtual_mouse import synthesize


@pytest.fixture(scope="session")
def default_mouse(tmp_path_factory):
    """The issue's command: `twin data synth --recordings 2 --neurons 300 --train-minutes 6 --seed 0`."""
    out = tmp_path_factory.mktemp("default_mouse")
    args = ["data", "synth", "--out", str(out), "--recordings", "2", "--neurons", "300", "--train-minutes", "6",
            "--seed", "0", "--quiet"]
    assert twin(args) == 0
    return sorted(out.iterdir())


@pytest.fixture(scope="session")
def small_mouse(tmp_path_factory):
    """Two small recordings (40 and 46 neurons), 1.5 training minutes, 4 repeats per clip."""
    return synthesize(tmp_path_factory.mktemp("small_mouse"), recordings=2, neurons=40, train_minutes=1.5,
                      seed=1, repeats=4, oracle_clips=2, test_clips=1, progress=False)


@pytest.fixture(scope="session")
def mini_mouse(tmp_path_factory):
    """One small recording (30 neurons, 30 s of training trials of 150 frames, every tier 2 trials):
    `twin train` ends by evaluating every tier one trial at a time, frame by frame for recurrent cores."""
    return synthesize(tmp_path_factory.mktemp("mini_mouse"), recordings=1, neurons=30, train_minutes=0.5, seed=2,
                      trial_frames=150, repeats=2, oracle_clips=1, test_clips=1, progress=False)


@pytest.fixture(scope="session")
def tiny_run(default_mouse, tmp_path_factory):
    """A `tiny` twin trained briefly on the default virtual mouse → (run directory, metrics)."""
    from twinserve.training.train import train

    out = tmp_path_factory.mktemp("run")
    results = train(default_mouse, out, preset="tiny", progress=False, steps=180, eval_every=30, minutes=60)
    return out, results


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_run, tmp_path_factory):
    """The tiny twin exported: (artifacts folder, the `Manifest` that `export_run` returns)."""
    from twinserve.export.onnx_export import export_run

    out = tmp_path_factory.mktemp("artifacts")
    return out, export_run(tiny_run[0], out)


IDLE_TIMEOUT_S = 3.0


@pytest.fixture(scope="session")
def served(tiny_artifacts, tmp_path_factory):
    """The tiny twin served by a real Triton server → (server, artifacts folder, manifest)."""
    import os

    from twinserve.serving.limits import Limits
    from twinserve.serving.repository import write_repository
    from twinserve.serving.server import Ports, TritonServer

    artifacts, manifest = tiny_artifacts
    repository = tmp_path_factory.mktemp("repository")
    write_repository(artifacts, repository, Limits(idle_timeout_s=IDLE_TIMEOUT_S))
    with TritonServer(repository, Ports.free()) as server:
        yield server, artifacts, manifest
    with pytest.raises(ProcessLookupError):  # no orphan: the whole process group is gone
        os.killpg(server.process.pid, 0)


def backend_resident_mb(server, model: str) -> float:
    """Resident memory (MB) of the Python-backend process that runs `model` on `server`."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
            if entry.name.isdigit() and f"{server.repository}/{model}/1/model.py" in command:
                status = (entry / "status").read_text()
                return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
        except OSError:
            continue
    raise AssertionError(f"no backend process for {model}")
