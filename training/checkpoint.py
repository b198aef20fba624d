"""Run directories: weights as safetensors, everything else as JSON; no pickle anywhere.

    RUN/config.json          preset, model config (core name and settings), frame shape (H, W),
                             training settings, receptive field, recordings (neuron counts, unit ids)
    RUN/model.safetensors    the best weights (by validation score)
    RUN/metrics.json         per recording and tier, written by evaluation
    RUN/checkpoint/          last weights, optimizer state and trainer state, for resuming
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from twinserve.contract import DEFAULT_FRAME_SHAPE

from .model import CELL_CENTRES, CENTRED_SHIFT, SHIFT_INPUT, Twin


def write_json(path: Path, value) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)


def save_weights(module: torch.nn.Module, path: Path) -> None:
    path = Path(path)
    temporary = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(temporary))
    temporary.replace(path)


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON beside it (hyper-parameters)."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": torch.as_tensor(value).contiguous()
               for index, entries in state["state"].items() for name, value in entries.items()}
    save_file(tensors, str(path))
    write_json(Path(path).with_suffix(".json"), state["param_groups"])


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    state: dict[int, dict] = {}
    for key, value in load_file(str(path)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = json.loads(Path(path).with_suffix(".json").read_text())
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def read_config(run: str | Path) -> dict:
    """A run's config.json; runs written before frame shapes and core names were recorded get the
    contract's default frame shape and the "factorized" core, and those written before a head
    setting (`model.Twin`: centred shifts, shifted input, cell centres) that setting off."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {run} a run directory written by `twin train`?")
    config = json.loads(path.read_text())
    config.setdefault("frame_shape", list(DEFAULT_FRAME_SHAPE))
    config["model"] = {"core": "factorized", CENTRED_SHIFT: False, SHIFT_INPUT: False, CELL_CENTRES: False,
                       **config["model"]}
    return config


def load_run(run: str | Path, weights: str = "model.safetensors") -> tuple[Twin, dict]:
    """Rebuild the twin of a run directory in eval mode → (model, config)."""
    run = Path(run)
    config = read_config(run)
    model = Twin(config["model"], {name: r["neurons"] for name, r in config["recordings"].items()},
                 frame_shape=tuple(config["frame_shape"]))
    weights_path = run / weights
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing; the run has no saved weights yet")
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), config
