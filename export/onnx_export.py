"""`twin export`: a trained run → ONNX graphs per recording + `manifest.json`, parity-checked.

    ART/<recording>/clip.onnx   video (B, T, 36, 64), behavior (B, T, 2), pupil_center (B, T, 2)
                                → responses (B, T - R + 1, N); dynamic B and T (T ≥ R)
    ART/<recording>/step.onnx   frame (B, 36, 64), behavior (B, 2), pupil_center (B, 2), state_l (B, ...)
                                → responses (B, N), state_l_next; the first R - 1 outputs of a stream
                                are warm-up, later ones equal the clip graph's
    ART/manifest.json           tensor names/shapes/dtypes, neuron ids, receptive field, op counts,
                                sha256 of every file, parity errors, opset and tool versions; for a
                                transformer twin, which form of attention the graphs hold
"""

from __future__ import annotations

import logging
import platform
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from twinserve.training.checkpoint import load_run, write_json
from twinserve.training.model import Twin
from twinserve.training.transformer import TransformerCore, use_fused_attention

from .graphs import ClipGraph, StepGraph
from .manifest import MANIFEST, sha256

# The exporter warns once per torchvision operator when torchvision is absent; we export none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

OPSET = 23
PARITY_TOLERANCE = 1e-4  # max |ONNX − PyTorch| / max |PyTorch|
INPUTS = ("video", "behavior", "pupil_center")


