"""Start and stop the real Triton Inference Server on a model repository.

The embedded default is the `tritonserver` binary that the `nvidia-pytriton` wheel bundles, with its
Python backend; in the NGC image (`Dockerfile`) the container's own `/opt/tritonserver` is used.
The server runs in its own process group, so `stop()` ends it and every backend stub it started:
SIGTERM, then SIGKILL after `grace` seconds (a Triton server may ignore SIGTERM while streams are open).
Started from the main thread, it also dies with the process that started it, even on SIGKILL
(`PR_SET_PDEATHSIG`), so a killed `twin serve` leaves no server holding the ports.

It listens on `host`: the loopback address 127.0.0.1 unless told otherwise, for gRPC, HTTP and
metrics alike (Triton itself would bind every interface).
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NGC_ROOT = Path("/opt/tritonserver")
LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when the thread that started it ends

try:  # looked up here, not in the forked child (no dynamic loading between fork and exec)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the thread that started it ends."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> Ports:
        """Three ports nothing listens on right now."""
        sockets = [socket.socket() for _ in range(3)]
        for s in sockets:
            s.bind((LOOPBACK, 0))
        ports = cls(*(s.getsockname()[1] for s in sockets))
        for s in sockets:
            s.close()
        return ports


def _bundled() -> tuple[Path, Path, dict[str, Path]]:
    """(tritonserver binary, its libraries folder, python backend files) from the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise RuntimeError("no Triton server found: install the serve extra (pip install 'twinserve[serve]') "
                           "or run in the NGC Triton image") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend = root / "backends" / "python"
    files = {"libtriton_python.so": backend / "libtriton_python.so",
             "triton_python_backend_utils.py": backend / "triton_python_backend_utils.py",
             "triton_python_backend_stub": root / "python_backend_stubs" / version / "triton_python_backend_stub"}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"the bundled Triton server lacks {missing} (Python {version})")
    return root / "bin" / "tritonserver", Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs", files


def server_command(repository: Path, ports: Ports, workdir: Path,
                   host: str = LOOPBACK) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment for this machine, every endpoint bound to `host`."""
    env = dict(os.environ)
    if (NGC_ROOT / "bin" / "tritonserver").exists():
        binary, backends = NGC_ROOT / "bin" / "tritonserver", NGC_ROOT / "backends"
    else:
        binary, libs, files = _bundled()
        backends = workdir / "backends"
        (backends / "python").mkdir(parents=True, exist_ok=True)
        for name, source in files.items():
            target = backends / "python" / name
            if not target.exists():
                target.symlink_to(source)
        # The stub links libpython3.x: prefer the one this interpreter was built with.
        paths = [str(Path(sys.base_prefix) / "lib"), str(libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    command = [str(binary), f"--model-repository={repository}", f"--backend-directory={backends}",
               f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
               f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}",
               "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
               "--exit-timeout-secs=5", "--log-verbose=0"]
    return command, env


class TritonServer:
    """A running tritonserver; use as a context manager or call `stop()`.

    repository: a model repository (`serving.repository.write_repository`); log goes to `log_path`;
    host: the address every endpoint binds to (default loopback only).
    """

    def __init__(self, repository: str | Path, ports: Ports = Ports(), log_path: str | Path | None = None,
                 ready_timeout: float = 120.0, host: str = LOOPBACK):
        self.repository, self.ports, self.host = Path(repository).resolve(), ports, host
        self._workdir = Path(tempfile.mkdtemp(prefix="twinserve-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        command, env = server_command(self.repository, ports, self._workdir, host)
        self._log = open(self.log_path, "ab")
        # A thread's death would fire PR_SET_PDEATHSIG too: bind the server's life to the main thread only.
        bound = _prctl is not None and threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent if bound else None)
        atexit.register(self.stop)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def local_host(self) -> str:
        """The address this machine reaches the server at (loopback when bound to every interface)."""
        return LOOPBACK if self.host in ("0.0.0.0", "::") else self.host

    @property
    def url(self) -> str:
        """gRPC address for clients on this machine."""
        return f"{self.local_host}:{self.ports.grpc}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.local_host}:{self.ports.http}/v2/health/ready",
                                        timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> int | None:
        """End the server and its backend stubs within about `grace` seconds → its exit code."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        self._signal(signal.SIGKILL)  # stubs left in the group, if any
        self._log.close()
        keep_log = self.log_path.parent == self._workdir
        shutil.rmtree(self._workdir / "backends" if keep_log else self._workdir, ignore_errors=True)
        atexit.unregister(self.stop)
        return self.process.returncode

    def kill(self) -> None:
        """Kill the server abruptly, as a crash would (for recovery tests)."""
        self._signal(signal.SIGKILL)
        self.process.wait(5)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
