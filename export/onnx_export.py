"""`twin export`: a trained run → ONNX graphs per recording + `manifest.json`, parity-checked.

    ART/<recording>/clip.onnx   video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2)
                                → responses (B, T - offset, N); dynamic B and T (T > offset)
    ART/<recording>/step.onnx   frame (B, H, W), behavior (B, 2), pupil_center (B, 2), state_l (B, ...)
                                → responses (B, N), state_l_next; the first `offset` outputs of a
                                stream are warm-up, later ones equal the clip graph's
    ART/manifest.json           the typed `Manifest`: tensor names/shapes/dtypes, neuron ids, receptive
                                field, frame shape, op counts, sha256 of every file, parity errors,
                                opset and tool versions; for a twin with attention, which form the
                                graphs hold

H×W is the twin's frame shape; offset = `twin.offset` (R - 1 for a receptive field of R frames, 0 for
unbounded memory). Everything here goes through the core protocol: any registered core exports.
"""

from __future__ import annotations

import logging
import platform
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from twinserve.contract import (BEHAVIOR_CHANNELS, CLIP_INPUTS, PIXEL_RANGE, PUPIL_CHANNELS, RESPONSES, STEP_INPUTS,
                                file_sha256, state_names)
from twinserve.training.checkpoint import load_run
from twinserve.training.model import Twin
from twinserve.training.transformer import use_fused_attention

from .graphs import ClipGraph, StepGraph
from .manifest import GraphEntry, Manifest, RecordingEntry, TensorSpec

# The exporter warns once per torchvision operator when torchvision is absent; we export none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OPSET = 23
PARITY_TOLERANCE = 1e-4  # max |ONNX − PyTorch| / max |PyTorch|
ATTENTION_FORMS = ("fused", "decomposed")


def random_inputs(batch: int, frames: int, frame_shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Raw-valued random inputs: video (B, T, H, W) pixels over the full range, behavior (B, T, 2) and
    pupil_center (B, T, 2) around typical values."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(*PIXEL_RANGE, (batch, frames, *frame_shape)).astype(np.float32),
            np.abs(rng.normal(5, 3, (batch, frames, BEHAVIOR_CHANNELS))).astype(np.float32),
            rng.normal(0, 5, (batch, frames, PUPIL_CHANNELS)).astype(np.float32)]


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(actual - reference).max() / max(np.abs(reference).max(), 1e-12))


def _write_onnx(graph: torch.nn.Module, example: list[torch.Tensor], path: Path, inputs: list[str],
                outputs: list[str], dynamic_shapes: dict) -> None:
    """torch.onnx.export (dynamo) of `graph` at our opset, without the exporter's warnings; weights
    inside the one file (no external data beside it), so the manifest's sha256 covers every byte
    (ONNX's protobuf limit: 2 GB per graph)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(example), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          input_names=inputs, output_names=outputs, dynamic_shapes=dynamic_shapes,
                          external_data=False)
    path.with_name(path.name + ".data").unlink(missing_ok=True)  # an older export's weights, now inside the graph


def export_clip(twin: Twin, recording: str, path: Path) -> None:
    """Write the clip graph of one recording (BatchNorm folded into the convolutions by the exporter);
    dynamic batch and time, time > offset (and ≥ 2: the exporter specialises a dimension of 1)."""
    graph = ClipGraph(twin, recording).eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time", min=max(twin.offset + 1, 2))
    example = [torch.from_numpy(a) for a in random_inputs(2, twin.offset + 4, twin.frame_shape)]
    _write_onnx(graph, example, path, list(CLIP_INPUTS), [RESPONSES],
                {name: {0: batch, 1: time} for name in CLIP_INPUTS})


def clip_parity(twin: Twin, recording: str, path: Path, cases=((1, 40), (4, 64))) -> dict[str, float]:
    """Relative error of ONNX Runtime vs PyTorch on random inputs, per (batch, frames) case."""
    session = cpu_session(path)
    errors = {}
    for batch, frames in cases:
        inputs = random_inputs(batch, frames, twin.frame_shape, seed=batch * 1000 + frames)
        with torch.no_grad():
            reference = twin(recording, *map(torch.from_numpy, inputs)).numpy()
        actual = session.run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
        errors[f"batch{batch}_frames{frames}"] = relative_error(actual, reference)
    return errors


def export_step(twin: Twin, recording: str, path: Path) -> StepGraph:
    """Write the step graph of one recording; dynamic batch (one row per stream). State inputs and
    outputs are named by `contract.state_names` (both lists sort in the same order, as Triton pairs them)."""
    graph = StepGraph(twin, recording).eval()
    shapes = graph.state_shapes()
    states_in, states_out = state_names(len(shapes))
    example = [torch.from_numpy(a[:, 0]) for a in random_inputs(2, 1, twin.frame_shape)]
    example += [torch.zeros(2, *shape) for shape in shapes]
    batch = torch.export.Dim("batch")
    dynamic = {**{name: {0: batch} for name in STEP_INPUTS}, "states": tuple({0: batch} for _ in states_in)}
    _write_onnx(graph, example, path, [*STEP_INPUTS, *states_in], [RESPONSES, *states_out], dynamic)
    return graph


def stream(session, video, behavior, pupil_center, state_shapes) -> np.ndarray:
    """Run a clip (B, T, ...) frame by frame through a step-graph session from zero states → responses (B, T, N)."""
    states_in, _ = state_names(len(state_shapes))
    states = {name: np.zeros((len(video), *shape), np.float32) for name, shape in zip(states_in, state_shapes)}
    outputs = []
    for t in range(video.shape[1]):
        frame = dict(zip(STEP_INPUTS, (video[:, t], behavior[:, t], pupil_center[:, t])))
        results = session.run(None, {**frame, **states})
        outputs.append(results[0])
        states = dict(zip(states_in, results[1:]))
    return np.stack(outputs, 1)


def state_bytes(shapes: list[tuple[int, ...]]) -> int:
    """Bytes of float32 state one stream holds, from the step graph's state shapes (batch left out)."""
    return int(sum(4 * np.prod(shape) for shape in shapes))


