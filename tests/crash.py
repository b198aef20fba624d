"""Stream through a Triton server that is killed mid-stream and restarted on the same ports."""

import threading
import time

import numpy as np

from twinserve.clients.stream import StreamClient
from twinserve.serving.server import Ports, TritonServer


def stream_through_a_crash(repository, model: str, inputs, crash_at: int) -> tuple[np.ndarray, int]:
    """Stream inputs (video (T, H, W), behavior (T, 2), pupil_center (T, 2)), killing the server
    after frame `crash_at` and starting a new one a second later → (responses (T, N), reconnects)."""
    ports = Ports.free()
    servers = [TritonServer(repository, ports)]
    try:
        with StreamClient(servers[0].url, model, reconnect_timeout=120) as client:
            outputs = []
            for t, responses in enumerate(client.run(*inputs)):
                outputs.append(responses)
                if t == crash_at:
                    servers[0].kill()
                    threading.Timer(1.0, lambda: servers.append(TritonServer(repository, ports))).start()
            reconnects = client.reconnects
    finally:
        deadline = time.monotonic() + 60
        while len(servers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        for server in servers:
            server.stop()
    return np.stack(outputs), reconnects