def random_inputs(batch: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """Raw-valued random inputs: pixels 0–255, behaviour and pupil position around typical values."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, (batch, frames, 36, 64)).astype(np.float32),
            np.abs(rng.normal(5, 3, (batch, frames, 2))).astype(np.float32),
            rng.normal(0, 5, (batch, frames, 2)).astype(np.float32)]


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(actual - reference).max() / max(np.abs(reference).max(), 1e-12))


def export_clip(twin: Twin, recording: str, path: Path) -> None:
    """Write the clip graph of one recording (BatchNorm folded into the convolutions by the exporter)."""
    graph = ClipGraph(twin, recording).eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time", min=twin.receptive_field)
    example = [torch.from_numpy(a) for a in random_inputs(2, twin.receptive_field + 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(example), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          input_names=list(INPUTS), output_names=["responses"],
                          dynamic_shapes={name: {0: batch, 1: time} for name in INPUTS})


def clip_parity(twin: Twin, recording: str, path: Path, cases=((1, 40), (4, 64))) -> dict[str, float]:
    """Relative error of ONNX Runtime vs PyTorch on random inputs, per (batch, frames) case."""
    session = cpu_session(path)
    errors = {}
    for batch, frames in cases:
        inputs = random_inputs(batch, frames, seed=batch * 1000 + frames)
        with torch.no_grad():
            reference = twin(recording, *map(torch.from_numpy, inputs)).numpy()
        actual = session.run(None, dict(zip(INPUTS, inputs)))[0]
        errors[f"batch{batch}_frames{frames}"] = relative_error(actual, reference)
    return errors


def state_names(layers: int) -> tuple[list[str], list[str]]:
    """State input and output names; both lists sort in the same (layer) order, as Triton pairs them."""
    return [f"state_{i}" for i in range(layers)], [f"state_{i}_next" for i in range(layers)]


def export_step(twin: Twin, recording: str, path: Path) -> StepGraph:
    """Write the step graph of one recording; dynamic batch (one row per stream)."""
    graph = StepGraph(twin, recording).eval()
    inputs_in, outputs_out = state_names(len(graph.state_shapes()))
    example = [torch.from_numpy(a[:, 0]) for a in random_inputs(2, 1)]
    example += [torch.zeros(2, *shape) for shape in graph.state_shapes()]
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(example), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          input_names=["frame", "behavior", "pupil_center", *inputs_in],
                          output_names=["responses", *outputs_out],
                          dynamic_shapes={"frame": {0: batch}, "behavior": {0: batch}, "pupil_center": {0: batch},
                                          "states": tuple({0: batch} for _ in inputs_in)})
    return graph


def stream(session, video, behavior, pupil_center, state_shapes) -> np.ndarray:
    """Run a clip (B, T, ...) frame by frame through a step-graph session → responses (B, T, N)."""
    inputs_in, outputs_out = state_names(len(state_shapes))
    batch = len(video)
    states = {name: np.zeros((batch, *shape), np.float32) for name, shape in zip(inputs_in, state_shapes)}
    outputs = []
    for t in range(video.shape[1]):
        results = session.run(None, {"frame": video[:, t], "behavior": behavior[:, t],
                                     "pupil_center": pupil_center[:, t], **states})
        outputs.append(results[0])
        states = dict(zip(inputs_in, results[1:]))
    return np.stack(outputs, 1)


def state_bytes(shapes: list[tuple[int, ...]]) -> int:
    """Bytes of float32 state one stream holds, from the step graph's state shapes (batch left out)."""
    return int(sum(4 * np.prod(shape) for shape in shapes))


def cpu_session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def step_parity(clip, step, state_shapes, receptive_field: int, cases=((1, 300), (4, 60))) -> dict[str, float]:
    """Relative error of a step graph streamed frame by frame vs a clip graph, from frame R - 1 on.

    clip, step: sessions with ONNX Runtime's `run(None, feeds)` (an engine can stand in for either).
    """
    errors = {}
    for batch, frames in cases:
        inputs = random_inputs(batch, frames, seed=7 * batch + frames)
        reference = clip.run(None, dict(zip(INPUTS, inputs)))[0]
        streamed = stream(step, *inputs, state_shapes)[:, receptive_field - 1:]
        errors[f"batch{batch}_frames{frames}"] = relative_error(streamed, reference)
    return errors


def op_counts(path: Path) -> dict[str, int]:
    """ONNX operator types and how often each occurs in the graph."""
    return dict(sorted(Counter(node.op_type for node in onnx.load(str(path)).graph.node).items()))


def op_counts_per_layer(path: Path) -> dict[str, dict[str, int]]:
    """Operator counts grouped by the model part each node was traced from: `layer<i>` for the
    core's layers, `head` for the recording's shifter, readout and modulator, `other` for the rest
    (input normalisation, behaviour maps, output scaling)."""
    groups: dict[str, Counter] = {}
    for node in onnx.load(str(path)).graph.node:
        scope = {p.key: p.value for p in node.metadata_props}.get("namespace", "")
        layer = re.search(r"(?:layers|blocks)\.(\d+)", scope)
        group = f"layer{layer.group(1)}" if layer else "head" if "heads." in scope else "other"
        groups.setdefault(group, Counter())[node.op_type] += 1
    return {group: dict(sorted(counts.items())) for group, counts in sorted(groups.items())}


def tensor_specs(path: Path) -> dict[str, list[dict]]:
    """Names, dtypes and shapes (symbolic dims by name) of the graph's inputs and outputs."""
    model = onnx.load(str(path))

    def spec(value):
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def _graph_entry(out: Path, path: Path, parity: dict[str, float], reference: str, **extra) -> dict:
    """Manifest entry of one graph file; refuses it if its parity errors exceed the tolerance."""
    worst = max(parity.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"{path}: differs from {reference} by {worst:.2e} (relative), "
                           f"above the tolerance {PARITY_TOLERANCE:.0e}")
    return {"file": path.relative_to(out).as_posix(), "sha256": sha256(path), **tensor_specs(path),
            "op_counts": op_counts(path), "op_counts_per_layer": op_counts_per_layer(path),
            "parity": parity, "parity_against": reference, **extra}


def export_run(run: str | Path, out: str | Path, attention: str = "fused") -> dict:
    """Export every recording of a run; fails if a graph misses the parity tolerance."""
    twin, config = load_run(run)
    return export_twin(twin, config["preset"], config["recordings"], out, attention)


def _export_graphs(twin: Twin, recording: str, folder: Path) -> list[tuple[int, ...]]:
    """Write clip.onnx and step.onnx of one recording → the step graph's state shapes."""
    export_clip(twin, recording, folder / "clip.onnx")
    return export_step(twin, recording, folder / "step.onnx").state_shapes()


def export_twin(twin: Twin, preset: str, recordings: dict[str, dict], out: str | Path,
                attention: str = "fused") -> dict:
    """Export a twin: recordings maps each recording name → {"neurons", "unit_ids"}; → the manifest.

    attention (transformer twins): "fused" writes every attention as one ONNX `Attention` node and
    falls back to the written-out form if ONNX Runtime cannot load it; "decomposed" always writes it out.
    """
    if attention not in ("fused", "decomposed"):
        raise ValueError(f"attention must be 'fused' or 'decomposed', not {attention!r}")
    out = Path(out)
    transformer = isinstance(twin.core, TransformerCore)
    use_fused_attention(twin, attention == "fused")
    manifest = {"format": 1, "opset": OPSET, "receptive_field": twin.receptive_field, "preset": preset,
                "core": "transformer" if transformer else "convolution", "parity_tolerance": PARITY_TOLERANCE,
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
                "recordings": {}}
    if transformer:
        manifest["attention"] = {"form": attention, "reason": "requested" if attention == "decomposed" else None}
    for recording, info in recordings.items():
        folder = out / recording
        folder.mkdir(parents=True, exist_ok=True)
        path, step_path = folder / "clip.onnx", folder / "step.onnx"
        shapes = _export_graphs(twin, recording, folder)
        if transformer and manifest["attention"]["form"] == "fused":
            try:
                cpu_session(path), cpu_session(step_path)
            except Exception as error:  # onnxruntime's own exception types, by the runtime's version
                manifest["attention"] = {"form": "decomposed", "reason": f"ONNX Runtime {onnxruntime.__version__} "
                                         f"cannot load the fused Attention operator: {error}"}
                use_fused_attention(twin, False)
                shapes = _export_graphs(twin, recording, folder)
        manifest["recordings"][recording] = {
            "neurons": info["neurons"], "unit_ids": info["unit_ids"],
            # Raw-unit means: what a client may send when it has no behaviour to send.
            "behavior_mean": twin.heads[recording].behavior_mean.tolist(),
            "pupil_center_mean": twin.heads[recording].pupil_mean.tolist(),
            "graphs": {
                "clip": _graph_entry(out, path, clip_parity(twin, recording, path), "PyTorch"),
                "step": _graph_entry(out, step_path, step_parity(cpu_session(path), cpu_session(step_path), shapes,
                                                                 twin.receptive_field),
                                     "clip graph, streamed frame by frame",
                                     state_bytes_per_stream=state_bytes(shapes),
                                     warmup_frames=twin.receptive_field - 1)}}
    if transformer:
        manifest["attention"]["attention_nodes"] = {
            f"{recording}/{name}": graph["op_counts"].get("Attention", 0)
            for recording, entry in manifest["recordings"].items() for name, graph in entry["graphs"].items()}
    write_json(out / MANIFEST, manifest)
    return manifest
