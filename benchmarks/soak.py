"""`twin bench soak`: a served twin under M minutes of unruly clients and server kills, every answer checked.

A random twin (`export_random_twin`) is served by the real `twin serve` (a subprocess on free loopback
ports, idle timeout `IDLE_TIMEOUT_S`, its supervisor's counts in a status file). Until the time is up:
- S stream workers, stream after stream: 30–300 uint8 frames (H, W) with behavior (2,) and
  pupil_center (2,), paced at `contract.FPS`; at random 1–3 bad frames (NaN behaviour, the
  first one too: a refusal is expected and the stream goes on), and an ending: END after the last frame, a
  disconnect mid-stream (closed early), or an abandoned stream (no END). An abandoned stream's
  client sends its last frame again `ABANDON_S` later, which must be refused (the server's idle
  timer freed it), then closes; the state pool has only `SPARE_SLOTS` slots beyond the S streams,
  so streams that are never freed soon make STARTs fail;
- one clip worker: clips of 20–200 frames to the clip model, back to back;
- a killer: SIGKILL to `tritonserver` (the pid in the status file) `kills` times at random after the
  first minute, each once the supervisor has restarted the previous one;
- a sampler: every `SAMPLE_S` the RSS of `twin serve` and every process under it (tritonserver,
  its backend stubs).
Every answer is compared with the local graphs on ONNX Runtime: a stream's answers (T', N) with the
step graph run from zero states over the frames the server took, a clip's (T − offset, N) with the
clip graph. Wrong: relative error max |served − local| / max |local| above `TOLERANCE`. Lost: sent
and never answered, even after the client's recovery. RSS growth: `rss_growth`.
→ benchmarks/results/soak.json and soak.png beside it
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
from tritonclient.utils import InferenceServerException

from twinserve.clients.connection import Connection, connection_lost
from twinserve.clients.score import clip_inputs, model_parameters
from twinserve.clients.stream import StreamClient, StreamError
from twinserve.contract import CLIP_INPUTS, FPS, RESPONSES, model_names
from twinserve.export.manifest import verified_path
from twinserve.export.onnx_export import relative_error, stream
from twinserve.serving.server import LOOPBACK, Ports

from .harness import RESULTS, machine, write_results
from .stream import raw_frames
from .twins import RECORDING, export_random_twin

TOLERANCE = 1e-4                       # relative, as at export
STREAM_FRAMES, CLIP_FRAMES = (30, 300), (20, 200)
ENDINGS = {"end": 0.6, "disconnect": 0.25, "abandon": 0.15}
BAD_FRAMES_CHANCE = 0.3                # that a stream has 1–3 bad frames
IDLE_TIMEOUT_S = 5.0                   # `twin serve --idle-timeout`
ABANDON_S = 3 * IDLE_TIMEOUT_S
SPARE_SLOTS = 8                        # `twin serve --max-streams` = streams + SPARE_SLOTS
WARMUP_S = SETTLE_S = 60.0             # no kill in the first minute; RSS samples in the minute after a kill left out
SAMPLE_S, BIN_S = 5.0, 10.0            # RSS sampling period; bins of answered frames
RECOVERY_S = 120.0                     # longest wait for the server to come back
RSS_GROWTH_LIMIT = 0.10                # the bound on RSS growth after warm-up
STREAM_COUNTS = ("streams", "frames_sent", "frames_answered", "wrong", "lost", "refused_expected",
                 "refused_unexpected", "reconnects", *ENDINGS, "abandoned_freed", "abandoned_kept",
                 "abandoned_restarted", "max_error")
CLIP_COUNTS = ("clips_sent", "clips_answered", "clips_wrong", "clips_lost", "clips_refused", "clip_retries",
               "clip_frames_answered", "clip_max_error")
FAILURES = ("wrong", "lost", "refused_unexpected", "abandoned_kept", "clips_wrong", "clips_lost", "clips_refused",
            "worker_failures")


def rss_growth(samples: list[tuple[float, float]], kills: list[float], seconds: float) -> dict:
    """RSS growth after warm-up of a run of `seconds`, from samples [(t s, MB)] taken every `SAMPLE_S`
    and kills at `kills` (s). Samples in the `SETTLE_S` after a kill are left out (a restarted server
    starts small and warms up again). Baseline: the median of the first minute of samples after the
    first minute; final: the median of the last quarter of the run → {"baseline_mb", "final_mb",
    "growth": final / baseline − 1}, None where a window holds no sample."""
    settled = [(t, mb) for t, mb in samples if not any(0 <= t - k < SETTLE_S for k in kills)]
    windows = ([mb for t, mb in settled if t >= WARMUP_S][:int(60 / SAMPLE_S)],
               [mb for t, mb in settled if t >= 0.75 * seconds])
    baseline, final = (statistics.median(window) if window else None for window in windows)
    growth = round(final / baseline - 1, 4) if baseline and final else None
    return {"baseline_mb": baseline and round(baseline, 1), "final_mb": final and round(final, 1), "growth": growth}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # the process is gone
        return ""


def tree_rss(root: int) -> tuple[float, int]:
    """Resident memory (VmRSS, MB) of process `root` and every process under it → (MB, processes)."""
    children: dict[int, list[int]] = {}
    for stat in map(_read, (f"/proc/{pid}/stat" for pid in os.listdir("/proc") if pid.isdigit())):
        if stat:  # "pid (name) state ppid …"
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(stat.split()[0]))
    pids, kib = [root], 0
    for pid in pids:
        pids += children.get(pid, [])
        kib += sum(int(line.split()[1]) for line in _read(f"/proc/{pid}/status").splitlines()
                   if line.startswith("VmRSS:"))
    return kib / 1024, len(pids)


def _inputs(rng: np.random.Generator, frames_range: tuple[int, int], frame_shape) -> tuple[np.ndarray, ...]:
    """Random raw inputs of a random length T: frames (T, H, W) uint8, behavior (T, 2), pupil_center (T, 2)."""
    return raw_frames(frame_shape, int(rng.integers(*frames_range, endpoint=True)), int(rng.integers(2**31)))


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the workers share the cores with the server
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Soak:
    """The workers of one soak run against `twin serve` (pid `serve_pid`, status file `status`), their counts."""

    def __init__(self, url: str, manifest, artifacts: Path, status: Path, serve_pid: int, seed: int):
        self.url, self.status_path, self.serve_pid, self.seed = url, status, serve_pid, seed
        self.models, self.frame_shape = model_names(RECORDING), tuple(manifest.frame_shape)
        self.state_shapes = [s.fixed_shape for s in manifest.graph(RECORDING, "step").states]
        self.step, self.clip = (_session(verified_path(artifacts, RECORDING, g)) for g in ("step", "clip"))
        self.counts, self.answered_per_bin, self.lock = Counter(), Counter(), threading.Lock()
        self.errors, self.kills, self.rss = [], [], []  # first errors; kill times (s); (t s, MB, processes)
        self.started, self.seconds = time.monotonic(), 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def done(self) -> bool:
        return self.elapsed() >= self.seconds

    def count(self, error: str | None = None, **counts) -> None:
        with self.lock:
            self.counts.update(counts)
            if error and len(self.errors) < 20:
                self.errors.append(f"{self.elapsed():.0f} s: {error[:300]}")

    def worst(self, key: str, error: float) -> None:
        with self.lock:
            self.counts[key] = max(self.counts[key], error)

    def status(self) -> dict:
        return json.loads(self.status_path.read_text())

    def run(self, seconds: float, streams: int, kill_times: list[float]) -> dict:
        """Every worker for `seconds`; then wait (bounded) for the last restart → the supervisor's status."""
        self.started, self.seconds = time.monotonic(), seconds
        jobs = [(self._streams, (i,)) for i in range(streams)] + [(self._clips, ()), (self._killer, (kill_times,))]
        workers = [threading.Thread(target=self._guarded, args=job, daemon=True) for job in jobs]
        for thread in workers:
            thread.start()
        while any(thread.is_alive() for thread in workers):
            megabytes, processes = tree_rss(self.serve_pid)
            self.rss.append((round(self.elapsed(), 1), round(megabytes, 1), processes))
            time.sleep(SAMPLE_S)
        deadline = time.monotonic() + RECOVERY_S
        while self.status()["restarts"] < len(self.kills) and time.monotonic() < deadline:
            time.sleep(0.5)
        return self.status()

    def _guarded(self, work, args) -> None:
        try:
            work(*args)
        except Exception as error:  # noqa: BLE001 — counted and reported in the results
            self.count(worker_failures=1, error=f"{work.__name__}: {error!r}")

    def _streams(self, worker: int) -> None:
        """Stream after stream until the time is up; abandoned streams probed `ABANDON_S` later."""
        abandoned: list[tuple[float, StreamClient]] = []
        number, deadline = 0, time.monotonic() + RECOVERY_S
        while not self.done():
            try:
                client = StreamClient(self.url, self.models["stream"])
            except (ConnectionError, StreamError, InferenceServerException):  # the server is restarting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            self._stream(client, np.random.default_rng([self.seed, worker, number]), abandoned)
            number, deadline = number + 1, time.monotonic() + RECOVERY_S
            while abandoned and (self.done() or time.monotonic() - abandoned[0][0] > ABANDON_S):
                since, client = abandoned.pop(0)
                if time.monotonic() - since > ABANDON_S and client.history:
                    self._probe(client)
                client.close()
        for _, client in abandoned:
            client.close()

    def _probe(self, client: StreamClient) -> None:
        """Send an abandoned stream's last answered frame again: the idle timer has freed the stream, so
        it must be refused (unless a server restart came between: then the client has replayed it)."""
        reconnects = client.reconnects
        try:
            client.send(*client.history[-1])
            outcome = "abandoned_restarted" if client.reconnects > reconnects else "abandoned_kept"
        except StreamError:
            outcome = "abandoned_freed"
        except (ConnectionError, InferenceServerException):
            outcome = "abandoned_restarted"
        self.count(**{outcome: 1}, error="an abandoned stream was not freed" if outcome == "abandoned_kept" else None)

    def _stream(self, client: StreamClient, rng: np.random.Generator, abandoned: list) -> None:
        """One stream (see the module's docstring), its answers checked against the local step graph."""
        video, behavior, pupil = _inputs(rng, STREAM_FRAMES, self.frame_shape)
        length = len(video)
        bad = set(rng.choice(np.arange(length), int(rng.integers(1, 4)), replace=False).tolist()
                  if rng.random() < BAD_FRAMES_CHANCE else ())
        ending = str(rng.choice(list(ENDINGS), p=list(ENDINGS.values())))
        answers, start = {}, time.monotonic()
        for t in range(length if ending == "end" else int(rng.integers(1, length))):
            if self.done():
                break
            time.sleep(max(0.0, start + t / FPS - time.monotonic()))
            self.count(frames_sent=1)
            try:
                answer = client.send(video[t], np.full(2, np.nan) if t in bad else behavior[t], pupil[t])
            except StreamError as error:  # the stream goes on
                self.count(**{"refused_expected" if t in bad else "refused_unexpected": 1},
                           error=None if t in bad else f"stream frame {t}: {error}")
                continue
            except (ConnectionError, InferenceServerException) as error:  # not answered even after recovery
                self.count(lost=1, error=f"stream frame {t}: {error!r}")
                break
            if t in bad:
                self.count(wrong=1, error=f"stream frame {t}: a NaN frame was answered")
                continue
            answers[t] = answer
            with self.lock:
                self.answered_per_bin[int(self.elapsed() // BIN_S)] += 1
        self.count(streams=1, frames_answered=len(answers), reconnects=client.reconnects, **{ending: 1})
        if ending == "abandon" and not self.done():
            abandoned.append((time.monotonic(), client))
        else:
            client.close()
        if answers:
            taken = sorted(answers)
            local = stream(self.step, video[None, taken].astype(np.float32), behavior[None, taken],
                           pupil[None, taken], self.state_shapes)[0]
            errors = [relative_error(answers[t], expected) for t, expected in zip(taken, local)]
            self.count(wrong=sum(error > TOLERANCE for error in errors))
            self.worst("max_error", max(errors))

    def _clips(self) -> None:
        """Clip after clip; through a server restart each is retried (fresh connection) for `RECOVERY_S`."""
        rng, connection = np.random.default_rng([self.seed, 1 << 20]), Connection(self.url)
        parameters, client = model_parameters(connection, self.models["clip"]), connection.client()
        while not self.done():
            video, behavior, pupil = _inputs(rng, CLIP_FRAMES, self.frame_shape)
            inputs = clip_inputs(SimpleNamespace(video=video, behavior=behavior, pupil_center=pupil), parameters)
            self.count(clips_sent=1)
            answer, deadline = None, time.monotonic() + RECOVERY_S
            while answer is None:
                try:
                    answer = client.infer(self.models["clip"], inputs).as_numpy(RESPONSES)[0]
                except InferenceServerException as error:
                    if not connection_lost(error) or time.monotonic() > deadline:
                        outcome = "clips_lost" if connection_lost(error) else "clips_refused"
                        self.count(**{outcome: 1}, error=repr(error))
                        break
                    self.count(clip_retries=1)
                    client.close()
                    time.sleep(1.0)
                    client = connection.client()
            if answer is not None:
                local = self.clip.run([RESPONSES], dict(zip(CLIP_INPUTS, (video[None].astype(np.float32),
                                                                          behavior[None], pupil[None]))))[0][0]
                error = relative_error(answer, local) if answer.shape == local.shape else float("inf")
                self.count(clips_answered=1, clip_frames_answered=len(answer), clips_wrong=int(error > TOLERANCE))
                self.worst("clip_max_error", error)
        client.close()

    def _killer(self, kill_times: list[float]) -> None:
        """SIGKILL tritonserver at `kill_times` (s), each once the previous kill's restart is done."""
        for at in kill_times:
            while not self.done() and (self.elapsed() < at or self.status()["restarts"] < len(self.kills)):
                time.sleep(0.2)
            pid = self.status()["pid"]
            if not self.done() and "tritonserver" in _read(f"/proc/{pid}/cmdline"):
                os.kill(pid, signal.SIGKILL)
                self.kills.append(round(self.elapsed(), 1))


def serve(artifacts: Path, folder: Path, host: str, max_streams: int) -> tuple[subprocess.Popen, dict]:
    """Start `twin serve` on free ports, its files in `folder` → (the process, its endpoints JSON)."""
    ports = Ports.free()
    command = [sys.executable, "-m", "twinserve.cli", "serve", "--artifacts", str(artifacts), "--host", host,
               "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
               "--log", str(folder / "tritonserver.log"), "--status", str(folder / "status.json"),
               "--idle-timeout", str(IDLE_TIMEOUT_S), "--max-streams", str(max_streams)]
    with open(folder / "serve.out", "w") as out, open(folder / "serve.err", "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return process, json.loads((folder / "serve.out").read_text())
        except ValueError:  # not all written yet
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"twin serve did not start:\n{(folder / 'serve.err').read_text()[-2000:]}")


def stop(process: subprocess.Popen, grpc_port: int, grace: float = 30.0) -> dict:
    """SIGTERM `twin serve`, SIGKILL after `grace` s → its exit code, the seconds it took and the pids of
    tritonservers left on its gRPC port."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    seconds = time.monotonic() - started
    time.sleep(1.0)
    ours = f"--grpc-port={grpc_port}\0"
    commands = {int(pid): _read(f"/proc/{pid}/cmdline") for pid in os.listdir("/proc") if pid.isdigit()}
    left = [pid for pid, command in commands.items() if "tritonserver" in command and ours in command]
    return {"exit_code": process.returncode, "stop_s": round(seconds, 1), "tritonservers_left": left}


def plot(results: dict, path: Path) -> None:
    """RSS over time and stream frames answered per `BIN_S`, the kills marked in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, frames) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    samples = np.array(results["rss"]["samples"] or [[0, 0]])
    memory.plot(samples[:, 0] / 60, samples[:, 1], ".-")
    memory.set(ylabel="server RSS (MB)", title=f"soak: {results['config']['streams']} streams and clips, "
                                                f"tritonserver killed {results['server']['kills']}× (red)")
    bins = results["streams"]["answered_per_10s"]
    frames.bar((np.arange(len(bins)) + 0.5) * BIN_S / 60, bins, width=0.9 * BIN_S / 60)
    frames.set(ylabel=f"stream frames answered per {BIN_S:.0f} s", xlabel="minutes")
    for axis in (memory, frames):
        for kill in results["server"]["kill_times_s"]:
            axis.axvline(kill / 60, color="red", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_bench(out: str | Path = f"{RESULTS}/soak.json", minutes: float = 20.0, streams: int = 8,
              preset: str = "small", neurons: int = 1000, kills: int | None = None, seed: int = 0,
              host: str = LOOPBACK) -> dict:
    """Soak a served random twin for `minutes` (the module's docstring) → results, written to `out`
    with the plot beside it (.png). `passed`: nothing wrong, lost or unexpectedly refused, every kill
    (at least one) restarted and no other crash, no tritonserver left after the stop."""
    kills, seconds = max(1, int(minutes // 5)) if kills is None else kills, 60 * minutes
    if kills and seconds <= WARMUP_S + 20:
        raise ValueError(f"kills come after the first minute and 20 s before the end: --kills {kills} needs a run "
                         f"longer than {(WARMUP_S + 20) / 60:.2f} minutes")
    kill_times = sorted(np.random.default_rng([seed, 2 << 20]).uniform(WARMUP_S, seconds - 20, kills).tolist())
    with tempfile.TemporaryDirectory(prefix="twinserve-soak-") as folder:
        folder = Path(folder)
        _, manifest = export_random_twin(preset, neurons, folder / "artifacts")
        process, endpoints = serve(folder / "artifacts", folder, host, streams + SPARE_SLOTS)
        try:
            soak = Soak(endpoints["grpc"], manifest, folder / "artifacts", folder / "status.json", process.pid, seed)
            status = soak.run(seconds, streams, kill_times)
        finally:
            stopped = stop(process, int(endpoints["grpc"].rsplit(":", 1)[1]))
        stderr = (folder / "serve.err").read_text()[-1500:]
    counts, samples = soak.counts, [(t, mb) for t, mb, _ in soak.rss]
    growth = rss_growth(samples, soak.kills, seconds)
    results = {
        "config": {"minutes": minutes, "streams": streams, "preset": preset, "neurons": neurons, "kills": kills,
                   "seed": seed, "host": host, "fps": FPS, "stream_frames": list(STREAM_FRAMES),
                   "clip_frames": list(CLIP_FRAMES),
                   "endings": ENDINGS, "bad_frames_chance": BAD_FRAMES_CHANCE, "idle_timeout_s": IDLE_TIMEOUT_S,
                   "abandoned_probed_after_s": ABANDON_S, "max_streams": streams + SPARE_SLOTS,
                   "tolerance_relative": TOLERANCE,
                   "receptive_field": manifest.receptive_field},
        "machine": machine(),
        "streams": {**{key: counts[key] for key in STREAM_COUNTS},
                    "answered_per_10s": [soak.answered_per_bin[i] for i in range(int(np.ceil(seconds / BIN_S)))]},
        "clips": {key: counts[key] for key in CLIP_COUNTS},
        "server": {"kills": len(soak.kills), "kill_times_s": soak.kills, "crashes": status["crashes"],
                   "restarts": status["restarts"], "last_exit_code": status["last_exit_code"], **stopped,
                   "twin_serve_stderr_tail": stderr},
        "rss": {"samples": [list(sample) for sample in samples], "processes": [n for *_, n in soak.rss],
                "max_mb": max((mb for _, mb in samples), default=None), **growth,
                "growth_under_limit": growth["growth"] is not None and growth["growth"] < RSS_GROWTH_LIMIT,
                "definition": "RSS of twin serve and every process under it; growth: the median of the last quarter "
                              "of the run over the median of the first minute of samples after the first minute, "
                              f"both without the samples in the {SETTLE_S:.0f} s after each kill"},
        "worker_failures": counts["worker_failures"], "errors": soak.errors,
    }
    results["passed"] = (all(counts[key] == 0 for key in FAILURES) and not stopped["tritonservers_left"]
                         and status["restarts"] == status["crashes"] == len(soak.kills) >= min(kills, 1))
    out = write_results(results, out)
    plot(results, out.with_suffix(".png"))
    return results
