"""The error type of every `twin` command and the exit code each kind of failure maps to.

    0  success
    1  runtime failure: the work started and failed (a server died, a parity check failed, …)
    2  usage error: bad arguments or bad input (a missing file, an unknown preset, a wrong shape)
    3  unavailable: a feature this installation or machine lacks (an extra, TensorRT, a GPU)
"""

from __future__ import annotations

EXIT_FAILURE, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3

# The extra of pyproject.toml that brings each optional top-level module.
EXTRAS = {"torch": "train", "safetensors": "train", "matplotlib": "train", "scipy": "train",
          "onnx": "export", "onnxscript": "export", "onnxruntime": "export",
          "tritonclient": "client", "imageio": "client", "PIL": "client",
          "zarr": "science", "h5py": "science", "cma": "science", "pytriton": "serve"}


class TwinError(Exception):
    """A failure with a message for the user and an exit code (`exit_code`)."""

    exit_code = EXIT_FAILURE


class Unavailable(TwinError):
    """A feature that this installation or machine lacks."""

    exit_code = EXIT_UNAVAILABLE


def missing_module(error: ModuleNotFoundError) -> Unavailable:
    """An `Unavailable` whose install hint names the extra that brings the missing module."""
    top = (error.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    hint = f"pip install 'twinserve[{extra}]'" if extra else "pip install 'twinserve[train,export,serve,science]'"
    return Unavailable(f"needs the Python module {top!r}, which is not installed; install it with: {hint}")
