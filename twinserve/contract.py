"""The wire contract every room shares: frames, tensor names, model names, model parameters.

Torch-free and numpy-free, so the server's models and a client-only install can import it.

Shapes: B batch (clips) or streams, T frames, H×W pixels of a frame, N neurons of a recording.
    clip graph   video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2) → responses (B, T - offset, N)
    step graph   frame (B, H, W), behavior (B, 2), pupil_center (B, 2), state_i … → responses (B, N), state_i_next …
where offset = `output_offset(receptive_field)`: output frame j of a clip predicts input frame j + offset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

# --- frames --------------------------------------------------------------------------------------
DEFAULT_FRAME_SHAPE = (36, 64)  # (H, W) of SENSORIUM 2023; a twin's own shape comes from its data
FPS = 30.0                      # frames per second of the stimulus and the responses
GREY = 128.0                    # mid-grey pixel value: blank screens, lead-ins, stimulus backgrounds
PIXEL_RANGE = (0.0, 255.0)      # raw pixel values
BEHAVIOR_CHANNELS = 2           # pupil size, running speed
PUPIL_CHANNELS = 2              # pupil centre x, y

# --- tensor names --------------------------------------------------------------------------------
VIDEO, VIDEO_UINT8 = "video", "video_uint8"
FRAME, FRAME_UINT8 = "frame", "frame_uint8"
BEHAVIOR, PUPIL_CENTER = "behavior", "pupil_center"
RESPONSES = "responses"
CLIP_INPUTS = (VIDEO, BEHAVIOR, PUPIL_CENTER)
STEP_INPUTS = (FRAME, BEHAVIOR, PUPIL_CENTER)
UINT8_SUFFIX = "_uint8"  # the served models also take 8-bit pixels under this name suffix


def state_names(count: int) -> tuple[list[str], list[str]]:
    """Step-graph state inputs and outputs: `state_i` → `state_i_next`, i = 0 … count - 1."""
    return [f"state_{i}" for i in range(count)], [f"state_{i}_next" for i in range(count)]


def is_state(name: str) -> bool:
    return name.startswith("state_") and not name.endswith("_next")


# --- memory --------------------------------------------------------------------------------------
def output_offset(receptive_field: int | None) -> int:
    """Input frames of a clip before its first output: R - 1 for a finite receptive field of R
    frames (valid in time), 0 for unbounded memory (recurrent cores answer every frame)."""
    return 0 if receptive_field is None else receptive_field - 1


def describe_memory(receptive_field: int | None) -> str:
    return "unbounded (recurrent)" if receptive_field is None else f"{receptive_field} frames"


# --- access -------------------------------------------------------------------------------------
API_KEY_HEADER = "twinserve-api-key"   # request header (gRPC metadata key) that carries the API key
API_KEY_ENV = "TWINSERVE_API_KEY"      # where `twin serve` and the clients read the key by default


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (artifacts in manifests, a transferred core's source weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_api_key(path: str | Path | None) -> str | None:
    """The API key: the first line of the file at `path`, else the environment variable
    `API_KEY_ENV`, else None. An empty key file is refused (ValueError)."""
    if path is None:
        return os.environ.get(API_KEY_ENV) or None
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: the API key file is empty")
    return lines[0].strip()

# --- Triton models -------------------------------------------------------------------------------
MODEL_KINDS = ("stream", "clip")


def model_names(recording: str) -> dict[str, str]:
    """Triton model names of a recording: {"stream": "<recording>_stream", "clip": "<recording>_clip"},
    with characters outside [A-Za-z0-9_.-] replaced by '_'."""
    base = "".join(c if c.isalnum() or c in "_.-" else "_" for c in recording)
    return {kind: f"{base}_{kind}" for kind in MODEL_KINDS}


@dataclass(frozen=True)
class ModelParameters:
    """What a served model tells its clients (and its own backend) through Triton's model config
    `parameters`: every value travels as a string; `encode`/`decode` are the one codec."""

    recording: str
    receptive_field: int | None          # None: unbounded memory
    frame_shape: tuple[int, int]
    unit_ids: tuple[int, ...]
    behavior_mean: tuple[float, ...]
    pupil_center_mean: tuple[float, ...]
    artifacts: str = ""                  # server side only: where the graphs are
    threads: int = 0                     # server side only: ONNX Runtime intra-op threads (0: default)
    max_clip_frames: int = 512           # server side only: input frames per clip-graph call
    max_request_frames: int = 9000       # server side only: frames (batch × time) per clip request (5 min)
    max_request_bytes: int = 2**29       # server side only: input bytes per request
    max_state_bytes: int = 2**31         # server side only: the stream model's state pool
    extra: dict = field(default_factory=dict)  # e.g. EXECUTION_ENV_PATH for the Python backend

    @property
    def offset(self) -> int:
        return output_offset(self.receptive_field)

    @property
    def neurons(self) -> int:
        return len(self.unit_ids)

    def encode(self) -> dict[str, str]:
        values = asdict(self)
        extra = values.pop("extra")
        encoded = {key: json.dumps(value) for key, value in values.items()}
        return {**encoded, **{key: str(value) for key, value in extra.items()}}

    @classmethod
    def decode(cls, parameters: dict[str, str]) -> ModelParameters:
        """From {key: string} (see `from_model_config` for Triton's JSON form)."""
        names = [f.name for f in fields(cls) if f.name != "extra"]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in parameters]
        if missing:
            raise ValueError(f"model parameters lack {missing}: not a twinserve model, or one from another version")
        values = {}
        for name in names:
            if name in parameters:
                try:
                    values[name] = json.loads(parameters[name])
                except json.JSONDecodeError:
                    raise ValueError(f"model parameter {name!r} is not valid: {parameters[name]!r}") from None
        for name in ("frame_shape", "unit_ids", "behavior_mean", "pupil_center_mean"):
            if name in values:
                values[name] = tuple(values[name])
        extra = {k: v for k, v in parameters.items() if k not in names}
        return cls(**values, extra=extra)

    @classmethod
    def from_model_config(cls, config: dict) -> ModelParameters:
        """From a model config as Triton returns it in JSON (`get_model_config(..., as_json=True)["config"]`)."""
        return cls.decode({k: v["string_value"] for k, v in config.get("parameters", {}).items()})
