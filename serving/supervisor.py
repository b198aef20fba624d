"""Keep a tritonserver running: restart it when it dies, with backoff, and count the crashes.

The bundled Triton 2.51 can abort under load (gRPC stream-cancellation races fixed upstream after
it, server issues 7368 and 8034). `twin serve` runs `Supervisor.run` in its main thread, so every
restarted server still dies with `twin serve` (`PR_SET_PDEATHSIG` is tied to the starting thread).
A restart reuses the ports: stream clients reconnect and replay their history (`clients/stream.py`),
so a crash costs latency, not answers.

Backoff: `first_backoff_s` after a crash, doubling up to `max_backoff_s`, back to the first after
`healthy_s` seconds without a crash. More than `max_crashes` crashes within `window_s` seconds:
it gives up (`TwinError`), since a server that cannot stay up needs a person.

Every crash is said on stderr as one JSON line, and the counts are kept in `status_path` (JSON:
crashes, restarts, last exit code and log lines) for monitors and `twin bench soak`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twinserve.errors import TwinError

from .server import TritonServer


class Supervisor:
    def __init__(self, start: Callable[[], TritonServer], status_path: str | Path | None = None,
                 first_backoff_s: float = 1.0, max_backoff_s: float = 30.0, healthy_s: float = 300.0,
                 max_crashes: int = 20, window_s: float = 600.0):
        self.start, self.status_path = start, Path(status_path) if status_path else None
        self.first_backoff_s, self.max_backoff_s, self.healthy_s = first_backoff_s, max_backoff_s, healthy_s
        self.max_crashes, self.window_s = max_crashes, window_s
        self.crash_times: list[float] = []
        self.status = {"crashes": 0, "restarts": 0, "last_exit_code": None, "last_log": ""}
        self.server = start()
        self._write_status()

    def run(self, should_stop: Callable[[], bool], poll_s: float = 0.5) -> None:
        """Watch the server until `should_stop()`; restart it whenever it dies."""
        backoff = self.first_backoff_s
        while not should_stop():
            if self.server.process.poll() is None:
                time.sleep(poll_s)
                continue
            now = time.monotonic()
            if self.crash_times and now - self.crash_times[-1] > self.healthy_s:
                backoff = self.first_backoff_s
            self._record_crash(now)
            if not self._sleep(backoff, should_stop):
                return
            backoff = min(2 * backoff, self.max_backoff_s)
            self._restart(should_stop)

    def stop(self) -> None:
        self.server.stop()

    def _record_crash(self, now: float) -> None:
        self.crash_times = [t for t in self.crash_times if now - t <= self.window_s] + [now]
        self.status.update(crashes=self.status["crashes"] + 1, last_exit_code=self.server.process.returncode,
                           last_log=self.server.log_tail(5))
        self._write_status()
        print(json.dumps({"event": "tritonserver died", "exit_code": self.server.process.returncode,
                          "crashes": self.status["crashes"]}), file=sys.stderr, flush=True)
        self.server.stop()  # what is left of it: backend stubs in its process group
        if len(self.crash_times) > self.max_crashes:
            raise TwinError(f"tritonserver died {len(self.crash_times)} times within {self.window_s:.0f} s; giving up. "
                            f"Last log lines:\n{self.status['last_log']}")

    def _restart(self, should_stop: Callable[[], bool]) -> None:
        """Start a new server; a failed start counts as a crash and is retried after backoff."""
        backoff = self.first_backoff_s
        while not should_stop():
            try:
                self.server = self.start()
            except (RuntimeError, TimeoutError, OSError) as error:
                print(json.dumps({"event": "restart failed", "error": str(error)[:300]}), file=sys.stderr, flush=True)
                self.crash_times.append(time.monotonic())
                if len(self.crash_times) > self.max_crashes:
                    raise TwinError(f"tritonserver could not be restarted: {error}") from error
                if not self._sleep(backoff, should_stop):
                    return
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            self.status["restarts"] += 1
            self._write_status()
            print(json.dumps({"event": "tritonserver restarted", "restarts": self.status["restarts"]}),
                  file=sys.stderr, flush=True)
            return

    @staticmethod
    def _sleep(seconds: float, should_stop: Callable[[], bool]) -> bool:
        """Wait `seconds` unless asked to stop → whether to go on."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if should_stop():
                return False
            time.sleep(min(0.2, seconds))
        return not should_stop()

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        partial = self.status_path.with_suffix(".partial")
        partial.write_text(json.dumps({**self.status, "pid": self.server.process.pid}, indent=2))
        os.replace(partial, self.status_path)
