"""The foundation workflow (paper 003): a core trained on a cohort of recordings, reused for a new one.

`CoreSource` reads a trained run's core: its settings, frame shape and weights, with two hashes that
the new run records (`config.json` → "core_from"): the sha256 of the source run's weights file, and
of the core's own tensors (`core_sha256`), which a transferred run can be checked against at any time.
With the core frozen only the new recording's head learns (normalisation, shifter, readout,
behavioural modulator); the core's weights and normalisation statistics stay as they were. The
head's readout starts from a fit on the core's features (`readout_fit`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from twinserve.contract import file_sha256

from . import checkpoint
from .model import HEAD_SETTINGS

CORE_PREFIX = "core."


def core_sha256(core: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a core's state (names, dtypes, shapes and bytes, in name order)."""
    state = core.state_dict() if isinstance(core, torch.nn.Module) else core
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class CoreSource:
    """A trained run's core: model config ({"core": name, **settings}, without its heads' settings:
    the new twin's heads are built as today's), frame shape (H, W), core state dict (names without
    the "core." prefix) and where it came from."""

    run: Path
    model: dict
    frame_shape: tuple[int, int]
    state: dict[str, torch.Tensor]
    weights_sha256: str

    @classmethod
    def read(cls, run: str | Path) -> "CoreSource":
        run = Path(run)
        config = checkpoint.read_config(run)
        weights = run / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing; --core-from needs a run with trained weights")
        state = {name[len(CORE_PREFIX):]: tensor for name, tensor in load_file(str(weights)).items()
                 if name.startswith(CORE_PREFIX)}
        core = {key: value for key, value in config["model"].items() if key not in HEAD_SETTINGS}
        return cls(run, core, tuple(config["frame_shape"]), state, file_sha256(weights))

    def check_frame_shape(self, frame_shape: tuple[int, int]) -> None:
        if tuple(frame_shape) != self.frame_shape:
            raise ValueError(f"the core of {self.run} takes {self.frame_shape[0]}×{self.frame_shape[1]} frames, "
                             f"the recordings have {frame_shape[0]}×{frame_shape[1]}; a core transfers only to "
                             "recordings of its frame shape")

    def load_into(self, core: torch.nn.Module) -> None:
        """Copy the weights into a core built from `model` (strict: every tensor, nothing else)."""
        core.load_state_dict(self.state)

    def record(self, frozen: bool) -> dict:
        """What the new run's config.json keeps about its core's origin."""
        return {"run": str(self.run.resolve()), "weights_sha256": self.weights_sha256,
                "core_sha256": core_sha256(self.state), "frozen": frozen}
