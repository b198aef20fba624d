"""Start and stop the real Triton Inference Server on a model repository.

The embedded default is the `tritonserver` binary that the `nvidia-pytriton` wheel bundles, with its
Python backend; in the NGC image (`Dockerfile`) the container's own `/opt/tritonserver` is used.
The server runs in its own process group, so `stop()` ends it and every backend stub it started:
SIGTERM, then SIGKILL after `grace` seconds (a Triton server may ignore SIGTERM while streams are open).
Started from the main thread, it also dies with the process that started it, even on SIGKILL
(`PR_SET_PDEATHSIG`), so a killed `twin serve` leaves no server holding the ports.

Who may call it (`Access`):
- where each endpoint listens (`Listen`): the loopback address 127.0.0.1 unless told otherwise (Triton
  itself would bind every interface). With gRPC on another address, HTTP stays on loopback when gRPC
  has TLS (Triton's HTTP has none, so it would carry the key and the data in clear) and metrics stay
  on loopback (they have no access control at all), unless asked for explicitly;
- an API key: every gRPC and HTTP call but metrics must carry it in the `contract.API_KEY_HEADER`
  header (Triton's restricted protocols; over gRPC Triton reads it as
  `triton-grpc-protocol-<header>`). A key is required as soon as gRPC or HTTP listen beyond loopback;
- shared-memory registration is always closed: it is restricted with a random key that nobody is
  given (twinserve's clients never use it, and it is where published Triton advisories lie);
- TLS for gRPC (PEM certificate and key). Model control stays off (mode "none": no load or unload).

Triton 2.51 takes the keys only on its command line, so `TritonServer` blanks them in the running
server's command line once it is ready (`_hide_from_process_list`); until then other local users
could read them with `ps`.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from twinserve.contract import API_KEY_ENV, API_KEY_HEADER

from .shm_regions import region_prefix, remove_regions, sweep_orphans

NGC_ROOT = Path("/opt/tritonserver")
LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::")  # every interface
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when the thread that started it ends

# Triton's names of what its restricted-protocol flags can guard: the API key guards all of these …
KEYED_PROTOCOLS = ("health", "metadata", "inference", "model-config", "model-repository", "statistics", "trace",
                   "logging")
SHARED_MEMORY = "shared-memory"  # … and this one gets a random key nobody is given: closed for every caller
MIN_KEY_LENGTH = 16
KEY_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~+/=")  # base64 and URL-safe base64
KEY_ADVICE = ("twin serve: --api-key-file FILE or the environment variable "
              f"{API_KEY_ENV}; make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")

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


def reachable_at(host: str) -> str:
    """The address this machine reaches an endpoint bound to `host` at (loopback for every interface)."""
    return LOOPBACK if host in WILDCARDS else host


def check_api_key(key: str) -> None:
    """Refuse a key that is short or has characters outside base64 (the message never shows the key)."""
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"the API key has {len(key)} characters, fewer than {MIN_KEY_LENGTH} ({KEY_ADVICE})")
    if not set(key) <= KEY_CHARACTERS:
        raise ValueError(f"the API key may hold only letters, digits and -_.~+/= ({KEY_ADVICE})")


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


@dataclass(frozen=True)
class Listen:
    """The address each endpoint binds to."""

    grpc: str = LOOPBACK
    http: str = LOOPBACK
    metrics: str = LOOPBACK

    @classmethod
    def on(cls, host: str, tls: bool = False, http: str | None = None, metrics: str | None = None) -> Listen:
        """gRPC on `host`; HTTP on `http`, by default `host` too, but loopback when gRPC has TLS on a
        non-loopback host (Triton's HTTP has no TLS); metrics on `metrics`, by default `host` when that is
        loopback and loopback otherwise (metrics have no access control)."""
        exposed = not is_loopback(host)
        return cls(grpc=host, http=http or (LOOPBACK if tls and exposed else host),
                   metrics=metrics or (LOOPBACK if exposed else host))

    @property
    def exposed(self) -> list[str]:
        """The endpoints that listen beyond this machine."""
        return [name for name in ("grpc", "http", "metrics") if not is_loopback(getattr(self, name))]


@dataclass(frozen=True)
class Access:
    """Who may call the server: `api_key` (None: no key asked) for every endpoint but metrics, and
    TLS for gRPC from `tls_cert` and `tls_key` (PEM files; None: plaintext)."""

    api_key: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file (TLS certificate or key)")
        if self.api_key is not None:
            check_api_key(self.api_key)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self, listen: Listen) -> None:
        """Refuse to listen beyond loopback without a key (metrics aside: they never have one)."""
        exposed = [name for name in listen.exposed if name != "metrics"]
        if exposed and not self.api_key:
            hosts = ", ".join(f"{name} on {getattr(listen, name)}" for name in exposed)
            raise ValueError(f"an API key is required to listen beyond this machine ({hosts}): {KEY_ADVICE}")

    def flags(self) -> list[str]:
        """tritonserver flags: the key for `KEYED_PROTOCOLS`, a fresh random key nobody gets for shared
        memory, TLS for gRPC. Triton's syntax: `<protocol>,<protocol>…:<header>=<value>`."""
        sealed = secrets.token_urlsafe(32)
        guarded = [(",".join(KEYED_PROTOCOLS), self.api_key)] if self.api_key else []
        flags = []
        for protocols, key in [*guarded, (SHARED_MEMORY, sealed)]:
            flags += [f"--grpc-restricted-protocol={protocols}:{API_KEY_HEADER}={key}",
                      f"--http-restricted-api={protocols}:{API_KEY_HEADER}={key}"]
        if self.tls:
            flags += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(self.tls_cert).resolve()}",
                      f"--grpc-server-key={Path(self.tls_key).resolve()}"]
        return flags


