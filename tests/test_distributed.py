"""Data-parallel training with torchrun (gloo on CPUs): two ranks, one run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twinserve.training.distributed import resolve_device

LAUNCHER = Path(__file__).with_name("rank_writes.py")


def torchrun_train(data, out: Path, logs: Path, steps: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", sys.executable, str(LAUNCHER), str(logs), str(out),
               "train", "--data", *map(str, data), "--out", str(out), "--preset", "tiny", "--steps", str(steps),
               "--workers", "0", "--device", "cpu", "--refit-readout-at", "0.5", "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_two_ranks_see_different_data_keep_identical_weights_and_rank_0_alone_writes(small_mouse, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    done = torchrun_train(small_mouse, out, logs, steps=20)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "processes.json").read_text())
    assert record["processes"] == 2
    assert record["first_batch"][0] != record["first_batch"][1]
    assert record["weights"][0] == record["weights"][1]
    assert (logs / "rank1.txt").read_text() == ""
    rank0 = (logs / "rank0.txt").read_text()
    for name in ("config.json", "state.json", "metrics.json", "training_curve.png", "processes.json"):
        assert name in rank0, name
    state = json.loads((out / "checkpoint/state.json").read_text())
    assert state["step"] == 20 and state["readout_refitted_at"] == 10  # the ranks refitted the same twin

    resumed = torchrun_train(small_mouse, out, logs, steps=30)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((out / "checkpoint/state.json").read_text())
    assert state["step"] == 30
    assert [h["step"] for h in state["history"]].count(0) == 1  # resumed, not restarted
    assert (logs / "rank1.txt").read_text() == ""
    record = json.loads((out / "processes.json").read_text())
    assert record["weights"][0] == record["weights"][1]


def test_devices_resolve_or_refuse_clearly():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_twin_train_nproc_runs_torchrun_with_the_same_settings():
    from twinserve.cli import build_parser
    from twinserve.training.cli import _torchrun

    args = build_parser().parse_args(["train", "--data", "a", "b", "--out", "R", "--preset", "tiny", "--nproc", "2",
                                      "--steps", "5", "--device", "cpu", "--quiet"])
    command = _torchrun(args)
    assert command[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    tail = command[command.index("train"):]
    assert tail[:4] == ["train", "--data", "a", "b"] and "--nproc" not in tail
    for flag, value in [("--out", "R"), ("--preset", "tiny"), ("--steps", "5"), ("--device", "cpu")]:
        assert tail[tail.index(flag) + 1] == value
    assert "--quiet" in tail and "--minutes" not in tail
