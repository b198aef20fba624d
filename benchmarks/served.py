"""A random twin served by the real Triton server: the set-up of the stream and score benchmarks.

    with ServedTwin("small", neurons=8000, folder=scratch) as served:
        served.url, served.model("stream"), served.manifest, served.artifacts

The twin (random weights) is exported to `folder/artifacts`, written into the model repository
`folder/models` and served on free ports until the block ends.
"""

from __future__ import annotations

from pathlib import Path

from twinserve.contract import model_names
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer

from .twins import RECORDING, export_random_twin


class ServedTwin:
    """Context manager: a random twin of `preset` (`neurons` neurons, recording `RECORDING`), exported and served."""

    def __init__(self, preset: str, neurons: int, folder: str | Path):
        self.preset, self.neurons, self.folder = preset, neurons, Path(folder)
        self.artifacts, self.repository = self.folder / "artifacts", self.folder / "models"
        self.twin = self.manifest = self.server = None

    def __enter__(self) -> ServedTwin:
        self.twin, self.manifest = export_random_twin(self.preset, self.neurons, self.artifacts)
        write_repository(self.artifacts, self.repository)
        self.server = TritonServer(self.repository, Ports.free())
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def model(self, kind: str) -> str:
        """The Triton name of the twin's "stream" or "clip" model."""
        return model_names(RECORDING)[kind]

    def crashed(self) -> bool:
        return self.server.process.poll() is not None

    def restart(self) -> str:
        """Stop the server (if it still runs) and start a fresh one on new ports → the old one's log tail."""
        log = self.server.log_tail(3)
        self.server.stop()
        self.server = TritonServer(self.repository, Ports.free())
        return log
