"""A Triton model repository from an artifacts folder: per recording a stream model and a clip model.

    REPO/.twinserve-repository   marker: this folder was written by twinserve and may be replaced
    REPO/<recording>_stream      step graph, sequence batcher (one execution for many streams)
    REPO/<recording>_clip        clip graph, dynamic batcher (clips of equal length run together)

Both are Python-backend models (`serving.models`) running the ONNX graphs with ONNX Runtime inside
this project's environment; the artifacts are read in place and checked against the manifest's
sha256 here and again when the server loads them. What the models and their clients need (receptive
field, frame shape, unit ids, behaviour means, …) travels as `contract.ModelParameters` in the
config's `parameters`. Video frames are accepted as FP32 (`frame`, `video`) or UINT8 (`frame_uint8`,
`video_uint8`): send exactly one of the two.

Shapes in the configs (batch dimension left out): frame (H, W), video (T, H, W), behavior (2,) or
(T, 2), pupil_center (2,) or (T, 2) → responses (N,) or (T - offset, N); H, W from the manifest.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from twinserve.contract import (BEHAVIOR, BEHAVIOR_CHANNELS, FRAME, FRAME_UINT8, PUPIL_CENTER, PUPIL_CHANNELS,
                                RESPONSES, VIDEO, VIDEO_UINT8, ModelParameters, model_names)
from twinserve.export.manifest import Manifest, verify_all

from .limits import Limits
from .state_pool import StatePool

MARKER = ".twinserve-repository"
# Control tensors of the stream model's sequence batcher (Triton's names, read by `serving.models`).
START, END, CORRID = "START", "END", "CORRID"
MODEL_PY = "from twinserve.serving.models import {cls} as TritonPythonModel  # noqa: F401\n"
MODEL_CLASSES = {"stream": "StreamModel", "clip": "ClipModel"}
CANDIDATES_PER_STREAM = 16  # sequences the stream model's batcher tracks per state slot (see `stream_config`)


def quoted(text: str) -> str:
    """`text` as a double-quoted protobuf text-format string (backslash, quotes and control
    characters escaped; other characters, UTF-8 included, kept)."""
    escapes = {"\\": "\\\\", '"': '\\"', "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(c, f"\\{ord(c):03o}" if ord(c) < 0x20 else c) for c in str(text)) + '"'


def _tensor(name: str, data_type: str, dims: tuple, optional: bool = False) -> str:
    flag = ", optional: true" if optional else ""
    return f"{{ name: {quoted(name)}, data_type: {data_type}, dims: [ {', '.join(map(str, dims))} ]{flag} }}"


def _tensors(specs: list[str], indent: str = "") -> str:
    return f"[\n{indent}  " + f",\n{indent}  ".join(specs) + f"\n{indent}]"


def _inputs(pixels: tuple[str, str], time: tuple, frame_shape: tuple[int, int]) -> str:
    """The input block: pixels as FP32 or UINT8 (one of them), behavior, pupil_center; `time` is ()
    for a frame or (-1,) for a clip."""
    return _tensors([_tensor(pixels[0], "TYPE_FP32", (*time, *frame_shape), optional=True),
                     _tensor(pixels[1], "TYPE_UINT8", (*time, *frame_shape), optional=True),
                     _tensor(BEHAVIOR, "TYPE_FP32", (*time, BEHAVIOR_CHANNELS)),
                     _tensor(PUPIL_CENTER, "TYPE_FP32", (*time, PUPIL_CHANNELS))])


def _parameters(parameters: ModelParameters) -> str:
    return "\n".join(f"parameters: {{ key: {quoted(key)}, value: {{ string_value: {quoted(value)} }} }}"
                     for key, value in parameters.encode().items())


def stream_config(name: str, parameters: ModelParameters, limits: Limits, delay_us: int) -> str:
    """config.pbtxt of a stream model: frames of many sequences batched into one step-graph call.

    Triton 2.51's sequence batcher has no queue policy: a sequence beyond its candidates waits in
    its backlog, and a sequence holds its candidate until END or the idle timeout, even when the
    model refused its START. `CANDIDATES_PER_STREAM` × `max_streams` candidates let STARTs beyond
    the state pool reach the model, which refuses them at once (`serving.state_pool`); only a flood
    beyond that many unfinished sequences waits in the backlog (until idle ones time out)."""
    controls = [f"{{ name: {quoted(name)}, control [ {{ kind: {kind}, {value} }} ] }}" for name, kind, value in (
        (START, "CONTROL_SEQUENCE_START", "fp32_false_true: [ 0, 1 ]"),
        (END, "CONTROL_SEQUENCE_END", "fp32_false_true: [ 0, 1 ]"),
        (CORRID, "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64"))]
    return f"""\