def cpu_session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def step_parity(clip, step, state_shapes, offset: int, frame_shape: tuple[int, int],
                cases=((1, 300), (4, 60))) -> dict[str, float]:
    """Relative error of a step graph streamed frame by frame vs a clip graph, from frame `offset` on.

    clip, step: sessions with ONNX Runtime's `run(None, feeds)` (an engine can stand in for either).
    """
    errors = {}
    for batch, frames in cases:
        inputs = random_inputs(batch, frames, frame_shape, seed=7 * batch + frames)
        reference = clip.run(None, dict(zip(CLIP_INPUTS, inputs)))[0]
        streamed = stream(step, *inputs, state_shapes)[:, offset:]
        errors[f"batch{batch}_frames{frames}"] = relative_error(streamed, reference)
    return errors


def op_counts(path: Path) -> dict[str, int]:
    """ONNX operator types and how often each occurs in the graph."""
    return dict(sorted(Counter(node.op_type for node in onnx.load(str(path)).graph.node).items()))


def _part(scope: str) -> str:
    """The model part of a node from its traced module scope ("…/twin.core.layers.0: Type/…"):
    `layer<i>` for the first `<name>.<i>` module under the core (whatever the core calls its
    layers), `head` for a recording's head, `other` for the rest."""
    for entry in scope.split("/"):
        path = entry.split(":")[0].strip().split(".")
        if "heads" in path:
            return "head"
        if "core" in path:
            below = path[path.index("core") + 1:]
            for name, index in zip(below, below[1:]):
                if index.isdigit() and not name.isdigit():
                    return f"layer{index}"
    return "other"


def op_counts_per_layer(path: Path) -> dict[str, dict[str, int]]:
    """Operator counts grouped by the model part each node was traced from (see `_part`): the core's
    layers, `head` for the recording's shifter, readout and modulator, `other` for the rest (input
    normalisation, behaviour maps, output scaling, and core work outside a numbered layer)."""
    groups: dict[str, Counter] = {}
    for node in onnx.load(str(path)).graph.node:
        scope = {p.key: p.value for p in node.metadata_props}.get("namespace", "")
        groups.setdefault(_part(scope), Counter())[node.op_type] += 1
    return {group: dict(sorted(counts.items())) for group, counts in sorted(groups.items())}


def tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Names, dtypes and shapes (symbolic dims by name) of the graph's inputs and of its outputs."""
    model = onnx.load(str(path))

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        return TensorSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                          [d.dim_param or d.dim_value for d in tensor.shape.dim])

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _graph_entry(out: Path, path: Path, parity: dict[str, float], reference: str, **details) -> GraphEntry:
    """Manifest entry of one graph file; refuses it if its parity errors exceed the tolerance."""
    worst = max(parity.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"{path}: differs from {reference} by {worst:.2e} (relative), "
                           f"above the tolerance {PARITY_TOLERANCE:.0e}")
    inputs, outputs = tensor_specs(path)
    return GraphEntry(path.relative_to(out).as_posix(), file_sha256(path), inputs, outputs, parity, reference,
                      {"op_counts": op_counts(path), "op_counts_per_layer": op_counts_per_layer(path), **details})


def export_run(run: str | Path, out: str | Path, attention: str = "fused") -> Manifest:
    """Export every recording of a run; fails if a graph misses the parity tolerance."""
    twin, config = load_run(run)
    return export_twin(twin, config["preset"], config["recordings"], out, attention)


def _export_graphs(twin: Twin, recording: str, folder: Path) -> list[tuple[int, ...]]:
    """Write clip.onnx and step.onnx of one recording → the step graph's state shapes."""
    export_clip(twin, recording, folder / "clip.onnx")
    return export_step(twin, recording, folder / "step.onnx").state_shapes()


def _export_recording(twin: Twin, recording: str, info: dict, out: Path, manifest: Manifest) -> RecordingEntry:
    """Write and check both graphs of one recording → its manifest entry. A fused attention that ONNX
    Runtime cannot load turns the twin (and `manifest.attention`) to the written-out form."""
    folder = out / recording
    folder.mkdir(parents=True, exist_ok=True)
    clip_path, step_path = folder / "clip.onnx", folder / "step.onnx"
    shapes = _export_graphs(twin, recording, folder)
    if manifest.attention is not None and manifest.attention["form"] == "fused":
        try:
            cpu_session(clip_path), cpu_session(step_path)
        except Exception as error:  # onnxruntime's own exception types, by the runtime's version
            manifest.attention = {"form": "decomposed", "reason": f"ONNX Runtime {onnxruntime.__version__} "
                                  f"cannot load the fused Attention operator: {error}"}
            use_fused_attention(twin, False)
            shapes = _export_graphs(twin, recording, folder)
    head = twin.heads[recording]
    clip = _graph_entry(out, clip_path, clip_parity(twin, recording, clip_path), "PyTorch")
    step = _graph_entry(out, step_path, step_parity(cpu_session(clip_path), cpu_session(step_path), shapes,
                                                    twin.offset, twin.frame_shape),
                        "clip graph, streamed frame by frame", state_bytes_per_stream=state_bytes(shapes),
                        warmup_frames=twin.offset)
    # Raw-unit means: what a client may send when it has no behaviour to send.
    return RecordingEntry(info["neurons"], info["unit_ids"], head.behavior_mean.tolist(), head.pupil_mean.tolist(),
                          {"clip": clip, "step": step})


def export_twin(twin: Twin, preset: str, recordings: dict[str, dict], out: str | Path,
                attention: str = "fused") -> Manifest:
    """Export a twin: recordings maps each recording name → {"neurons", "unit_ids"}; → the manifest
    (also written to `out/manifest.json`).

    attention (twins with attention layers): "fused" writes every attention as one ONNX `Attention`
    node and falls back to the written-out form if ONNX Runtime cannot load it; "decomposed" always
    writes it out.
    """
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, not {attention!r}")
    out = Path(out)
    attention_layers = use_fused_attention(twin, attention == "fused")  # 0: no attention to choose a form for
    manifest = Manifest(
        preset=preset, core=twin.config["core"], receptive_field=twin.receptive_field,
        frame_shape=list(twin.frame_shape), opset=OPSET, parity_tolerance=PARITY_TOLERANCE,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "python": platform.python_version()})
    if attention_layers:
        manifest.attention = {"form": attention, "reason": "requested" if attention == "decomposed" else None}
    for recording, info in recordings.items():
        manifest.recordings[recording] = _export_recording(twin, recording, info, out, manifest)
    if manifest.attention is not None:
        manifest.attention["attention_nodes"] = {
            f"{recording}/{name}": graph.details["op_counts"].get("Attention", 0)
            for recording, entry in manifest.recordings.items() for name, graph in entry.graphs.items()}
    manifest.write(out)
    return manifest
