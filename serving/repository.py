"""A Triton model repository from an artifacts folder: per recording a stream model and a clip model.

    REPO/<recording>_stream   step graph, sequence batcher (one execution for many streams)
    REPO/<recording>_clip     clip graph, dynamic batcher (clips of equal length run together)

Both are Python-backend models (`serving.models`) running the ONNX graphs with ONNX Runtime inside
this project's environment; the artifacts are read in place and checked against the manifest's
sha256 here and again when the server loads them. Video frames are accepted as FP32 (`frame`,
`video`) or UINT8 (`frame_uint8`, `video_uint8`): send exactly one of the two.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from twinserve.export.manifest import verify_all

STREAM_TEMPLATE = """\
name: "{name}"
backend: "python"
max_batch_size: {max_streams}
input [
  {{ name: "frame", data_type: TYPE_FP32, dims: [ {height}, {width} ], optional: true }},
  {{ name: "frame_uint8", data_type: TYPE_UINT8, dims: [ {height}, {width} ], optional: true }},
  {{ name: "behavior", data_type: TYPE_FP32, dims: [ 2 ] }},
  {{ name: "pupil_center", data_type: TYPE_FP32, dims: [ 2 ] }}
]
output [ {{ name: "responses", data_type: TYPE_FP32, dims: [ {neurons} ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  oldest {{ max_candidate_sequences: {max_streams}, max_queue_delay_microseconds: {delay_us} }}
  control_input [
    {{ name: "START", control [ {{ kind: CONTROL_SEQUENCE_START, fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END", control [ {{ kind: CONTROL_SEQUENCE_END, fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID", control [ {{ kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 }} ] }}
  ]
}}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{parameters}
"""

CLIP_TEMPLATE = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "video", data_type: TYPE_FP32, dims: [ -1, {height}, {width} ], optional: true }},
  {{ name: "video_uint8", data_type: TYPE_UINT8, dims: [ -1, {height}, {width} ], optional: true }},
  {{ name: "behavior", data_type: TYPE_FP32, dims: [ -1, 2 ] }},
  {{ name: "pupil_center", data_type: TYPE_FP32, dims: [ -1, 2 ] }}
]
output [ {{ name: "responses", data_type: TYPE_FP32, dims: [ -1, {neurons} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
{parameters}
"""

MODEL_PY = "from twinserve.serving.models import {cls} as TritonPythonModel  # noqa: F401\n"


def model_names(recording: str) -> dict[str, str]:
    """Triton model names of a recording: {"stream": ..., "clip": ...}."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", recording)
    return {"stream": f"{base}_stream", "clip": f"{base}_clip"}


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def write_repository(artifacts: str | Path, out: str | Path, max_streams: int = 64, idle_timeout_s: float = 60.0,
                     max_clip_batch: int = 8, queue_delay_us: int = 500, threads: int = 0,
                     max_clip_frames: int = 512) -> dict[str, dict]:
    """Write the model repository → {model name: {"recording", "kind"}}. Refuses tampered artifacts.

    threads: ONNX Runtime intra-op threads per model (0: ONNX Runtime's default, one per core).
    max_clip_frames: input frames per clip-graph call; longer clips run in overlapping pieces.
    """
    artifacts, out = Path(artifacts).resolve(), Path(out)
    manifest = verify_all(artifacts)
    if out.exists():
        shutil.rmtree(out)
    models = {}
    for recording, entry in manifest["recordings"].items():
        step = entry["graphs"]["step"]
        height, width = step["inputs"][0]["shape"][1:]
        parameters = {"artifacts": artifacts.as_posix(), "recording": recording,
                      "receptive_field": manifest["receptive_field"], "threads": threads,
                      "max_clip_frames": max_clip_frames,
                      "behavior_mean": ",".join(map(str, entry["behavior_mean"])),
                      "pupil_center_mean": ",".join(map(str, entry["pupil_center_mean"])),
                      "unit_ids": ",".join(map(str, entry["unit_ids"]))}
        if sys.prefix != sys.base_prefix:  # a virtual environment: the backend stub runs inside it
            parameters["EXECUTION_ENV_PATH"] = Path(sys.prefix).as_posix()
        names = model_names(recording)
        configs = {
            "stream": STREAM_TEMPLATE.format(name=names["stream"], max_streams=max_streams, height=height, width=width,
                                             neurons=entry["neurons"], idle_us=int(idle_timeout_s * 1e6),
                                             delay_us=queue_delay_us, parameters=_parameters(parameters)),
            "clip": CLIP_TEMPLATE.format(name=names["clip"], max_batch=max_clip_batch, height=height, width=width,
                                         neurons=entry["neurons"], delay_us=queue_delay_us,
                                         parameters=_parameters(parameters)),
        }
        for kind, config in configs.items():
            folder = out / names[kind]
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(config)
            model_class = "StreamModel" if kind == "stream" else "ClipModel"
            (folder / "1" / "model.py").write_text(MODEL_PY.format(cls=model_class))
            models[names[kind]] = {"recording": recording, "kind": kind}
    return models