def _hide_from_process_list(pid: int, values: list[str]) -> bool:
    """Overwrite `values` with '*' in the command line of running process `pid` (best effort) → whether done.

    Triton 2.51 takes its restricted-protocol keys only as flags, which any local user can read in
    `ps` (/proc/PID/cmdline) while it runs. Once the server is ready it has parsed its flags into its
    own strings, so its parent (Linux lets a process write its child's memory) blanks them in place."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # proc(5) fields from the 3rd on
        start, end = int(fields[48 - 3]), int(fields[49 - 3])  # arg_start, arg_end
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            arguments = memory.read(end - start)
            hidden = arguments
            for value in values:
                hidden = hidden.replace(value.encode(), b"*" * len(value.encode()))
            memory.seek(start)
            memory.write(hidden)
        return all(value.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes() for value in values)
    except (OSError, ValueError, IndexError):
        return False


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


def server_command(repository: Path, ports: Ports, workdir: Path, listen: Listen = Listen(),
                   access: Access = Access(), shm_prefix: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment for this machine: endpoints bound as `listen` says,
    guarded as `access` says, the Python backend's shared-memory regions named `shm_prefix`…
    (`shm_regions`). The command line holds the keys: never print it."""
    env = {name: value for name, value in os.environ.items() if name != API_KEY_ENV}
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
               f"--http-address={listen.http}", f"--grpc-address={listen.grpc}",
               f"--metrics-address={listen.metrics}",
               f"--http-port={ports.http}", f"--grpc-port={ports.grpc}", f"--metrics-port={ports.metrics}",
               "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
               "--model-control-mode=none", "--exit-timeout-secs=5", "--log-verbose=0", *access.flags()]
    if shm_prefix:
        command.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    return command, env


class TritonServer:
    """A running tritonserver; use as a context manager or call `stop()`.

    repository: a model repository (`serving.repository.write_repository`); log goes to `log_path`;
    host: the address gRPC binds to (default loopback only); HTTP and metrics follow `Listen.on` unless
    `http_host` / `metrics_host` say otherwise; access: the API key and TLS (`Access`), required as
    soon as gRPC or HTTP listen beyond loopback.
    """

    def __init__(self, repository: str | Path, ports: Ports = Ports(), log_path: str | Path | None = None,
                 ready_timeout: float = 120.0, host: str = LOOPBACK, access: Access = Access(),
                 http_host: str | None = None, metrics_host: str | None = None):
        self.repository, self.ports, self.host = Path(repository).resolve(), ports, host
        self.listen = Listen.on(host, access.tls, http_host, metrics_host)
        self.access = access
        access.check(self.listen)
        self._workdir = Path(tempfile.mkdtemp(prefix="twinserve-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.shm_prefix = region_prefix()
        sweep_orphans()  # regions of servers killed with their launcher
        command, env = server_command(self.repository, ports, self._workdir, self.listen, access, self.shm_prefix)
        keys = [argument.split(f":{API_KEY_HEADER}=", 1)[1] for argument in command if "-restricted-" in argument]
        self._log = open(self.log_path, "ab")
        # A thread's death would fire PR_SET_PDEATHSIG too: bind the server's life to the main thread only.
        bound = _prctl is not None and threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_die_with_parent if bound else None)
        self.process.args = [command[0], "(flags not kept: they hold the keys)"]  # shown in subprocess errors
        atexit.register(self.stop)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.keys_hidden = _hide_from_process_list(self.process.pid, keys)

    @property
    def local_host(self) -> str:
        """The address this machine reaches gRPC at (loopback when bound to every interface)."""
        return reachable_at(self.listen.grpc)

    @property
    def url(self) -> str:
        """gRPC address for clients on this machine."""
        return f"{self.local_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """HTTP address for clients on this machine."""
        return f"{reachable_at(self.listen.http)}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"{reachable_at(self.listen.metrics)}:{self.ports.metrics}/metrics"

    def describe(self) -> dict:
        """What listens where and how it is guarded (never the key itself)."""
        return {"listen": {"grpc": f"{self.listen.grpc}:{self.ports.grpc}",
                           "http": f"{self.listen.http}:{self.ports.http}",
                           "metrics": f"{self.listen.metrics}:{self.ports.metrics}"},
                "tls": {"grpc": self.access.tls, "http": False, "metrics": False},
                "api_key": {"grpc": bool(self.access.api_key), "http": bool(self.access.api_key),
                            "metrics": False, "header": API_KEY_HEADER},
                "shared_memory": "disabled", "model_control": "none"}

    def ready(self) -> bool:
        """Whether the server answers ready on HTTP (with the key, if one is set)."""
        headers = {API_KEY_HEADER: self.access.api_key} if self.access.api_key else {}
        request = urllib.request.Request(f"http://{self.http_url}/v2/health/ready", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=1) as reply:
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
        remove_regions(self.shm_prefix)  # a killed server leaves its shared memory behind
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
