"""A random twin served by the real Triton server: the set-up of the stream and score benchmarks.

    with ServedTwin("small", neurons=8000, folder=scratch) as served:
        served.url, served.model("stream"), served.manifest, served.artifacts

The twin (random weights) is exported to `folder/artifacts`, written into the model repository
`folder/models` and served on free ports until the block ends.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twinserve.contract import model_names
from twinserve.serving.repository import quoted, write_repository
from twinserve.serving.server import Ports, TritonServer

from .twins import RECORDING, export_random_twin

SUFFIX = "_copying"  # the stream model before the state pool (`benchmarks.copying_stream`)
COPYING_MODEL_PY = ("from twinserve.benchmarks.copying_stream import CopyingStreamModel as TritonPythonModel"
                    "  # noqa: F401\n")


def add_copying_stream_model(repository: Path, model: str) -> str:
    """Beside the stream model `model` of a written repository, the same twin served by
    `CopyingStreamModel` (before the server starts) → that model's name."""
    name = f"{model}{SUFFIX}"
    shutil.copytree(repository / model, repository / name)
    config = repository / name / "config.pbtxt"
    config.write_text(config.read_text().replace(f"name: {quoted(model)}", f"name: {quoted(name)}", 1))
    (repository / name / "1" / "model.py").write_text(COPYING_MODEL_PY)
    return name


class ServedTwin:
    """Context manager: a random twin of `preset` (`neurons` neurons, recording `RECORDING`), exported and served."""

    def __init__(self, preset: str, neurons: int, folder: str | Path, copying_stream: bool = False):
        self.preset, self.neurons, self.folder = preset, neurons, Path(folder)
        self.copying_stream = copying_stream  # also serve the stream model before the state pool
        self.artifacts, self.repository = self.folder / "artifacts", self.folder / "models"
        self.twin = self.manifest = self.server = None

    def __enter__(self) -> ServedTwin:
        self.twin, self.manifest = export_random_twin(self.preset, self.neurons, self.artifacts)
        write_repository(self.artifacts, self.repository)
        if self.copying_stream:
            add_copying_stream_model(self.repository, self.model("stream"))
        self.server = TritonServer(self.repository, Ports.free())
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def model(self, kind: str) -> str:
        """The Triton name of the twin's "stream" or "clip" model, or of "stream_copying" (the stream
        model before the state pool, served with `copying_stream=True`)."""
        if kind == "stream" + SUFFIX:
            return model_names(RECORDING)["stream"] + SUFFIX
        return model_names(RECORDING)[kind]

    def crashed(self) -> bool:
        return self.server.process.poll() is not None

    def restart(self) -> str:
        """Stop the server (if it still runs) and start a fresh one on new ports → the old one's log tail."""
        log = self.server.log_tail(3)
        self.server.stop()
        self.server = TritonServer(self.repository, Ports.free())
        return log
