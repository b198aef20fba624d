"""`twin export --format tensorrt`: TensorRT engines built from the exported ONNX graphs, parity-checked.

    ART/<recording>/clip.<precision>.plan   optimisation profile over batch and time
    ART/<recording>/step.<precision>.plan   optimisation profile over batch (concurrent streams)

Each engine is compared with the ONNX graph it was built from, on ONNX Runtime (CPU): the clip engine
on random clips, the step engine streamed frame by frame against the ONNX clip graph. TensorRT
needs the `tensorrt` package and an NVIDIA GPU (the NGC Triton image has both; PyPI's TensorRT
wheels cannot install where NVIDIA's index is out of reach); without them `require_tensorrt`
raises `TensorRTUnavailable` before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twinserve.contract import CLIP_INPUTS, file_sha256
from twinserve.errors import Unavailable

from .manifest import GraphEntry, Manifest, read_manifest, verified_path
from .onnx_export import cpu_session, random_inputs, relative_error, step_parity

# Max relative error vs the ONNX graph. fp32 builds have TF32 switched off; fp16 and bf16 keep
# 11 and 8 significant bits through 6 convolutions and the readout.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}


class TensorRTUnavailable(Unavailable):
    """TensorRT or a CUDA GPU is missing on this machine (exit code 3 from the command line)."""


def require_tensorrt():
    """The `tensorrt` module, after checking that a CUDA GPU is visible."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed (no `tensorrt` Python package). Build engines inside the NGC Triton "
            "image (see the Dockerfile) or on a machine with NVIDIA's TensorRT; `--format onnx` works everywhere."
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT is installed but no CUDA GPU is visible; engines are built for a GPU.")
    return tensorrt


class EngineSession:
    """A deserialised engine behind ONNX Runtime's interface: `run(None, feeds)` → outputs in engine order."""

    def __init__(self, tensorrt, serialized: bytes):
        import torch

        self.torch, self.tensorrt = torch, tensorrt
        self.engine = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.WARNING)).deserialize_cuda_engine(serialized)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == tensorrt.TensorIOMode.OUTPUT]

    def run(self, _output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch, keep = self.torch, []
        for name, array in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(array.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        results = []
        for name in self.outputs:
            results.append(torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda"))
            self.context.set_tensor_address(name, results[-1].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return [r.cpu().numpy() for r in results]


def build_engine(tensorrt, onnx_path: Path, precision: str, profile: dict[str, tuple]) -> bytes:
    """Serialised engine for one ONNX graph; profile: input name → (min, opt, max) shapes."""
    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    builder = tensorrt.Builder(logger)
    network = builder.create_network(0)
    parser = tensorrt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(tensorrt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(tensorrt.BuilderFlag.BF16)
    else:
        config.clear_flag(tensorrt.BuilderFlag.TF32)
    shapes = builder.create_optimization_profile()
    for name, (low, best, high) in profile.items():
        shapes.set_shape(name, low, best, high)
    config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build a {precision} engine")
    return bytes(serialized)


def profiles(graph: GraphEntry, offset: int, max_batch: int, max_frames: int, max_streams: int, kind: str):
    """(min, opt, max) shapes per input of a manifest graph entry: clips over batch and time (at least
    offset + 1 frames), steps over streams."""
    result = {}
    for spec in graph.inputs:
        rest = spec.shape[2 if kind == "clip" else 1:]  # fixed dims after batch (and time)
        if kind == "clip":
            result[spec.name] = tuple((b, t, *rest) for b, t in [(1, offset + 1), (1, 300), (max_batch, max_frames)])
        else:
            result[spec.name] = tuple((b, *rest) for b in (1, min(16, max_streams), max_streams))
    return result


def clip_engine_parity(engine: EngineSession, reference, frame_shape: tuple[int, int],
                       cases=((1, 40), (4, 64))) -> dict[str, float]:
    """Relative error of the clip engine vs the ONNX clip graph on random clips, per (batch, frames)."""
    errors = {}
    for batch, frames in cases:
        feeds = dict(zip(CLIP_INPUTS, random_inputs(batch, frames, frame_shape, seed=batch + frames)))
        errors[f"batch{batch}_frames{frames}"] = relative_error(engine.run(None, feeds)[0],
                                                                reference.run(None, feeds)[0])
    return errors


def export_engines(artifacts: str | Path, precision: str, max_batch: int = 8, max_frames: int = 600,
                   max_streams: int = 64) -> Manifest:
    """Build and check `clip` and `step` engines for every recording of an ONNX artifacts folder;
    adds `clip_tensorrt_<precision>` / `step_tensorrt_<precision>` entries to its manifest."""
    if precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)}, not {precision!r}")
    tensorrt = require_tensorrt()
    artifacts = Path(artifacts)
    manifest = read_manifest(artifacts)
    frame_shape = tuple(manifest.frame_shape)
    for recording, entry in manifest.recordings.items():
        clip_onnx, step_onnx = (verified_path(artifacts, recording, g) for g in ("clip", "step"))
        sessions = {}
        for kind, onnx_path in (("clip", clip_onnx), ("step", step_onnx)):
            graph = entry.graphs[kind]
            serialized = build_engine(tensorrt, onnx_path, precision,
                                      profiles(graph, manifest.offset, max_batch, max_frames, max_streams, kind))
            path = onnx_path.with_name(f"{kind}.{precision}.plan")
            path.write_bytes(serialized)
            sessions[kind] = (EngineSession(tensorrt, serialized), path, graph)
        reference = cpu_session(clip_onnx)
        state_shapes = [spec.fixed_shape for spec in entry.graphs["step"].states]
        parity = {"clip": clip_engine_parity(sessions["clip"][0], reference, frame_shape),
                  "step": step_parity(reference, sessions["step"][0], state_shapes, manifest.offset, frame_shape)}
        for kind, (_, path, graph) in sessions.items():
            worst = max(parity[kind].values())
            if worst > TOLERANCES[precision]:
                raise RuntimeError(f"{path}: differs from the ONNX graph by {worst:.2e} (relative), above the "
                                   f"{precision} tolerance {TOLERANCES[precision]:.0e}")
            entry.graphs[f"{kind}_tensorrt_{precision}"] = GraphEntry(
                path.relative_to(artifacts).as_posix(), file_sha256(path), graph.inputs, graph.outputs, parity[kind],
                "ONNX clip graph on ONNX Runtime", {"format": "tensorrt", "precision": precision,
                                                    "tolerance": TOLERANCES[precision],
                                                    "tensorrt": tensorrt.__version__})
    manifest.write(artifacts)
    return manifest
