"""Stream frames to a twin's stream model over gRPC and get per-neuron responses per frame.

    with StreamClient("localhost:8001", "mouse-0_stream") as stream:   # or a `Connection` (key, TLS)
        for responses in stream.run(video, behavior, pupil_center):   # video (T, H, W)
            ...                                                         # responses (N,)
        print(stream.latency_summary())

One stream is one Triton sequence. The client reads the model's `contract.ModelParameters` from
its config; the first `offset` responses of a stream are warm-up (R - 1 for a receptive field of R
frames, none for a twin with unbounded memory).

If the server goes away mid-stream the client waits for it to come back, opens a new sequence,
replays its history and carries on, so the outputs equal an uninterrupted run. The history is what
rebuilds the server's state exactly: the last R - 1 answered frames for a finite receptive field,
and every answered frame of the stream for unbounded memory (a recurrent state depends on all of
them). That unbounded history grows by one frame per answer, H·W·4 bytes for FP32 frames (a
quarter of that for uint8), about 1 GiB per hour at the default frame shape and rate, and the
replay takes as long as the stream so far; a new stream starts from a blank state and an empty
history.

The client never cancels a request in flight (cancelling in-flight stream requests crashes the
bundled Triton 2.51: server issues 7368, 8034): it closes a stream by waiting, at most
`response_timeout`, for the answers still due. When an answer does not come within
`response_timeout`, it first ENDs the old sequence (best effort: that frees its state on a server
that is still alive; a dead one has nothing to free), then reconnects and replays as above.

A frame the server rejects (bad shape or dtype, NaN) raises `StreamError` and leaves the stream as
it was: the next valid frame continues it. uint8 frames travel as UINT8, others as FP32. A server
that asks for an API key this client lacks raises `AccessRefused` at once (no reconnect loop).
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import tritonclient.grpc as grpc
from tritonclient.utils import InferenceServerException

from twinserve.contract import BEHAVIOR, FRAME, FRAME_UINT8, PUPIL_CENTER, RESPONSES, ModelParameters

from .connection import AccessRefused, Connection, connection_lost, key_refused

__all__ = ["AccessRefused", "AsyncStreamClient", "Connection", "ServerGone", "StreamClient", "StreamError",
           "connection_lost"]

REPLAY_IN_FLIGHT = 64  # replayed frames on the wire at once after a reconnect


class StreamError(ValueError):
    """The server refused a frame or the stream; the message says why."""


class ServerGone(ConnectionError):
    """The server did not come back within the reconnect timeout."""


class ResponseTimeout(ConnectionError):
    """No answer within the response timeout (the server may be alive but stuck, or gone)."""


def _close_quietly(client: grpc.InferenceServerClient) -> None:
    """Close the stream without cancelling it (blocks until the server has answered every request on
    it, or the stream broke), then the connection."""
    try:
        client.stop_stream(cancel_requests=False)
        client.close()
    except Exception:  # the connection may already be gone
        pass


class StreamClient:
    """A stream of frames to `model` (a `<recording>_stream` model) at `url`: a gRPC address
    (host:port; API key from the environment, no TLS) or a `Connection`."""

    def __init__(self, url: str | Connection, model: str, reconnect_timeout: float = 60.0,
                 response_timeout: float = 30.0):
        self.connection = Connection.of(url)
        self.url, self.model = self.connection.url, model
        self.reconnect_timeout, self.response_timeout = reconnect_timeout, response_timeout
        self.latencies: list[float] = []  # seconds, one per answered frame
        self.reconnects = 0
        self._client, self._sequence, self._started = None, 0, False
        self._last_sent = None  # the last frame sent on the open sequence: END travels with it again
        self._results: queue.Queue = queue.Queue()
        self._connect(wait=False)
        self.parameters = ModelParameters.from_model_config(
            self._client.get_model_config(self.model, as_json=True)["config"])
        self.receptive_field, self.offset = self.parameters.receptive_field, self.parameters.offset
        # Answered (frame, behavior, pupil): the last R - 1, or all of them for unbounded memory.
        self.history: deque = deque(maxlen=None if self.receptive_field is None else self.offset)

    # --- public API -------------------------------------------------------------------------
    def send(self, frame: np.ndarray, behavior, pupil_center) -> np.ndarray:
        """One frame (H, W) raw pixels, behavior (2,), pupil_center (2,) → responses (N,)."""
        return next(self.run(frame[None], np.asarray(behavior)[None], np.asarray(pupil_center)[None]))

    def run(self, video: np.ndarray, behavior: np.ndarray, pupil_center: np.ndarray,
            in_flight: int = 1) -> Iterator[np.ndarray]:
        """Frames (T, H, W), behavior (T, 2), pupil_center (T, 2) → yields responses (N,) per frame, in
        order. in_flight > 1 keeps that many frames on the wire (more throughput, same outputs)."""
        if not (len(video) == len(behavior) == len(pupil_center)):
            raise ValueError(f"video, behavior and pupil_center differ in length: "
                             f"{len(video)}, {len(behavior)}, {len(pupil_center)}")
        frames = list(zip(video, behavior, pupil_center))
        sent: deque = deque()  # [frame tuple, send time] awaiting an answer
        position = 0
        while position < len(frames) or sent:
            try:
                while position < len(frames) and len(sent) < in_flight:
                    sent.append([frames[position], None])  # counted as unanswered even if sending fails
                    position += 1
                    sent[-1][1] = self._send(sent[-1][0])
                result = self._receive()
            except (ConnectionError, InferenceServerException) as error:
                if key_refused(error):
                    raise self.connection.refused() from None
                if not connection_lost(error):
                    raise
                self._recover([f for f, _ in sent])
                sent = deque([f, time.perf_counter()] for f, _ in sent)
                continue
            frame, started = sent.popleft()
            if isinstance(result, StreamError):
                raise result
            self.latencies.append(time.perf_counter() - started)
            self.history.append(frame)
            yield result

    def close(self) -> None:
        """End the sequence (frees its state on the server) and the connection, waiting (at most
        `response_timeout`) for the answers still due rather than cancelling them."""
        self._end_sequence()
        self._disconnect()

    def latency_summary(self) -> dict[str, float]:
        """Per-frame round-trip latency in milliseconds: p50, p90, p99, mean, max, and the frame count."""
        if not self.latencies:
            return {"frames": 0}
        ms = np.asarray(self.latencies) * 1e3
        return {"frames": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------
    def _connect(self, wait: bool) -> None:
        """Open a client and a gRPC stream; with `wait`, retry until the server is back or the timeout.
        A refused API key raises `AccessRefused` at once: waiting would not change it."""
        deadline = time.monotonic() + (self.reconnect_timeout if wait else 0)
        while True:
            client = self.connection.client()
            try:
                if client.is_server_live() and client.is_model_ready(self.model):
                    break
                if not wait:
                    known = [m["name"] for m in client.get_model_repository_index(as_json=True).get("models", [])]
                    client.close()
                    raise StreamError(f"model {self.model!r} is not served at {self.url}; models: {known}")
                problem = f"model {self.model!r} not ready"
            except InferenceServerException as error:
                if key_refused(error):
                    client.close()
                    raise self.connection.refused() from None
                problem = self.connection.hint(str(error))
            client.close()
            if time.monotonic() >= deadline:
                raise ServerGone(f"no Triton server ready at {self.url}"
                                 f"{f' within {self.reconnect_timeout:.0f} s' if wait else ''}: {problem}")
            time.sleep(0.5)
        # Each stream has its own queue: a late answer of an old stream never reaches a new one.
        self._client, self._results = client, queue.Queue()
        self._client.start_stream(callback=lambda result, error, answers=self._results: answers.put((result, error)))
        self._sequence, self._started, self._last_sent = random.getrandbits(62) + 1, False, None

    def _end_sequence(self) -> None:
        """END the open sequence, best effort, so the server frees its state now rather than at its idle
        timeout. END travels with a frame, its answer dropped: the last answered one again (a frame the
        server took), else the last one sent. On a broken stream it cannot be sent, and need not be: the
        server is gone, or frees the state when idle."""
        if self._client is not None and self._started and self._last_sent is not None:
            try:
                self._send(self.history[-1] if self.history else self._last_sent, end=True)
            except (StreamError, InferenceServerException):
                pass
        self._started = False

    def _disconnect(self) -> None:
        """Close the stream and the connection without cancelling a request: wait at most
        `response_timeout` for the answers still due, then leave the closing to a background thread
        (a stuck server keeps it waiting; a dead one ends it)."""
        client, self._client = self._client, None
        if client is not None:
            closing = threading.Thread(target=_close_quietly, args=(client,), daemon=True,
                                       name="twinserve-stream-close")
            closing.start()
            closing.join(self.response_timeout)

    @property
    def default_behavior(self) -> tuple[np.ndarray, np.ndarray]:
        """The recording's mean behavior (2,) and pupil_center (2,), for streams without them."""
        return (np.array(self.parameters.behavior_mean, np.float32),
                np.array(self.parameters.pupil_center_mean, np.float32))

    def _send(self, frame: tuple, end: bool = False) -> float:
        pixels, behavior, pupil = frame
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 and not np.issubdtype(pixels.dtype, np.floating):
            raise StreamError(f"frames must be uint8 or floating point raw pixel values, got {pixels.dtype}")
        name, dtype = (FRAME_UINT8, "UINT8") if pixels.dtype == np.uint8 else (FRAME, "FP32")
        arrays = [(name, pixels if dtype == "UINT8" else pixels.astype(np.float32, copy=False), dtype),
                  (BEHAVIOR, np.asarray(behavior, np.float32), "FP32"),
                  (PUPIL_CENTER, np.asarray(pupil, np.float32), "FP32")]
        inputs = []
        for input_name, array, input_dtype in arrays:
            tensor = grpc.InferInput(input_name, [1, *array.shape], input_dtype)
            tensor.set_data_from_numpy(array[None])
            inputs.append(tensor)
        self._client.async_stream_infer(self.model, inputs, sequence_id=self._sequence,
                                        sequence_start=not self._started, sequence_end=end)
        self._started, self._last_sent = True, frame
        return time.perf_counter()

    def _receive(self):
        """The next answer: responses (N,), or a StreamError for a refused frame."""
        try:
            result, error = self._results.get(timeout=self.response_timeout)
        except queue.Empty:
            raise ResponseTimeout(f"UNAVAILABLE: no answer from {self.url} within {self.response_timeout:.0f} s")
        if error is not None:
            if key_refused(error):
                raise self.connection.refused()
            if connection_lost(error):
                raise error
            return StreamError(f"{self.model}: {error.message() if hasattr(error, 'message') else error}")
        return result.as_numpy(RESPONSES)[0]

    def _recover(self, unanswered: list) -> None:
        """Reconnect and replay (`_replay`), again if the connection is lost during the replay (a server
        that was still going down, or went down again), until `reconnect_timeout` has passed."""
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                self._replay(unanswered)
                break
            except (ConnectionError, InferenceServerException) as error:
                if not connection_lost(error) or time.monotonic() > deadline:  # refused keys are not lost
                    raise
        self.reconnects += 1

    def _replay(self, unanswered: list) -> None:
        """END the old sequence (best effort), close the old stream without cancelling, reconnect,
        replay the history into a new sequence (its answers are dropped: the server's state is then
        what it was), resend the unanswered frames."""
        self._end_sequence()
        self._disconnect()
        self._connect(wait=True)
        history = list(self.history)
        for start in range(0, len(history), REPLAY_IN_FLIGHT):
            window = history[start:start + REPLAY_IN_FLIGHT]
            for frame in window:
                self._send(frame)
            for _ in window:
                answer = self._receive()
                if isinstance(answer, StreamError):
                    raise answer
        for frame in unanswered:
            self._send(frame)


class AsyncStreamClient:
    """`StreamClient` for asyncio code: each call runs the blocking round trip in a worker thread,
    so an event loop can drive many streams at once."""

    def __init__(self, client: StreamClient):
        self._client = client

    @classmethod
    async def open(cls, url: str, model: str, **options) -> AsyncStreamClient:
        return cls(await asyncio.to_thread(StreamClient, url, model, **options))

    @property
    def client(self) -> StreamClient:
        return self._client

    async def send(self, frame: np.ndarray, behavior, pupil_center) -> np.ndarray:
        return await asyncio.to_thread(self._client.send, frame, behavior, pupil_center)

    async def run(self, video, behavior, pupil_center):
        for t in range(len(video)):
            yield await self.send(video[t], behavior[t], pupil_center[t])

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def __aenter__(self) -> AsyncStreamClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
