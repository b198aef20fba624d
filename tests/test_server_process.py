"""`twin serve` as a process: closed by default (loopback only), and no orphan `tritonserver` when it is
killed with SIGKILL."""

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twinserve.serving.server import Ports
from twinserve.serving.shm_regions import PREFIX, SHM_ROOT, sweep_orphans


def listening(port: int) -> set[str]:
    """The addresses sockets on this machine listen on at `port`, read from /proc/net/tcp and tcp6
    (no traffic needed): IPv4 dotted, v4-mapped IPv6 as IPv4, "0.0.0.0" for every interface."""
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state != "0A" or int(local_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
            ip = ipaddress.ip_address(raw)
            ip = getattr(ip, "ipv4_mapped", None) or ip
            addresses.add("0.0.0.0" if ip.is_unspecified else str(ip))
    return addresses


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def servers_of(repository: Path) -> list[int]:
    """Pids of live `tritonserver` processes serving `repository`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "tritonserver" in command and f"--model-repository={repository}" in command:
            pids.append(int(entry.name))
    return pids


def start_serve(artifacts: Path, repository: Path, ports: Ports, *options: str) -> tuple[subprocess.Popen, dict]:
    """`twin serve` in its own process → (process, the endpoints it printed as JSON)."""
    process = subprocess.Popen([sys.executable, "-m", "twinserve.cli", "serve", "--artifacts", str(artifacts),
                                "--repository", str(repository), "--grpc-port", str(ports.grpc), "--http-port",
                                str(ports.http), "--metrics-port", str(ports.metrics), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:  # the endpoints, one JSON object, once the server is ready
        lines.append(line)
        if line.rstrip() == "}":
            return process, json.loads("".join(lines))
    process.kill()
    raise AssertionError(f"twin serve printed no endpoints: {''.join(lines)} {process.stderr.read()}")


def test_serve_listens_on_loopback_only_and_dies_with_no_orphan_on_sigkill(tiny_artifacts, tmp_path):
    artifacts, _ = tiny_artifacts
    ports, repository = Ports.free(), (tmp_path / "models").resolve()
    process, endpoints = start_serve(artifacts, repository, ports)
    try:
        assert endpoints["grpc"] == f"127.0.0.1:{ports.grpc}"
        for port in (ports.grpc, ports.http, ports.metrics):
            assert listening(port) == {"127.0.0.1"} and accepts(port)
        assert servers_of(repository)
        regions = sorted(SHM_ROOT.glob(f"{PREFIX}{process.pid}_*"))
        assert regions, "the Python backend's shared memory is not named after its launcher"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 20
        while (servers_of(repository) or listening(ports.grpc)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not servers_of(repository), "tritonserver outlived a SIGKILLed `twin serve`"
        assert not listening(ports.grpc)
        # The backend stubs end once they see their server gone; what they leave, a starting server sweeps.
        deadline = time.monotonic() + 30
        while any(path.exists() for path in regions) and time.monotonic() < deadline:
            sweep_orphans()
            time.sleep(0.5)
        assert not any(path.exists() for path in regions)
    finally:
        process.kill()
        for pid in servers_of(repository):
            os.kill(pid, signal.SIGKILL)


def test_serve_on_every_interface_needs_a_key_and_says_what_listens_where(tiny_artifacts, tmp_path):
    """With a key from --api-key-file: gRPC and HTTP on every interface (no TLS), metrics on loopback,
    the endpoints say so, stderr warns that the key travels in clear, and the key is shown nowhere."""
    artifacts, _ = tiny_artifacts
    ports, key = Ports.free(), "serve-test-key-0123456789"
    (tmp_path / "key").write_text(key + "\n")
    process, endpoints = start_serve(artifacts, tmp_path / "models", ports, "--host", "0.0.0.0",
                                     "--api-key-file", str(tmp_path / "key"))
    try:
        assert endpoints["host"] == "0.0.0.0" and listening(ports.grpc) == {"0.0.0.0"} and accepts(ports.grpc)
        assert listening(ports.http) == {"0.0.0.0"} and listening(ports.metrics) == {"127.0.0.1"}
        assert endpoints["listen"] == {"grpc": f"0.0.0.0:{ports.grpc}", "http": f"0.0.0.0:{ports.http}",
                                       "metrics": f"127.0.0.1:{ports.metrics}"}
        assert endpoints["api_key"]["grpc"] and endpoints["api_key"]["http"] and not endpoints["api_key"]["metrics"]
        assert endpoints["tls"] == {"grpc": False, "http": False, "metrics": False}
        for pid in servers_of((tmp_path / "models").resolve()):
            assert key not in (Path("/proc") / str(pid) / "cmdline").read_text(errors="replace")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    stderr = process.stderr.read()
    assert "gRPC listens on 0.0.0.0 without TLS" in stderr and "HTTP listens on 0.0.0.0" in stderr
    assert key not in stderr and key not in json.dumps(endpoints)


def test_serve_restarts_a_dead_tritonserver_counts_it_and_stops_within_bounds(tiny_artifacts, tmp_path):
    """SIGKILL the tritonserver under `twin serve`: the supervisor starts a new one on the same ports,
    says so on stderr and in --status; SIGTERM then stops everything within the bound."""
    import tritonclient.grpc as grpc

    artifacts, _ = tiny_artifacts
    ports, repository, status = Ports.free(), (tmp_path / "models").resolve(), tmp_path / "status.json"
    process, endpoints = start_serve(artifacts, repository, ports, "--status", str(status))
    try:
        assert endpoints["status"] == str(status) and json.loads(status.read_text())["crashes"] == 0
        (first,) = servers_of(repository)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while json.loads(status.read_text())["restarts"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        counts = json.loads(status.read_text())
        assert counts["crashes"] == 1 and counts["restarts"] == 1 and counts["last_exit_code"] == -signal.SIGKILL
        (second,) = servers_of(repository)
        assert second != first and counts["pid"] == second
        assert grpc.InferenceServerClient(endpoints["grpc"]).is_server_ready()
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = process.wait(40)
        stopped_in = time.monotonic() - started
    assert code == 0 and stopped_in < 30 and not servers_of(repository)
    assert '"event": "tritonserver died"' in process.stderr.read()


def test_sweep_removes_only_regions_of_gone_launchers_that_nobody_maps(tmp_path):
    import mmap

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan, mapped = tmp_path / f"{PREFIX}{gone.pid}_ab12_region", tmp_path / f"{PREFIX}{gone.pid}_cd34_region"
    live = tmp_path / f"{PREFIX}{os.getpid()}_ef56_region"  # its launcher is this test
    for path in (orphan, mapped, live):
        path.write_bytes(b"\0" * 4096)
    with open(mapped, "r+b") as file, mmap.mmap(file.fileno(), 4096):
        assert sweep_orphans(tmp_path) == [orphan.name]
    assert not orphan.exists() and mapped.exists() and live.exists()


def test_a_killed_server_leaves_no_shared_memory_once_stopped(tiny_artifacts, tmp_path):
    from twinserve.serving.repository import write_repository
    from twinserve.serving.server import TritonServer

    artifacts, _ = tiny_artifacts
    write_repository(artifacts, tmp_path / "repository")
    server = TritonServer(tmp_path / "repository", Ports.free())
    try:
        regions = sorted(SHM_ROOT.glob(f"{server.shm_prefix}*"))
        assert regions
        server.kill()  # SIGKILL, as a crash: its stubs go with it and leave their regions
        assert any(path.exists() for path in regions)
    finally:
        server.stop()
    assert not any(path.exists() for path in regions)