name: {quoted(name)}
backend: "python"
max_batch_size: {limits.max_streams}
input {_inputs((FRAME, FRAME_UINT8), (), parameters.frame_shape)}
output {_tensors([_tensor(RESPONSES, "TYPE_FP32", (parameters.neurons,))])}
sequence_batching {{
  max_sequence_idle_microseconds: {_microseconds(limits.idle_timeout_s)}
  oldest {{ max_candidate_sequences: {CANDIDATES_PER_STREAM * limits.max_streams}, max_queue_delay_microseconds: {delay_us} }}
  control_input {_tensors(controls, indent="  ")}
}}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{_parameters(parameters)}
"""


def clip_config(name: str, parameters: ModelParameters, limits: Limits, max_batch: int, delay_us: int) -> str:
    """config.pbtxt of a clip model: clips of equal length batched into one clip-graph call; at most
    `max_queue` requests wait, none longer than `queue_timeout_s` (refused, not queued without end)."""
    return f"""\
name: {quoted(name)}
backend: "python"
max_batch_size: {max_batch}
input {_inputs((VIDEO, VIDEO_UINT8), (-1,), parameters.frame_shape)}
output {_tensors([_tensor(RESPONSES, "TYPE_FP32", (-1, parameters.neurons))])}
dynamic_batching {{
  max_queue_delay_microseconds: {delay_us}
  default_queue_policy {{ timeout_action: REJECT, default_timeout_microseconds: {_microseconds(limits.queue_timeout_s)},
                         allow_timeout_override: true, max_queue_size: {limits.max_queue} }}
}}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{_parameters(parameters)}
"""


def _microseconds(seconds: float) -> int:
    return int(round(seconds * 1e6))


def recording_parameters(manifest: Manifest, artifacts: Path, recording: str, threads: int,
                         limits: Limits) -> ModelParameters:
    """The parameters both models of a recording carry (and their clients read)."""
    entry = manifest.recording(recording)
    extra = {}
    if sys.prefix != sys.base_prefix:  # a virtual environment: the backend stub runs inside it
        extra["EXECUTION_ENV_PATH"] = Path(sys.prefix).as_posix()
    return ModelParameters(recording=recording, receptive_field=manifest.receptive_field,
                           frame_shape=tuple(manifest.frame_shape), unit_ids=tuple(entry.unit_ids),
                           behavior_mean=tuple(entry.behavior_mean), pupil_center_mean=tuple(entry.pupil_center_mean),
                           artifacts=artifacts.as_posix(), threads=threads, max_clip_frames=limits.max_clip_frames,
                           max_request_frames=limits.max_request_frames, max_request_bytes=limits.max_request_bytes,
                           max_state_bytes=limits.max_state_bytes, extra=extra)


def prepare_folder(out: Path) -> None:
    """Make `out` an empty folder holding only the marker. A new or empty folder is used; one that
    holds the marker (written by twinserve) has its contents replaced; anything else is refused with
    `FileExistsError` and left untouched. The folder itself is never deleted (`--repository .` is safe)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose a new or empty folder for the repository")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out.resolve()}: not empty and not a model repository written by twinserve "
                                  f"(no {MARKER} in it), so it is left untouched; choose a new or empty folder")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("A Triton model repository written by twinserve; `twin serve` may replace it.\n")


def write_repository(artifacts: str | Path, out: str | Path, limits: Limits = Limits(), threads: int = 0,
                     max_clip_batch: int = 8, queue_delay_us: int = 500) -> dict[str, dict]:
    """Write the model repository → {model name: {"recording", "kind"}}. Refuses tampered artifacts,
    a state pool beyond `limits.max_state_bytes` (ValueError naming the flags), and an existing
    non-empty `out` that twinserve did not write (`prepare_folder`).

    limits: every bound the served models enforce (`serving.limits`).
    threads: ONNX Runtime intra-op threads per model (0: ONNX Runtime's default, one per core).
    """
    artifacts, out = Path(artifacts).resolve(), Path(out)
    manifest = verify_all(artifacts)
    for recording in manifest.recordings:
        states = manifest.graph(recording, "step").states
        limits.check_pool(StatePool.nbytes([s.fixed_shape for s in states], 1))
    prepare_folder(out)
    models = {}
    for recording in manifest.recordings:
        parameters = recording_parameters(manifest, artifacts, recording, threads, limits)
        names = model_names(recording)
        configs = {"stream": stream_config(names["stream"], parameters, limits, queue_delay_us),
                   "clip": clip_config(names["clip"], parameters, limits, max_clip_batch, queue_delay_us)}
        for kind, config in configs.items():
            folder = out / names[kind]
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(config)
            (folder / "1" / "model.py").write_text(MODEL_PY.format(cls=MODEL_CLASSES[kind]))
            models[names[kind]] = {"recording": recording, "kind": kind}
    return models
