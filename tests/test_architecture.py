"""The seams: import rules (import-linter), torch-free serving and clients, the wire contract, the CLI's exit codes."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from twinserve.contract import ModelParameters, model_names, output_offset, state_names

ROOT = Path(__file__).resolve().parents[1]
# The folders that install as twinserve (pyproject's package-dir): twinserve/ itself, whose links
# (training -> ../training, …) show import-linter the installed layout, and the rooms they point to.
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
PACKAGE = sorted(set(PACKAGE_DIRS.values()))


def lint(root: Path = ROOT) -> subprocess.CompletedProcess:
    """`lint-imports` with `root`'s pyproject.toml over `root`'s code (put first on the import path)."""
    linter = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(linter), "--no-cache"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)


def test_the_import_rules_hold():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_wrong_import_breaks_the_rules(tmp_path):
    """A copy of the code where the server's models import the trainer's model: lint-imports must fail."""
    for name in PACKAGE:
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    models = tmp_path / "serving" / "models.py"
    models.write_text(models.read_text() + "\nfrom twinserve.training.model import Twin  # noqa: E402,F401\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "serving imports only the contract and the torch-free manifest BROKEN" in result.stdout
    assert "twinserve.serving.models -> twinserve.training.model" in result.stdout


NO_TORCH = textwrap.dedent("""
    import importlib, pkgutil, sys, types

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTorch())
    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")  # the backend's own
    import twinserve.clients, twinserve.serving, twinserve.contract, twinserve.errors
    import twinserve.cli  # the `twin` command starts in a client-only install
    imported = []
    for package in (twinserve.serving, twinserve.clients):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
            imported.append(module.name)
    assert "torch" not in sys.modules
    print(" ".join(imported))
""")


def test_serving_and_clients_import_without_torch():
    result = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert {"twinserve.serving.models", "twinserve.serving.repository", "twinserve.clients.stream",
            "twinserve.clients.score", "twinserve.clients.experiments.tuning"} <= set(imported)


def test_model_parameters_round_trip_through_triton_strings():
    parameters = ModelParameters(recording='mouse "7"', receptive_field=None, frame_shape=(36, 64), unit_ids=(4, 9),
                                 behavior_mean=(1.5, 0.25), pupil_center_mean=(-2.0, 3.0), threads=2,
                                 extra={"EXECUTION_ENV_PATH": "/opt/env"})
    encoded = parameters.encode()
    assert all(isinstance(v, str) for v in encoded.values())
    decoded = ModelParameters.from_model_config({"parameters": {k: {"string_value": v} for k, v in encoded.items()}})
    assert decoded == parameters and decoded.offset == 0 and decoded.neurons == 2
    with pytest.raises(ValueError, match="frame_shape"):
        ModelParameters.decode({k: v for k, v in encoded.items() if k != "frame_shape"})


def test_contract_names_and_offsets():
    assert model_names("m/1 x") == {"stream": "m_1_x_stream", "clip": "m_1_x_clip"}
    assert state_names(2) == (["state_0", "state_1"], ["state_0_next", "state_1_next"])
    assert output_offset(19) == 18 and output_offset(None) == 0


def run_twin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinserve.cli", *args], capture_output=True, text=True, timeout=120)


def test_results_go_to_stdout_as_json_and_prose_to_stderr(tmp_path):
    result = run_twin("stimuli", "dots", "--out", str(tmp_path / "dots"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["kind"] == "dots" and summary["stimuli"] == len(list((tmp_path / "dots").glob("*.npy")))
    assert "wrote" in result.stderr


def test_exit_codes_distinguish_usage_failure_and_unavailable(tmp_path):
    version = run_twin("--version")
    assert version.returncode == 0 and version.stdout.startswith("twinserve ")
    assert run_twin("train", "--preset", "no-such-preset").returncode == 2  # argparse: usage
    missing = run_twin("export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "a"))
    assert missing.returncode == 2 and "twin export: error:" in missing.stderr and "Traceback" not in missing.stderr
    dead = run_twin("stream", "--url", "127.0.0.1:9", "--model", "m_stream", "--video", str(tmp_path / "v.npy"))
    assert dead.returncode == 1 and "no Triton server" in dead.stderr and "Traceback" not in dead.stderr


def test_a_missing_extra_exits_3_and_names_it(tmp_path):
    """`twin train` where torch cannot be imported: exit 3 and the install hint names the `train` extra."""
    code = NO_TORCH.split("import twinserve.clients")[0] + textwrap.dedent(f"""
        from twinserve.cli import main
        sys.exit(main(["train", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path / "run")!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "twinserve[train]" in result.stderr and "Traceback" not in result.stderr
