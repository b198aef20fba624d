"""`manifest.json` of an artifacts folder, typed: what each file is, its tensors, and its sha256.

    Manifest            the twin: preset, core, receptive field (None: unbounded memory), frame shape,
                        versions, attention form, and per recording a `RecordingEntry`
    RecordingEntry      neurons, unit ids, raw behaviour means, and per graph (`clip`, `step`, engines)
                        a `GraphEntry`
    GraphEntry          file (relative to the artifacts folder), sha256, input/output `TensorSpec`s,
                        parity errors, and graph-specific facts in `details`

Read and written here only (torch-free: the server's models import it). Every file path stays
inside the artifacts folder. Each graph is one self-contained file (weights inside, no external
data), so its sha256 covers all of it, and `verified_bytes` hands out exactly the bytes it hashed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from twinserve.contract import DEFAULT_FRAME_SHAPE, is_state, output_offset

MANIFEST = "manifest.json"
FORMAT = 2


class ArtifactError(ValueError):
    """An artifact is missing, unreadable or does not match its manifest; the message names the file."""


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints, or names of dynamic dimensions

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """The shape after the leading batch dimension (all of it fixed for step-graph states)."""
        return tuple(self.shape[1:])


@dataclass
class GraphEntry:
    file: str                       # posix path relative to the artifacts folder
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: dict[str, float]        # relative error per checked case
    parity_against: str
    details: dict = field(default_factory=dict)  # op counts, state bytes, precision, tolerance, …

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ArtifactError(f"{self.file}: no input named {name!r}; inputs: {[s.name for s in self.inputs]}")

    @property
    def states(self) -> list[TensorSpec]:
        """The step graph's state inputs in order (`state_0`, `state_1`, …)."""
        return [spec for spec in self.inputs if is_state(spec.name)]

    @classmethod
    def from_dict(cls, value: dict) -> GraphEntry:
        value = dict(value)
        for key in ("inputs", "outputs"):
            value[key] = [TensorSpec(**spec) for spec in value[key]]
        return cls(**value)


@dataclass
class RecordingEntry:
    neurons: int
    unit_ids: list[int]
    behavior_mean: list[float]      # raw units: what a client may send when it has no behaviour
    pupil_center_mean: list[float]
    graphs: dict[str, GraphEntry]

    @classmethod
    def from_dict(cls, value: dict) -> RecordingEntry:
        value = dict(value)
        value["graphs"] = {name: GraphEntry.from_dict(graph) for name, graph in value["graphs"].items()}
        return cls(**value)


@dataclass
class Manifest:
    preset: str
    core: str
    receptive_field: int | None     # frames; None: unbounded memory (recurrent cores)
    frame_shape: list[int]          # (H, W)
    opset: int
    parity_tolerance: float
    versions: dict[str, str]
    recordings: dict[str, RecordingEntry] = field(default_factory=dict)
    attention: dict | None = None   # transformer twins: {"form", "reason", "attention_nodes"}
    format: int = FORMAT

    @property
    def offset(self) -> int:
        """Input frames before a clip's first output (`contract.output_offset`)."""
        return output_offset(self.receptive_field)

    def recording(self, name: str) -> RecordingEntry:
        if name not in self.recordings:
            raise ArtifactError(f"no recording {name!r} in the manifest; recordings: {sorted(self.recordings)}")
        return self.recordings[name]

    def graph(self, recording: str, graph: str) -> GraphEntry:
        entry = self.recording(recording)
        if graph not in entry.graphs:
            raise ArtifactError(f"no {graph!r} graph for recording {recording!r}; graphs: {sorted(entry.graphs)}")
        return entry.graphs[graph]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> Manifest:
        value = dict(value)
        if value.get("format", 1) == 1:  # written before the frame shape and the core names were recorded
            value.setdefault("frame_shape", list(DEFAULT_FRAME_SHAPE))
            value["core"] = {"convolution": "factorized"}.get(value.get("core"), value.get("core", "factorized"))
            for entry in value["recordings"].values():
                for graph in entry["graphs"].values():
                    known = {"file", "sha256", "inputs", "outputs", "parity", "parity_against", "details"}
                    graph["details"] = {k: graph.pop(k) for k in list(graph) if k not in known}
            value["format"] = FORMAT
        value["recordings"] = {name: RecordingEntry.from_dict(entry) for name, entry in value["recordings"].items()}
        return cls(**value)

    def write(self, artifacts: str | Path) -> Path:
        """Write `manifest.json` atomically into the artifacts folder → its path."""
        path = Path(artifacts) / MANIFEST
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2))
        temporary.replace(path)
        return path


def read_manifest(artifacts: str | Path) -> Manifest:
    path = Path(artifacts) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; is {artifacts} an artifacts folder written by `twin export`?")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    except (TypeError, KeyError, AttributeError) as error:
        raise ArtifactError(f"{path}: not a twinserve manifest ({type(error).__name__}: {error})") from None


def artifact_path(artifacts: str | Path, file: str) -> Path:
    """The path of a manifest's `file` entry, refused unless it is relative and stays inside the folder."""
    relative = PurePosixPath(file)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ArtifactError(f"manifest names {file!r}: artifact paths must be relative and stay inside the folder")
    root = Path(artifacts).resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise ArtifactError(f"manifest names {file!r}, which leads outside {root} (a link?)")
    return path


def _verified(artifacts: str | Path, entry: GraphEntry) -> tuple[Path, bytes]:
    """(path, content) of one graph file, read once and checked against its manifest entry's sha256."""
    path = artifact_path(artifacts, entry.file)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    if path.with_name(path.name + ".data").exists():  # written by an exporter before graphs were self-contained
        raise ArtifactError(f"{path}: its weights lie beside it in {path.name}.data, which the manifest's sha256 does "
                            f"not cover; export the run again with `twin export`")
    content = path.read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != entry.sha256:
        raise ArtifactError(f"{path}: sha256 {actual[:16]}… does not match the manifest's {entry.sha256[:16]}…; "
                            f"the file was changed or corrupted after export")
    return path, content


def verified_bytes(artifacts: str | Path, recording: str, graph: str) -> bytes:
    """The content of one graph file, read once and checked against the manifest's sha256."""
    return _verified(artifacts, read_manifest(artifacts).graph(recording, graph))[1]


def verified_path(artifacts: str | Path, recording: str, graph: str) -> Path:
    """Path of one graph file after checking it against the manifest's sha256 (for tools that take
    a path; the file could still change after the check)."""
    return _verified(artifacts, read_manifest(artifacts).graph(recording, graph))[0]


def verify_all(artifacts: str | Path) -> Manifest:
    """Check every graph file of the manifest → the manifest."""
    manifest = read_manifest(artifacts)
    for entry in manifest.recordings.values():
        for graph in entry.graphs.values():
            _verified(artifacts, graph)
    return manifest
